"""Fixed cost of one job run under the stage runner: its lease (register, look, release) and its
``ops.run_log`` row, around a job that only reads a one-row table.

Every stage pays this once per run, whatever the data size; at the demo's and the test suite's
sizes it is a visible share of each stage. ``events`` is the number of job runs here (default
use: ``python bench/run.py --only job_overhead --events 30``); the first run, which creates the
bookkeeping tables, is reported apart from the steady state.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

from benchdata import config_for

#: not part of a plain ``bench/run.py`` (its ``--events`` would be millions of job runs)
ON_DEMAND = ("job_overhead",)


def bench_job_overhead(spark, workdir: Path, runs: int) -> dict:
    from seglake.core import runner, tables
    from seglake.core.context import JobContext

    if not 2 <= runs <= 1000:
        raise SystemExit(f"job_overhead: --events is the number of job runs here, 2 to 1000; got {runs}")
    lake = workdir / "lakehouse"
    if lake.exists():
        import shutil
        shutil.rmtree(lake)
    cfg = config_for(lake)
    spark.range(5).write.format("delta").save(cfg.table_path("silver.events"))
    sc = spark.sparkContext
    tracker = sc.statusTracker()

    def job(ctx):
        tables.read(ctx.spark, ctx.cfg, "silver.events")
        return {"read": 1}

    seconds, jobs = [], []
    for i in range(runs):
        group = f"seglake-bench-overhead-{i}"
        sc.setJobGroup(group, group)
        t0 = time.perf_counter()
        runner.run_stage(JobContext(spark, cfg), "bench_noop", job)
        seconds.append(time.perf_counter() - t0)
        jobs.append(len(tracker.getJobIdsForGroup(group)))
    sc.setJobGroup("", "")
    steady = seconds[1:]
    return {"events": runs, "seconds": sum(seconds), "first_run_s": round(seconds[0], 3),
            "steady_mean_s": round(statistics.mean(steady), 3), "steady_median_s": round(statistics.median(steady), 3),
            "steady_max_s": round(max(steady), 3), "spark_jobs_per_run": jobs[1:],
            "per_run_s": [round(s, 3) for s in seconds]}


def benchmarks() -> dict:
    return {"job_overhead": bench_job_overhead}
