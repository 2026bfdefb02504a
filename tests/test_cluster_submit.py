"""spark-submit to a real standalone cluster (master + 2 workers on loopback).

The cluster's processes are started by this module's fixture and stopped by their pids in
its finalizer, also when a test fails.
"""
from __future__ import annotations

import json
import signal
import sys
import urllib.request
from pathlib import Path

import pytest
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from seglake.devtools import local_cluster as cluster_local
from seglake import registry

pytestmark = pytest.mark.slow

#: stages the cluster run covers (those available, in pipeline order, up to features)
CLUSTER_STAGES = ("ingest", "clean", "identity", "sessions", "features")
#: the contract table each stage must have produced on the cluster
STAGE_TABLES = {"ingest": "bronze.events_raw", "clean": "silver.events", "identity": "silver.identity_map",
                "sessions": "silver.sessions", "features": "gold.customer_features"}
#: columns that legitimately differ between two runs (run ids, processing times)
RUN_COLUMNS = {"_run_id", "run_id", "_batch_id", "batch_id", "model_run_id", "_ingested_at",
               "_quarantined_at", "_updated_at", "updated_at", "_computed_at", "computed_at", "created_at"}

SMOKE_SCRIPT = '''
"""Cluster smoke job: seglake imported on the driver, Delta write + read through seglake.core.tables."""
import argparse, json, os, sys
parser = argparse.ArgumentParser()
parser.add_argument("--env"); parser.add_argument("--lakehouse"); parser.add_argument("--conf-dir")
a = parser.parse_args()
from pyspark.sql import functions as F
import seglake
from seglake.core import tables
from seglake.core.config import load_config
from seglake.core.spark import get_spark
cfg = load_config(a.env, a.conf_dir, {"paths": {"lakehouse": a.lakehouse}})
spark = get_spark(cfg, "seglake-smoke")
def where(_):
    yield (sys.executable, os.getpid())
info = spark.sparkContext.parallelize(range(8), 8).mapPartitions(where).collect()
df = spark.range(1000).withColumn("sq", F.col("id") * F.col("id"))
tables.overwrite(df, cfg, "gold.smoke")
total = tables.read(spark, cfg, "gold.smoke").agg(F.sum("sq")).first()[0]
print("SMOKE " + json.dumps({"master": spark.sparkContext.master, "driver_seglake": seglake.__file__,
      "python": sorted({p for p, _ in info}), "mode": cfg.get("spark.mode"), "sum": total,
      "app_id": spark.sparkContext.applicationId}))
'''


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    """A master and two 1-core workers; stopped by pid afterwards (even on failure)."""
    folder = tmp_path_factory.mktemp("standalone")
    cluster = cluster_local.start(folder, workers=2, cores=1, memory="2g",
                                  port=cluster_local.free_port(), webui_port=cluster_local.free_port(),
                                  timeout=300)
    # the JVMs run in their own sessions: stop them also when the test run is terminated
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        cluster_local.stop(cluster)
        raise KeyboardInterrupt("terminated")

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield cluster
    finally:
        signal.signal(signal.SIGTERM, previous)
        pids = [p.pid for p in cluster.processes]
        cluster_local.stop(cluster)
        still = [pid for pid, p in zip(pids, cluster.processes) if cluster_local._is_ours(pid, cluster_local._class_of(p.role))]
        assert not still, f"cluster processes still running after stop: {still}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return cluster_local.build_wheel(tmp_path_factory.mktemp("dist"))


def test_wheel_holds_the_library_and_the_console_script(wheel):
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    source = Path(__file__).resolve().parents[1] / "libs"
    modules = sorted(str(p.relative_to(source)) for p in (source / "seglake").rglob("*.py"))
    assert "seglake/core/tables.py" in modules and "seglake/stages/journeys/graph.py" in modules
    assert [m for m in modules if m not in names] == []  # every sub-package ships
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "seglake = seglake.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_cluster_runs_seglake_from_the_wheel_on_both_workers(local_cluster, wheel, tmp_path):
    assert local_cluster.alive_workers() == 2
    script = tmp_path / "smoke.py"
    script.write_text(SMOKE_SCRIPT)
    lake = tmp_path / "lake"
    proc = cluster_local.submit(local_cluster.master_url, "smoke", lake, wheel=wheel, script=script,
                                log_path=tmp_path / "smoke.log", timeout=900)
    line = next(l for l in proc.stdout.splitlines() if l.startswith("SMOKE "))
    out = json.loads(line[len("SMOKE "):])
    assert out["master"] == local_cluster.master_url
    assert out["mode"] == "cluster"
    assert out["sum"] == sum(i * i for i in range(1000))
    # the driver imported seglake from the shipped wheel, executors ran this venv's python
    assert out["driver_seglake"].startswith(str(wheel))
    assert out["python"] == [sys.executable]
    assert (lake / "gold" / "smoke" / "_delta_log").is_dir()
    # both workers ran an executor of this application
    per_worker = []
    for p in local_cluster.processes:
        if p.role.startswith("worker"):
            with urllib.request.urlopen(f"http://127.0.0.1:{p.webui_port}/json/", timeout=10) as resp:
                state = json.loads(resp.read().decode())
            apps = {e.get("appid") for e in state.get("executors", []) + state.get("finishedexecutors", [])}
            per_worker.append(out["app_id"] in apps)
    assert per_worker == [True, True], "every worker should have run an executor of the smoke app"


