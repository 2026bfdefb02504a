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

The package: :mod:`~seglake.stages.cluster.inputs` (model inputs and pipeline),
:mod:`~seglake.stages.cluster.metrics` (quality metrics, the sweep and the choice of k),
:mod:`~seglake.stages.cluster.profiles` (profiles and labels),
:mod:`~seglake.stages.cluster.stability` (agreement with a previous assignment) and
:mod:`~seglake.stages.cluster.job` (the job: ``run``, ``add_arguments``, ``USES_AS_OF``).
"""
from __future__ import annotations

from seglake.stages.cluster.common import ALGORITHMS, FEATURES_COL, PREDICTION_COL
from seglake.stages.cluster.inputs import build_pipeline, input_features, prepare_inputs, scaled_columns
from seglake.stages.cluster.job import (CLUSTERS_TABLE, INPUT_TABLE, PROFILES_TABLE, USES_AS_OF, add_arguments,
                                        run)
from seglake.stages.cluster.metrics import (KResult, choose_k, cluster_scatter, davies_bouldin,
                                            davies_bouldin_from_scatter, elbow_k, evaluate_k, silhouette, sweep)
from seglake.stages.cluster.profiles import (CONCEPTS, LABEL_RULES, PROFILE_FEATURES, cluster_profile,
                                             concept_scores, derive_labels)
from seglake.stages.cluster.stability import agreement, contingency

__all__ = [
    # job
    "USES_AS_OF", "run", "add_arguments", "INPUT_TABLE", "CLUSTERS_TABLE", "PROFILES_TABLE",
    # shared names
    "ALGORITHMS", "FEATURES_COL", "PREDICTION_COL",
    # inputs and pipeline
    "input_features", "scaled_columns", "prepare_inputs", "build_pipeline",
    # metrics and the choice of k
    "cluster_scatter", "davies_bouldin_from_scatter", "davies_bouldin", "silhouette", "KResult",
    "evaluate_k", "sweep", "elbow_k", "choose_k",
    # profiles and labels
    "CONCEPTS", "LABEL_RULES", "PROFILE_FEATURES", "cluster_profile", "concept_scores", "derive_labels",
    # stability
    "contingency", "agreement",
]
