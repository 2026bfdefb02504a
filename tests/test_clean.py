"""Clean stage: crafted bronze rows for every timestamp format, malformed kind and dedupe case."""
from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timezone

import numpy as np
import pytest
from pyspark.sql import functions as F

from seglake.core import contracts
from seglake.stages import clean
from seglake.core import pii, tables
from seglake.core.contracts import RAW_FIELDS
from seglake.core.context import JobContext
from seglake.core.runner import JobFailed, run_job

SALT = "test-salt-not-secret"  # conftest sets SEGLAKE_PII_SALT to this
BRONZE_DDL = ", ".join(f"{c} STRING" for c in RAW_FIELDS) + (
    ", _raw STRING, _malformed BOOLEAN, _format STRING, _source STRING, _source_file STRING, "
    "_batch_id STRING, _ingested_at TIMESTAMP")
NOW = datetime(2026, 11, 1, tzinfo=timezone.utc)


def raw(**fields) -> dict:
    """A valid bronze record (JSON source) with ``fields`` overriding the defaults."""
    rec = {c: None for c in RAW_FIELDS}
    rec.update(event_id="e1", user_id="u1", event_type="page_view", event_ts="2026-08-01T12:00:00Z",
               source="web", device_type="desktop", consent="true", duration_ms="1000",
               scroll_depth="50")
    rec.update(fields)
    return rec


def bronze_df(spark, records, batch="b1", fmt="json", ingested=datetime(2026, 11, 1)):
    rows = []
    for i, rec in enumerate(records):
        rec = dict(rec)
        malformed = rec.pop("_malformed", False)
        line = rec.pop("_raw", None) or json.dumps({k: v for k, v in rec.items() if v is not None})
        rows.append(tuple(rec.get(c) for c in RAW_FIELDS)
                    + (line, malformed, fmt, "landing", rec.get("_file", f"f{i % 2}.jsonl"), batch, ingested))
    return spark.createDataFrame(rows, BRONZE_DDL)


@pytest.fixture(scope="module")
def std():
    from conftest import REPO
    return clean.load_standards(REPO / "conf" / "standardize.yaml")


def standardize(spark, std, records, **kw):
    return clean.standardize(bronze_df(spark, records, **kw), std, SALT, NOW)


# ------------------------------------------------------------------ timestamps

@pytest.mark.parametrize("text, expected", [
    ("2026-08-01T12:34:56Z", datetime(2026, 8, 1, 12, 34, 56)),
    ("2026-08-01T14:34:56.123+02:00", datetime(2026, 8, 1, 12, 34, 56, 123000)),
    ("2026-08-01T07:34:56-05:00", datetime(2026, 8, 1, 12, 34, 56)),
    ("2026-08-01T18:04:56+05:30", datetime(2026, 8, 1, 12, 34, 56)),
    ("2026-08-01 12:34:56", datetime(2026, 8, 1, 12, 34, 56)),
    ("2026-08-01T18:04:56+0530", datetime(2026, 8, 1, 12, 34, 56)),
    ("2026-08-01T12:34:56.5Z", datetime(2026, 8, 1, 12, 34, 56, 500000)),
    (str(int(datetime(2026, 8, 1, 12, 34, 56, tzinfo=timezone.utc).timestamp() * 1000)),
     datetime(2026, 8, 1, 12, 34, 56)),
    ("1.785587696E12", datetime(2026, 8, 1, 12, 34, 56)),
    (" 2026-08-01T12:34:56Z ", datetime(2026, 8, 1, 12, 34, 56)),
    ("not-a-date", None), ("2026-13-45T99:99:99Z", None), ("", None), (None, None), ("2099", None),
])
def test_parse_event_ts_every_contract_format(spark, text, expected):
    df = spark.createDataFrame([(text,)], "s STRING")
    got = df.select(clean.parse_event_ts(F.col("s")).alias("t")).first()["t"]
    assert got == expected


# ------------------------------------------------------------------ malformed kinds

