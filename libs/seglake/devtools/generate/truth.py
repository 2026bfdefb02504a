"""Ground-truth tables of a generated data set (written under ``ground_truth/``).

:func:`persons_truth` (one row per person: archetype and the facts planted for it),
:func:`identifiers_truth` (every raw identifier and its person, null for shared devices)
and :func:`transitions_truth` (the Markov chains used), all derived from the per-event truth
of :func:`.render.sim_to_truth` or from the model's constants.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from seglake.core.contracts import IDENTIFIER_FIELDS
from seglake.devtools.generate.model import CHAINS, CURRENCIES, SHARED_DEVICE_PREFIX
from seglake.devtools.generate.render import _arr


def persons_truth(truth: DataFrame, end_date: date) -> DataFrame:
    """One row per person: archetype and the facts planted for it (aggregated from events)."""
    return (truth.groupBy("person_id").agg(
        F.first("archetype").alias("archetype"),
        F.first("has_uid").alias("has_user_id"),
        F.first("consent").alias("consent"),
        F.element_at(_arr(CURRENCIES), F.first("currency") + 1).alias("currency"),
        F.max(F.when(F.col("variant") >= 0, F.element_at(_arr(("A", "B")), F.col("variant") + 1))).alias("variant"),
        F.min("event_ts").alias("first_seen"),
        F.max("event_ts").alias("last_seen"),
        F.count(F.lit(1)).alias("events"),
        # distinct counts as the size of a set (cast to countDistinct's type): one aggregation
        # instead of the Expand (3 rows per event), two shuffles and three sorts of countDistinct
        F.size(F.collect_set("session_no")).cast("long").alias("sessions"),
        F.sum((F.col("event_type") == "purchase").cast("int")).alias("purchases"),
        F.sum(F.when(F.col("event_type") == "purchase", F.col("revenue_c"))).alias("_rev_c"),
        F.sum((F.col("event_type") == "add_to_cart").cast("int")).alias("carts"),
        F.size(F.collect_set(F.when(F.col("event_type") == "feature_use", F.col("feature"))))
        .cast("long").alias("distinct_features"),
        F.first("exp_flags").alias("_exp"), F.first("exp_extra_c").alias("_exp_c"),
        F.first("churn_ms").alias("_churn"), F.first("decline_ms").alias("_decline"),
        F.sum((F.col("results") == 0).cast("int")).alias("failed_searches"),
        F.sum((F.col("event_type") == "call_center").cast("int")).alias("support_contacts"),
    ).withColumn("revenue", F.coalesce(F.col("_rev_c") / F.lit(100), F.lit(0.0))).drop("_rev_c")
     # the planted experiment's potential outcomes (model.EXPERIMENT): exposed in the window,
     # orders in the window under A and under B, revenue of the coupon purchase made under B
     .withColumn("exp_exposed", F.col("_exp") >= 0)
     .withColumn("exp_converted_a", F.when(F.col("_exp") >= 0, (F.col("_exp") % 2) == 1))
     .withColumn("exp_converted_b", F.when(F.col("_exp") >= 0, F.col("_exp") >= 2))
     .withColumn("exp_extra_revenue", F.col("_exp_c") / F.lit(100.0)).drop("_exp", "_exp_c")
     # planted churn (model.CHURN_AT): the churn instant's day (after end_date: churns later) and
     # the onset of the decline; null for everyone who is not a churner
     .withColumn("churn_date", F.when(F.col("_churn") >= 0, F.to_date(F.timestamp_millis("_churn"))))
     .withColumn("decline_start", F.when(F.col("_decline") >= 0, F.to_date(F.timestamp_millis("_decline"))))
     .drop("_churn", "_decline")
     .withColumn("is_new_user", F.col("first_seen") >= F.lit(
         datetime.combine(end_date - timedelta(days=6), datetime.min.time()))))


def identifiers_truth(truth: DataFrame) -> DataFrame:
    """identifier_type, identifier (as written raw), person_id (null for shared identifiers)."""
    kinds = IDENTIFIER_FIELDS
    exploded = truth.select("person_id", F.explode(F.array(*[
        F.struct(F.lit(k).alias("identifier_type"), F.col(k).alias("identifier")) for k in kinds])).alias("i"))
    ids = exploded.select("i.identifier_type", "i.identifier", "person_id").where(F.col("identifier").isNotNull())
    shared = F.col("identifier").startswith(SHARED_DEVICE_PREFIX)
    return (ids.withColumn("person_id", F.when(~shared, F.col("person_id")))
            .dropDuplicates(["identifier_type", "identifier", "person_id"]))


def transitions_truth(spark: SparkSession) -> DataFrame:
    """The Markov chains used: archetype, from_state, to_state, probability (small, constant)."""
    rows = [(arch, frm, to, float(p)) for arch, chain in CHAINS.items()
            for frm, options in chain.items() for to, p in options]
    return spark.createDataFrame(rows, "archetype STRING, from_state STRING, to_state STRING, probability DOUBLE")
