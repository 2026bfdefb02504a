"""Propensity: churn and purchase probabilities per customer, trained point-in-time.

``seglake run propensity --as-of D`` (D = the scoring date; features use events before D):

- **Labels** (:func:`build_labels`), for a snapshot date t and horizon h = ``propensity.horizon_days``:
  churn = 1 when the customer has NO profiling event in ``[t, t + h)``; purchase = 1 when it
  has a purchase (``features.purchase_event_types``) in ``[t, t + h)``.
- **No leakage** (:func:`snapshot_dates`): the evaluation snapshot is ``D - h`` (its labels
  end at D, so they are observed); training snapshots are ``D - 2h, D - 2h - step, ...``
  (``propensity.train_snapshots`` of them, ``propensity.train_step_days`` apart): every
  training label window ends on or before the evaluation date. Features of every snapshot
  (training, evaluation and scoring) are computed by one code path
  (:func:`~seglake.stages.propensity.snapshots.snapshot_features`): events before the date AND
  known then (ingested by it, customers from the identity map of then); the scoring date sees
  everything known now.
- **Models**: a Spark ML Pipeline (null fill -> VectorAssembler -> GBTClassifier) tuned by
  ``CrossValidator`` over ``propensity.grid_max_depth`` x ``propensity.grid_max_iter``, against
  a logistic-regression baseline (fill -> assemble -> standardize -> LogisticRegression).
  The model inputs are the RAW features (``propensity.inputs`` or ``features.model_inputs``), so
  a model scores any as-of date without that date's scaling statistics.
- **Evaluation** on the evaluation snapshot, in one Spark query per model (:func:`assess`):
  AUC-ROC, AUC-PR (the average precision), log loss, Brier score, a calibration table by
  decile of predicted probability (+ plot), a reliability curve and its expected calibration
  error; feature importances; all in MLflow (a parent run per job run, a child run per target
  and model).
- **Registry**: the better of GBT and baseline (on ``propensity.selection_metric``) is first
  compared with the current ``champion`` of ``<propensity.model_name_prefix>-<target>``, both
  scored on the same held-out snapshot. Only when it beats it by more than
  ``propensity.min_improvement`` (retraining on the same data gives metrics equal up to float
  rounding, and such a tie must not move the alias), or there is no champion or the champion
  cannot score, is it logged with its signature, registered as a new version and given the
  alias. A candidate that loses is not logged as a model nor registered (its child run keeps
  metrics, parameters and plots; the parent run's tag ``seglake.<target>.registration`` says why).
- **Scoring**: the champions score the features at D -> gold.propensity_scores
  (customer_id, as_of_date, churn_probability, purchase_probability, model_version, ...).

The package: :mod:`~seglake.stages.propensity.labels` (snapshot dates, labels, features),
:mod:`~seglake.stages.propensity.models` (pipelines, tuning, evaluation),
:mod:`~seglake.stages.propensity.registry` (MLflow registry, champion, scoring, plots) and
:mod:`~seglake.stages.propensity.job` (the job: ``run``, ``add_arguments``, ``USES_AS_OF``).
"""
from __future__ import annotations

from seglake.stages.propensity.common import (CHAMPION, EVENTS_TABLE, FEATURES_TABLE, LABEL_COL, PROB_COL,
                                              SCORES_TABLE, TARGETS, TIE_TOLERANCE)
from seglake.stages.propensity.job import USES_AS_OF, add_arguments, run
from seglake.stages.propensity.labels import build_labels, snapshot_dates
from seglake.stages.propensity.snapshots import Cut, Knowledge, snapshot_features
from seglake.stages.propensity.models import (Assessment, Candidate, assess, evaluate, feature_importances,
                                              gbt_pipeline, input_features, lr_pipeline, tune_gbt, with_probability)
from seglake.stages.propensity.registry import (ChampionDecision, ChampionOutcome, decide_champion, log_and_register,
                                                promote_if_better, score, set_champion_alias)

__all__ = [
    # job
    "USES_AS_OF", "run", "add_arguments",
    # shared names
    "TARGETS", "LABEL_COL", "PROB_COL", "FEATURES_TABLE", "EVENTS_TABLE", "SCORES_TABLE", "CHAMPION",
    "TIE_TOLERANCE",
    # labels and snapshots
    "snapshot_dates", "build_labels", "snapshot_features", "Knowledge", "Cut",
    # models
    "input_features", "gbt_pipeline", "lr_pipeline", "tune_gbt", "with_probability", "assess", "Assessment",
    "evaluate", "feature_importances", "Candidate",
    # MLflow registry and scoring
    "decide_champion", "ChampionDecision", "log_and_register", "set_champion_alias", "promote_if_better",
    "ChampionOutcome", "score",
]