def test_each_malformed_kind_gets_its_reason(spark, std):
    records = [
        raw(event_id="ok"),
        {**raw(event_id="bj"), "_malformed": True, "_raw": '{"event_id": "bj", "user_'},
        raw(event_id="ts1", event_ts="not-a-date"),
        raw(event_id="ts2", event_ts="2026-13-45T99:99:99Z"),
        raw(event_id="ts3", event_ts=""),
        raw(event_id="fut", event_ts="2099-01-01T00:00:00Z"),
        raw(event_id="unk1", event_type="pageview_v2"),
        raw(event_id="unk2", event_type="click_xyz"),
        raw(event_id="neg", price="-5.00"),
        raw(event_id="ids", user_id=None, anonymous_id=" ", device_id=None, email="", phone=None),
        raw(event_id="num", quantity="two"),
        raw(event_id="rng", scroll_depth="140"),
    ]
    got = {r["event_id"] or "bj": r["_reason"]
           for r in standardize(spark, std, records).select(
               # _bronze is kept for rejected rows only; a valid row has its typed event_id
               F.coalesce(F.col("_bronze.event_id"), F.col("event_id")).alias("event_id"), "_reason").collect()}
    assert got == {"ok": None, "bj": "broken_json", "ts1": "unparseable_ts", "ts2": "unparseable_ts",
                   "ts3": "unparseable_ts", "fut": "future_ts", "unk1": "unknown_event_type",
                   "unk2": "unknown_event_type", "neg": "negative_price",
                   "ids": "missing_identifiers", "num": "invalid_number", "rng": "out_of_range"}


def test_quarantine_keeps_bronze_columns_reason_and_run_id(spark, std):
    line = '{"event_id": "x", "email": "a@b.c"'
    df = standardize(spark, std, [{**raw(event_id=None), "_malformed": True, "_raw": line}, raw()])
    q = clean.quarantine_rows(df, "run-1", NOW).collect()
    assert len(q) == 1
    assert q[0]["reason"] == "broken_json" and q[0]["_raw"] == line and q[0]["_run_id"] == "run-1"
    assert q[0]["_batch_id"] == "b1" and q[0]["_format"] == "json"


# ------------------------------------------------------------------ standardization

def test_standardizes_types_devices_currency_units_and_consent(spark, std):
    records = [
        raw(event_id="a", event_type="PAGE_VIEW", device_type="iPhone", currency=" usd ", revenue="10",
            price="5", quantity="2", duration_ms="2500", scroll_depth="75", consent="false",
            source="WEB", channel="Email", properties='{"feature": "export", "n": 3}'),
        raw(event_id="b", event_type="addtocart", device_type="ipad", currency="eur", revenue="100"),
        raw(event_id="c", event_type="Order", device_type=None, source="App"),
        raw(event_id="d", event_type="checkout", device_type="Mac", consent="TRUE"),
        raw(event_id="e", event_type="pageview", device_type="ANDROID", consent=None),
        raw(event_id="f", event_type="Purchase", device_type="fridge"),
    ]
    rows = {r["event_id"]: r for r in standardize(spark, std, records).collect()}
    a = rows["a"]
    assert (a["event_type"], a["device_type"], a["currency"], a["revenue_usd"]) == ("page_view", "ios", "USD", 10.0)
    assert (a["price"], a["quantity"], a["duration_s"], a["scroll_depth"]) == (5.0, 2, 2.5, 0.75)
    assert a["consent"] is False and a["source"] == "web" and a["channel"] == "email"
    assert a["properties"] == {"feature": "export", "n": "3"}
    assert a["event_ts"] == datetime(2026, 8, 1, 12) and str(a["event_date"]) == "2026-08-01"
    assert (rows["b"]["event_type"], rows["b"]["device_type"]) == ("add_to_cart", "tablet")
    assert rows["b"]["revenue_usd"] == pytest.approx(100 * 1.08)
    assert (rows["c"]["event_type"], rows["c"]["device_type"], rows["c"]["source"]) == ("purchase", "unknown", "app")
    assert (rows["d"]["event_type"], rows["d"]["device_type"], rows["d"]["consent"]) == ("checkout_start", "desktop", True)
    assert (rows["e"]["device_type"], rows["e"]["consent"]) == ("android", False)  # missing consent = no consent
    assert rows["f"]["device_type"] == "other"


def _hmac(value: str) -> str:
    """The expected identifier hash, computed independently: Python's HMAC-SHA256 keyed by SALT."""
    return hmac.new(SALT.encode(), value.encode(), hashlib.sha256).hexdigest()


