"""Exact quantiles, the same on any partitioning (the counted method of clean's medians).

``percentile_approx`` merges per-partition sketches, so its answer can change with how the rows
are partitioned (another cluster layout, a rerun after a repartition). Here a quantile is found
from value counts instead: one aggregation to (column, value, count) rows, then a running sum per
column in value order. The q-quantile is the smallest value whose cumulative share reaches q
(``percentile_disc``; numpy's ``method="inverted_cdf"``). Memory is bounded by the distinct
values of the columns, not by the rows; the result is one number per request.
"""
from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F


def exact_quantiles(df: DataFrame, requests: dict[str, tuple[str, float]]) -> dict[str, float | None]:
    """``{name: (column, q)}`` -> ``{name: the q-quantile of the column's non-null values}``
    (None when the column has no value). One job; the collected rows are one per request."""
    if not requests:
        return {}
    for name, (_, q) in requests.items():
        if not 0.0 <= float(q) <= 1.0:
            raise ValueError(f"quantile {name}: q must be within [0, 1], got {q}")
    columns = sorted({c for c, _ in requests.values()})
    melted = df.select(F.explode(F.array(*[
        F.struct(F.lit(c).alias("_c"), F.col(c).cast("double").alias("_v")) for c in columns])).alias("_p"))
    counts = (melted.select("_p._c", "_p._v").where(F.col("_v").isNotNull() & ~F.isnan("_v"))
              .groupBy("_c", "_v").agg(F.count(F.lit(1)).alias("_n")))
    per_column = Window.partitionBy("_c")
    running = F.sum("_n").over(per_column.orderBy("_v").rowsBetween(Window.unboundedPreceding, Window.currentRow))
    cum = counts.withColumn("_cum", running).withColumn("_total", F.sum("_n").over(per_column))
    wanted = F.broadcast(df.sparkSession.createDataFrame(
        [(name, c, float(q)) for name, (c, q) in requests.items()], "_name string, _c string, _q double"))
    # the smallest value with cum >= q * total (q = 0: the minimum); exact in integers: cum >= ceil(q * total)
    need = F.greatest(F.lit(1), F.ceil(F.col("_q") * F.col("_total")))
    rows = (cum.join(wanted, "_c").where(F.col("_cum") >= need)
            .groupBy("_name").agg(F.min("_v").alias("_value")).collect())   # one row per request: small
    found = {r["_name"]: float(r["_value"]) for r in rows}
    return {name: found.get(name) for name in requests}
