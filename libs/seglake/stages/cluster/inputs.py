"""Clustering model inputs and pipeline: which features, standardized and null-free, into which estimator.

:func:`input_features` reads the raw input names from the config, :func:`scaled_columns` maps
them to the ``z_<f>`` columns of gold.customer_features, :func:`prepare_inputs` makes those
non-null doubles and :func:`build_pipeline` assembles them into one Spark ML ``Pipeline``
(VectorAssembler -> KMeans | BisectingKMeans | GaussianMixture).
"""
from __future__ import annotations

from typing import Sequence

from pyspark.ml import Pipeline
from pyspark.ml.clustering import BisectingKMeans, GaussianMixture, KMeans
from pyspark.ml.feature import SQLTransformer, VectorAssembler
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seglake.stages.cluster.common import ALGORITHMS, FEATURES_COL, PREDICTION_COL

_OFFSET_COL = "_cluster_offset"


def input_features(cfg) -> list[str]:
    """The raw feature names the clustering uses: ``cluster.inputs`` or ``features.model_inputs``."""
    names = list(cfg.get("cluster.inputs") or cfg.get("features.model_inputs") or [])
    if not names:
        raise ValueError("no clustering inputs: set features.model_inputs (or cluster.inputs) in the config")
    return names


def scaled_columns(names: Sequence[str]) -> list[str]:
    """``recency_days`` -> ``z_recency_days`` (the standardized columns of gold.customer_features)."""
    return [f"z_{n}" for n in names]


def prepare_inputs(features: DataFrame, input_cols: Sequence[str]) -> DataFrame:
    """Check the input columns exist and make them non-null doubles.

    A null (or NaN) standardized value is replaced by 0.0, i.e. the feature's mean (mean imputation).

    Args:
        features: rows of gold.customer_features (one as-of date).
        input_cols: the standardized columns to cluster on.

    Returns:
        ``features`` with ``input_cols`` as non-null DOUBLE.

    Raises:
        ValueError: when an input column is missing.
    """
    missing = [c for c in input_cols if c not in features.columns]
    if missing:
        raise ValueError(f"gold.customer_features lacks the clustering input column(s) {missing}")
    return features.withColumns(
        {c: F.nanvl(F.coalesce(F.col(c).cast("double"), F.lit(0.0)), F.lit(0.0)) for c in input_cols})


def build_pipeline(input_cols: Sequence[str], algorithm: str, k: int, seed: int,
                   max_iter: int = 30) -> Pipeline:
    """VectorAssembler(input_cols -> ``features``) -> the clustering estimator (-> ``cluster``).

    Raises:
        ValueError: for an unknown algorithm or k < 2.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"cluster.algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    cols = list(input_cols)
    stages: list = []
    if algorithm == "bisecting_kmeans":
        # Spark's bisecting k-means splits a cluster by perturbing its center in proportion
        # to the center's norm; on standardized inputs the root center is 0, so it never
        # splits (one cluster). A constant extra dimension moves every point by the same
        # vector: all distances, silhouette and Davies-Bouldin are unchanged.
        stages.append(SQLTransformer(statement=f"SELECT *, 1.0 AS {_OFFSET_COL} FROM __THIS__"))
        cols.append(_OFFSET_COL)
    assembler = VectorAssembler(inputCols=cols, outputCol=FEATURES_COL, handleInvalid="error")
    common = {"k": k, "seed": seed, "featuresCol": FEATURES_COL, "predictionCol": PREDICTION_COL,
              "maxIter": max_iter}
    if algorithm == "kmeans":
        estimator = KMeans(**common)
    elif algorithm == "bisecting_kmeans":
        estimator = BisectingKMeans(**common)
    else:
        estimator = GaussianMixture(probabilityCol="cluster_probability", **common)
    return Pipeline(stages=[*stages, assembler, estimator])
