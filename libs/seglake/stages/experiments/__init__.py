"""Experiments: ``seglake run experiments`` (A/B tests on segments).

- :mod:`seglake.stages.experiments.settings` — conf/experiments.yaml, validated;
- :mod:`seglake.stages.experiments.data` — population, hash or logged variants, per-customer
  outcomes and the per-variant sufficient statistics (Spark);
- :mod:`seglake.stages.experiments.stats` — the tests and intervals (driver, scipy);
- :mod:`seglake.stages.experiments.job` — the run: ``gold.experiment_assignments``, ``gold.ab_results``.
"""
from seglake.stages.experiments.job import add_arguments, run  # noqa: F401
