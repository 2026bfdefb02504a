"""Person-level consent: the ledger ``ops.consent`` (CLI and consent events, hashes only,
idempotent) and its effect on every reader (customer_events, enriched events, features, labels)
from the as-of of the withdrawal on."""
from __future__ import annotations

import hashlib
import hmac
import json
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from conftest import REPO
from seglake.core import pii, tables
from seglake.core.context import JobContext
from seglake.core.contracts import (CONSENT_LEDGER, CUSTOMER_FEATURES, ENRICHED_EVENTS, IDENTITY_EXCLUDED,
                                    IDENTITY_MAP, SILVER_EVENTS, customer_events, exclude_withdrawn,
                                    withdrawn_customers)
from seglake.stages import consent

SILVER_DDL = ("event_key STRING, user_id STRING, anonymous_id STRING, device_id STRING, email_hash STRING, "
              "phone_hash STRING, event_type STRING, event_ts TIMESTAMP, event_date DATE, source STRING, "
              "device_type STRING, revenue_usd DOUBLE, session_id STRING, consent BOOLEAN")
MAP_DDL = "identifier_type STRING, identifier STRING, customer_id STRING"
EMAIL_A, EMAIL_B, EMAIL_E = "a@x.io", "b@x.io", "e@x.io"
KIOSK = "kiosk-1"


def _h(cfg, value: str) -> str:
    """The keyed hash silver stores (pii.hash_identifier: HMAC-SHA256 of lower(trim(value)))."""
    return hmac.new(pii.key(cfg).encode(), value.strip().lower().encode(), hashlib.sha256).hexdigest()


def _ev(key, ts, *, user=None, anon=None, device=None, email=None, etype="page_view", consent_flag=True,
        revenue=None):
    return (key, user, anon, device, email, None, etype, ts, ts.date(), "web", "desktop", revenue, None,
            consent_flag)


def _lake(spark, cfg, extra=()):
    """Customers cA (user u-A, cookie-A, a@x.io), cB (user u-B), cE (e@x.io); a kiosk device the
    identity guard excluded."""
    events = [
        _ev("a1", datetime(2026, 8, 20, 12), user="u-A"),
        _ev("a2", datetime(2026, 8, 25, 12), anon="cookie-A", etype="purchase", revenue=20.0),
        _ev("a3", datetime(2026, 8, 28, 12), email=_h(cfg, EMAIL_A)),
        _ev("b1", datetime(2026, 8, 21, 12), user="u-B"),
        _ev("b2", datetime(2026, 8, 29, 12), user="u-B", etype="purchase", revenue=10.0),
        _ev("e1", datetime(2026, 8, 22, 12), email=_h(cfg, EMAIL_E)),
        *extra,
    ]
    tables.overwrite(spark.createDataFrame(events, SILVER_DDL), cfg, SILVER_EVENTS, partition_by=["event_date"])
    _map(spark, cfg, e_owner="cE")
    tables.overwrite(spark.createDataFrame([("device_id", _h(cfg, KIOSK), 30)],
                                           "identifier_type STRING, identifier STRING, n LONG"),
                     cfg, IDENTITY_EXCLUDED)
    return cfg


def _map(spark, cfg, e_owner: str) -> None:
    """The identity map; ``e_owner`` holds e@x.io (cE, or cA once identity merged them)."""
    rows = [("user_id", "u-A", "cA"), ("anonymous_id", "cookie-A", "cA"), ("email", _h(cfg, EMAIL_A), "cA"),
            ("user_id", "u-B", "cB"), ("email", _h(cfg, EMAIL_E), e_owner)]
    tables.overwrite(spark.createDataFrame(rows, MAP_DDL), cfg, IDENTITY_MAP)


def _run(spark, cfg, run_id, **args):
    return consent.run(JobContext(spark, cfg, run_id=run_id, args=args))


def _ledger(spark, cfg):
    return {(r["identifier_type"], r["identifier"], r["customer_id"], r["action"], r["source"])
            for r in tables.read(spark, cfg, CONSENT_LEDGER).collect()}


def _epoch(dt: datetime) -> int:
    return int(dt.replace(tzinfo=timezone.utc).timestamp())


