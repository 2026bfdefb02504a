"""MLflow set-up: embedded SQLite store under the lakehouse, config URI, env override, run tags."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from seglake.core import tables, tracking
from conftest import make_cfg


def test_default_store_is_sqlite_under_the_lakehouse(lakehouse, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg(lakehouse)
    assert tracking.tracking_uri(cfg) == f"sqlite:///{lakehouse}/_mlflow/mlflow.db"
    assert tracking.artifact_location(cfg) == (lakehouse / "_mlflow" / "artifacts").as_uri()
    assert (lakehouse / "_mlflow" / "artifacts").is_dir()


def test_config_uri_then_environment_wins(lakehouse, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg(lakehouse, mlflow={"tracking_uri": "http://mlflow.internal:5000"})
    assert tracking.tracking_uri(cfg) == "http://mlflow.internal:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/elsewhere.db")
    assert tracking.tracking_uri(cfg) == "sqlite:////tmp/elsewhere.db"


def test_remote_lakehouse_without_uri_is_a_clear_error(lakehouse, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg(lakehouse).with_overrides({"paths": {"lakehouse": "s3a://bucket/seglake"}})
    with pytest.raises(ValueError, match="mlflow.tracking_uri must be set"):
        tracking.tracking_uri(cfg)


def test_run_carries_commit_config_and_input_versions(spark, lakehouse, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)   # the embedded default store
    cfg = make_cfg(lakehouse)
    df = spark.createDataFrame([(1,)], "x INT")
    tables.overwrite(df, cfg, "gold.customer_features")
    tables.overwrite(df, cfg, "gold.customer_features")         # version 1
    with tracking.start_run(spark, cfg, "cluster", ["gold.customer_features", "silver.events"],
                            "test run", run_id="r-1", as_of="2026-10-01") as run:
        mlflow.log_metric("m", 1.0)
    assert (lakehouse / "_mlflow" / "mlflow.db").exists()
    got = MlflowClient().get_run(run.info.run_id)
    tags = got.data.tags
    assert tags["input.gold.customer_features.version"] == "1"
    assert tags["input.silver.events.version"] == "missing"
    assert tags["seglake.stage"] == "cluster" and tags["seglake.run_id"] == "r-1"
    assert tags["seglake.as_of"] == "2026-10-01"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(tracking.__file__).parent,
                          capture_output=True, text=True).stdout.strip()
    assert tags["seglake.git_commit"].split("+")[0] == head
    # artifacts land under the lakehouse, and the config is one of them
    config_file = lakehouse / "_mlflow" / "artifacts" / run.info.run_id / "artifacts" / "config.json"
    assert json.loads(config_file.read_text())["paths"]["lakehouse"] == str(lakehouse)
    # the same experiment is reused by the next run
    assert tracking.setup(cfg) == run.info.experiment_id


def test_git_commit_from_environment(monkeypatch):
    monkeypatch.setenv("SEGLAKE_GIT_COMMIT", "abc123")
    assert tracking.git_commit() == "abc123"
