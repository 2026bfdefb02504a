"""Propensity models in MLflow: logging, registration, the champion alias, scoring and plots.

:func:`log_and_register` logs a model with its signature and registers it,
:func:`update_champion` moves the ``champion`` alias only when the new version beats the
current champion on the same held-out rows, :func:`score` adds the positive-class
probability, and :func:`_calibration_plot` / :func:`_log_figure` draw and log the calibration plot.
"""
from __future__ import annotations

import logging
from typing import Sequence

from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame

from seglake.stages.propensity.common import CHAMPION, PROB_COL, TIE_TOLERANCE, _num
from seglake.stages.propensity.models import Candidate, evaluate, with_probability

log = logging.getLogger(__name__)


def _calibration_plot(rows: list[dict], title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    ax.plot([r["mean_predicted"] for r in rows], [r["observed_rate"] for r in rows], marker="o", label="model")
    ax.set(xlabel="mean predicted probability (decile)", ylabel="observed rate", title=title,
           xlim=(0, 1), ylim=(0, 1))
    ax.legend()
    return fig


def _log_figure(fig, path: str) -> None:
    import matplotlib.pyplot as plt
    import mlflow

    mlflow.log_figure(fig, path)
    plt.close(fig)


def _champion(client, name: str):
    from mlflow.exceptions import MlflowException
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def score(model: PipelineModel, features: DataFrame) -> DataFrame:
    """``features`` + ``p`` (probability of the positive class) from a fitted pipeline."""
    return with_probability(model.transform(features)).select(*features.columns, PROB_COL)


def log_and_register(best: Candidate, held: DataFrame, inputs: Sequence[str], name: str,
                     tags: dict[str, str] | None = None) -> int:
    """Log ``best.model`` (with its signature) in its own MLflow run and register it; the version.

    The held-out metrics are set as ``heldout_<metric>`` tags of the model version.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    from seglake.core import tracking

    with mlflow.start_run(run_id=best.info["run_id"], nested=True):
        sample = held.limit(20)  # 20 rows for the signature: small
        signature = infer_signature(sample.select(*inputs).toPandas(),
                                    best.model.transform(sample).select("prediction").toPandas())
        logged = mlflow.spark.log_model(best.model, artifact_path="model", signature=signature,
                                        pip_requirements=tracking.model_pip_requirements())
    version = mlflow.register_model(logged.model_uri, name, tags={"model": best.kind, **(tags or {})})
    client = MlflowClient()
    for key, value in best.metrics.items():
        if value == value:
            client.set_model_version_tag(name, str(version.version), f"heldout_{key}", f"{value:.6f}")
    return int(version.version)


def update_champion(name: str, version: int, new_metric: float, held: DataFrame,
                    selection: str, min_improvement: float = 0.0) -> tuple[bool, float, int, PipelineModel | None]:
    """Move alias ``champion`` of ``name`` to ``version`` when it beats the current champion.

    The current champion is loaded and scored on the same held-out rows; the new version
    wins when its ``selection`` metric is higher by more than ``min_improvement`` (and by more
    than float noise, ``TIE_TOLERANCE``, even when that is 0), when there is no champion yet,
    or when the champion cannot score these rows (e.g. other inputs).

    Returns:
        (promoted, champion's held-out metric or NaN, champion version after the call,
        the champion's model when it was kept, else None).
    """
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    current = _champion(client, name)
    champ_metric, champ_model = float("nan"), None
    if current is not None:
        try:
            champ_model = mlflow.spark.load_model(f"models:/{name}@{CHAMPION}")
            champ_metric = evaluate(score(champ_model, held))[selection]
        except Exception as exc:  # noqa: BLE001 - an incompatible old champion loses
            log.warning("propensity: the current %s champion (v%s) cannot score the held-out rows (%s); "
                        "the new model replaces it", name, current.version, exc)
            champ_model = None
    margin = max(float(min_improvement), TIE_TOLERANCE)
    promote = current is None or champ_model is None or _num(new_metric) > _num(champ_metric) + margin
    if promote:
        client.set_registered_model_alias(name, CHAMPION, str(version))
        return True, champ_metric, version, None
    log.info("propensity: %s v%d (%s %.4f) does not beat champion v%s (%.4f) by more than %g; alias unchanged",
             name, version, selection, new_metric, current.version, champ_metric, margin)
    return False, champ_metric, int(current.version), champ_model
