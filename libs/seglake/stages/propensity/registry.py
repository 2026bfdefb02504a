"""Propensity models in MLflow: the champion rule, logging, registration, scoring and plots.

:func:`promote_if_better` is what a run does per target: :func:`decide_champion` compares the
candidate with the current champion on the same held-out rows (nothing is written), and only a
promoted candidate is logged and registered (:func:`log_and_register`, seconds of artifact
writing) and takes the ``champion`` alias (:func:`set_champion_alias`); a candidate that loses
leaves no model version behind. :func:`score` adds the positive-class probability, and
:func:`_calibration_plot` / :func:`_log_figure` draw and log the calibration plot.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Sequence

from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame

from seglake.core import faults
from seglake.stages.propensity.common import CHAMPION, PROB_COL, TIE_TOLERANCE, _num
from seglake.stages.propensity.models import Candidate, evaluate, with_probability

log = logging.getLogger(__name__)


def _calibration_plot(rows: list[dict], title: str):
    # the object-oriented API, not pyplot: the targets are trained in parallel threads and
    # pyplot's current-figure state is global
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    ax.plot([r["mean_predicted"] for r in rows], [r["observed_rate"] for r in rows], marker="o", label="model")
    ax.set(xlabel="mean predicted probability (decile)", ylabel="observed rate", title=title,
           xlim=(0, 1), ylim=(0, 1))
    ax.legend()
    return fig


def _log_figure(fig, path: str) -> None:
    import mlflow

    mlflow.log_figure(fig, path)   # a Figure outside pyplot: nothing to close


def _champion(client, name: str):
    from mlflow.exceptions import MlflowException
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def score(model: PipelineModel, features: DataFrame) -> DataFrame:
    """``features`` + ``p`` (probability of the positive class) from a fitted pipeline."""
    return with_probability(model.transform(features)).select(*features.columns, PROB_COL)


#: model version tag: what determines the candidate (see :func:`candidate_key`)
CANDIDATE_TAG = "seglake.candidate"


def candidate_key(best: Candidate, inputs: Sequence[str], tags: dict[str, str] | None) -> str:
    """A fingerprint of a promoted candidate: its kind, inputs, the run's tags (target, as-of) and
    its held-out metrics to 12 digits. A rerun on the same data trains the same model (fixed seeds
    and layouts) and gets the same key; other data or settings give other metrics, hence another key."""
    metrics = {k: (f"{v:.12g}" if v == v else "nan") for k, v in sorted(best.metrics.items())}
    text = json.dumps({"kind": best.kind, "inputs": list(inputs), "tags": dict(sorted((tags or {}).items())),
                       "metrics": metrics}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def registered_before(name: str, key: str) -> int | None:
    """The version of ``name`` that a crashed run registered for this very candidate (tag
    :data:`CANDIDATE_TAG` = ``key``, no alias yet), else None. One query per promotion, over the
    model's versions (one per promotion: few)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        versions = MlflowClient().search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    found = [int(v.version) for v in versions if (v.tags or {}).get(CANDIDATE_TAG) == key and not v.aliases]
    return max(found) if found else None


def log_and_register(best: Candidate, held: DataFrame, inputs: Sequence[str], name: str,
                     tags: dict[str, str] | None = None) -> int:
    """Log ``best.model`` (with its signature) in its own MLflow run and register it; the version.

    The held-out metrics are set as ``heldout_<metric>`` tags of the model version. Logging a
    Spark model takes seconds and writes its artifacts: a run calls this (through
    :func:`promote_if_better`) only for a candidate that becomes the champion.

    Idempotent across a crash: the version is tagged with :func:`candidate_key`, and when a run
    killed after registering (before the alias moved) left a version of this same candidate, its
    rerun takes that version instead of registering a second copy, so the numbering is that of an
    uninterrupted run.
    """
    import mlflow
    from mlflow.models import infer_signature

    from seglake.core import tracking

    key = candidate_key(best, inputs, tags)
    earlier = registered_before(name, key)
    if earlier is not None:
        log.info("propensity: %s v%d was registered for this candidate by a run that did not finish: "
                 "taken as it is (not registered again)", name, earlier)
        _tag_metrics(name, earlier, best.metrics)   # the killed run may have stopped before its tags
        return earlier
    with mlflow.start_run(run_id=best.info["run_id"], nested=True):
        sample = held.limit(20)  # 20 rows for the signature: small
        signature = infer_signature(sample.select(*inputs).toPandas(),
                                    best.model.transform(sample).select("prediction").toPandas())
        logged = mlflow.spark.log_model(best.model, artifact_path="model", signature=signature,
                                        pip_requirements=tracking.model_pip_requirements())
    version = mlflow.register_model(logged.model_uri, name,
                                    tags={"model": best.kind, CANDIDATE_TAG: key, **(tags or {})})
    _tag_metrics(name, int(version.version), best.metrics)
    faults.point("propensity.after_register")   # registered, no alias yet: the rerun takes this version
    return int(version.version)


def _tag_metrics(name: str, version: int, metrics: dict) -> None:
    """The held-out metrics as ``heldout_<metric>`` tags of a model version."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for metric, value in metrics.items():
        if value == value:
            client.set_model_version_tag(name, str(version), f"heldout_{metric}", f"{value:.6f}")


@dataclass(frozen=True)
class ChampionDecision:
    """Whether a candidate replaces the current champion, and the champion it was compared with.

    ``champion_version`` is None when there is no champion yet; ``champion_metric`` is NaN when
    there is none or it cannot score the held-out rows; ``champion_model`` is the loaded
    champion when it could score them (the model to keep scoring with when not promoted).
    """

    promote: bool
    reason: str
    champion_version: int | None = None
    champion_metric: float = float("nan")
    champion_model: PipelineModel | None = None


@dataclass(frozen=True)
class ChampionOutcome:
    """A target's champion after a run: the model that scores, its version, and the decision."""

    decision: ChampionDecision
    model: PipelineModel
    version: int

    @property
    def registered(self) -> bool:
        """True when the candidate was logged and registered (that is: promoted)."""
        return self.decision.promote


