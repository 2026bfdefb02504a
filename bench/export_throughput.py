"""Activation throughput on this machine: deliveries/s to a webhook and rows/s to PostgreSQL.

``python bench/export_throughput.py [--rows 100000 1000000]`` (``make bench-export``). Run it
alone: two cores shared with anything else measure the sharing.

Per size N, an ``ops.outbox`` of N due messages (segment entered changes of N/2 customers, two
segments each; not timed) is delivered by the export job's own chunked delivery
(:func:`seglake.stages.export.job.deliver`: freeze a chunk, hand it to the destination, MERGE the
outcomes into the outbox, next chunk) to

* a webhook: the project's HTTP receiver (``python -m seglake.devtools.receiver``) in its own
  process, verifying every HMAC signature and deduplicating by key; batches of ``--batch-size``;
* PostgreSQL 15 (``seglake.devtools.postgres``, a real server under a temporary folder): staged
  JDBC write and one upsert transaction per chunk.

Checked before a figure is written: every message is ``delivered`` in the outbox, the receiver
applied N distinct keys (its ``/stats``), and the CRM table holds N rows (``psql``). Results:
``bench/results/export_throughput-<N>.json`` with the load average before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SECRET = "bench-secret"


def _outbox(spark, cfg, n: int, deletion_vectors: bool) -> None:
    from pyspark.sql import functions as F

    from seglake.core import tables
    from seglake.core.contracts import OUTBOX
    from seglake.stages.export.outbox import OUTBOX_COLUMNS

    ids = spark.range(n)
    cust = F.format_string("c_%08d", (F.col("id") / 2).cast("long"))
    seg = F.when(F.col("id") % 2 == 0, F.lit("cart_abandoners")).otherwise(F.lit("inactive"))
    rows = ids.select(
        F.sha2(F.col("id").cast("string"), 256).alias("idempotency_key"), F.lit("x").alias("destination"),
        F.lit("x").alias("channel"), cust.alias("customer_id"), F.lit("segment").alias("kind"), seg.alias("name"),
        F.lit("entered").alias("change"), F.lit("2026-09-30").alias("version"), F.lit(5).alias("priority"),
        F.to_json(F.struct(cust.alias("customer_id"), seg.alias("segment"), F.lit("entered").alias("change"),
                           F.lit("2026-09-30").alias("as_of_date"))).alias("payload"),
        F.timestamp_micros(F.lit(1_790_000_000_000_000)).alias("scheduled_at"), F.lit("pending").alias("state"),
        F.lit(None).cast("string").alias("reason"), F.lit(0).alias("attempts"),
        F.lit(None).cast("timestamp").alias("last_attempt_at"), F.lit(None).cast("string").alias("response"),
        F.lit(None).cast("string").alias("error"), F.lit(None).cast("timestamp").alias("delivered_at"),
        F.current_timestamp().alias("created_at"), F.lit("bench").alias("created_run_id"), F.lit("bench").alias("run_id"))
    from seglake.stages.export.job import OUTBOX_PROPERTIES
    tables.overwrite(rows.select(*OUTBOX_COLUMNS), cfg, OUTBOX,
                     properties=OUTBOX_PROPERTIES if deletion_vectors else {"delta.enableDeletionVectors": "false"})


def _set_destination(spark, cfg, name: str) -> None:
    """Point every outbox row at ``name`` and make it due again (not timed)."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from seglake.core.contracts import OUTBOX
    DeltaTable.forPath(spark, cfg.table_path(OUTBOX)).update(
        set={"destination": F.lit(name), "channel": F.lit(name), "state": F.lit("pending"), "attempts": F.lit(0)})