def _keys(df):
    return {r["event_key"] for r in df.select("event_key").collect()}


def _customers(df):
    return {r["customer_id"] for r in df.select("customer_id").distinct().collect()}


def _files_holding(root: Path, needle: str) -> list[str]:
    """Files under ``root`` that hold ``needle`` (case-insensitive): Parquet decoded, others as bytes."""
    import pyarrow.parquet as pq

    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            values = [v for col in pq.read_table(path).to_pydict().values() for v in col]
            hit = any(needle.lower() in str(v).lower() for v in values if v is not None)
        else:
            hit = needle.lower().encode() in path.read_bytes().lower()
        if hit:
            found.append(str(path))
    return found


# --------------------------------------------------------------------------- (a) the CLI


def test_cli_withdrawal_records_the_hash_only_and_a_rerun_adds_nothing(spark, cfg):
    from seglake.core.runner import run_job

    _lake(spark, cfg)
    args = {"withdraw": [" A@X.io "], "at": "2024-03-01T10:00:00Z"}
    first = run_job(JobContext(spark, cfg, run_id="c1", args=args), "consent").summary
    assert first == {"source": "cli", "withdrawals_recorded": 1, "grants_recorded": 0, "customers_withdrawn": 1,
                     "ledger": CONSENT_LEDGER}
    ledger = tables.read(spark, cfg, CONSENT_LEDGER)
    # the map knows the value only as an email: one row, its hash, with the customer of that time
    assert _ledger(spark, cfg) == {("email", _h(cfg, EMAIL_A), "cA", "withdraw", "cli")}
    row = ledger.select("request_id", "run_id", F.unix_timestamp("effective_at").alias("t")).first()
    assert row["request_id"].startswith("cli-") and row["run_id"] == "c1"
    assert row["t"] == _epoch(datetime(2024, 3, 1, 10))
    # no raw email anywhere: not in a row, not in a data file, not in the Delta log, not in the run log
    assert not [v for r in ledger.collect() for v in r if v is not None and EMAIL_A in str(v).lower()]
    assert _files_holding(Path(cfg.table_path(CONSENT_LEDGER)), EMAIL_A) == []
    log = tables.read(spark, cfg, "ops.run_log").where(F.col("job") == "consent").first()
    assert EMAIL_A not in log["metrics_json"].lower()
    # a rerun (the same --at given as a datetime this time) adds nothing
    again = _run(spark, cfg, "c2", withdraw=["a@x.io"], at=datetime(2024, 3, 1, 10, tzinfo=timezone.utc))
    assert (again["withdrawals_recorded"], again["customers_withdrawn"]) == (0, 1)
    assert tables.read(spark, cfg, CONSENT_LEDGER).count() == 1


def test_unknown_values_are_recorded_in_every_form_that_can_match_later(spark, cfg):
    _lake(spark, cfg)
    phone = "+1 555 123 4567"
    summary = _run(spark, cfg, "c1", withdraw=["new@x.io", "u-Z", phone], at="2026-08-01")
    hashed = {"device_id", "email", "phone"}
    assert _ledger(spark, cfg) == (
        {(t, _h(cfg, "new@x.io"), None, "withdraw", "cli") for t in hashed}
        | {(t, _h(cfg, phone), None, "withdraw", "cli") for t in hashed}
        | {(t, _h(cfg, "u-Z"), None, "withdraw", "cli") for t in hashed}
        | {("user_id", "u-Z", None, "withdraw", "cli"), ("anonymous_id", "u-Z", None, "withdraw", "cli")})
    assert summary["withdrawals_recorded"] == 11 and summary["customers_withdrawn"] == 0
    # the email and the phone number are never stored in clear
    values = [r["identifier"] for r in tables.read(spark, cfg, CONSENT_LEDGER).collect()]
    assert "new@x.io" not in values and phone not in values
    # a date alone means its 00:00 UTC
    times = {r[0] for r in tables.read(spark, cfg, CONSENT_LEDGER).select(F.unix_timestamp("effective_at")).collect()}
    assert times == {_epoch(datetime(2026, 8, 1))}