def _load_scoring_champion(name: str, version: int, held: DataFrame) -> tuple[PipelineModel | None, dict]:
    """(the champion of ``name``, its held-out metrics), or (None, {}) when it cannot score."""
    import mlflow

    try:
        model = mlflow.spark.load_model(f"models:/{name}@{CHAMPION}")
        return model, evaluate(score(model, held))
    except Exception as exc:  # noqa: BLE001 - an incompatible old champion loses
        log.warning("propensity: the current %s champion (v%s) cannot score the held-out rows (%s); "
                    "the new model replaces it", name, version, exc)
        return None, {}


@dataclass(frozen=True)
class CurrentChampion:
    """The ``champion`` of a registered model as it scores the held-out rows: ``version`` None when
    there is none yet; ``model`` None when there is none or it cannot score them."""

    version: int | None
    model: PipelineModel | None
    metrics: dict


def current_champion(name: str, held: DataFrame) -> CurrentChampion:
    """Load the champion of ``name`` and measure it on ``held`` (independent of any candidate: the
    job does it while the candidates train)."""
    from mlflow import MlflowClient

    current = _champion(MlflowClient(), name)
    if current is None:
        return CurrentChampion(None, None, {})
    model, metrics = _load_scoring_champion(name, int(current.version), held)
    return CurrentChampion(int(current.version), model, metrics)


def decide_champion(name: str, new_metrics: float | dict, held: DataFrame, selection: str,
                    min_improvement: float = 0.0, current: CurrentChampion | None = None) -> ChampionDecision:
    """Does a candidate with held-out metrics ``new_metrics`` replace the ``champion`` of ``name``? Writes nothing.

    The current champion is loaded and scored on the same held-out rows. The candidate wins
    when its ``selection`` metric is higher by more than ``min_improvement`` (and by more than
    float noise, ``TIE_TOLERANCE``, even when that is 0); or, when ``new_metrics`` is a dict
    with ``brier``, when its ranking is no worse (``selection`` within float noise or better)
    and its Brier score is lower by more than that margin (a calibrated model ranks as its
    uncalibrated champion did but states better probabilities); or when there is no champion
    yet, or the champion cannot score these rows (e.g. other inputs). A retrain on the same data
    ties on both and does not win. ``current``: the champion already measured on ``held``
    (:func:`current_champion`; loaded here when not given).
    """
    metrics = new_metrics if isinstance(new_metrics, dict) else {selection: float(new_metrics)}
    new_metric = metrics[selection]
    current = current or current_champion(name, held)
    if current.version is None:
        return ChampionDecision(True, "no champion yet")
    champ_v, champ_model, champ = current.version, current.model, current.metrics
    if champ_model is None:
        return ChampionDecision(True, f"champion v{champ_v} cannot score the held-out rows", champ_v)
    champ_metric = champ[selection]
    margin = max(float(min_improvement), TIE_TOLERANCE)
    ranks_better = _num(new_metric) > _num(champ_metric) + margin
    no_worse = _num(new_metric) >= _num(champ_metric) - TIE_TOLERANCE
    new_brier, champ_brier = metrics.get("brier", float("nan")), champ.get("brier", float("nan"))
    calibrates_better = (no_worse and new_brier == new_brier and champ_brier == champ_brier
                         and new_brier < champ_brier - margin)
    promote = ranks_better or calibrates_better
    if ranks_better or not calibrates_better:
        verdict = "beats" if promote else "does not beat"
        reason = (f"{selection} {new_metric:.4f} {verdict} champion v{champ_v} ({champ_metric:.4f}) "
                  f"by more than {margin:g}")
        if not promote and new_brier == new_brier and champ_brier == champ_brier:
            reason += f", nor its Brier score ({new_brier:.4f} vs {champ_brier:.4f})"
    else:
        reason = (f"{selection} {new_metric:.4f} no worse than champion v{champ_v} ({champ_metric:.4f}) and "
                  f"Brier {new_brier:.4f} lower than its {champ_brier:.4f} by more than {margin:g}")
    return ChampionDecision(promote, reason, champ_v, champ_metric, None if promote else champ_model)


def set_champion_alias(name: str, version: int) -> None:
    """Point alias ``champion`` of registered model ``name`` at ``version``."""
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(name, CHAMPION, str(version))


def promote_if_better(best: Candidate, held: DataFrame, inputs: Sequence[str], name: str, selection: str,
                      min_improvement: float = 0.0, tags: dict[str, str] | None = None,
                      current: CurrentChampion | None = None) -> ChampionOutcome:
    """Compare ``best`` with the champion of ``name``; log, register and alias it only when it wins.

    A candidate that does not win is neither logged as a model nor registered: its child run
    keeps its metrics, parameters and plots, and the champion (loaded for the comparison) goes
    on scoring.
    """
    decision = decide_champion(name, best.metrics, held, selection, min_improvement, current)
    if not decision.promote:
        log.info("propensity: the %s candidate (%s) is not registered: %s; alias unchanged",
                 name, best.kind, decision.reason)
        return ChampionOutcome(decision, decision.champion_model, decision.champion_version)
    version = log_and_register(best, held, inputs, name, tags)
    set_champion_alias(name, version)
    log.info("propensity: %s v%d (%s) is the champion: %s", name, version, best.kind, decision.reason)
    return ChampionOutcome(decision, best.model, version)
