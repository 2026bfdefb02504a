"""The Spark side of an experiment: its population, variants and per-customer outcomes.

Transformations ``DataFrame -> DataFrame`` (no I/O) plus :func:`members_at`, which reads the
membership history. The driver only ever receives :func:`sufficient_statistics`' rows: one per
(segment, variant), whatever the number of customers.
"""
from __future__ import annotations

import logging
from datetime import date, timedelta

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from seglake.stages.experiments.settings import BUCKETS, Experiment, metric_kind, retention_days

log = logging.getLogger(__name__)

ALL = "(all)"                      # the breakdown row over the whole population
ASSIGNMENT_COLUMNS = ("experiment", "customer_id", "variant", "bucket", "segments", "assignment", "assigned_on",
                      "run_id")


# --------------------------------------------------------------------------- assignment
def bucket(salt: str, customer_id: Column) -> Column:
    """The hash bucket in [0, BUCKETS) of a customer: the first 15 hex digits of
    sha256("<salt>:<customer_id>") as an integer, modulo BUCKETS (any language can recompute it)."""
    digest = F.sha2(F.concat(F.lit(salt + ":"), customer_id), 256)
    return F.pmod(F.conv(F.substring(digest, 1, 15), 16, 10).cast("long"), F.lit(BUCKETS)).cast("int")


def variant_of(exp: Experiment, b: Column) -> Column:
    """The variant whose slice of the buckets holds ``b`` (weights cut in the file's order)."""
    out = None
    for name, lo, hi in exp.bucket_bounds():
        cond = (b >= F.lit(lo)) & (b < F.lit(hi))
        out = F.when(cond, F.lit(name)) if out is None else out.when(cond, F.lit(name))
    return out


def hash_assign(exp: Experiment, members: DataFrame) -> DataFrame:
    """customer_id, segments -> the assignment rows of ``exp`` (hash bucketing)."""
    b = bucket(exp.salt, F.col("customer_id"))
    return (members.select("customer_id", "segments").withColumn("bucket", b)
            .withColumn("variant", variant_of(exp, F.col("bucket"))))


def logged_variants(exp: Experiment, events: DataFrame, end: date) -> DataFrame:
    """customer_id, logged (sorted distinct variants the events of [start, end) are tagged with)."""
    props = F.col("properties")
    return (events.where((F.col("event_date") >= F.lit(exp.start)) & (F.col("event_date") < F.lit(end))
                         & (props.getItem("experiment") == F.lit(exp.logged_as))
                         & props.getItem("variant").isNotNull())
            .groupBy("customer_id").agg(F.array_sort(F.collect_set(props.getItem("variant"))).alias("logged")))


def logged_assign(exp: Experiment, logged: DataFrame, members: DataFrame | None) -> DataFrame:
    """The exposed customers tagged with exactly one configured variant (of the target segments
    when ``members`` is given): customer_id, segments, bucket (null), variant."""
    one = logged.where((F.size("logged") == 1) & F.col("logged")[0].isin(*exp.weights))
    one = one.select("customer_id", F.col("logged")[0].alias("variant"))
    if members is not None:
        one = one.join(members.select("customer_id", "segments"), "customer_id")
    else:
        one = one.withColumn("segments", F.array().cast("array<string>"))
    return one.select("customer_id", "segments", F.lit(None).cast("int").alias("bucket"), "variant")


def assignment_rows(exp: Experiment, assigned: DataFrame, run_id: str) -> DataFrame:
    return assigned.select(
        F.lit(exp.name).alias("experiment"), "customer_id", "variant", F.col("bucket").cast("int").alias("bucket"),
        F.col("segments").cast("array<string>").alias("segments"), F.lit(exp.assignment).alias("assignment"),
        F.lit(exp.start).cast("date").alias("assigned_on"), F.lit(run_id).alias("run_id"))


def agreement(assigned: DataFrame, logged: DataFrame) -> dict:
    """How the variants tagged in the events agree with the assignment (one small aggregate):
    tagged (assigned customers with tags), disagree (tagged with another variant only),
    conflicting (tagged with several variants), outside (tagged customers not assigned)."""
    j = assigned.select("customer_id", "variant").join(logged, "customer_id", "full_outer")
    row = j.agg(
        F.sum((F.col("variant").isNotNull() & F.col("logged").isNotNull()).cast("long")).alias("tagged"),
        F.sum((F.col("variant").isNotNull() & (F.size("logged") == 1)
               & (F.col("logged")[0] != F.col("variant"))).cast("long")).alias("disagree"),
        F.sum((F.size("logged") > 1).cast("long")).alias("conflicting"),
        F.sum((F.col("variant").isNull() & F.col("logged").isNotNull()).cast("long")).alias("outside"),
    ).first()
    return {k: int(row[k] or 0) for k in ("tagged", "disagree", "conflicting", "outside")}