def test_cli_arguments_parse():
    from seglake.cli import build_parser

    args = build_parser().parse_args(["run", "consent", "--withdraw", "a@x.io", "--withdraw", "u-1", "--grant", "u-2",
                                      "--at", "2026-09-01T10:00:00+02:00"])
    assert (args.job, args.withdraw, args.grant) == ("consent", ["a@x.io", "u-1"], ["u-2"])
    # checked when read; the job reads it in time.zone (a date or a time without offset is local to it)
    assert args.at == "2026-09-01T10:00:00+02:00"
    assert consent.parse_instant(args.at, "Asia/Tokyo") == datetime(2026, 9, 1, 8, 0, tzinfo=timezone.utc)
    assert build_parser().parse_args(["run", "consent"]).withdraw == []
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "consent", "--withdraw", "x", "--at", "next tuesday"])
    assert consent.parse_instant("2026-09-01T10:00:00Z") == datetime(2026, 9, 1, 10, tzinfo=timezone.utc)
    assert consent.parse_instant("2026-09-01") == datetime(2026, 9, 1, tzinfo=timezone.utc)
    # in a calendar zone other than UTC: its midnight, and its wall clock
    assert consent.parse_instant("2026-09-01", "Asia/Tokyo") == datetime(2026, 8, 31, 15, tzinfo=timezone.utc)
    assert consent.parse_instant("2026-09-01T10:00", "Asia/Tokyo") == datetime(2026, 9, 1, 1, tzinfo=timezone.utc)


def test_consent_event_types_are_canonical_and_allowed_in_silver():
    from seglake.stages.clean import load_standards

    mapping = load_standards(REPO / "conf" / "standardize.yaml").event_type_map
    assert mapping["consent_withdraw"] == mapping["consent_withdrawn"] == "consent_withdrawn"
    assert mapping["consent_grant"] == mapping["consent_granted"] == "consent_granted"
    suite = json.loads((REPO / "expectations" / "silver_events.json").read_text())
    allowed = next(e["kwargs"]["value_set"] for e in suite["expectations"]
                   if e["type"] == "expect_column_values_to_be_in_set" and e["kwargs"]["column"] == "event_type")
    assert {"consent_withdrawn", "consent_granted"} <= set(allowed)


# --------------------------------------------------------------------------- (b) consent events


def test_consent_events_become_ledger_rows_once(spark, cfg):
    withdrawn_event = _ev("w1", datetime(2026, 8, 27, 9), user="u-B", email=_h(cfg, EMAIL_B),
                          device=_h(cfg, KIOSK), etype="consent_withdrawn", consent_flag=False)
    granted_event = _ev("g1", datetime(2026, 8, 30, 12), user="u-B", etype="consent_granted")
    _lake(spark, cfg, extra=[withdrawn_event, granted_event])
    summary = _run(spark, cfg, "e1")
    # every non-null identifier of the event, in silver's (the map's) form; the excluded kiosk is not one's own
    assert _ledger(spark, cfg) == {("user_id", "u-B", "cB", "withdraw", "event"),
                                   ("email", _h(cfg, EMAIL_B), None, "withdraw", "event"),
                                   ("user_id", "u-B", "cB", "grant", "event")}
    times = {(r["action"], r["t"]) for r in tables.read(spark, cfg, CONSENT_LEDGER)
             .select("action", F.unix_timestamp("effective_at").alias("t")).collect()}
    assert times == {("withdraw", _epoch(datetime(2026, 8, 27, 9))), ("grant", _epoch(datetime(2026, 8, 30, 12)))}
    assert summary == {"source": "events", "withdrawals_recorded": 2, "grants_recorded": 1,
                       "customers_withdrawn": 0, "ledger": CONSENT_LEDGER}   # the grant came last
    rerun = _run(spark, cfg, "e2")
    assert (rerun["withdrawals_recorded"], rerun["grants_recorded"]) == (0, 0)
    assert tables.read(spark, cfg, CONSENT_LEDGER).count() == 3
    # the effect: cB is out from the day after the withdrawal until the grant
    assert "cB" in _customers(customer_events(spark, cfg, end=date(2026, 8, 27)))
    assert "cB" not in _customers(customer_events(spark, cfg, end=date(2026, 8, 28)))
    assert "cB" not in _customers(customer_events(spark, cfg, end=date(2026, 8, 30)))
    assert _keys(customer_events(spark, cfg, end=date(2026, 8, 31))) >= {"b1", "b2"}
    # consent events are decisions, not behaviour: never profiled (g1 has consent=true)
    assert not _keys(customer_events(spark, cfg)) & {"w1", "g1"}


