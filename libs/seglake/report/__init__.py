"""``seglake report``: one static HTML page about a lakehouse (no server, no CDN, no network),
and the notebook helpers of notebooks/*.py.

Sections (each renders what exists, else says which job builds it):

- segment sizes and their changes over time (gold.segment_membership, gold.segment_changes,
  gold.segment_health);
- cluster profiles as a heatmap (gold.cluster_profiles);
- elbow and silhouette curves of the last clustering sweep (MLflow child runs of the
  ``cluster`` stage);
- the first-order transition matrix as a heatmap (gold.transition_matrix);
- the funnel and its drop-off, and the top journey paths (gold.journey_metrics, gold.journey_paths);
- A/B tests: uplift with intervals, p-values, sample-ratio check, power (gold.ab_results);
- propensity calibration by decile (MLflow ``calibration.json`` of the ``propensity`` stage)
  and the score distribution (gold.propensity_scores);
- customer lifetime value: BG/NBD and Gamma-Gamma parameters (MLflow run of the ``clv`` stage),
  CLV deciles, P(alive) and the high-value segments (gold.customer_value);
- data quality of the last runs (ops.run_log, silver.events_quarantine).

Charts are matplotlib PNGs embedded as base64 ``data:`` URIs. Only small aggregates are
collected (segments x dates, clusters x features, states x states, funnel steps, deciles,
reasons, the last run-log rows, CLV deciles); every collect says why it is small.

Modules: ``blocks`` (HTML building blocks, ``Section``, ``Missing``, ``READY_ATTR``), ``data``
(table and MLflow access), ``sections`` (one function per section, ``SECTIONS``), ``value`` (the
customer lifetime value section and its aggregates), ``page``
(``render_page``, ``build_report``) and ``notebook`` (helpers of the notebooks).
"""
from __future__ import annotations

from seglake.report.blocks import READY_ATTR, Missing, Section
from seglake.report.notebook import (
    cluster_profile_matrix,
    cluster_sizes,
    experiment_assigned,
    experiment_results,
    experiment_srm,
    experiment_uplift_chart,
    funnel,
    journey_metric,
    notebook_context,
    notebook_params,
    segment_change_counts,
    segment_health,
    segment_sizes,
    show,
    top_journey_paths,
    transition_matrix_wide,
    value_chart,
    value_deciles,
    value_p_alive,
    value_parameters,
    value_segments,
    value_summary,
)
from seglake.report.page import build_report, default_out, render_page
from seglake.report.sections import SECTIONS

__all__ = [
    "READY_ATTR",
    "SECTIONS",
    "Missing",
    "Section",
    "build_report",
    "cluster_profile_matrix",
    "cluster_sizes",
    "default_out",
    "experiment_assigned",
    "experiment_results",
    "experiment_srm",
    "experiment_uplift_chart",
    "funnel",
    "journey_metric",
    "notebook_context",
    "notebook_params",
    "render_page",
    "segment_change_counts",
    "segment_health",
    "segment_sizes",
    "show",
    "top_journey_paths",
    "transition_matrix_wide",
    "value_chart",
    "value_deciles",
    "value_p_alive",
    "value_parameters",
    "value_segments",
    "value_summary",
]
