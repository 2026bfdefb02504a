"""Benchmark: the clv job on a planted BG/NBD + Gamma-Gamma population (1M customers and up).

Benchmark-module contract: ``benchmarks() -> {name: fn(spark, workdir, events) -> dict}``; for
``clv`` ``events`` is the number of CUSTOMERS, e.g. ``python bench/run.py --events 1000000
--only clv`` (run alone on an idle machine).

The population (seglake.devtools.generate.clv_population: CDNOW-like parameters, first
purchases over 90 days, one year observed; ~2.3 purchases per customer) is drawn once and
written to ``<workdir>/purchases.parquet`` (not timed). The timed call is the job after reading
(:func:`seglake.stages.clv.job.value_customers`): per-customer summaries and cells in Spark,
the bounded collect, both maximum-likelihood fits on the driver, the per-cell predictions, the
join back to every customer and the Delta write of gold.customer_value, with its MLflow run
(a local SQLite store under the workdir). The result holds the phase times the job reports,
the cell counts (what reached the driver), the planted parameters and the estimates with their
standard errors.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

ON_DEMAND = ("clv",)   # not in the default run: name it with --only clv


def _purchases(spark, workdir: Path, customers: int):
    from seglake.devtools.generate.clv_population import plant_clv_population

    path = workdir / "purchases.parquet"
    pop = plant_clv_population(customers, seed=17)
    if not path.exists():
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"customer_id": pop.customer_id, "event_date": pop.event_date,
                          "revenue_usd": pop.revenue})
        workdir.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, str(path))
    return pop, spark.read.parquet(str(path))


def clv(spark, workdir, events: int) -> dict:
    """Time the clv job (after reading) on ``events`` planted customers."""
    from mlflow import MlflowClient
    from pyspark.sql import functions as F

    from seglake.core.config import load_config
    from seglake.core.context import JobContext
    from seglake.stages.clv.job import ClvSettings, value_customers

    workdir = Path(workdir)
    pop, raw = _purchases(spark, workdir, events)
    purchases = raw.withColumn("event_type", F.lit("purchase"))
    cfg = load_config("local", overrides={"paths": {"lakehouse": str(workdir / "lakehouse")}})
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    t0 = time.perf_counter()
    summary = value_customers(JobContext(spark, cfg, as_of=pop.as_of), purchases, pop.as_of, ClvSettings(cfg))
    seconds = time.perf_counter() - t0
    run = MlflowClient().get_run(summary["mlflow_run"])
    names = ("r", "alpha", "a", "b", "p", "q", "v")
    truth = dict(zip(names, (*pop.bgnbd, *pop.gamma_gamma)))
    estimates = {n: {"planted": round(truth[n], 4), "estimate": round(float(run.data.params[n]), 4),
                     "se": round(run.data.metrics.get(f"se_{n}", float("nan")), 4),
                     "relative_error": round(float(run.data.params[n]) / truth[n] - 1, 4),
                     "z": round((float(run.data.params[n]) - truth[n]) / run.data.metrics[f"se_{n}"], 2)
                     if run.data.metrics.get(f"se_{n}") else None}
                 for n in names}
    return {"events": events, "customers": events, "purchases": len(pop.customer_id), "seconds": seconds,
            "phases": summary["seconds"], "cells": summary["cells"],
            "customers_valued": summary["customers_valued"], "repeat_customers": summary["repeat_customers"],
            "parameters": estimates}


def benchmarks() -> dict[str, Callable]:
    return {"clv": clv}
