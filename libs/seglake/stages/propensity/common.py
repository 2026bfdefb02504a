"""Names shared by the propensity sub-modules: targets, column and table names, the champion alias.

A leaf module (it imports nothing from the package) that also holds :func:`_num`, the
NaN-safe ordering of metrics used by the job and the champion rule.
"""
from __future__ import annotations

from seglake.core.contracts import CUSTOMER_FEATURES, PROPENSITY_SCORES, SILVER_EVENTS

TARGETS = ("churn", "purchase")
LABEL_COL = "label"
PROB_COL = "p"
FEATURES_TABLE = CUSTOMER_FEATURES
EVENTS_TABLE = SILVER_EVENTS
SCORES_TABLE = PROPENSITY_SCORES
CHAMPION = "champion"
#: metric differences up to this are float noise (a retrain on the same data differs by ~1e-16)
TIE_TOLERANCE = 1e-9
_METRIC_KEYS = ("auc_roc", "auc_pr")   # the held-out metrics a model can be selected on (models.assess)


def _num(x: float) -> float:
    """NaN-safe ordering value (NaN counts as worst)."""
    return float("-inf") if x != x else float(x)
