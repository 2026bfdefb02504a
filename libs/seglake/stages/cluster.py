"""Clustering: natural customer segments from the standardized behavioural features.

``seglake run cluster --as-of DATE`` reads ``gold.customer_features`` for one as-of date and

1. fits one Spark ML ``Pipeline`` (``VectorAssembler`` over the ``z_<f>`` columns of
   ``features.model_inputs`` -> KMeans | BisectingKMeans | GaussianMixture, ``cluster.algorithm``)
   for every k in ``[cluster.k_min, cluster.k_max]``; each k is an MLflow child run with
   WSSSE (the model's training cost; the within-cluster sum of squares when the algorithm
   has none), silhouette (``ClusteringEvaluator``, squared euclidean) and Davies-Bouldin
   (computed in Spark, euclidean, scikit-learn's definition);
2. picks k with :func:`choose_k` (best silhouette; among the ks within
   ``cluster.silhouette_tolerance`` of it, the one nearest the WSSSE elbow; ties -> smaller k);
3. profiles each cluster in original units (mean of the raw features, size, share) and names
   it from its centroid (:func:`derive_labels`: "power users", "at-risk high spenders", ...);
4. writes ``gold.clusters`` and ``gold.cluster_profiles`` (replaceWhere on the as-of date);
5. compares the assignment with the previous one (same as-of date rerun, and the latest
   earlier as-of date) by adjusted Rand index and pair Jaccard from the contingency table,
   and raises an alert (log + metric ``stability_alert``) when ARI < ``cluster.stability_alert_ari``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Sequence

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.clustering import BisectingKMeans, GaussianMixture, KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import SQLTransformer, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.context import JobContext

log = logging.getLogger(__name__)

#: the stage runner resolves ``--as-of`` (default: the day after the last event) before run()
USES_AS_OF = True

ALGORITHMS = ("kmeans", "bisecting_kmeans", "gaussian_mixture")
FEATURES_COL = "features"
PREDICTION_COL = "cluster"
INPUT_TABLE = "gold.customer_features"
CLUSTERS_TABLE = "gold.clusters"
PROFILES_TABLE = "gold.cluster_profiles"
_OFFSET_COL = "_cluster_offset"

#: Behavioural concepts used to name clusters, each measured by the features listed (those
#: present in the table are used; the concept's score is the mean standardized difference
#: of the cluster's mean from the overall mean). A higher recency_days means LESS recent.
CONCEPTS: dict[str, tuple[str, ...]] = {
    "recency": ("recency_days",),
    "frequency": ("sessions_30d", "sessions_per_week_30d", "sessions_90d"),
    "buying": ("purchases_90d", "purchases_total", "purchases_30d"),
    "monetary": ("revenue_90d", "revenue_total", "avg_order_value"),
    "engagement": ("pages_per_session", "avg_session_duration_s", "distinct_features_30d",
                   "avg_scroll_depth"),
    "features": ("distinct_features_30d",),
    "tenure": ("tenure_days",),
    "browsing": ("product_views_30d", "product_views_total"),
    "cart": ("carts_30d", "carts_total", "checkouts_30d"),
    "email": ("email_clicks_90d", "email_opens_90d", "email_click_rate"),
}

#: Candidate labels: each scores min() over (concept, sign) pairs, so every condition must
#: hold; a label is given when its score is at least ``cluster.label_min_score``.
LABEL_RULES: dict[str, tuple[tuple[str, int], ...]] = {
    "power users": (("frequency", 1), ("engagement", 1)),
    "vip high spenders": (("monetary", 1), ("recency", -1)),
    "at-risk high spenders": (("monetary", 1), ("recency", 1)),
    "repeat buyers": (("buying", 1),),
    "new users": (("tenure", -1),),
    "lapsed": (("recency", 1), ("frequency", -1)),
    "cart abandoners": (("cart", 1), ("buying", -1)),
    "email responders": (("email", 1),),
    "casual browsers": (("browsing", 1), ("cart", -1), ("buying", -1)),
    "feature explorers": (("features", 1),),
    "low-engagement visitors": (("engagement", -1), ("frequency", -1)),
}

#: Raw features always profiled (when present) besides the model inputs.
PROFILE_FEATURES: tuple[str, ...] = tuple(dict.fromkeys(f for fs in CONCEPTS.values() for f in fs))


# --------------------------------------------------------------------------- inputs


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


# --------------------------------------------------------------------------- metrics


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


# --------------------------------------------------------------------------- profile and labels


def cluster_profile(assigned: DataFrame, feature_cols: Sequence[str],
                    prediction_col: str = PREDICTION_COL) -> DataFrame:
    """Cluster centroids in original units, in long form.

    Args:
        assigned: customers with their raw features and ``prediction_col``.
        feature_cols: raw feature columns to profile (those absent are skipped).

    Returns:
        DataFrame ``cluster, size, share, feature, cluster_mean, overall_mean, overall_stddev,
        relative`` where ``relative`` = (cluster_mean - overall_mean) / overall_stddev
        (0 when the feature does not vary).
    """
    cols = [c for c in dict.fromkeys(feature_cols) if c in assigned.columns]
    if not cols:
        raise ValueError("no profile feature column is present in the clustered rows")
    as_double = {c: F.col(c).cast("double") for c in cols}
    data = assigned.select(prediction_col, *[v.alias(c) for c, v in as_double.items()])
    per = data.groupBy(prediction_col).agg(
        F.count("*").alias("size"), *[F.avg(c).alias(c) for c in cols])
    overall = data.agg(F.count("*").alias("_total"),
                       *[F.avg(c).alias(f"_m_{c}") for c in cols],
                       *[F.stddev_pop(c).alias(f"_s_{c}") for c in cols])
    stack = F.explode(F.array(*[
        F.struct(F.lit(c).alias("feature"), F.col(c).alias("cluster_mean"),
                 F.col(f"_m_{c}").alias("overall_mean"), F.col(f"_s_{c}").alias("overall_stddev"))
        for c in cols])).alias("p")
    long = per.crossJoin(overall).select(
        F.col(prediction_col).alias("cluster"), "size", (F.col("size") / F.col("_total")).alias("share"), stack)
    sd = F.col("p.overall_stddev")
    return long.select(
        "cluster", "size", "share", "p.feature", "p.cluster_mean", "p.overall_mean", "p.overall_stddev",
        F.when(sd > 0, (F.col("p.cluster_mean") - F.col("p.overall_mean")) / sd)
         .otherwise(F.lit(0.0)).alias("relative"))


def concept_scores(relative: dict[str, float]) -> dict[str, float]:
    """Concept -> mean standardized difference over the concept's features present in ``relative``."""
    out = {}
    for concept, feats in CONCEPTS.items():
        values = [relative[f] for f in feats if f in relative and relative[f] is not None]
        if values:
            out[concept] = sum(values) / len(values)
    return out


