"""Segment health and overlap of one as-of date: pairwise Jaccard overlap between segments
(:func:`segment_overlap`) and one row per enabled segment with size, share, revenue share,
conversion rate, size change vs the previous as-of, entered / exited counts, the alert and
too-small flags and the segment it overlaps most (:func:`segment_health`).
"""
from __future__ import annotations

from datetime import date

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seglake.core.contracts import require_columns
from seglake.stages.segments.model import Segment


def segment_overlap(members: DataFrame, max_jaccard: float) -> DataFrame:
    """Pairwise Jaccard overlap between segments (self-join on customer_id; one row per pair).

    Returns:
        segment_a < segment_b, size_a, size_b, intersection, union_size, jaccard, high_overlap;
        only pairs sharing at least one customer.
    """
    m = members.select("customer_id", "segment")
    sizes = m.groupBy("segment").agg(F.count(F.lit(1)).alias("size"))
    pairs = (m.alias("a").join(m.alias("b"), "customer_id")
             .where(F.col("a.segment") < F.col("b.segment"))
             .groupBy(F.col("a.segment").alias("segment_a"), F.col("b.segment").alias("segment_b"))
             .agg(F.count(F.lit(1)).alias("intersection")))
    out = (pairs.join(sizes.select(F.col("segment").alias("segment_a"), F.col("size").alias("size_a")), "segment_a")
           .join(sizes.select(F.col("segment").alias("segment_b"), F.col("size").alias("size_b")), "segment_b")
           .withColumn("union_size", F.col("size_a") + F.col("size_b") - F.col("intersection"))
           .withColumn("jaccard", F.col("intersection") / F.col("union_size")))
    return out.select("segment_a", "segment_b", "size_a", "size_b", "intersection", "union_size", "jaccard",
                      (F.col("jaccard") > F.lit(float(max_jaccard))).alias("high_overlap"))


def segment_health(members: DataFrame, features: DataFrame, segments: list[Segment],
                   previous_sizes: DataFrame | None, changes: DataFrame, overlap: DataFrame, *,
                   as_of: date, alert_size_change: float, min_size: int,
                   revenue_column: str, conversion_column: str) -> DataFrame:
    """One row per enabled segment: size, share, revenue share, conversion, change, flags.

    Args:
        members: membership rows of ``as_of`` (customer_id, segment).
        features: features rows of ``as_of`` (customer_id, ``revenue_column``, ``conversion_column``).
        segments: definitions (a segment without members still gets a row, size 0).
        previous_sizes: segment, previous_size at the previous as-of (None on the first run).
        changes: segment_changes rows of this as-of.
        overlap: :func:`segment_overlap` rows.
        alert_size_change: relative size move that raises an alert (0.3 = 30 %).
        min_size: segments smaller than this are flagged ``too_small``.
        revenue_column: feature summed for the revenue share.
        conversion_column: feature whose value > 0 counts a member as converted.
    """
    require_columns(features, ("customer_id", revenue_column, conversion_column), "segment_health")
    spark = members.sparkSession
    defs = spark.createDataFrame(
        [(s.name, s.family, s.sequence is not None) for s in segments if s.enabled],
        "segment string, family string, is_sequence boolean")
    feats = features.select("customer_id", F.coalesce(F.col(revenue_column).cast("double"), F.lit(0.0)).alias("_rev"),
                            (F.coalesce(F.col(conversion_column), F.lit(0)) > 0).alias("_conv"))
    totals = feats.agg(F.count(F.lit(1)).alias("customers"), F.sum("_rev").alias("total_revenue"))
    stats = (members.select("customer_id", "segment").join(feats, "customer_id", "left")
             .groupBy("segment").agg(F.count(F.lit(1)).alias("size"),
                                     F.sum(F.coalesce("_rev", F.lit(0.0))).alias("revenue"),
                                     F.sum(F.when(F.col("_conv"), 1).otherwise(0)).alias("converters")))
    moves = changes.groupBy("segment").agg(
        F.sum(F.when(F.col("change") == "entered", 1).otherwise(0)).alias("entered"),
        F.sum(F.when(F.col("change") == "exited", 1).otherwise(0)).alias("exited"))
    pairs = overlap.select(F.col("segment_a").alias("segment"), F.col("segment_b").alias("other"), "jaccard") \
        .unionByName(overlap.select(F.col("segment_b").alias("segment"), F.col("segment_a").alias("other"), "jaccard"))
    top = pairs.groupBy("segment").agg(F.max(F.struct("jaccard", "other")).alias("t"))
    out = (defs.join(stats, "segment", "left").join(moves, "segment", "left").join(top, "segment", "left")
           .crossJoin(totals))
    if previous_sizes is not None:
        out = out.join(previous_sizes, "segment", "left") \
            .withColumn("previous_size", F.coalesce(F.col("previous_size"), F.lit(0)).cast("long"))
    else:
        out = out.withColumn("previous_size", F.lit(None).cast("long"))
    size = F.coalesce(F.col("size"), F.lit(0)).cast("long")
    change = F.when(F.col("previous_size") > 0, (size - F.col("previous_size")) / F.col("previous_size"))
    alert = (F.when(F.col("previous_size").isNull(), F.lit(False))
             .when(F.col("previous_size") == 0, size > 0)
             .otherwise(F.abs(change) > F.lit(float(alert_size_change))))
    return out.select(
        F.lit(as_of).cast("date").alias("as_of_date"), "segment", "family", "is_sequence",
        size.alias("size"),
        F.col("customers").cast("long").alias("customers"),
        F.when(F.col("customers") > 0, size / F.col("customers")).otherwise(F.lit(0.0)).alias("share"),
        F.coalesce(F.col("revenue"), F.lit(0.0)).alias("revenue"),
        F.when(F.col("total_revenue") > 0, F.coalesce(F.col("revenue"), F.lit(0.0)) / F.col("total_revenue"))
        .otherwise(F.lit(0.0)).alias("revenue_share"),
        F.when(size > 0, F.coalesce(F.col("converters"), F.lit(0)) / size).alias("conversion_rate"),
        "previous_size", change.alias("size_change"),
        F.coalesce(F.col("entered"), F.lit(0)).cast("long").alias("entered"),
        F.coalesce(F.col("exited"), F.lit(0)).cast("long").alias("exited"),
        alert.alias("alert"),
        F.when(alert & (F.col("previous_size") == 0), F.lit("appeared (was empty)"))
        .when(alert, F.format_string("size moved %+.0f%% (more than %.0f%%)", change * 100,
                                     F.lit(float(alert_size_change) * 100)))
        .alias("alert_reason"),
        (size < F.lit(int(min_size))).alias("too_small"),
        F.col("t.jaccard").alias("max_jaccard"), F.col("t.other").alias("max_overlap_with"),
    )
