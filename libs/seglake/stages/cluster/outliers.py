"""Cluster outliers: Spark has no DBSCAN, so noise is flagged by distance instead.

A customer whose Euclidean distance to its cluster's centre (in the standardized input space the
clusters were fitted in) is beyond the ``q``-quantile of the distances in that cluster is an
outlier: kept in gold.clusters with ``outlier = true`` and left out of the cluster profiles. The
per-cluster threshold is exact (rank ``ceil(q * n)`` of the cluster's distances, ties broken by
customer_id), so it is the same on any partitioning. Built-in functions only.
"""
from __future__ import annotations

from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from seglake.stages.cluster.common import FEATURES_COL, PREDICTION_COL


def centres(model) -> dict[int, list[float]]:
    """cluster -> centre of the last stage of a fitted pipeline (k-means, bisecting k-means: the
    centroids; Gaussian mixture: the component means)."""
    est = model.stages[-1]
    if hasattr(est, "clusterCenters"):
        return {i: [float(x) for x in c] for i, c in enumerate(est.clusterCenters())}
    return {i: [float(x) for x in g.mean] for i, g in enumerate(est.gaussians)}


def flag_outliers(predictions: DataFrame, centre_of: dict[int, list[float]], quantile: float | None) -> DataFrame:
    """``predictions`` (with the features vector and the prediction) plus ``centre_distance`` and
    ``outlier`` (false for every row when ``quantile`` is None or 1)."""
    spark = predictions.sparkSession
    table = F.broadcast(spark.createDataFrame([(int(c), v) for c, v in centre_of.items()],
                                              f"{PREDICTION_COL} int, _centre array<double>"))
    x = vector_to_array(F.col(FEATURES_COL))
    sq = F.aggregate(F.zip_with(x, F.col("_centre"), lambda a, b: (a - b) * (a - b)), F.lit(0.0), lambda s, v: s + v)
    out = (predictions.withColumn(PREDICTION_COL, F.col(PREDICTION_COL).cast("int"))
           .join(table, PREDICTION_COL).withColumn("centre_distance", F.sqrt(sq)).drop("_centre"))
    if quantile is None or quantile >= 1.0:
        return out.withColumn("outlier", F.lit(False))
    per = Window.partitionBy(PREDICTION_COL)
    rank = F.row_number().over(per.orderBy("centre_distance", "customer_id"))
    need = F.greatest(F.lit(1), F.ceil(F.lit(float(quantile)) * F.count(F.lit(1)).over(per)))
    threshold = F.min(F.when(F.col("_rank") >= F.col("_need"), F.col("centre_distance"))).over(per)
    return (out.withColumn("_rank", rank).withColumn("_need", need)
            .withColumn("outlier", F.col("centre_distance") > threshold).drop("_rank", "_need"))
