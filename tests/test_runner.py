"""The stage runner: one ops.run_log row per job run, with status, as-of, rows in/out and errors."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from pyspark.sql import functions as F

from seglake import registry
from seglake.cli import EXIT_FAILED, main
from seglake.core import tables
from seglake.core.context import JobContext
from seglake.core.runner import JobFailed, run_stage


def test_journal_counts_rows_from_the_delta_log(spark, cfg):
    df = spark.range(10).withColumn("k", F.col("id") % 4)
    with tables.recording() as journal:
        tables.overwrite(df, cfg, "gold.t_a")                                  # 10 rows written
        tables.merge(spark, spark.range(8, 14).withColumn("k", F.lit(0)), cfg, "gold.t_a", keys=["id"])  # 10..13 new
        tables.read(spark, cfg, "gold.t_a").where("k = 0").collect()           # read at version 1
        tables.append(df.limit(3), cfg, "gold.t_b")
    assert [tables.rows_written(c) for c in journal.commits["gold.t_a"]] == [10, 4]
    assert [c["version"] for c in journal.commits["gold.t_a"]] == [0, 1]
    assert [tables.rows_written(c) for c in journal.commits["gold.t_b"]] == [3]
    assert journal.reads == {}  # a table the run wrote first is an output, not an input
    with tables.recording() as journal2:
        tables.read(spark, cfg, "gold.t_a").collect()
    assert journal2.reads == {"gold.t_a": 1}
    assert tables.row_count(spark, cfg, "gold.t_a", 1) == 14 and tables.row_count(spark, cfg, "gold.t_a", 0) == 10
    # outside a recording nothing is journaled
    tables.append(df, cfg, "gold.t_b")
    assert "gold.t_b" not in journal2.commits


def test_row_count_is_answered_from_the_log(spark, cfg):
    tables.overwrite(spark.range(1000).repartition(4), cfg, "gold.t_c")
    plan = spark.read.format("delta").load(cfg.table_path("gold.t_c")).groupBy().count() \
        ._jdf.queryExecution().executedPlan().toString()
    # Delta's metadata-only COUNT(*) turns the scan into a local relation: no data file is read
    assert "LocalTableScan" in plan and "FileScan" not in plan, plan


def test_a_failing_job_records_a_failed_row_and_the_cli_exits_1(spark, lakehouse, capsys):
    from conftest import make_cfg
    cfg = make_cfg(lakehouse)
    # a bronze table that breaks the raw contract: clean must refuse it, naming the columns
    tables.append(spark.createDataFrame([("x", "b1")], "event_id STRING, _batch_id STRING"), cfg,
                  "bronze.events_raw")
    code = main(["run", "clean", "--lakehouse", str(lakehouse), "--skip-docs"])
    err = capsys.readouterr().err
    assert code == EXIT_FAILED
    assert "job 'clean' failed" in err and "missing columns" in err and "seglake run clean" in err
    rows = tables.read(spark, cfg, "ops.run_log").collect()
    assert len(rows) == 1
    row = rows[0]
    assert (row["job"], row["status"]) == ("clean", "failed")
    assert "does not follow the raw contract" in row["error"] and row["error"] in row["metrics_json"]
    assert row["rows_in"] == {"bronze.events_raw": 1} and row["rows_out"] == {}
    assert row["finished_at"] >= row["started_at"]


def test_run_stage_records_noop_and_as_of(spark, cfg):
    ctx = JobContext(spark, cfg, run_id="r-noop")
    tables.overwrite(spark.createDataFrame([("e1",)], "event_key STRING")
                     .withColumn("event_date", F.lit("2026-10-30").cast("date")), cfg, "silver.events")

    def nothing_to_do(c):
        c.status = "noop"
        return {"note": "nothing new"}

    result = run_stage(ctx, "demo_noop", nothing_to_do, uses_as_of=True)
    assert (result.status, str(ctx.as_of)) == ("noop", "2026-10-31")
    row = tables.read(spark, cfg, "ops.run_log").where("job = 'demo_noop'").first()
    assert (row["status"], str(row["as_of_date"]), row["metrics"]["note"]) == ("noop", "2026-10-31", "nothing new")
    assert row["rows_in"] == {"silver.events": 1}

    def boom(c):
        raise RuntimeError("bad input in row 7")

    with pytest.raises(JobFailed, match="job 'demo_fail' failed: RuntimeError: bad input in row 7"):
        run_stage(JobContext(spark, cfg, run_id="r-fail"), "demo_fail", boom)
    failed = tables.read(spark, cfg, "ops.run_log").where("job = 'demo_fail'").first()
    assert (failed["status"], failed["error"]) == ("failed", "RuntimeError: bad input in row 7")
    # recording the same run again keeps one row
    run_stage(ctx, "demo_noop", nothing_to_do)
    assert tables.read(spark, cfg, "ops.run_log").where("job = 'demo_noop'").count() == 1


def test_run_log_of_an_older_schema_gains_the_new_columns(spark, cfg):
    old = spark.createDataFrame(
        [("r0", "clean", "success", None, None, 1.0, {"a": "1"}, "{}")],
        "run_id STRING, job STRING, status STRING, started_at TIMESTAMP, finished_at TIMESTAMP, "
        "duration_s DOUBLE, metrics MAP<STRING,STRING>, metrics_json STRING")
    tables.overwrite(old, cfg, "ops.run_log")
    run_stage(JobContext(spark, cfg, run_id="r1"), "demo", lambda c: {"n": 1})
    log = {r["run_id"]: r for r in tables.read(spark, cfg, "ops.run_log").collect()}
    assert set(log) == {"r0", "r1"} and log["r0"]["rows_out"] is None and log["r1"]["rows_out"] == {}


@pytest.mark.slow
def test_every_pipeline_job_leaves_one_run_log_row(spark, pipeline_through):
    cfg, gen_dir = pipeline_through(registry.PIPELINE[-1])
    counts = json.loads((gen_dir / "ground_truth" / "counts.json").read_text())
    run_id = pipeline_through.pipeline.ctx.run_id
    log = tables.read(spark, cfg, "ops.run_log").where(F.col("run_id") == run_id)
    rows = {r["job"]: r for r in log.collect()}
    assert sorted(rows) == sorted(registry.PIPELINE) and log.count() == len(registry.PIPELINE)
    assert {job: r["status"] for job, r in rows.items()} == {job: "success" for job in registry.PIPELINE}
    # independent numbers: the generator's planted counts and the tables themselves
    assert rows["ingest"]["rows_out"]["bronze.events_raw"] == counts["raw_records"]
    assert rows["clean"]["rows_in"]["bronze.events_raw"] == counts["raw_records"]
    assert rows["clean"]["rows_out"]["silver.events"] == counts["valid_events"]
    for job, table in (("identity", "silver.identity_map"), ("sessions", "silver.sessions")):
        assert rows[job]["rows_out"][table] == tables.read(spark, cfg, table).count(), job
    as_of = tables.read(spark, cfg, "silver.events").agg(F.max("event_date")).first()[0] + timedelta(days=1)
    for job in ("features", "segments", "cluster", "propensity", "journeys", "experiments"):
        assert rows[job]["as_of_date"] == as_of, job
    features = tables.read(spark, cfg, "gold.customer_features").where(F.col("as_of_date") == as_of).count()
    assert rows["features"]["rows_out"]["gold.customer_features"] == features
    assert rows["features"]["rows_in"]["silver.events"] == counts["valid_events"]
    for job, r in rows.items():
        assert r["error"] is None and r["duration_s"] > 0 and r["rows_out"], job