def derive_labels(relative_by_cluster: dict[int, dict[str, float]], min_score: float = 0.25) -> dict[int, str]:
    """A readable, unique label per cluster from its centroid's standardized differences.

    Every rule of :data:`LABEL_RULES` is scored on every cluster (score = the weakest of its
    conditions); pairs are assigned greedily from the highest score, one label per cluster
    and one cluster per label, when the score reaches ``min_score``. A cluster left without
    a rule gets a descriptive label from its most distinctive concept ("high email",
    "low recency") or "average customers".

    Args:
        relative_by_cluster: cluster -> {feature: (cluster mean - overall mean) / overall stddev}.
        min_score: the standardized difference a rule's every condition must reach.
    """
    concepts = {c: concept_scores(rel) for c, rel in relative_by_cluster.items()}
    scored = []
    for cluster, cs in concepts.items():
        for label, conditions in LABEL_RULES.items():
            if all(concept in cs for concept, _ in conditions):
                score = min(sign * cs[concept] for concept, sign in conditions)
                scored.append((score, label, cluster))
    labels: dict[int, str] = {}
    used: set[str] = set()
    for score, label, cluster in sorted(scored, key=lambda t: (-t[0], t[1], t[2])):
        if score < min_score:
            break
        if cluster in labels or label in used:
            continue
        labels[cluster] = label
        used.add(label)
    for cluster in sorted(relative_by_cluster):
        if cluster in labels:
            continue
        cs = concepts[cluster]
        name = "average customers"
        if cs:
            concept, value = max(cs.items(), key=lambda kv: (abs(kv[1]), kv[0]))
            if abs(value) >= min_score / 2:
                name = f"{'high' if value > 0 else 'low'} {concept}"
        base, n = name, 2
        while name in used:
            name = f"{base} {n}"
            n += 1
        labels[cluster] = name
        used.add(name)
    return labels


# --------------------------------------------------------------------------- stability


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


# --------------------------------------------------------------------------- plots


