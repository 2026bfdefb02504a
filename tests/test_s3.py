"""The pipeline (through propensity) against an S3-compatible object store, through ``s3a://`` (slow).

A real S3 API server (moto's server mode, a separate process started here and stopped by its
pid) holds the landing files, every Delta table and the MLflow artifacts; ``seglake run all --through propensity``
runs as a user runs it, in its own process, with hadoop-aws from Maven Central put on the
classpath by ``spark.extra_packages``. What is checked comes from outside the code under test:
the generator's planted counts, and the object store's own listing (boto3).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import c1_only

pytestmark = pytest.mark.slow

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

REPO = Path(__file__).resolve().parents[1]
BUCKET = "lake"
HADOOP_AWS = "org.apache.hadoop:hadoop-aws:3.4.2"   # the Hadoop version of pyspark 4.1.4's client jars
#: every table the run through propensity writes (DESIGN.md's contract), as <layer>/<name>
TABLES = ["bronze/events_raw", "silver/events", "silver/events_quarantine", "silver/identity_map",
          "silver/identity_edges", "silver/enriched_events", "silver/sessions", "gold/customer_features",
          "gold/feature_scaling", "gold/retention_matrix", "gold/segment_membership", "gold/clusters",
          "gold/propensity_scores", "ops/ingested_files", "ops/run_log"]
#: the chain runs through propensity: every kind of storage use is on the way (landing files read
#: from the bucket, MERGEs, overwrites, checkpoints, MLflow artifacts and registered models); the
#: two jobs after it (journeys, experiments) write Delta tables the same way (7 Dec: ~40 s less)
THROUGH = "propensity"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 API server on a free loopback port with one bucket; stopped by its pid afterwards."""
    folder = tmp_path_factory.mktemp("moto")
    port = _free_port()
    log = open(folder / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the S3 server did not start: {(folder / 'moto.log').read_text()[-2000:]}")
                time.sleep(0.2)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, client
    finally:
        if proc.poll() is None:             # exactly the process started here, if still running
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def _keys(client, prefix: str) -> list[str]:
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def _conf_dir(tmp: Path, endpoint: str) -> Path:
    """The repository's configuration plus a local overlay pointing s3a at the test server
    (the overlay a user writes for their own S3-compatible store, credentials aside)."""
    conf = tmp / "conf"
    shutil.copytree(REPO / "conf", conf)
    overlay = {
        "env": "local",
        "spark": {"mode": "local", "master": "local[2]", "shuffle_partitions": 2, "driver_memory": "2g",
                  "codegen": False, "extra_packages": [HADOOP_AWS],
                  "extra_conf": {"spark.ui.showConsoleProgress": "false",
                                 "spark.databricks.delta.snapshotPartitions": "2",
                                 "spark.hadoop.fs.s3a.endpoint": endpoint,
                                 "spark.hadoop.fs.s3a.endpoint.region": "us-east-1",
                                 "spark.hadoop.fs.s3a.path.style.access": "true",
                                 "spark.hadoop.fs.s3a.connection.ssl.enabled": "false"}},
        "paths": {"checkpoints": str(tmp / "checkpoints")},
        "clean": {"expectations_dir": str(REPO / "expectations")},
        # 120 customers: a k sweep of 3..4 (not 3..8) says as much about storage on s3a
        "cluster": {"k_min": 3, "k_max": 4},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "artifact_location": f"s3://{BUCKET}/mlflow"},
    }
    (conf / "local.yaml").write_text(json.dumps(overlay, indent=1))  # JSON is YAML
    return conf


def _seglake(args: list[str], conf: Path, endpoint: str, log: Path, short: bool = False) -> tuple[int, str]:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": endpoint}
    if short:
        c1_only(env)
    env.pop("MLFLOW_TRACKING_URI", None)     # the overlay's store, not a test fixture's
    proc = subprocess.run([str(Path(sys.executable).with_name("seglake")), *args, "--conf-dir", str(conf),
                           "--lakehouse", f"s3a://{BUCKET}/seglake"],
                          capture_output=True, text=True, env=env, timeout=2400)
    log.write_text(proc.stdout + proc.stderr)
    return proc.returncode, proc.stdout


def _summary(stdout: str, job: str) -> dict[str, str]:
    """``key=value`` pairs of ``job``'s line in the closing table of ``seglake run``."""
    line = next(line for line in reversed(stdout.splitlines()) if re.match(rf"^{job}\s+[\d.]+\s", line))
    return dict(re.findall(r"(\w+)=([^\s,]+)", line))


def test_whole_pipeline_on_s3a_with_mlflow_artifacts_in_the_bucket(spark, s3, tmp_path):
    from seglake.devtools.generate import generate

    endpoint, client = s3
    counts = generate(spark, tmp_path / "input", events=3000, customers=120, seed=7)
    landing = tmp_path / "input" / "landing"
    files = sorted(p for p in landing.rglob("*") if p.is_file() and not p.name.startswith((".", "_")))
    for p in files:   # the landing zone is in the bucket too
        client.upload_file(str(p), BUCKET, f"seglake/_input/landing/{p.relative_to(landing)}")
    conf = _conf_dir(tmp_path, endpoint)

    code, out = _seglake(["run", "all", "--through", THROUGH], conf, endpoint, tmp_path / "run_all.log")
    assert code == 0, (tmp_path / "run_all.log").read_text()[-4000:]
    ingest, clean = _summary(out, "ingest"), _summary(out, "clean")
    assert int(ingest["files"]) == len(files)
    assert int(clean["records_in"]) == counts["raw_records"]
    assert int(clean["quarantined"]) == counts["malformed_injected"]
    assert int(clean["deduplicated"]) == counts["duplicates_injected"]
    assert int(clean["inserted"]) == counts["valid_events"]
    assert int(_summary(out, "propensity")["scored_customers"]) == int(_summary(out, "features")["customers"])

    # every table is a Delta table in the bucket, and nothing of the lakehouse landed on local disk
    keys = _keys(client, "seglake/")
    for table in TABLES:
        assert f"seglake/{table}/_delta_log/00000000000000000000.json" in keys, table
    assert not (Path.cwd() / "s3a:").exists()
    # MLflow's artifacts (plots, tables, the registered models) went to the bucket as well
    artifacts = _keys(client, "mlflow/")
    assert any(k.endswith("MLmodel") for k in artifacts) and any(k.endswith(".png") for k in artifacts)

    # a second ingest finds every landing file in the ingested-files ledger: nothing twice
    code, out = _seglake(["run", "ingest"], conf, endpoint, tmp_path / "ingest2.log", short=True)
    assert code == 0, (tmp_path / "ingest2.log").read_text()[-4000:]
    again = dict(re.findall(r"^  (\w+): (\S+)$", out, re.M))   # one job prints "  key: value" lines
    assert (int(again["files"]), int(again["records"])) == (0, 0), out