def _stages() -> list[str]:
    stages = []
    for job in CLUSTER_STAGES:
        if not registry.available(job):
            break
        stages.append(job)
    return stages


def normalized(df: DataFrame) -> DataFrame:
    """Deterministic columns only: run ids and processing times dropped, maps as sorted JSON,
    doubles rounded to 6 decimals (a different partitioning sums in a different order)."""
    cols = []
    for field in df.schema.fields:
        name, dtype = field.name, field.dataType
        if name in RUN_COLUMNS or (isinstance(dtype, T.TimestampType) and name.endswith("_at")):
            continue
        col = F.col(f"`{name}`")
        if isinstance(dtype, T.MapType):
            col = F.to_json(F.array_sort(F.map_entries(col)))
        elif isinstance(dtype, (T.DoubleType, T.FloatType)):
            col = F.round(col, 6)
        elif isinstance(dtype, (T.ArrayType, T.StructType)):
            col = F.to_json(col)
        cols.append(col.alias(name))
    return df.select(*cols)


def _assert_equal_up_to_rounding(table: str, only_cluster: list, only_local: list, schema) -> None:
    """Rows that differ after :func:`normalized` may only differ in a double's 6th decimal: a sum
    or mean taken in another order can land on the other side of a rounding boundary
    (avg_scroll_depth 0.5528125 became 0.552812 on one side and 0.552813 on the other). Every
    other value must match exactly, row for row."""
    assert len(only_cluster) == len(only_local), \
        f"{table}: {len(only_cluster)} rows only in the cluster run, {len(only_local)} only in the local run"
    doubles = {f.name for f in schema.fields if isinstance(f.dataType, (T.DoubleType, T.FloatType))}
    key = lambda r: tuple((k, str(v)) for k, v in sorted(r.asDict().items()) if k not in doubles)  # noqa: E731
    theirs = {}
    for r in only_local:
        theirs.setdefault(key(r), []).append(r)
    for r in only_cluster:
        match = theirs.get(key(r))
        assert match, f"{table}: a row of the cluster run has no local counterpart: {r}"
        other = match.pop()
        for c in doubles:
            x, y = r[c], other[c]
            assert (x is None) == (y is None) and (x is None or abs(x - y) <= 1.5e-6), \
                f"{table}.{c}: {x} on the cluster, {y} locally"


def _delta_tables(lake: Path) -> list[str]:
    return sorted(f"{layer.name}.{t.name}" for layer in lake.iterdir()
                  if layer.name in ("bronze", "silver", "gold") and layer.is_dir()
                  for t in layer.iterdir() if (t / "_delta_log").is_dir())


def test_pipeline_on_the_cluster_equals_the_local_run(local_cluster, wheel, pipeline_through, spark, tmp_path):
    stages = _stages()
    if not stages:
        pytest.skip("job 'ingest' is not available yet: nothing to submit")
    local_cfg, gen_dir = pipeline_through(stages[-1])
    lake = tmp_path / "cluster_lake"
    env = {"SEGLAKE_LANDING": str(Path(gen_dir) / "landing")}
    # the chain through the last stage in one application (jobs/all.py --through), as a scheduler
    # submits it: one driver and its executors for every stage (the smoke test above submits a
    # script of its own; a rerun's no-op ingest is in tests/reliability/test_kill_ingest.py)
    cluster_local.submit(local_cluster.master_url, "all", lake, wheel=wheel, extra_env=env,
                         extra_args=["--through", stages[-1]], log_path=tmp_path / "all.log", timeout=1800)
    runs = spark.read.format("delta").load(str(lake / "ops" / "run_log"))
    succeeded = [r["job"] for r in runs.where(F.col("status") == "success").collect()]
    assert set(stages) <= set(succeeded) and len(succeeded) == len(set(succeeded)), succeeded

    produced = _delta_tables(lake)
    for job in stages:
        assert STAGE_TABLES[job] in produced, f"{job} on the cluster did not write {STAGE_TABLES[job]}"
    local_lake = Path(local_cfg.lakehouse)
    compared = {}
    for table in produced:
        layer, name = table.split(".")
        theirs = spark.read.format("delta").load(str(local_lake / layer / name))
        ours = spark.read.format("delta").load(str(lake / layer / name))
        assert sorted(ours.columns) == sorted(theirs.columns), f"{table}: columns differ"
        a, b = normalized(ours), normalized(theirs.select(*ours.columns))
        n_a, n_b = a.count(), b.count()
        assert n_a == n_b, f"{table}: {n_a} rows on the cluster, {n_b} locally"
        only_cluster, only_local = a.exceptAll(b), b.exceptAll(a)
        _assert_equal_up_to_rounding(table, only_cluster.collect(), only_local.collect(), a.schema)
        compared[table] = n_a
    assert compared[STAGE_TABLES[stages[-1]]] > 0
    print("cluster == local:", compared)
