"""Names shared by the clustering sub-modules: the algorithms and the ML column names.

A leaf module (it imports nothing from the package): the pipeline, the metrics, the profiles
and the job read the algorithm list and the vector / prediction column names from here.
"""
from __future__ import annotations

ALGORITHMS = ("kmeans", "bisecting_kmeans", "gaussian_mixture")
FEATURES_COL = "features"
PREDICTION_COL = "cluster"