def test_pii_is_hashed_with_salt_and_never_raw(spark, std):
    records = [raw(event_id="a", email=" Alice@Example.com", phone="+1 555 0100", device_id="DEV-9")]
    row = standardize(spark, std, records).drop("_bronze", "_raw_line").first()
    assert row["email_hash"] == _hmac("alice@example.com")
    assert row["phone_hash"] == _hmac("+1 555 0100")
    assert row["device_id"] == _hmac("dev-9")
    flat = json.dumps(row.asDict(), default=str).lower()
    assert "alice" not in flat and "555 0100" not in flat and "dev-9" not in flat


# ------------------------------------------------------------------ dedupe

def test_dedupe_within_batch_exact_resent_and_derived_key(spark, std):
    no_id = dict(event_id=None, user_id="u7", anonymous_id="a7", event_type="search")
    records = [
        raw(event_id="x1"), raw(event_id="x1"),                                     # exact duplicate
        raw(event_id="x2", event_ts="2026-08-02T10:00:00Z"),
        raw(event_id="x2", event_ts="2026-08-02T15:30:00+05:30", _file="day2.jsonl"),  # re-sent, other offset
        raw(**no_id, event_ts="2026-08-03T08:00:00Z"),
        raw(**no_id, event_ts=str(int(datetime(2026, 8, 3, 8, tzinfo=timezone.utc).timestamp() * 1000))),
        raw(**no_id, event_ts="2026-08-03T08:00:01Z"),                             # other second: distinct
        raw(**{**no_id, "event_type": "SEARCH"}, event_ts="2026-08-03 08:00:00"),   # same type after canon.
    ]
    std_df = standardize(spark, std, records)
    out = clean.dedupe_batch(std_df.where("_reason IS NULL").drop("_bronze", "_reason"))
    assert out.count() == 4
    assert out.select("event_key").distinct().count() == 4
    assert sorted(r["event_id"] for r in out.where("event_id IS NOT NULL").collect()) == ["x1", "x2"]


def test_dedupe_of_different_lines_of_one_file_keeps_the_line_with_the_smaller_sha256(spark, std):
    """Two different lines of one file with one event_id: the copy kept is the one whose line has
    the smaller SHA-256 (hashlib, on the lines as bronze holds them), on any partitioning, and the
    persisted batch carries the 32-byte hash instead of the line."""
    pairs = [(raw(event_id=f"k{i}", _file="same.jsonl", page_url=f"/a{i}"),
              raw(event_id=f"k{i}", _file="same.jsonl", page_url=f"/b{i}")) for i in range(12)]
    records = [r for pair in pairs for r in pair]
    lines = {}
    for r in records:   # the line as bronze_df writes it (its "_file" key included)
        lines[(r["event_id"], r["page_url"])] = json.dumps({k: v for k, v in r.items() if v is not None})
    expected = {}
    for a, b in pairs:
        la, lb = lines[(a["event_id"], a["page_url"])], lines[(b["event_id"], b["page_url"])]
        expected[a["event_id"]] = min((hashlib.sha256(la.encode()).digest(), a["page_url"]),
                                      (hashlib.sha256(lb.encode()).digest(), b["page_url"]))[1]
    # the hash decides against the lines' own order in some pairs (else the test would not tell)
    assert any(expected[a["event_id"]] != min(a["page_url"], b["page_url"]) for a, b in pairs)
    std_df = clean.with_raw_order(standardize(spark, std, records))
    assert "_raw_line" not in std_df.columns and dict(std_df.dtypes)["_raw_order"] == "binary"
    for parts in (1, 5):
        out = clean.dedupe_batch(std_df.where("_reason IS NULL").drop("_bronze", "_reason").repartition(parts))
        assert {r["event_id"]: r["page_url"] for r in out.collect()} == expected


# ------------------------------------------------------------------ imputation

