"""Duration imputation for clean: exact lower medians per (event_type, device_type), per
event_type and global, and the fill with its fallback order. Re-exported by
:mod:`seglake.stages.clean`."""
from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F


def duration_medians(events: DataFrame, decimals: int = 3) -> DataFrame:
    """Median ``duration_s`` per (event_type, device_type), per event_type and global.

    The lower median (``percentile_disc(0.5)``) of durations rounded to ``decimals``, found
    from value counts: one aggregation (grouping sets) to (level, group, value, count) rows,
    then a running sum per group. Unlike ``percentile_approx``, whose sketch merges depend on
    how rows are partitioned, the result is the same on any cluster layout, so a rerun or a
    cluster run imputes the same values. Memory is bounded by the distinct rounded values,
    not by events.
    ``level`` is ``type_device`` | ``type`` | ``global``. Small output (types x devices rows).
    """
    levels = (events.where(F.col("duration_s").isNotNull())
              .withColumn("_v", F.round(F.col("duration_s"), int(decimals)))
              .groupingSets([["event_type", "device_type", "_v"], ["event_type", "_v"], ["_v"]],
                            "event_type", "device_type", "_v")
              .agg(F.count(F.lit(1)).alias("_n"),
                   F.when(F.grouping("event_type") == 1, "global").when(F.grouping("device_type") == 1, "type")
                   .otherwise("type_device").alias("level")))
    group = Window.partitionBy("level", "event_type", "device_type")
    running = F.sum("_n").over(group.orderBy("_v").rowsBetween(Window.unboundedPreceding, Window.currentRow))
    return (levels.withColumn("_cum", running).withColumn("_total", F.sum("_n").over(group))
            .where(F.col("_cum") * 2 >= F.col("_total"))
            .groupBy("level", "event_type", "device_type").agg(F.min("_v").alias("median"))
            .select("event_type", "device_type", "median", "level"))


def impute_duration(events: DataFrame, medians: DataFrame) -> DataFrame:
    """Fill missing ``duration_s`` from :func:`duration_medians`, set ``duration_imputed``.

    Fallback order: median of (event_type, device_type), of event_type, global. A row that
    had a duration keeps it (``duration_imputed`` false).
    """
    td = medians.where(F.col("level") == "type_device").select(
        "event_type", "device_type", F.col("median").alias("_m_td"))
    t = medians.where(F.col("level") == "type").select("event_type", F.col("median").alias("_m_t"))
    glob = medians.where(F.col("level") == "global").select(F.col("median").alias("_m_g"))
    out = (events.join(F.broadcast(td), ["event_type", "device_type"], "left")
           .join(F.broadcast(t), ["event_type"], "left")
           .crossJoin(F.broadcast(glob.unionByName(
               glob.sparkSession.createDataFrame([], "_m_g DOUBLE")).agg(F.max("_m_g").alias("_m_g")))))
    filled = F.coalesce(F.col("duration_s"), F.col("_m_td"), F.col("_m_t"), F.col("_m_g"))
    return (out.withColumn("duration_imputed", F.col("duration_s").isNull() & filled.isNotNull())
            .withColumn("duration_s", filled).drop("_m_td", "_m_t", "_m_g"))
