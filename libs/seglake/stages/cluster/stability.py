"""Cluster stability: agreement of the new assignment with a previous one.

:func:`contingency` counts customers per (previous cluster, current cluster) and
:func:`agreement` turns that table into the adjusted Rand index and the pair Jaccard
(scikit-learn's definitions), both in Spark.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def contingency(previous: DataFrame, current: DataFrame, key: str = "customer_id",
                col: str = "cluster") -> DataFrame:
    """Counts per (previous cluster, current cluster) over the customers present in both."""
    return (previous.select(key, F.col(col).alias("old"))
            .join(current.select(key, F.col(col).alias("new")), key)
            .groupBy("old", "new").agg(F.count("*").cast("double").alias("n")))


def agreement(table: DataFrame) -> dict[str, float]:
    """Adjusted Rand index and pair Jaccard from a contingency table (old, new, n), in Spark.

    With C(x) = x(x-1)/2: index = sum C(n_ij), a = sum_i C(row_i), b = sum_j C(col_j),
    N = C(n); ARI = (index - a*b/N) / ((a+b)/2 - a*b/N) (1.0 when the denominator is 0, as
    scikit-learn); Jaccard = index / (a + b - index) over co-membership pairs.
    """
    def comb2(c):
        return c * (c - F.lit(1.0)) / F.lit(2.0)

    cells = table.agg(F.sum(comb2(F.col("n"))).alias("index"), F.sum("n").alias("total"))
    rows = table.groupBy("old").agg(F.sum("n").alias("m")).agg(F.sum(comb2(F.col("m"))).alias("a"))
    cols = table.groupBy("new").agg(F.sum("n").alias("m")).agg(F.sum(comb2(F.col("m"))).alias("b"))
    r = cells.crossJoin(rows).crossJoin(cols).first()  # one row
    total = float(r["total"] or 0.0)
    if total < 2:
        return {"ari": 1.0, "jaccard": 1.0, "customers": total}
    index, a, b = float(r["index"]), float(r["a"]), float(r["b"])
    pairs = total * (total - 1) / 2
    expected = a * b / pairs
    denom = (a + b) / 2 - expected
    ari = 1.0 if denom == 0 else (index - expected) / denom
    union = a + b - index
    jaccard = 1.0 if union == 0 else index / union
    return {"ari": float(ari), "jaccard": float(jaccard), "customers": total}