def test_impute_duration_median_per_type_device_then_type_then_global(spark):
    rows = ([("page_view", "ios", d) for d in (1.0, 2.0, 9.0)] + [("page_view", "ios", None)]
            + [("page_view", "android", d) for d in (4.0, 6.0, 8.0, 10.0, 12.0)] + [("page_view", "tablet", None)]
            + [("search", "desktop", 100.0)] + [("review", "desktop", None)])
    df = spark.createDataFrame(rows, "event_type STRING, device_type STRING, duration_s DOUBLE")
    out = clean.impute_duration(df, clean.duration_medians(df)).collect()
    got = {(r["event_type"], r["device_type"]): (r["duration_s"], r["duration_imputed"])
           for r in out if r["duration_imputed"]}
    known = np.array([d for _, _, d in rows if d is not None])
    pv = np.array([d for t, _, d in rows if d is not None and t == "page_view"])
    assert got[("page_view", "ios")] == (np.median([1.0, 2.0, 9.0]), True)
    assert got[("page_view", "tablet")] == (np.percentile(pv, 50, method="lower"), True)
    assert got[("review", "desktop")] == (np.percentile(known, 50, method="lower"), True)
    assert sum(1 for r in out if r["duration_imputed"]) == 3
    assert all(r["duration_s"] is not None for r in out)


def test_duration_medians_are_exact_lower_medians_on_any_partitioning(spark):
    # percentile_approx merged its sketches differently on a cluster than locally, so the
    # cluster run imputed other values; the counted median must not depend on the layout
    rng = np.random.default_rng(3)
    types = rng.choice(["page_view", "search"], 30_000)
    devices = rng.choice(["ios", "android", "desktop"], 30_000)
    durations = np.round(rng.lognormal(3.0, 0.8, 30_000), 3)
    df = spark.createDataFrame([(str(t), str(d), float(x)) for t, d, x in zip(types, devices, durations)],
                               "event_type STRING, device_type STRING, duration_s DOUBLE")

    def medians(frame):
        return {(r["level"], r["event_type"], r["device_type"]): r["median"]
                for r in clean.duration_medians(frame).collect()}

    got = medians(df.repartition(1))
    assert medians(df.repartition(7)) == got == medians(df.orderBy(F.rand(5)).repartition(3))
    lower = lambda xs: float(np.percentile(xs, 50, method="lower"))  # noqa: E731
    assert got[("global", None, None)] == lower(durations)
    for t in ("page_view", "search"):
        assert got[("type", t, None)] == lower(durations[types == t])
        for d in ("ios", "android", "desktop"):
            assert got[("type_device", t, d)] == lower(durations[(types == t) & (devices == d)])
    assert len(got) == 1 + 2 + 6


def test_duration_medians_round_to_the_configured_decimals(spark):
    df = spark.createDataFrame([("a", "ios", 1.04), ("a", "ios", 1.06), ("a", "ios", 2.0)],
                               "event_type STRING, device_type STRING, duration_s DOUBLE")
    by_level = {r["level"]: r["median"] for r in clean.duration_medians(df, decimals=1).collect()}
    assert by_level == {"type_device": 1.1, "type": 1.1, "global": 1.1}   # 1.0, 1.1, 2.0 -> lower median 1.1


def test_clean_refuses_a_bad_impute_decimals_setting(spark, lakehouse):
    from conftest import make_cfg

    from seglake.core.config import ConfigError
    with pytest.raises(ConfigError, match="key 'clean.impute_decimals' must be an integer, got string 'ms'"):
        make_cfg(lakehouse, clean={"impute_decimals": "ms"})
    bad = make_cfg(lakehouse, clean={"impute_decimals": 12})
    with pytest.raises(ValueError, match="clean.impute_decimals must be a whole number from 0 to 9, got 12"):
        clean._run(JobContext(spark, bad), datetime.now(timezone.utc))


def test_profiling_events_drops_consent_false(spark):
    df = spark.createDataFrame([("a", True), ("b", False), ("c", None)], "k STRING, consent BOOLEAN")
    assert [r["k"] for r in contracts.profiling_events(df).collect()] == ["a"]
    with pytest.raises(ValueError, match="consent"):
        contracts.profiling_events(df.drop("consent"))


# ------------------------------------------------------------------ the job

def _ctx(spark, cfg, run_id):
    return JobContext(spark, cfg, run_id=run_id, args={"skip_docs": True})


def _run(spark, cfg, run_id):
    """clean through the stage runner (as the CLI runs it): the summary; ops.run_log gets its row."""
    return run_job(_ctx(spark, cfg, run_id), "clean").summary


