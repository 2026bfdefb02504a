"""Configuration loading: overlays, types, env interpolation, one clear sentence per error."""
from pathlib import Path

import pytest

from seglake.core.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def _conf(tmp_path: Path, overlay: str, env: str = "local") -> Path:
    conf = tmp_path / "conf"
    conf.mkdir(parents=True)
    (conf / "base.yaml").write_text((REPO / "conf" / "base.yaml").read_text())
    (conf / f"{env}.yaml").write_text(overlay)
    return conf


def test_repo_profiles_load_and_merge(tmp_path, monkeypatch):
    local = load_config("local", REPO / "conf")
    assert local.env == "local"
    assert local.get("spark.mode") == "local"
    assert local.get("sessions.inactivity_minutes") == 30
    assert Path(local.lakehouse).is_absolute()
    monkeypatch.setenv("SEGLAKE_LAKEHOUSE", "s3a://bucket/seglake")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.delenv("SEGLAKE_KAFKA_BROKERS", raising=False)
    prod = load_config("prod", REPO / "conf")
    assert prod.lakehouse == "s3a://bucket/seglake"
    assert prod.get("spark.mode") == "cluster"
    assert prod.get("stream.kafka_bootstrap_servers") is None  # ${VAR:-} default -> null
    assert prod.table_path("silver.events") == "s3a://bucket/seglake/silver/events"
    assert prod.get("spark.shuffle_partitions") == 400


def test_unknown_key_names_key_and_file_with_hint(tmp_path):
    conf = _conf(tmp_path, "spark:\n  shufle_partitions: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config("local", conf)
    msg = str(err.value)
    assert "unknown key 'spark.shufle_partitions'" in msg
    assert "local.yaml" in msg
    assert "did you mean 'spark.shuffle_partitions'" in msg


def test_wrong_type_names_key_expected_and_actual(tmp_path):
    conf = _conf(tmp_path, "sessions:\n  inactivity_minutes: thirty\n")
    with pytest.raises(ConfigError, match=r"local\.yaml: key 'sessions\.inactivity_minutes' must be an integer, got string 'thirty'"):
        load_config("local", conf)


def test_bool_is_not_an_int_and_int_is_a_float(tmp_path):
    conf = _conf(tmp_path, "sessions:\n  inactivity_minutes: true\n")
    with pytest.raises(ConfigError, match="must be an integer, got boolean"):
        load_config("local", conf)
    ok = load_config("local", _conf(tmp_path / "b", "clean:\n  max_reject_share: 1\n"))
    assert ok.get("clean.max_reject_share") == 1


def test_missing_required_lakehouse(tmp_path):
    conf = _conf(tmp_path, "paths:\n  lakehouse: null\n")
    with pytest.raises(ConfigError, match=r"local\.yaml: key 'paths\.lakehouse' is required"):
        load_config("local", conf)
    conf = _conf(tmp_path / "b", "paths:\n  lakehouse: ${SEGLAKE_EMPTY_FOR_TEST:-}\n")
    with pytest.raises(ConfigError, match=r"local\.yaml: key 'paths\.lakehouse' is required"):
        load_config("local", conf)


def test_missing_environment_variable_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    conf = _conf(tmp_path, "paths:\n  lakehouse: ${NOT_SET_ANYWHERE}\n")
    with pytest.raises(ConfigError, match=r"key 'paths\.lakehouse' needs the environment variable NOT_SET_ANYWHERE"):
        load_config("local", conf)


def test_broken_yaml_and_missing_file(tmp_path):
    conf = _conf(tmp_path, "spark: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config("local", conf)
    with pytest.raises(ConfigError, match="prod.yaml: configuration file not found"):
        load_config("prod", conf)
    with pytest.raises(ConfigError, match="unknown environment 'staging'"):
        load_config("staging", conf)


def test_overrides_are_validated_like_overlays():
    cfg = load_config("local", REPO / "conf", overrides={"spark": {"master": "local[2]"}})
    assert cfg.get("spark.master") == "local[2]"
    with pytest.raises(ConfigError, match="unknown key 'spark.masterr'"):
        load_config("local", REPO / "conf", overrides={"spark": {"masterr": "x"}})


def test_table_paths_follow_the_contract(tmp_path):
    cfg = load_config("local", REPO / "conf", overrides={"paths": {"lakehouse": str(tmp_path)}})
    assert cfg.table_path("bronze.events_raw") == f"{tmp_path}/bronze/events_raw"
    assert cfg.path("landing") == f"{tmp_path}/_input/landing"
    with pytest.raises(ValueError):
        cfg.table_path("events")


def test_codegen_off_asks_spark_for_interpreted_evaluation_and_every_profile_keeps_it_on(spark, monkeypatch):
    from seglake.core.spark import session_conf

    monkeypatch.setenv("SEGLAKE_LAKEHOUSE", "/tmp/x")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")

    off = session_conf(load_config("local", overrides={"paths": {"lakehouse": "/tmp/x"}, "spark": {"codegen": False}}))
    assert (off["spark.sql.codegen.wholeStage"], off["spark.sql.codegen.factoryMode"]) == ("false", "NO_CODEGEN")
    for env in ("local", "prod", "cluster"):
        on = session_conf(load_config(env, overrides={"paths": {"lakehouse": "/tmp/x"}}))
        assert "spark.sql.codegen.factoryMode" not in on and "spark.sql.codegen.wholeStage" not in on, env
    # the test session itself runs interpreted (tests/conftest.py)
    assert spark.conf.get("spark.sql.codegen.factoryMode") == "NO_CODEGEN"


def test_the_session_skips_python_call_sites_and_a_user_can_turn_them_back_on(spark, monkeypatch):
    """PySpark's call-site capture is off in every profile (a small run's fixed cost: see README,
    Sizing); extra_conf turns it back on."""
    import py4j.clientserver as clientserver
    from pyspark.sql import functions as F

    from seglake.core.spark import session_conf

    monkeypatch.setenv("SEGLAKE_LAKEHOUSE", "/tmp/x")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    for env in ("local", "prod", "cluster"):
        conf = session_conf(load_config(env, overrides={"paths": {"lakehouse": "/tmp/x"}}))
        assert conf["spark.python.sql.dataFrameDebugging.enabled"] == "false", env
    back_on = load_config("local", overrides={"paths": {"lakehouse": "/tmp/x"}})
    back_on.data["spark"]["extra_conf"] = {"spark.python.sql.dataFrameDebugging.enabled": "true"}
    assert session_conf(back_on)["spark.python.sql.dataFrameDebugging.enabled"] == "true"

    # the effect, counted on the wire: an F.col is 3 py4j round trips here, 13 with call sites
    sent = []
    original = clientserver.ClientServerConnection.send_command
    # py4j's own "m d" commands (a Python proxy of a JVM object was garbage-collected) come whenever
    # the collector runs, in this loop or not: they are not calls and are not counted
    monkeypatch.setattr(clientserver.ClientServerConnection, "send_command",
                        lambda self, command, *a, **k: (command.startswith("m\nd\n") or sent.append(command))
                        or original(self, command, *a, **k))
    for _ in range(20):
        F.col("x")
    monkeypatch.undo()
    assert spark.conf.get("spark.python.sql.dataFrameDebugging.enabled") == "false"
    assert len(sent) / 20 <= 4, len(sent) / 20