# --------------------------------------------------------------------------- (c) from when


@pytest.mark.slow
def test_withdrawal_excludes_from_its_as_of_on_and_a_later_grant_re_includes(spark, cfg):
    _lake(spark, cfg)
    assert _keys(customer_events(spark, cfg, end=date(2026, 8, 27))) == {"a1", "a2", "b1", "e1"}
    _run(spark, cfg, "c1", withdraw=["u-A"], at="2026-08-26T10:00:00Z")
    # as-of 08-26 (its 00:00 is before the withdrawal): included; as-of 08-27: excluded
    assert _keys(customer_events(spark, cfg, end=date(2026, 8, 26))) == {"a1", "a2", "b1", "e1"}
    assert _keys(customer_events(spark, cfg, end=date(2026, 8, 27))) == {"b1", "e1"}
    # an inclusive end is judged at the same instant (its 00:00): day 08-26's events, cA still in
    assert _keys(customer_events(spark, cfg, end=date(2026, 8, 26), end_inclusive=True)) == {"a1", "a2", "b1", "e1"}
    # the judging instant can be given; withdrawals=False keeps everyone (silver.enriched_events)
    assert "cA" in _customers(customer_events(spark, cfg, end=date(2026, 8, 27), consent_at=date(2026, 8, 26)))
    assert "cA" in _customers(customer_events(spark, cfg, end=date(2026, 8, 27), withdrawals=False))
    assert _customers(withdrawn_customers(spark, cfg, datetime(2026, 8, 26, 10, tzinfo=timezone.utc))) == {"cA"}
    assert _customers(withdrawn_customers(spark, cfg, datetime(2026, 8, 26, 9, 59, tzinfo=timezone.utc))) == set()
    # a grant through another identifier of the same customer, effective 08-28 00:00
    _run(spark, cfg, "c2", grant=[EMAIL_A], at="2026-08-28T00:00:00Z")
    assert _keys(customer_events(spark, cfg, end=date(2026, 8, 27))) == {"b1", "e1"}
    assert _keys(customer_events(spark, cfg, end=date(2026, 8, 28))) == {"a1", "a2", "b1", "e1"}
    assert _keys(customer_events(spark, cfg, end=date(2026, 9, 1))) == {"a1", "a2", "a3", "b1", "b2", "e1"}


def test_a_withdrawal_and_a_grant_at_the_same_instant_withdraw(spark, cfg):
    _lake(spark, cfg)
    _run(spark, cfg, "c1", withdraw=["u-B"], grant=["u-B"], at="2026-08-24T00:00:00Z")
    assert {r[3] for r in _ledger(spark, cfg)} == {"withdraw", "grant"}
    assert _customers(withdrawn_customers(spark, cfg, date(2026, 8, 25))) == {"cB"}


def test_without_a_withdrawal_nothing_is_joined(spark, cfg):
    _lake(spark, cfg)
    df = tables.read(spark, cfg, IDENTITY_MAP)
    assert exclude_withdrawn(spark, cfg, df, date(2026, 9, 1)) is df          # no ledger
    _run(spark, cfg, "c1", grant=["u-A"], at="2026-08-01")
    assert exclude_withdrawn(spark, cfg, df, date(2026, 9, 1)) is df          # grants only
    _run(spark, cfg, "c2", withdraw=["u-A"], at="2026-08-10")
    assert exclude_withdrawn(spark, cfg, df, date(2026, 8, 10)) is not df
    assert _customers(exclude_withdrawn(spark, cfg, df, date(2026, 8, 11))) == {"cB", "cE"}


# --------------------------------------------------------------------------- (d) the whole person