@pytest.mark.slow
def test_run_twice_and_resent_across_batches(spark, cfg):
    batch1 = [raw(event_id="e1"), raw(event_id="e1"), raw(event_id="e2", duration_ms=None),
              raw(event_id="bad", event_type="click_xyz"), raw(event_id="e3", email="p@x.io", consent="false")]
    tables.append(bronze_df(spark, batch1, batch="b1"), cfg, "bronze.events_raw")
    s1 = _run(spark, cfg, "r1")
    assert (s1["records_in"], s1["valid"], s1["inserted"], s1["duplicates_in_batch"]) == (5, 4, 3, 1)
    assert s1["quarantined_by_reason"] == {"unknown_event_type": 1}
    assert (s1["imputed_durations"], s1["consent_false"]) == (1, 1)
    v1 = tables.version(spark, cfg, "silver.events")

    s2 = _run(spark, cfg, "r2")  # nothing new: nothing changes
    assert s2["batches"] == 0 and tables.version(spark, cfg, "silver.events") == v1

    # batch 2 re-sends e2 (other offset, same instant) and brings one new event
    batch2 = [raw(event_id="e2", event_ts="2026-08-01T14:00:00+02:00", duration_ms=None),
              raw(event_id="e4", event_ts="1785585600000")]
    tables.append(bronze_df(spark, batch2, batch="b2", ingested=datetime(2026, 11, 2)), cfg, "bronze.events_raw")
    s3 = _run(spark, cfg, "r3")
    assert (s3["records_in"], s3["inserted"], s3["duplicates_vs_silver"], s3["duplicates_in_batch"]) == (2, 1, 1, 0)
    silver = tables.read(spark, cfg, "silver.events")
    assert silver.count() == 4 and silver.select("event_key").distinct().count() == 4
    assert silver.where("event_id = 'e2'").first()["_run_id"] == "r1"  # the first copy stays
    assert silver.where("email_hash IS NOT NULL").first()["email_hash"] == \
        _hmac("p@x.io")
    q = tables.read(spark, cfg, "silver.events_quarantine")
    assert [(r["event_id"], r["reason"], r["_run_id"]) for r in q.collect()] == [("bad", "unknown_event_type", "r1")]

    log = tables.read(spark, cfg, "ops.run_log").where("job = 'clean'")
    assert {r["run_id"]: r["status"] for r in log.collect()} == {"r1": "success", "r2": "noop", "r3": "success"}
    r1 = log.where("run_id = 'r1'").first()
    m = r1["metrics"]
    assert (m["records_in"], m["quarantined_by_reason.unknown_event_type"], m["imputed_durations"]) == ("5", "1", "1")
    # counts from the Delta log: 5 bronze rows read; 3 events, 1 quarantined row, 1 batch written
    assert r1["rows_in"]["bronze.events_raw"] == 5
    assert (r1["rows_out"]["silver.events"], r1["rows_out"]["silver.events_quarantine"],
            r1["rows_out"]["ops.clean_batches"]) == (3, 1, 1)
    r3 = log.where("run_id = 'r3'").first()
    assert r3["rows_in"]["bronze.events_raw"] == 7           # both batches are in bronze now
    assert r3["rows_out"]["silver.events"] == 1              # e4 inserted; the re-sent e2 is not
    assert r3["error"] is None and r1["duration_s"] > 0