def _plots(metrics_by_k: dict[int, dict[str, float]], chosen: int):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(metrics_by_k)
    figs = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, [metrics_by_k[k]["wssse"] for k in ks], marker="o")
    ax.axvline(chosen, color="grey", linestyle="--", label=f"chosen k={chosen}")
    ax.set(xlabel="k", ylabel="WSSSE", title="Elbow: within-cluster sum of squares")
    ax.legend()
    figs["plots/elbow.png"] = fig
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, [metrics_by_k[k]["silhouette"] for k in ks], marker="o", label="silhouette")
    ax.set(xlabel="k", ylabel="silhouette (squared euclidean)", title="Silhouette and Davies-Bouldin by k")
    ax2 = ax.twinx()
    ax2.plot(ks, [metrics_by_k[k]["davies_bouldin"] for k in ks], marker="s", color="tab:red",
             label="Davies-Bouldin")
    ax2.set_ylabel("Davies-Bouldin (lower is better)")
    ax.axvline(chosen, color="grey", linestyle="--")
    fig.legend(loc="upper right")
    figs["plots/silhouette.png"] = fig
    return figs


# --------------------------------------------------------------------------- job


def add_arguments(parser) -> None:
    parser.add_argument("--algorithm", choices=ALGORITHMS, default=None,
                        help="override cluster.algorithm for this run")


def _previous_assignments(ctx: JobContext, as_of: date) -> dict[str, DataFrame]:
    """The assignments to compare with: a rerun of this as-of date, and the latest earlier one."""
    if not tables.exists(ctx.spark, ctx.cfg, CLUSTERS_TABLE):
        return {}
    # Materialized as a Delta version so the overwrite below cannot change what we compare to.
    version = tables.version(ctx.spark, ctx.cfg, CLUSTERS_TABLE)
    old = tables.read(ctx.spark, ctx.cfg, CLUSTERS_TABLE, version=version)
    out = {}
    if old.filter(F.col("as_of_date") == F.lit(as_of)).limit(1).count():
        out["rerun"] = old.filter(F.col("as_of_date") == F.lit(as_of))
    earlier = old.filter(F.col("as_of_date") < F.lit(as_of)).agg(F.max("as_of_date")).first()[0]
    if earlier is not None:
        out["window"] = old.filter(F.col("as_of_date") == F.lit(earlier))
    return out