def test_withdrawal_by_one_identifier_excludes_the_whole_customer(spark, cfg):
    _lake(spark, cfg)
    _run(spark, cfg, "c1", withdraw=["cookie-A"], at="2026-08-01T00:00:00Z")
    assert _ledger(spark, cfg) == {("anonymous_id", "cookie-A", "cA", "withdraw", "cli")}
    # a1 (user id) and a3 (email) go with the cookie's a2
    assert _keys(customer_events(spark, cfg, end=date(2026, 9, 1))) == {"b1", "b2", "e1"}


def test_a_withdrawal_follows_its_identifier_into_a_merged_customer(spark, cfg):
    _lake(spark, cfg)
    _run(spark, cfg, "c1", withdraw=[EMAIL_E], at="2026-08-23T00:00:00Z")
    assert _customers(withdrawn_customers(spark, cfg, date(2026, 8, 24))) == {"cE"}
    _map(spark, cfg, e_owner="cA")   # identity merged e@x.io into cA
    assert _customers(withdrawn_customers(spark, cfg, date(2026, 8, 24))) == {"cA"}
    assert _keys(customer_events(spark, cfg, end=date(2026, 9, 1))) == {"b1", "b2"}
    assert _ledger(spark, cfg) == {("email", _h(cfg, EMAIL_E), "cE", "withdraw", "cli")}  # as recorded


# --------------------------------------------------------------------------- (e) features and labels


@pytest.mark.slow
def test_features_after_the_withdrawal_have_no_row_and_others_are_unchanged(spark, cfg):
    from seglake.stages import enriched, features

    _lake(spark, cfg)
    args = {"start": date(2026, 8, 26), "end": date(2026, 8, 27), "step_days": 1}
    features.run(JobContext(spark, cfg, run_id="f1", args=args))
    cols = list(features.FEATURE_COLUMNS)
    before = tables.read(spark, cfg, CUSTOMER_FEATURES).select(*cols).collect()   # materialized
    assert {(r["customer_id"], r["as_of_date"]) for r in before} >= {("cA", date(2026, 8, 27))}

    _run(spark, cfg, "c1", withdraw=[EMAIL_A], at="2026-08-26T10:00:00Z")
    features.run(JobContext(spark, cfg, run_id="f2", args=args))
    after = tables.read(spark, cfg, CUSTOMER_FEATURES).select(*cols)
    keep = [r for r in before if not (r["customer_id"] == "cA" and r["as_of_date"] == date(2026, 8, 27))]
    # cA is gone from as-of 08-27 only (08-26 began before the withdrawal); every other row is as before
    assertDataFrameEqual(after, keep)
    # the enriched table keeps cA (withdrawal is not erasure); its reader leaves cA out from 08-27
    assert "cA" in _customers(tables.read(spark, cfg, ENRICHED_EVENTS))
    assert "cA" not in _customers(enriched.read(spark, cfg, end=date(2026, 8, 27)))
    assert "cA" in _customers(enriched.read(spark, cfg, end=date(2026, 8, 26)))


def test_labels_leave_out_snapshots_whose_window_holds_a_withdrawal(spark):
    from seglake.stages.propensity.labels import drop_censored

    labelled = spark.createDataFrame(
        [("cA", date(2026, 8, 1), 1.0), ("cA", date(2026, 8, 20), 1.0), ("cA", date(2026, 8, 16), 0.0),
         ("cB", date(2026, 8, 20), 0.0)],
        "customer_id STRING, as_of_date DATE, churn_label DOUBLE")
    actions = spark.createDataFrame(
        [("cA", "withdraw", datetime(2026, 8, 26, 10)), ("cB", "grant", datetime(2026, 8, 22))],
        "customer_id STRING, action STRING, effective_at TIMESTAMP")
    got = drop_censored(labelled, actions, 10)
    # 08-20 + 10 days holds the withdrawal; 08-01's window ends before it; 08-16's ends at 08-26 00:00
    assert sorted((r["customer_id"], r["as_of_date"]) for r in got.collect()) == [
        ("cA", date(2026, 8, 1)), ("cA", date(2026, 8, 16)), ("cB", date(2026, 8, 20))]
    assert got.columns == labelled.columns
    with pytest.raises(ValueError, match="consent_actions lacks"):
        drop_censored(labelled, actions.drop("action"), 10)
