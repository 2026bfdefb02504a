"""Acquisition cohorts and the retention matrix (cohort x period -> active share).

A customer's cohort is the week (Monday) or month of their first event before as_of;
period p is the p-th week/month after the cohort's start (period 0 = the cohort's own
week/month, active share 1 by construction). A customer is active in a period when they
have at least one event in it. Periods reaching past as_of are kept and flagged
``complete = false``.

Table gold.retention_matrix (replaceWhere on as_of_date): as_of_date, granularity, cohort,
period, cohort_size, active_customers, active_share, complete.
"""
from __future__ import annotations

from datetime import date

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

GRANULARITIES = ("week", "month")


def cohort_start(ts: Column, granularity: str) -> Column:
    """The first day (DATE) of the week (Monday) or month containing ``ts``."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"features.retention_granularity must be one of {GRANULARITIES}, got {granularity!r}")
    return F.to_date(F.date_trunc(granularity, ts))


def _period_index(start: Column, cohort: Column, granularity: str) -> Column:
    if granularity == "week":
        return (F.datediff(start, cohort) / 7).cast("int")
    return F.months_between(start, cohort).cast("int")


def retention_matrix(events: DataFrame, as_of: date, granularity: str = "week", periods: int = 13) -> DataFrame:
    """Retention of acquisition cohorts, from events before ``as_of``.

    Args:
        events: customer_id, event_ts (any events; only event_ts < as_of are used).
        as_of: the exclusive cut-off date.
        granularity: week | month.
        periods: keep periods 0..periods.

    Returns:
        as_of_date, granularity, cohort (DATE), period (INT), cohort_size, active_customers,
        active_share (DOUBLE), complete (the whole period lies before as_of).
    """
    for c in ("customer_id", "event_ts"):
        if c not in events.columns:
            raise ValueError(f"retention_matrix needs column {c}; got {', '.join(events.columns)}")
    if periods < 0:
        raise ValueError(f"features.retention_periods must be >= 0, got {periods}")
    cut = F.lit(as_of).cast("timestamp")
    ev = events.filter(F.col("customer_id").isNotNull() & (F.col("event_ts") < cut))
    active = ev.select("customer_id", cohort_start(F.col("event_ts"), granularity).alias("period_start")).distinct()
    firsts = active.groupBy("customer_id").agg(F.min("period_start").alias("cohort"))
    sizes = firsts.groupBy("cohort").agg(F.count(F.lit(1)).alias("cohort_size"))
    grid = (active.join(firsts, "customer_id")
            .withColumn("period", _period_index(F.col("period_start"), F.col("cohort"), granularity))
            .filter(F.col("period") <= periods)
            .groupBy("cohort", "period", "period_start").agg(F.count(F.lit(1)).alias("active_customers")))
    step = F.expr("INTERVAL 7 DAYS") if granularity == "week" else F.expr("INTERVAL 1 MONTH")
    return (grid.join(sizes, "cohort")
            .select(F.lit(as_of).alias("as_of_date"), F.lit(granularity).alias("granularity"), "cohort",
                    F.col("period").cast("int").alias("period"), F.col("cohort_size").cast("long").alias("cohort_size"),
                    F.col("active_customers").cast("long").alias("active_customers"),
                    (F.col("active_customers") / F.col("cohort_size")).alias("active_share"),
                    ((F.col("period_start") + step) <= F.lit(as_of)).alias("complete")))


def write_retention(spark, cfg, events: DataFrame, as_of: date) -> int:
    """Compute and write gold.retention_matrix for ``as_of`` (replaceWhere); returns its row count."""
    from seglake.core import tables
    fcfg = cfg["features"]
    rm = retention_matrix(events, as_of, fcfg["retention_granularity"], int(fcfg["retention_periods"]))
    before = tables.version(spark, cfg, "gold.retention_matrix")
    tables.overwrite(rm, cfg, "gold.retention_matrix", partition_by=["as_of_date"],
                     replace_where=f"as_of_date = '{as_of.isoformat()}'")
    commit = tables.last_commit(spark, cfg, "gold.retention_matrix")
    # the rows of that as_of are exactly the rows this commit wrote (its Delta metrics; no read
    # back); no new commit (Delta skips an empty one) means there were none
    return tables.rows_written(commit) if commit["version"] != before else 0


