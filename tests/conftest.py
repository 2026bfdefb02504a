"""One SparkSession per test run, Delta configured, temp dirs; MLflow pointed at a temp store."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("SEGLAKE_PII_SALT", "test-salt-not-secret")


def make_cfg(lakehouse: Path | str, **overrides):
    """A validated local config rooted at ``lakehouse`` (tests pass their own overrides)."""
    from seglake.config import load_config

    base = {"paths": {"lakehouse": str(lakehouse)},
            "spark": {"master": "local[2]", "shuffle_partitions": 2, "driver_memory": "3g"}}
    for key, value in overrides.items():
        base.setdefault(key, {}).update(value)
    return load_config("local", REPO / "conf", overrides=base)


@pytest.fixture(scope="session")
def spark_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("spark")


@pytest.fixture(scope="session")
def spark(spark_home):
    from seglake.spark import get_spark

    session = get_spark(make_cfg(spark_home / "lakehouse"), app_name="seglake-tests")
    yield session
    session.stop()


@pytest.fixture
def lakehouse(tmp_path) -> Path:
    """A fresh, empty lakehouse folder for one test."""
    path = tmp_path / "lakehouse"
    path.mkdir()
    return path


@pytest.fixture
def cfg(lakehouse):
    return make_cfg(lakehouse)


@pytest.fixture(autouse=True)
def _mlflow_store(tmp_path, monkeypatch):
    """Point MLflow at a temp SQLite store so no test writes to ./mlruns."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