# --------------------------------------------------------------------------- outcomes
def _between(lo: date, hi: date) -> Column:
    return (F.col("event_date") >= F.lit(lo)) & (F.col("event_date") < F.lit(hi))


def customer_outcomes(exp: Experiment, events: DataFrame, assigned: DataFrame, end: date,
                      order_types: tuple[str, ...]) -> DataFrame:
    """One row per assigned customer: variant, segments and, per metric m, ``y_<m>`` (null where the
    metric does not apply: average order value of a customer without orders) and ``x_<m>``, its
    pre-period covariate (null without one).

    ``events``: the customers' events with event_date, event_type, revenue_usd, from
    ``start - pre_period_days`` to ``end`` (exclusive); ``order_types``: the event types that are
    orders (``features.purchase_event_types``, as the features count purchases)."""
    start, pre = exp.start, exp.pre_period_days
    is_order = F.col("event_type").isin(*order_types)
    in_win, in_pre = _between(start, end), _between(start - timedelta(days=pre), start)
    aggs = [
        F.sum(F.when(in_win & is_order, 1).otherwise(0)).alias("orders_w"),
        F.sum(F.when(in_win & is_order, F.coalesce(F.col("revenue_usd"), F.lit(0.0))).otherwise(0.0)).alias("revenue_w"),
        F.sum(F.when(in_pre & is_order, 1).otherwise(0)).alias("orders_p"),
        F.sum(F.when(in_pre & is_order, F.coalesce(F.col("revenue_usd"), F.lit(0.0))).otherwise(0.0)).alias("revenue_p"),
    ]
    retention = sorted({n for m, _ in exp.metrics() if (n := retention_days(m)) is not None})
    for n in retention:
        aggs.append(F.max(F.when(_between(start + timedelta(days=n), end), 1).otherwise(0)).alias(f"active_w{n}"))
        aggs.append(F.max(F.when(_between(start - timedelta(days=pre) + timedelta(days=n), start), 1)
                          .otherwise(0)).alias(f"active_p{n}"))
    ids = assigned.select("customer_id").distinct()
    per = events.join(ids, "customer_id", "left_semi").groupBy("customer_id").agg(*aggs)
    base = assigned.select("customer_id", "variant", "segments").join(per, "customer_id", "left")
    zero = {c: 0 for c in per.columns if c != "customer_id"}
    base = base.fillna(zero)
    cols = []
    has_pre = pre > 0
    for metric, _role in exp.metrics():
        kind = metric_kind(metric)
        if metric == "conversion_rate":
            y, x = (F.col("orders_w") > 0).cast("double"), (F.col("orders_p") > 0).cast("double")
        elif metric == "revenue_per_customer":
            y, x = F.col("revenue_w").cast("double"), F.col("revenue_p").cast("double")
        elif metric == "orders_per_customer":
            y, x = F.col("orders_w").cast("double"), F.col("orders_p").cast("double")
        elif metric == "average_order_value":  # per converting customer; no covariate
            y, x = F.when(F.col("orders_w") > 0, F.col("revenue_w") / F.col("orders_w")), None
        else:
            n = retention_days(metric)
            assert kind == "proportion" and n is not None
            y = F.col(f"active_w{n}").cast("double")
            x = F.col(f"active_p{n}").cast("double") if pre > n else None
        cols.append(y.alias(f"y_{metric}"))
        cols.append((x if (x is not None and has_pre) else F.lit(None).cast("double")).alias(f"x_{metric}"))
    return base.select("customer_id", "variant", "segments", *cols)


def sufficient_statistics(exp: Experiment, outcomes: DataFrame) -> DataFrame:
    """One row per (segment, variant): n (assigned), and per metric the moments n, sum y, sum y^2,
    sum x, sum x^2, sum xy over the customers where y is defined (x = 0 when it has none)."""
    breakdown = (F.array_union(F.array(F.lit(ALL)), F.col("segments")) if len(exp.segments) > 1
                 else F.array(F.lit(ALL)))
    df = outcomes.withColumn("segment", F.explode(breakdown))
    aggs = [F.count(F.lit(1)).alias("assigned")]
    for metric, _ in exp.metrics():
        y, x = F.col(f"y_{metric}"), F.coalesce(F.col(f"x_{metric}"), F.lit(0.0))
        xd = F.when(y.isNotNull(), x)
        aggs += [F.count(y).alias(f"{metric}__n"), F.sum(y).alias(f"{metric}__sy"), F.sum(y * y).alias(f"{metric}__syy"),
                 F.sum(xd).alias(f"{metric}__sx"), F.sum(xd * xd).alias(f"{metric}__sxx"),
                 F.sum(xd * y).alias(f"{metric}__sxy")]
    return df.groupBy("segment", "variant").agg(*aggs)