@pytest.mark.slow
def test_a_batch_above_the_reject_share_is_set_aside_and_later_batches_are_cleaned(spark, lakehouse):
    from conftest import make_cfg
    cfg = make_cfg(lakehouse, clean={"max_reject_share": 0.3})
    bad = [raw(event_id="ok1"), raw(event_id="n1", price="-1"), raw(event_id="n2", event_ts="nope")]
    good = [raw(event_id="g1"), raw(event_id="g2", event_type="click_xyz"), raw(event_id="g3"), raw(event_id="g4")]
    tables.append(bronze_df(spark, bad, batch="b1"), cfg, "bronze.events_raw")
    tables.append(bronze_df(spark, good, batch="b2", ingested=datetime(2026, 11, 2)), cfg, "bronze.events_raw")

    ctx = _ctx(spark, cfg, "rx")
    result = run_job(ctx, "clean")
    assert result.status == "set_aside"
    s = result.summary
    assert list(s["set_aside"]) == ["b1"] and "2 of 3 records (66.7%) rejected" in s["set_aside"]["b1"]
    assert (s["batches"], s["records_in"], s["inserted"], s["quarantined"]) == (1, 4, 3, 1)
    # silver and quarantine hold batch b2 only; b1 is listed with its counts
    assert sorted(r["event_id"] for r in tables.read(spark, cfg, "silver.events").collect()) == ["g1", "g3", "g4"]
    assert [r["event_id"] for r in tables.read(spark, cfg, "silver.events_quarantine").collect()] == ["g2"]
    aside = tables.read(spark, cfg, "ops.clean_set_aside").collect()
    assert [(r["_batch_id"], r["records"], r["quarantined"]) for r in aside] == [("b1", 3, 2)]
    assert aside[0]["by_reason"] == {"negative_price": 1, "unparseable_ts": 1}
    assert [r["_batch_id"] for r in tables.read(spark, cfg, "ops.clean_batches").collect()] == ["b2"]
    log = tables.read(spark, cfg, "ops.run_log").where("run_id = 'rx'").first()
    assert log["status"] == "set_aside"

    # a later run skips it (nothing else pending: noop)
    again = run_job(_ctx(spark, cfg, "ry"), "clean")
    assert (again.status, again.summary["set_aside_skipped"]) == ("noop", 1)

    # after the fix (here: a threshold that accepts it), --retry-set-aside cleans it
    fixed = make_cfg(lakehouse, clean={"max_reject_share": 0.9})
    retry = run_job(JobContext(spark, fixed, run_id="rz", args={"skip_docs": True, "retry_set_aside": True}), "clean")
    assert retry.status == "success" and "set_aside" not in retry.summary
    assert (retry.summary["batches"], retry.summary["inserted"], retry.summary["quarantined"]) == (1, 1, 2)
    assert tables.read(spark, cfg, "ops.clean_set_aside").count() == 0
    assert sorted(r["event_id"] for r in tables.read(spark, cfg, "silver.events").collect()) == ["g1", "g3", "g4", "ok1"]


@pytest.mark.slow
def test_a_batch_failing_a_critical_expectation_alone_is_set_aside_and_the_others_are_cleaned(spark, lakehouse,
                                                                                             tmp_path):
    """An operator's own critical expectation (price at most 1000) fails on the two batches
    together; validated alone, b1 fails and b2 passes: b1 is set aside, b2 is cleaned."""
    import json

    from conftest import REPO, make_cfg
    suite = json.loads((REPO / "expectations" / "silver_events.json").read_text())
    suite["name"] = "guarded"
    suite["expectations"].append({"type": "expect_column_values_to_be_between",
                                  "kwargs": {"column": "price", "max_value": 1000}})
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "guarded.json").write_text(json.dumps(suite))
    cfg = make_cfg(lakehouse, clean={"suite": "guarded", "expectations_dir": str(suites)})
    tables.append(bronze_df(spark, [raw(event_id="x1"), raw(event_id="x2", event_type="purchase", price="5000")],
                            batch="b1"), cfg, "bronze.events_raw")
    tables.append(bronze_df(spark, [raw(event_id="g1"), raw(event_id="g2", event_type="purchase", price="20")],
                            batch="b2", ingested=datetime(2026, 11, 2)), cfg, "bronze.events_raw")

    result = run_job(_ctx(spark, cfg, "rq"), "clean")
    assert result.status == "set_aside"
    why = result.summary["set_aside"]["b1"]
    assert list(result.summary["set_aside"]) == ["b1"]
    assert "failed the quality suite on its own" in why and "expect_column_values_to_be_between(price)" in why
    assert (result.summary["batches"], result.summary["inserted"]) == (1, 2)
    assert sorted(r["event_id"] for r in tables.read(spark, cfg, "silver.events").collect()) == ["g1", "g2"]
    assert [r["_batch_id"] for r in tables.read(spark, cfg, "ops.clean_batches").collect()] == ["b2"]
    aside = tables.read(spark, cfg, "ops.clean_set_aside").collect()
    assert [(r["_batch_id"], r["records"], r["quarantined"]) for r in aside] == [("b1", 2, 0)]

    # alone and failing, the batch is set aside again on retry (exit 5, not a crash)
    retry = run_job(JobContext(spark, cfg, run_id="rr", args={"skip_docs": True, "retry_set_aside": True}), "clean")
    assert retry.status == "set_aside" and list(retry.summary["set_aside"]) == ["b1"]
    assert "failed the quality suite:" in retry.summary["set_aside"]["b1"]
    assert tables.read(spark, cfg, "silver.events").count() == 2


