"""Data access of the report: a contract table or ``Missing`` (naming the job that builds it),
the latest as-of date of a table, and the MLflow runs of a stage (a sweep's parent and its child
runs). A local SQLite MLflow store that does not exist yet is never created.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.config import Config
from seglake.report.blocks import Missing


def _read(spark: SparkSession, cfg: Config, table: str, job: str) -> DataFrame:
    if not tables.exists(spark, cfg, table):
        raise Missing(job, table)
    return tables.read(spark, cfg, table)


def _latest(df: DataFrame, column: str = "as_of_date"):
    return df.agg(F.max(column)).first()[0] if column in df.columns else None


def mlflow_runs(cfg: Config, stage: str) -> tuple[Any, list]:
    """(client, runs) of ``stage`` in the configured MLflow store, newest first; (None, []) if none.

    A local SQLite store that does not exist yet is not created.
    """
    from seglake.core import tracking

    uri = tracking.tracking_uri(cfg)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return None, []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(str(cfg.get("mlflow.experiment") or "seglake"))
    if exp is None:
        return client, []
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`seglake.stage` = '{stage}'",
                              order_by=["attributes.start_time DESC"], max_results=500)
    return client, list(runs)


def _parent_and_children(runs: list) -> tuple[Any, list]:
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    if not parents:
        return None, []
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children
