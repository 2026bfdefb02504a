"""Cluster profiles and labels: centroids in original units and a readable name per cluster.

:func:`cluster_profile` gives every cluster's mean of the raw features next to the overall
mean and standard deviation (long form); :func:`concept_scores` averages the standardized
differences over the features of each behavioural concept (:data:`CONCEPTS`) and
:func:`derive_labels` names the clusters from them with the rules of :data:`LABEL_RULES`.
"""
from __future__ import annotations

from typing import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seglake.stages.cluster.common import PREDICTION_COL

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
