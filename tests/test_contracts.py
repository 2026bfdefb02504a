"""The one reader of consented events with customer ids (seglake.core.contracts)."""
from __future__ import annotations

from datetime import date, datetime

import pytest

from seglake.core import contracts, tables

EVENTS_DDL = ("event_key STRING, user_id STRING, anonymous_id STRING, device_id STRING, email_hash STRING, "
              "phone_hash STRING, event_type STRING, event_ts TIMESTAMP, event_date DATE, consent BOOLEAN")


def _event(key, day, *, user=None, anon=None, device=None, email=None, etype="page_view", consent=True):
    return (key, user, anon, device, email, None, etype, datetime(2026, 10, day, 12), date(2026, 10, day), consent)


@pytest.fixture
def lake(spark, cfg):
    events = [
        _event("a1", 1, user="u1"),                              # c1 by user id
        _event("a2", 2, anon="cookie1", etype="purchase"),       # c1 by cookie
        _event("a3", 3, user="u1", consent=False),               # consent=false: never profiled
        _event("b1", 2, device="kiosk", email="e2hash"),        # kiosk is excluded -> anchor is the email (c2)
        _event("b2", 4, device="kiosk"),                         # only the excluded kiosk: no customer
        _event("x1", 3, email="unknown-hash"),                   # unknown to the map: no customer
        _event("a4", 5, user="u1", etype="purchase"),            # c1, last day
    ]
    tables.overwrite(spark.createDataFrame(events, EVENTS_DDL), cfg, contracts.SILVER_EVENTS,
                     partition_by=["event_date"])
    idmap = [("user_id", "u1", "c1"), ("anonymous_id", "cookie1", "c1"), ("email", "e2hash", "c2"),
             ("device_id", "kiosk", "c9")]
    tables.overwrite(spark.createDataFrame(idmap, "identifier_type STRING, identifier STRING, customer_id STRING"),
                     cfg, contracts.IDENTITY_MAP)
    tables.overwrite(spark.createDataFrame([("device_id", "kiosk", 7)], "identifier_type STRING, identifier STRING, n LONG"),
                     cfg, contracts.IDENTITY_EXCLUDED)
    return cfg


def _keys(df):
    return {r["event_key"]: r["customer_id"] for r in df.collect()}


def test_consented_events_with_customer_ids(spark, lake):
    got = contracts.customer_events(spark, lake)
    assert _keys(got) == {"a1": "c1", "a2": "c1", "b1": "c2", "a4": "c1"}
    kept = contracts.customer_events(spark, lake, drop_unattached=False)
    assert _keys(kept) == {"a1": "c1", "a2": "c1", "b1": "c2", "b2": None, "x1": None, "a4": "c1"}
    assert got.columns[-1] == "customer_id" and "consent" in got.columns


def test_window_types_and_columns(spark, lake):
    window = contracts.customer_events(spark, lake, start=date(2026, 10, 2), end=date(2026, 10, 5))
    assert set(_keys(window)) == {"a2", "b1"}                       # end exclusive
    inclusive = contracts.customer_events(spark, lake, start=date(2026, 10, 2), end=date(2026, 10, 5),
                                          end_inclusive=True, event_types=["purchase"],
                                          columns=("event_key", "event_type"))
    assert _keys(inclusive) == {"a2": "c1", "a4": "c1"}
    assert inclusive.columns == ["event_key", "event_type", "customer_id"]


def test_without_excluded_table_the_kiosk_is_an_anchor(spark, lake):
    from delta.tables import DeltaTable
    import shutil
    shutil.rmtree(lake.table_path(contracts.IDENTITY_EXCLUDED))
    assert not DeltaTable.isDeltaTable(spark, lake.table_path(contracts.IDENTITY_EXCLUDED))
    got = contracts.customer_events(spark, lake)
    # the kiosk device outranks the email, so both kiosk events go to the kiosk's own customer
    assert _keys(got) == {"a1": "c1", "a2": "c1", "b1": "c9", "b2": "c9", "a4": "c1"}


def test_require_columns_names_what_is_missing(spark):
    df = spark.createDataFrame([(1,)], "a INT")
    with pytest.raises(ValueError, match="events is missing required column\\(s\\) b, c; it has a"):
        contracts.require_columns(df, ["a", "b", "c"], "events")
