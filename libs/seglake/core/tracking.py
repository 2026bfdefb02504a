"""MLflow set-up shared by the model stages (cluster, propensity).

Embedded default: a SQLite tracking/registry store at ``<lakehouse>/_mlflow/mlflow.db`` with
artifacts under ``<lakehouse>/_mlflow/artifacts``, so ``mlflow ui --backend-store-uri
sqlite:///<lakehouse>/_mlflow/mlflow.db`` shows every run. On a cluster the tracking URI comes
from ``mlflow.tracking_uri`` in the config. The ``MLFLOW_TRACKING_URI`` environment variable
wins over both when it is set (tests point it at a temp store).

Every run carries tags that make it reproducible: the git commit, the configuration (also
logged as ``config.json``), and the Delta version of each input table
(``input.<table>.version``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Iterable, Iterator

from seglake.core import tables
from seglake.core.config import Config, join

log = logging.getLogger(__name__)

def model_pip_requirements() -> list[str]:
    """The pinned requirements a logged Spark ML model needs to be loaded again.

    Passed explicitly to ``mlflow.spark.log_model``: letting MLflow infer them starts a
    second JVM (~25 s).
    """
    import mlflow
    import pyspark

    return [f"pyspark=={pyspark.__version__}", f"mlflow=={mlflow.__version__}"]


def _is_local(uri: str) -> bool:
    return "://" not in uri and not uri.startswith("dbfs:")


def tracking_uri(cfg: Config) -> str:
    """``$MLFLOW_TRACKING_URI``, else ``mlflow.tracking_uri``, else the lakehouse SQLite store."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    configured = cfg.get("mlflow.tracking_uri")
    if configured:
        return str(configured)
    folder = join(cfg.lakehouse, "_mlflow")
    if not _is_local(cfg.lakehouse):
        raise ValueError(
            f"mlflow.tracking_uri must be set when the lakehouse is remote ({cfg.lakehouse}): "
            "a SQLite store needs a local folder"
        )
    Path(folder).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder}/mlflow.db"


def artifact_location(cfg: Config) -> str:
    """``mlflow.artifact_location``, else ``<lakehouse>/_mlflow/artifacts``."""
    configured = cfg.get("mlflow.artifact_location")
    location = str(configured) if configured else join(cfg.lakehouse, "_mlflow", "artifacts")
    if _is_local(location):
        Path(location).mkdir(parents=True, exist_ok=True)
        return Path(location).resolve().as_uri()
    return location


def setup(cfg: Config, experiment: str | None = None) -> str:
    """Point MLflow (tracking and registry) at the configured store; return the experiment id.

    The experiment (``mlflow.experiment`` unless given) is created with the configured
    artifact location when it does not exist yet.
    """
    import mlflow

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = experiment or str(cfg.get("mlflow.experiment") or "seglake")
    found = mlflow.get_experiment_by_name(name)
    if found is None:
        experiment_id = mlflow.create_experiment(name, artifact_location=artifact_location(cfg))
    else:
        experiment_id = found.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    log.info("MLflow tracking at %s, experiment '%s' (%s)", uri, name, experiment_id)
    return experiment_id


def git_commit() -> str:
    """The commit of the running code: ``$SEGLAKE_GIT_COMMIT``, else ``git rev-parse``, else 'unknown'.

    A ``+dirty`` suffix says the working tree had uncommitted changes.
    """
    env = os.environ.get("SEGLAKE_GIT_COMMIT")
    if env:
        return env
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit


def input_versions(spark, cfg: Config, input_tables: Iterable[str]) -> dict[str, int | None]:
    """Delta version of each input table (None when it does not exist)."""
    return {name: tables.version(spark, cfg, name) for name in input_tables}


def run_tags(spark, cfg: Config, stage: str, input_tables: Iterable[str], run_id: str | None = None,
             as_of: object | None = None) -> dict[str, str]:
    """Tags that make a run reproducible: stage, git commit, env, as-of date, input table versions."""
    tags = {
        "seglake.stage": stage,
        "seglake.git_commit": git_commit(),
        "seglake.env": cfg.env,
        "seglake.lakehouse": cfg.lakehouse,
        "seglake.config_sources": ",".join(str(s) for s in cfg.sources),
    }
    if run_id:
        tags["seglake.run_id"] = str(run_id)
    if as_of is not None:
        tags["seglake.as_of"] = str(as_of)
    for name, version in input_versions(spark, cfg, input_tables).items():
        tags[f"input.{name}.version"] = "missing" if version is None else str(version)
    return tags


@contextlib.contextmanager
def start_run(spark, cfg: Config, stage: str, input_tables: Iterable[str], run_name: str,
              run_id: str | None = None, as_of: object | None = None) -> Iterator["object"]:
    """``mlflow.start_run`` with the reproducibility tags and the config logged as ``config.json``."""
    import mlflow

    setup(cfg)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.set_tags(run_tags(spark, cfg, stage, input_tables, run_id, as_of))
        mlflow.log_dict(json.loads(json.dumps(cfg.data, default=str)), "config.json")
        yield run