def test_every_pending_batch_set_aside_writes_no_silver(spark, lakehouse):
    from conftest import make_cfg
    cfg = make_cfg(lakehouse, clean={"max_reject_share": 0.3})
    records = [raw(event_id="ok1"), raw(event_id="n1", price="-1"), raw(event_id="n2", event_ts="nope")]
    tables.append(bronze_df(spark, records), cfg, "bronze.events_raw")
    result = run_job(_ctx(spark, cfg, "rx"), "clean")
    assert result.status == "set_aside" and list(result.summary["set_aside"]) == ["b1"]
    assert not tables.exists(spark, cfg, "silver.events")
    assert not tables.exists(spark, cfg, "silver.events_quarantine")
    assert tables.read(spark, cfg, "ops.run_log").first()["status"] == "set_aside"


def test_broken_bronze_schema_is_a_clear_error(spark, cfg):
    tables.append(bronze_df(spark, [raw()]).drop("event_ts", "_batch_id"), cfg, "bronze.events_raw")
    with pytest.raises(ValueError, match=r"missing columns \['event_ts', '_batch_id'\]"):
        clean.run(_ctx(spark, cfg, "ry"))
    assert not tables.exists(spark, cfg, "silver.events")


# ------------------------------------------------------------------ on generated data

@pytest.mark.slow
def test_generated_data_counts_exact_and_rerun_is_noop(spark, pipeline_through):
    """Quarantine and dedupe counts equal the generator's planted numbers exactly."""
    cfg, gen_dir = pipeline_through("clean")
    counts = json.loads((gen_dir / "ground_truth" / "counts.json").read_text())
    s = pipeline_through.summaries["clean"]
    silver = tables.read(spark, cfg, "silver.events")

    assert s["records_in"] == counts["raw_records"]
    assert s["quarantined_by_reason"] == {k: v for k, v in counts["malformed_by_kind"].items() if v}
    assert s["quarantined"] == counts["malformed_injected"]
    assert s["deduplicated"] == counts["duplicates_injected"]
    assert silver.count() == counts["valid_events"]
    assert silver.select("event_key").distinct().count() == counts["valid_events"]
    assert tables.read(spark, cfg, "silver.events_quarantine").count() == counts["malformed_injected"]
    assert s["consent_false"] == counts["consent_false_events"]
    assert s["imputed_durations"] == counts["missing_duration_events"]

    # no raw email or phone anywhere in silver (every string column, map values included)
    truth = spark.read.parquet(str(gen_dir / "ground_truth" / "identifiers.parquet"))
    pii_raw = truth.where(F.col("identifier_type").isin("email", "phone")).select(
        F.col("identifier").alias("v")).distinct()
    assert pii_raw.count() > 0
    str_cols = [f.name for f in silver.schema.fields if f.dataType.simpleString() == "string"]
    values = silver.select(F.explode(F.array_union(
        F.array(*[F.col(c) for c in str_cols]),
        F.coalesce(F.map_values("properties"), F.array().cast("array<string>")))).alias("v"))
    assert values.join(pii_raw, "v", "left_semi").count() == 0
    # ... while their keyed hashes are there
    hashed = pii_raw.select(pii.hash_identifier(F.col("v"), SALT).alias("email_hash"))
    assert silver.join(hashed, "email_hash", "left_semi").count() > 0

    # a second run changes nothing
    before = tables.version(spark, cfg, "silver.events")
    again = clean.run(JobContext(spark, cfg, run_id="rerun", args={"skip_docs": True}))
    assert again["batches"] == 0
    assert tables.version(spark, cfg, "silver.events") == before


def test_session_settings_come_back_after_the_block_even_when_it_fails(spark):
    """clean and generate change code generation settings only while they run (core.spark.session_settings)."""
    from seglake.core.spark import session_settings
    unset_key, set_key = "spark.sql.codegen.hugeMethodLimit", "spark.sql.shuffle.partitions"
    spark.conf.unset(unset_key)
    before = spark.conf.get(set_key)
    with pytest.raises(RuntimeError, match="inside"):
        with session_settings(spark, {unset_key: "8000", set_key: "3"}):
            assert spark.conf.get(unset_key) == "8000" and spark.conf.get(set_key) == "3"
            raise RuntimeError("inside")
    assert spark.conf.get(unset_key, None) is None
    assert spark.conf.get(set_key) == before