def _timed_delivery(spark, cfg, name: str, dest, n: int) -> dict:
    from pyspark.sql import functions as F

    from seglake.core import tables
    from seglake.core.contracts import OUTBOX
    from seglake.stages.export.job import deliver

    from delta.tables import DeltaTable

    _set_destination(spark, cfg, name)
    before = tables.version(spark, cfg, OUTBOX)
    t0 = time.perf_counter()
    counts = deliver(spark, cfg, name, dest, datetime.now(timezone.utc), f"bench-{name}")
    seconds = time.perf_counter() - t0
    delivered = tables.read(spark, cfg, OUTBOX).where(F.col("state") == "delivered").count()
    if delivered != n or counts["delivered"] != n:
        raise SystemExit(f"{name}: {delivered} of {n} messages delivered ({counts})")
    # what the outcome MERGEs rewrote: the updated rows, and the unchanged rows copied along with them
    merges = (DeltaTable.forPath(spark, cfg.table_path(OUTBOX)).history()
              .where((F.col("version") > before) & (F.col("operation") == "MERGE")).select("operationMetrics").collect())
    copied = sum(int(m["operationMetrics"].get("numTargetRowsCopied", 0)) for m in merges)
    return {"messages": n, "seconds": round(seconds, 1), "messages_per_s": round(n / seconds),
            "chunks": -(-n // int(cfg.get("export.chunk_size"))), "outbox_rows_copied_by_merges": copied}


def _receiver(log: Path) -> tuple[subprocess.Popen, dict]:
    env = {**os.environ, "BENCH_SECRET": SECRET}
    proc = subprocess.Popen([sys.executable, "-m", "seglake.devtools.receiver", "--secret-env", "BENCH_SECRET"],
                            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, env=env)
    info = json.loads(proc.stdout.readline())
    return proc, info


def _stats(url: str) -> dict:
    with urllib.request.urlopen(url.rsplit("/", 1)[0] + "/stats", timeout=10) as r:
        return json.loads(r.read())


def one_size(spark, make_cfg, n: int, batch_size: int, work: Path, deletion_vectors: bool = True) -> dict:
    from seglake.devtools import postgres
    from seglake.stages.export.postgres import PostgresDestination
    from seglake.stages.export.webhook import WebhookDestination

    cfg = make_cfg(work / f"lake-{n}")
    _outbox(spark, cfg, n, deletion_vectors)
    out: dict = {"rows": n, "outbox_deletion_vectors": deletion_vectors}

    proc, info = _receiver(work / "receiver.log")
    try:
        os.environ["BENCH_SECRET"] = SECRET
        hook = WebhookDestination("webhook", {"type": "webhook", "url": info["url"], "secret_env": "BENCH_SECRET",
                                              "batch_size": batch_size, "timeout_seconds": 30}, cfg)
        out["webhook"] = _timed_delivery(spark, cfg, "webhook", hook, n)
        stats = _stats(info["url"])
        out["webhook"]["receiver"] = stats
        if stats.get("applied") != n:
            raise SystemExit(f"webhook: the receiver applied {stats.get('applied')} of {n} keys: {stats}")
        out["webhook"]["batch_size"] = batch_size
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    folder = Path(tempfile.mkdtemp(prefix="seglake-bench-pg-"))
    folder.chmod(0o755)
    server = postgres.start(folder)
    try:
        os.environ["BENCH_PG_PASSWORD"] = server.password
        crm = PostgresDestination("crm", {"type": "postgres", "jdbc_url": server.jdbc_url, "user": server.user,
                                          "password_env": "BENCH_PG_PASSWORD"}, cfg)
        out["postgres"] = _timed_delivery(spark, cfg, "crm", crm, n)
        rows = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(server.port), "-U", server.user, "-d",
                               server.database, "-tAc", "select count(*) from crm_segment_tags"],
                              env={**os.environ, "PGPASSWORD": server.password}, capture_output=True, text=True,
                              check=True).stdout.strip()
        out["postgres"]["crm_rows"] = int(rows)
        if int(rows) != n:
            raise SystemExit(f"postgres: crm_segment_tags holds {rows} rows, expected {n}")
    finally:
        postgres.stop(server)
        shutil.rmtree(folder, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--batch-size", type=int, default=500, help="webhook messages per request (default 500)")
    parser.add_argument("--no-deletion-vectors", action="store_true",
                        help="the outbox without deletion vectors (how it was first built: the 'before' figure)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import make_cfg  # the tests' local config: local[2], 2 shuffle partitions

    from seglake.core.spark import get_spark

    def cfg_for(lake):
        return make_cfg(lake, spark={"master": "local[*]", "shuffle_partitions": 8, "driver_memory": "6g"})

    work = Path(tempfile.mkdtemp(prefix="seglake-bench-export-"))
    spark = get_spark(cfg_for(work / "spark"), app_name="seglake-bench-export")
    try:
        for n in args.rows:
            load_start = os.getloadavg()
            result = one_size(spark, cfg_for, n, args.batch_size, work, not args.no_deletion_vectors)
            result.update({"load_average_at_start": [round(x, 2) for x in load_start],
                           "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                           "cores": os.cpu_count(), "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            suffix = "-no-dv" if args.no_deletion_vectors else ""
            path = BENCH_DIR / "results" / f"export_throughput-{n}{suffix}.json"
            path.write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps(result, indent=2))
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
