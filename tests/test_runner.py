"""The stage runner: one ops.run_log row per job run, with status, as-of, rows in/out and errors."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from pyspark.sql import functions as F

from seglake import registry
from seglake.cli import EXIT_FAILED, main
from seglake.core import counts, tables
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
    assert counts.row_count(spark, cfg, "gold.t_a", 1) == 14 and counts.row_count(spark, cfg, "gold.t_a", 0) == 10
    # outside a recording nothing is journaled
    tables.append(df, cfg, "gold.t_b")
    assert "gold.t_b" not in journal2.commits


def test_row_count_is_answered_from_the_log(spark, cfg):
    tables.overwrite(spark.range(1000).repartition(4), cfg, "gold.t_c")
    plan = spark.read.format("delta").load(cfg.table_path("gold.t_c")).groupBy().count() \
        ._jdf.queryExecution().executedPlan().toString()
    # Delta's metadata-only COUNT(*) turns the scan into a local relation: no data file is read
    assert "LocalTableScan" in plan and "FileScan" not in plan, plan


def test_row_count_is_remembered_per_version_and_a_table_made_again_is_counted_again(spark, cfg):
    import shutil
    import time

    tables.overwrite(spark.range(7), cfg, "gold.t_m")
    assert counts.row_count(spark, cfg, "gold.t_m", 0) == 7
    assert [n for (what, path, v, _), n in counts._known.items() if path == cfg.table_path("gold.t_m")] == [7]
    tables.append(spark.range(5), cfg, "gold.t_m")
    assert (counts.row_count(spark, cfg, "gold.t_m", 0), counts.row_count(spark, cfg, "gold.t_m", 1)) == (7, 12)
    # the table deleted and written again at the same path: version 0 holds other rows now
    shutil.rmtree(cfg.table_path("gold.t_m"))
    time.sleep(0.01)
    tables.overwrite(spark.range(3), cfg, "gold.t_m")
    assert counts.row_count(spark, cfg, "gold.t_m", 0) == 3


def test_the_default_as_of_is_remembered_per_version_of_silver_events_and_follows_a_new_one(spark, cfg):
    from datetime import date

    from seglake.core.context import JobContext

    day = lambda d: spark.createDataFrame([(d,)], "event_date DATE")   # noqa: E731
    tables.overwrite(day(date(2026, 3, 4)), cfg, "silver.events")
    assert JobContext(spark, cfg).resolve_as_of() == date(2026, 3, 5)
    path = cfg.table_path("silver.events")
    assert [d for (what, p, v, _), d in counts._known.items() if p == path] == [date(2026, 3, 4)]
    assert JobContext(spark, cfg).resolve_as_of() == date(2026, 3, 5)     # the same version: remembered
    tables.append(day(date(2026, 3, 9)), cfg, "silver.events")
    assert JobContext(spark, cfg).resolve_as_of() == date(2026, 3, 10)    # a new version: computed again
    assert JobContext(spark, cfg, as_of=date(2026, 1, 1)).resolve_as_of() == date(2026, 1, 1)


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
    # (in a chain the as-of is resolved once, before the first as-of job: features itself reads enriched events)
    assert rows["identity"]["rows_in"]["silver.events"] == counts["valid_events"]
    assert rows["features"]["rows_in"]["silver.enriched_events"] == tables.read(spark, cfg, "silver.enriched_events").count()
    for job, r in rows.items():
        assert r["error"] is None and r["duration_s"] > 0 and r["rows_out"], job


def _ancestors(job: str) -> set[str]:
    out: set[str] = set()
    todo = list(registry.AFTER[job])
    while todo:
        dep = todo.pop()
        if dep not in out:
            out.add(dep)
            todo.extend(registry.AFTER[dep])
    return out


def test_after_names_earlier_pipeline_jobs_only():
    assert sorted(registry.AFTER) == sorted(registry.PIPELINE)
    order = {job: i for i, job in enumerate(registry.PIPELINE)}
    for job, deps in registry.AFTER.items():
        assert all(order[d] < order[job] for d in deps), f"{job} follows {deps}: only earlier jobs (no cycle)"
    for group in registry.ONE_AT_A_TIME:
        assert group <= set(registry.PIPELINE)


def _fake_chain(monkeypatch, fail: str | None = None):
    """runner.run_job replaced by a job that sleeps and logs (start/end, job); ``fail`` raises."""
    import threading
    import time

    from seglake.core import runner

    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    pause = {job: 0.02 + 0.03 * (i % 4) for i, job in enumerate(registry.PIPELINE)}

    def fake_run_job(ctx, job):
        with lock:
            events.append(("start", job))
        time.sleep(pause[job])
        if job == "features":
            ctx.as_of = ctx.as_of or __import__("datetime").date(2026, 10, 1)
        with lock:
            events.append(("end", job))
        if job == fail:
            raise runner.JobFailed(job, ValueError("planted"))
        return runner.StageResult(job, pause[job], {"as_of": str(ctx.as_of)})

    monkeypatch.setattr(runner, "run_job", fake_run_job)
    return events


def _check_order(events: list[tuple[str, str]], workers: int) -> int:
    """Every job starts after the jobs it reads from ended, at most ``workers`` and never two of a
    ONE_AT_A_TIME group at once; returns the most jobs seen running at once."""
    running: set[str] = set()
    ended: set[str] = set()
    most = 0
    for kind, job in events:
        if kind == "end":
            running.remove(job)
            ended.add(job)
            continue
        missing = set(registry.AFTER[job]) - ended
        assert not missing, f"{job} started before {missing} ended"
        for group in registry.ONE_AT_A_TIME:
            assert not (job in group and running & group), f"{job} started beside {running & group}"
        running.add(job)
        most = max(most, len(running))
        assert most <= workers
    return most


def test_a_chain_runs_jobs_side_by_side_once_what_they_read_is_done(spark, cfg, monkeypatch):
    from seglake.core import runner

    events = _fake_chain(monkeypatch)
    lines: list[str] = []
    ctx = JobContext(spark, cfg)
    results = runner.run_chain(ctx, echo=lines.append, workers=2)
    assert [r.job for r in results] == list(registry.PIPELINE)
    assert _check_order(events, 2) == 2                    # some jobs did run side by side
    assert {e[1] for e in events if e[0] == "end"} == set(registry.PIPELINE)
    assert any("(beside " in line for line in lines)
    assert sum("done in" in line for line in lines) == len(registry.PIPELINE)
    # the as-of features resolved reaches the jobs started after it, and the chain's context
    assert ctx.as_of.isoformat() == "2026-10-01"
    for job in ("segments", "journeys", "experiments"):
        assert results[registry.PIPELINE.index(job)].summary["as_of"] == "2026-10-01", job
    # one by one: exactly the order given
    events.clear()
    runner.run_chain(JobContext(spark, cfg), echo=lines.append, workers=1)
    assert events == [(k, j) for j in registry.PIPELINE for k in ("start", "end")]


def test_a_failed_job_stops_the_chain_after_the_running_jobs_end(spark, cfg, monkeypatch):
    from seglake.core import runner

    events = _fake_chain(monkeypatch, fail="features")
    lines: list[str] = []
    with pytest.raises(runner.JobFailed, match="features"):
        runner.run_chain(JobContext(spark, cfg), echo=lines.append, workers=2)
    _check_order(events, 2)
    failed_at = next(i for i, line in enumerate(lines) if "features" in line and "failed (JobFailed)" in line)
    assert not any("running ..." in line for line in lines[failed_at:]), "no job starts after the failure"
    started = [j for k, j in events if k == "start"]
    assert sorted(started) == sorted(j for k, j in events if k == "end")   # the running ones ended
    assert not {"segments", "cluster", "journeys", "experiments"} & set(started)


def test_a_job_not_in_after_runs_alone_in_its_place():
    from seglake.core.runner import ready

    chain = ["ingest", "export", "clean"]
    assert not ready("export", chain, set(), [])
    assert ready("export", chain, {"ingest"}, [])
    assert not ready("export", chain, {"ingest"}, ["clean"])
    assert not ready("clean", chain, {"ingest"}, ["export"])      # may read what export wrote
    assert ready("clean", chain, {"ingest", "export"}, [])
    assert ready("clv", list(registry.PIPELINE), {"ingest", "clean", "identity", "consent", "sessions"}, ["features"])
    assert not ready("clv", list(registry.PIPELINE), {"ingest", "clean", "identity", "consent", "sessions"},
                     ["propensity"])                               # one MLflow job at a time


def test_parallel_stages_must_be_a_whole_number(cfg):
    from seglake.core.config import ConfigError
    from seglake.core.runner import parallel_stages

    assert parallel_stages(cfg) == 2
    for bad in (0, 1.5, "2", True):
        with pytest.raises(ConfigError, match="runner.parallel_stages"):
            parallel_stages(cfg.with_overrides({"runner": {"parallel_stages": bad}}))


@pytest.mark.slow
def test_a_job_follows_every_pipeline_job_whose_tables_it_reads(spark, pipeline_through):
    """registry.AFTER against what each job of a real chain read and wrote (ops.run_log)."""
    cfg, _ = pipeline_through(registry.PIPELINE[-1])
    run_id = pipeline_through.pipeline.ctx.run_id
    rows = {r["job"]: r for r in tables.read(spark, cfg, "ops.run_log").where(F.col("run_id") == run_id).collect()}
    writer = {t: job for job, r in rows.items() for t in (r["rows_out"] or {})}
    checked = 0
    for job, r in rows.items():
        for table in r["rows_in"] or {}:
            if writer.get(table, job) != job:
                assert writer[table] in _ancestors(job), (
                    f"{job} reads {table}, written by {writer[table]}, but registry.AFTER does not order them")
                checked += 1
    assert checked >= 20
