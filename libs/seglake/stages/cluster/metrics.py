"""Clustering quality metrics and the choice of k.

Per-cluster scatter (:func:`cluster_scatter`), Davies-Bouldin (scikit-learn's definition,
computed in Spark), silhouette (squared euclidean), the evaluation of one fitted pipeline
(:func:`evaluate_k`), the sweep over k (:func:`sweep`, :class:`KResult`) and the rule that
picks k from the sweep (:func:`elbow_k`, :func:`choose_k`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

from pyspark.ml import PipelineModel
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.functions import vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seglake.stages.cluster.common import FEATURES_COL, PREDICTION_COL
from seglake.stages.cluster.inputs import build_pipeline

log = logging.getLogger(__name__)


def cluster_scatter(predictions: DataFrame, features_col: str = FEATURES_COL,
                    prediction_col: str = PREDICTION_COL) -> DataFrame:
    """Per cluster: size, centroid (mean of its points), mean euclidean distance and SSE to it.

    Two passes in Spark: the centroids (k rows), then a broadcast join and one aggregation
    of the distances of every point to its own centroid.

    Returns:
        DataFrame ``cluster, n, centroid ARRAY<DOUBLE>, mean_distance, sse``.
    """
    centroids = (predictions.groupBy(prediction_col)
                 .agg(Summarizer.mean(F.col(features_col)).alias("_c"), F.count("*").alias("n"))
                 .select(F.col(prediction_col).alias("_k"), vector_to_array("_c").alias("centroid"), "n"))
    x = vector_to_array(F.col(features_col))
    sq = F.aggregate(F.zip_with(x, F.col("centroid"), lambda a, b: (a - b) * (a - b)),
                     F.lit(0.0), lambda acc, v: acc + v)
    distances = (predictions.select(features_col, prediction_col)
                 .join(F.broadcast(centroids), F.col(prediction_col) == F.col("_k"))
                 .select(F.col(prediction_col), sq.alias("sq")))
    scatter = distances.groupBy(prediction_col).agg(F.avg(F.sqrt("sq")).alias("mean_distance"),
                                                    F.sum("sq").alias("sse"))
    return (centroids.join(scatter, F.col("_k") == F.col(prediction_col))
            .select(F.col("_k").alias("cluster"), "n", "centroid", "mean_distance", "sse"))


def davies_bouldin_from_scatter(rows: Sequence[dict]) -> float:
    """Davies-Bouldin index from per-cluster rows (centroid, mean_distance), scikit-learn's definition.

    DB = mean over clusters i of max over j != i of (S_i + S_j) / ||c_i - c_j|| (euclidean).
    Like scikit-learn, 0.0 when every scatter or every centroid distance is zero.
    """
    k = len(rows)
    if k < 2:
        return 0.0
    cents = [list(r["centroid"]) for r in rows]
    scat = [float(r["mean_distance"]) for r in rows]
    dist = [[math.sqrt(sum((a - b) ** 2 for a, b in zip(cents[i], cents[j]))) for j in range(k)]
            for i in range(k)]
    if all(s == 0 for s in scat) or all(dist[i][j] == 0 for i in range(k) for j in range(k) if i != j):
        return 0.0
    worst = []
    for i in range(k):
        ratios = [(scat[i] + scat[j]) / dist[i][j] if dist[i][j] > 0 else math.inf
                  for j in range(k) if j != i]
        worst.append(max(ratios))
    finite = [w for w in worst if math.isfinite(w)]
    return sum(finite) / len(finite) if finite else math.inf


def davies_bouldin(predictions: DataFrame, features_col: str = FEATURES_COL,
                   prediction_col: str = PREDICTION_COL) -> float:
    """Davies-Bouldin index of an assignment, scatter computed in Spark (k x k centroid step on the driver)."""
    # k rows of (centroid, scatter): small, bounded by k.
    rows = [r.asDict() for r in cluster_scatter(predictions, features_col, prediction_col).collect()]
    return davies_bouldin_from_scatter(rows)


def silhouette(predictions: DataFrame, features_col: str = FEATURES_COL,
               prediction_col: str = PREDICTION_COL) -> float:
    """Silhouette with squared euclidean distance (= sklearn ``silhouette_score(metric='sqeuclidean')``)."""
    evaluator = ClusteringEvaluator(featuresCol=features_col, predictionCol=prediction_col,
                                    metricName="silhouette", distanceMeasure="squaredEuclidean")
    return float(evaluator.evaluate(predictions))


@dataclass
class KResult:
    """One k of the sweep: its fitted pipeline and metrics."""

    k: int
    model: PipelineModel
    metrics: dict[str, float] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)


def evaluate_k(model: PipelineModel, data: DataFrame) -> tuple[dict[str, float], dict[int, int]]:
    """WSSSE, silhouette, Davies-Bouldin and cluster sizes of one fitted pipeline on ``data``."""
    predictions = model.transform(data).select(FEATURES_COL, PREDICTION_COL).cache()
    try:
        # k rows: small.
        rows = [r.asDict() for r in cluster_scatter(predictions).collect()]
        estimator = model.stages[-1]
        sse = float(sum(r["sse"] for r in rows))
        summary = estimator.summary if getattr(estimator, "hasSummary", False) else None
        cost = getattr(summary, "trainingCost", None) if summary is not None else None
        metrics = {
            "wssse": float(cost) if cost is not None else sse,
            "within_cluster_sse": sse,
            "silhouette": silhouette(predictions) if len(rows) > 1 else -1.0,
            "davies_bouldin": davies_bouldin_from_scatter(rows),
            "clusters_nonempty": float(len(rows)),
        }
        if summary is not None and hasattr(summary, "logLikelihood"):
            metrics["log_likelihood"] = float(summary.logLikelihood)
        return metrics, {int(r["cluster"]): int(r["n"]) for r in rows}
    finally:
        predictions.unpersist()


def sweep(data: DataFrame, input_cols: Sequence[str], algorithm: str, ks: Sequence[int], seed: int,
          max_iter: int = 30) -> list[KResult]:
    """Fit and evaluate the pipeline for every k (``data`` should be cached by the caller)."""
    results = []
    for k in ks:
        model = build_pipeline(input_cols, algorithm, k, seed, max_iter).fit(data)
        metrics, sizes = evaluate_k(model, data)
        log.info("cluster sweep k=%d %s", k, metrics)
        results.append(KResult(k, model, metrics, sizes))
    return results


def elbow_k(ks: Sequence[int], wssse: Sequence[float]) -> int:
    """The elbow of a decreasing WSSSE curve (kneedle): farthest point below the chord first -> last."""
    if len(ks) < 3:
        return ks[0]
    k0, k1 = ks[0], ks[-1]
    w0, w1 = wssse[0], wssse[-1]
    span_k = (k1 - k0) or 1
    span_w = (w0 - w1) or 1.0
    gaps = []
    for k, w in zip(ks, wssse):
        xn = (k - k0) / span_k
        yn = (w - w1) / span_w          # 1 at the first k, 0 at the last
        gaps.append((1.0 - xn) - yn)     # chord minus curve
    return ks[max(range(len(ks)), key=lambda i: (gaps[i], -ks[i]))]


def choose_k(metrics_by_k: dict[int, dict[str, float]], tolerance: float) -> tuple[int, str]:
    """Pick k: best silhouette; among ks within ``tolerance`` of it, the nearest to the WSSSE elbow.

    Ties go to the smaller k. Returns (k, a one-line reason).
    """
    ks = sorted(metrics_by_k)
    best = max(metrics_by_k[k]["silhouette"] for k in ks)
    candidates = [k for k in ks if metrics_by_k[k]["silhouette"] >= best - tolerance]
    elbow = elbow_k(ks, [metrics_by_k[k]["wssse"] for k in ks])
    chosen = min(candidates, key=lambda k: (abs(k - elbow), k))
    reason = (f"best silhouette {best:.3f}; ks within {tolerance} of it: {candidates}; "
              f"WSSSE elbow at k={elbow}; chose k={chosen}")
    return chosen, reason
