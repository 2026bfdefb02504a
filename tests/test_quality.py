"""The Great Expectations adapter on small Spark DataFrames."""
from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

import pytest

from seglake.core import quality
from conftest import make_cfg

SUITE = {
    "name": "tiny",
    "expectations": [
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "k"}},
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "p", "min_value": 0}},
        {"type": "expect_column_max_to_be_between",
         "kwargs": {"column": "ts", "max_value": {"$PARAMETER": "max_ts"}}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "p"}, "severity": "warning"},
    ],
}


@pytest.fixture
def qcfg(tmp_path):
    exp = tmp_path / "expectations"
    exp.mkdir()
    (exp / "tiny.json").write_text(json.dumps(SUITE))
    return make_cfg(tmp_path / "lake", clean={"expectations_dir": str(exp)})


def test_passing_suite_writes_results_and_docs(spark, qcfg):
    df = spark.createDataFrame([("a", 1.0, datetime(2026, 8, 1)), ("b", None, datetime(2026, 8, 2))],
                               "k STRING, p DOUBLE, ts TIMESTAMP")
    res = quality.validate(df, "tiny", qcfg, "run-1", parameters={"max_ts": datetime(2026, 9, 1)})
    assert res.success and res.failed == []
    assert [w["type"] for w in res.warnings] == ["expect_column_values_to_not_be_null"]
    assert res.statistics["evaluated_expectations"] == 4
    saved = json.loads(Path(res.results_path).read_text())
    assert saved["success"] is False  # GX counts the warning as failed; we only gate on critical ones
    assert Path(res.results_path).parent == Path(qcfg.lakehouse) / "_quality" / "results" / "tiny"
    assert Path(res.docs_path).exists() and Path(res.docs_path).name == "index.html"
    quality.require(res, "t")  # no raise


def test_critical_failures_are_named_and_raise(spark, qcfg):
    df = spark.createDataFrame([("a", -1.0, datetime(2026, 8, 1)), ("a", 2.0, datetime(2099, 1, 1))],
                               "k STRING, p DOUBLE, ts TIMESTAMP")
    res = quality.validate(df, "tiny", qcfg, "run-2", parameters={"max_ts": datetime(2026, 9, 1)},
                           build_docs=False)
    assert not res.success
    assert sorted(f["type"] for f in res.failed) == [
        "expect_column_max_to_be_between", "expect_column_values_to_be_between",
        "expect_column_values_to_be_unique"]
    with pytest.raises(quality.QualityError, match=r"^silver.events was not written: suite tiny failed 3"):
        quality.require(res, "silver.events")


def test_a_failed_warning_is_logged_as_warned_never_as_all_passed(spark, qcfg, caplog):
    # p is null once: only the warning-level not-null expectation fails
    df = spark.createDataFrame([("a", 1.0, datetime(2026, 8, 1)), ("b", None, datetime(2026, 8, 2))],
                               "k STRING, p DOUBLE, ts TIMESTAMP")
    with caplog.at_level(logging.INFO, logger="seglake.core.quality"):
        res = quality.validate(df, "tiny", qcfg, "run-w", parameters={"max_ts": datetime(2026, 9, 1)},
                               build_docs=False)
    assert res.success and res.failed == []  # a warning does not fail the table ...
    assert (res.passed, res.evaluated) == (3, 4)  # ... but it did not pass either
    assert res.headline() == ("3 of 4 expectations passed; 0 failed at error level; "
                              "1 only warned: expect_column_values_to_not_be_null(p)")
    lines = [r for r in caplog.records if r.name == "seglake.core.quality" and "suite tiny" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    msg = lines[0].getMessage()
    assert msg == "suite tiny: " + res.headline()
    assert "all" not in msg.split() and lines[0].levelno == logging.WARNING
    assert res.summary() == msg


def test_messages_name_failed_and_warned_expectations_without_data_values(spark, qcfg, caplog):
    # critical: duplicate k, negative p, ts after max_ts; warning: a null p
    df = spark.createDataFrame([("a", -7.5, datetime(2099, 1, 1)), ("a", None, datetime(2026, 8, 1))],
                               "k STRING, p DOUBLE, ts TIMESTAMP")
    with caplog.at_level(logging.INFO, logger="seglake.core.quality"):
        res = quality.validate(df, "tiny", qcfg, "run-x", parameters={"max_ts": datetime(2026, 9, 1)},
                               build_docs=False)
    assert not res.success and (res.passed, res.evaluated) == (0, 4)
    assert res.summary() == (
        "suite tiny failed 3 critical expectation(s): expect_column_max_to_be_between(ts), "
        "expect_column_values_to_be_between(p), expect_column_values_to_be_unique(k); 0 of 4 passed; "
        "1 only warned: expect_column_values_to_not_be_null(p)")
    logged = [r.getMessage() for r in caplog.records if r.name == "seglake.core.quality"]
    assert res.summary() in logged
    with pytest.raises(quality.QualityError) as err:
        quality.require(res, "silver.events")
    for text in [str(err.value), res.headline(), *logged]:
        assert "2099" not in text and "-7.5" not in text  # observed values are data: never in messages


def test_missing_suite_is_clear(spark, qcfg):
    df = spark.createDataFrame([("a",)], "k STRING")
    with pytest.raises(FileNotFoundError, match="expectation suite 'nope' not found"):
        quality.validate(df, "nope", qcfg, "r")


def test_project_suite_is_valid_gx_json():
    from conftest import REPO
    data = quality.load_suite("silver_events", REPO / "expectations")
    from seglake.stages.clean import SILVER_COLUMNS
    cols = next(e for e in data["expectations"] if e["type"] == "expect_table_columns_to_match_ordered_list")
    assert tuple(cols["kwargs"]["column_list"]) == SILVER_COLUMNS