def run(ctx: JobContext) -> dict:
    """Sweep k, pick one, label and write the clusters; track everything in MLflow."""
    import mlflow

    from seglake.core import tracking

    spark, cfg = ctx.spark, ctx.cfg
    as_of = ctx.resolve_as_of()
    algorithm = ctx.args.get("algorithm") or cfg.get("cluster.algorithm")
    k_min, k_max = int(cfg.get("cluster.k_min")), int(cfg.get("cluster.k_max"))
    if not 2 <= k_min <= k_max:
        raise ValueError(f"cluster.k_min/k_max must satisfy 2 <= k_min <= k_max, got {k_min}..{k_max}")
    seed = int(cfg.get("cluster.seed"))
    raw_inputs = input_features(cfg)
    input_cols = scaled_columns(raw_inputs)

    feats = tables.read(spark, cfg, INPUT_TABLE).filter(F.col("as_of_date") == F.lit(as_of))
    data = prepare_inputs(feats, input_cols).cache()
    n = data.count()
    if n == 0:
        raise ValueError(f"gold.customer_features has no rows for as_of_date {as_of}: run features first")
    if n < k_max:
        raise ValueError(f"only {n} customers for as_of_date {as_of}: fewer than cluster.k_max={k_max}")

    with tracking.start_run(spark, cfg, "cluster", [INPUT_TABLE], f"cluster {as_of}",
                            ctx.run_id, as_of) as parent:
        mlflow.log_params({"algorithm": algorithm, "k_min": k_min, "k_max": k_max, "seed": seed,
                           "inputs": ",".join(input_cols), "customers": n})
        results = []
        for k in range(k_min, k_max + 1):
            with mlflow.start_run(run_name=f"k={k}", nested=True):
                mlflow.set_tags({"seglake.stage": "cluster", "seglake.as_of": str(as_of)})
                result = sweep(data, input_cols, algorithm, [k], seed,
                               int(cfg.get("cluster.max_iter")))[0]
                mlflow.log_params({"k": k, "algorithm": algorithm})
                mlflow.log_metrics(result.metrics)
                results.append(result)
        by_k = {r.k: r.metrics for r in results}
        chosen, reason = choose_k(by_k, float(cfg.get("cluster.silhouette_tolerance")))
        best = next(r for r in results if r.k == chosen)
        mlflow.set_tag("seglake.k_rule", reason)
        mlflow.log_param("chosen_k", chosen)
        mlflow.log_metrics({f"chosen_{m}": v for m, v in best.metrics.items()})
        import matplotlib.pyplot as plt
        for path, fig in _plots(by_k, chosen).items():
            mlflow.log_figure(fig, path)
            plt.close(fig)
        mlflow.log_dict({str(k): m for k, m in by_k.items()}, "sweep_metrics.json")

        assigned = best.model.transform(data).drop(FEATURES_COL).cache()
        profile_cols = list(dict.fromkeys(raw_inputs + list(PROFILE_FEATURES)))
        profile = cluster_profile(assigned, profile_cols).cache()
        # k x features rows: small.
        prof_rows = [r.asDict() for r in profile.collect()]
        relative: dict[int, dict[str, float]] = {}
        sizes: dict[int, int] = {}
        for r in prof_rows:
            relative.setdefault(int(r["cluster"]), {})[r["feature"]] = r["relative"]
            sizes[int(r["cluster"])] = int(r["size"])
        labels = derive_labels(relative, float(cfg.get("cluster.label_min_score")))
        label_df = spark.createDataFrame([(int(c), lab) for c, lab in labels.items()],
                                         "cluster INT, label STRING")
        model_run_id = parent.info.run_id
        clusters = (assigned.select("customer_id", F.lit(as_of).cast("date").alias("as_of_date"),
                                    F.col(PREDICTION_COL).cast("int").alias("cluster"))
                    .join(F.broadcast(label_df), "cluster")
                    .select("customer_id", "as_of_date", "cluster", "label",
                            F.lit(algorithm).alias("algorithm"), F.lit(chosen).alias("k"),
                            F.lit(model_run_id).alias("model_run_id")))
        profiles = (profile.join(F.broadcast(label_df), "cluster")
                    .select(F.lit(as_of).cast("date").alias("as_of_date"), "cluster", "label", "size",
                            "share", "feature", "cluster_mean", "overall_mean", "overall_stddev",
                            "relative", F.lit(algorithm).alias("algorithm"), F.lit(chosen).alias("k"),
                            F.lit(model_run_id).alias("model_run_id")))
        mlflow.log_dict({"labels": {str(c): l for c, l in labels.items()},
                         "sizes": {str(c): s for c, s in sizes.items()},
                         "centroids": [{k: (str(v) if k == "cluster" else v) for k, v in r.items()}
                                       for r in prof_rows]}, "cluster_profile.json")

        stability: dict[str, float] = {}
        for name, previous in _previous_assignments(ctx, as_of).items():
            agree = agreement(contingency(previous, clusters))
            stability[f"stability_{name}_ari"] = agree["ari"]
            stability[f"stability_{name}_jaccard"] = agree["jaccard"]
            stability[f"stability_{name}_customers"] = agree["customers"]
        alert_ari = float(cfg.get("cluster.stability_alert_ari"))
        primary = stability.get("stability_rerun_ari", stability.get("stability_window_ari"))
        alert = primary is not None and primary < alert_ari
        if stability:
            mlflow.log_metrics({**stability, "stability_alert": float(alert)})
        if alert:
            log.warning("cluster stability alert: ARI %.3f with the previous assignment is below %.2f",
                        primary, alert_ari)
            mlflow.set_tag("seglake.stability_alert", f"ARI {primary:.3f} < {alert_ari}")

        where = f"as_of_date = '{as_of.isoformat()}'"
        tables.overwrite(clusters, cfg, CLUSTERS_TABLE, partition_by=("as_of_date",),
                         replace_where=where if tables.exists(spark, cfg, CLUSTERS_TABLE) else None)
        tables.overwrite(profiles, cfg, PROFILES_TABLE,
                         replace_where=where if tables.exists(spark, cfg, PROFILES_TABLE) else None)

        if cfg.get("cluster.log_model"):
            mlflow.spark.log_model(best.model, artifact_path="model",
                                   pip_requirements=tracking.model_pip_requirements())
        assigned.unpersist()
        profile.unpersist()
    data.unpersist()

    summary: dict[str, Any] = {
        "as_of": as_of.isoformat(),
        "customers": n,
        "algorithm": algorithm,
        "k": chosen,
        "silhouette": round(best.metrics["silhouette"], 4),
        "davies_bouldin": round(best.metrics["davies_bouldin"], 4),
        "clusters": ", ".join(f"{labels[c]} ({sizes[c]})" for c in sorted(labels)),
        "mlflow_run": model_run_id,
    }
    for name in ("rerun", "window"):
        if f"stability_{name}_ari" in stability:
            summary[f"stability_{name}_ari"] = round(stability[f"stability_{name}_ari"], 4)
    if alert:
        summary["stability_alert"] = f"ARI {primary:.3f} < {alert_ari}"
    return summary

