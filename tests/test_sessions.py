"""Sessions: gap and session_id splits, the session table, agreement with a pandas loop."""
from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from seglake.stages import sessions

DDL = ("event_key STRING, customer_id STRING, event_type STRING, event_ts TIMESTAMP, session_id STRING, "
       "product_id STRING, device_type STRING, channel STRING")


def _t(h, m, s=0):
    return datetime(2026, 8, 3, h, m, s)


ROWS = [
    ("k01", "c1", "page_view", _t(10, 0), "A", None, "desktop", "seo"),
    ("k02", "c1", "product_view", _t(10, 5), "A", "p1", "desktop", None),
    ("k03", "c1", "add_to_cart", _t(10, 20), "A", "p1", "desktop", None),
    ("k04", "c1", "email_open", _t(10, 25), None, None, None, "email"),   # side event, no session id
    ("k05", "c1", "page_view", _t(11, 0), "A", None, "desktop", "direct"),  # 35 min gap -> new
    ("k06", "c1", "product_view", _t(11, 10), "B", "p2", "desktop", None),  # session id change -> new
    ("k07", "c1", "purchase", _t(11, 12), "B", "p2", "desktop", None),
    ("k08", "c2", "app_open", _t(9, 0), None, None, "ios", None),
    ("k09", "c2", "search", _t(9, 30), None, None, "ios", None),          # exactly 30 min: same session
    ("k10", "c2", "product_view", _t(10, 0, 1), None, "p3", "ios", None),  # 30 min 1 s: new
]


def test_sessionize_and_session_table(spark):
    ev = spark.createDataFrame(ROWS, DDL)
    s = sessions.sessionize(ev, 30)
    got = {r["event_key"]: (r["session_seq"], r["event_seq"], r["session_key"]) for r in s.collect()}
    seqs = {k: v[:2] for k, v in got.items()}
    assert seqs == {"k01": (1, 1), "k02": (1, 2), "k03": (1, 3), "k04": (1, 4), "k05": (2, 1), "k06": (3, 1),
                    "k07": (3, 2), "k08": (1, 1), "k09": (1, 2), "k10": (2, 1)}
    start_ms = int((_t(11, 10) - datetime(1970, 1, 1)).total_seconds() * 1000)  # session tz is UTC
    assert got["k06"][2] == got["k07"][2] == f"c1:{start_ms}"
    table = sessions.session_table(s, sessions.DEFAULT_STATES)
    rows = {r["session_key"]: r.asDict() for r in table.collect()}
    assert len(rows) == 5
    s1 = rows[got["k01"][2]]
    assert (s1["session_start"], s1["session_end"], s1["duration_s"]) == (_t(10, 0), _t(10, 25), 1500.0)
    assert (s1["n_events"], s1["n_pages"], s1["n_products"]) == (4, 2, 1)
    assert (s1["entry_state"], s1["exit_state"], s1["converted"]) == ("browse", "cart", False)
    assert (s1["device_type"], s1["channel"], str(s1["session_date"])) == ("desktop", "seo", "2026-08-03")
    s3 = rows[got["k06"][2]]
    assert (s3["n_events"], s3["n_pages"], s3["n_products"], s3["duration_s"]) == (2, 1, 1, 120.0)
    assert (s3["entry_state"], s3["exit_state"], s3["converted"]) == ("product_view", "conversion", True)
    c2 = rows[got["k08"][2]]
    assert (c2["n_events"], c2["entry_state"], c2["exit_state"], c2["duration_s"]) == (2, "browse", "search", 1800.0)
    assert set(table.columns) >= set(sessions.SESSION_COLUMNS)


def test_session_id_split_can_be_switched_off(spark):
    ev = spark.createDataFrame(ROWS, DDL)
    s = sessions.sessionize(ev, 30, split_on_session_id=False)
    assert s.filter("customer_id = 'c1'").select("session_key").distinct().count() == 2


def test_sessionize_rejects_bad_arguments(spark):
    ev = spark.createDataFrame(ROWS, DDL)
    with pytest.raises(ValueError, match="inactivity_minutes"):
        sessions.sessionize(ev, 0)
    with pytest.raises(ValueError, match="customer_id"):
        sessions.sessionize(ev.drop("customer_id"), 30)


def test_sessionize_agrees_with_a_pandas_loop(spark):
    rng = np.random.default_rng(3)
    rows = []
    for c in range(8):
        t = datetime(2026, 8, 1)
        for i in range(40):
            t += timedelta(minutes=float(rng.choice([1, 5, 29, 31, 120])), seconds=int(rng.integers(0, 60)))
            sid = None if rng.random() < 0.3 else f"s{int(rng.integers(0, 3))}"
            rows.append((f"c{c}-{i:03d}", f"c{c}", "page_view", t, sid, None, "ios", None))
    ev = spark.createDataFrame(rows, DDL)
    got = {r["event_key"]: r["session_seq"] for r in sessions.sessionize(ev, 30).collect()}
    pdf = pd.DataFrame(rows, columns=["event_key", "customer_id", "event_type", "event_ts", "session_id", "p", "d", "c"])
    expected = {}
    for _, g in pdf.sort_values(["customer_id", "event_ts", "event_key"]).groupby("customer_id"):
        seq, prev_t, prev_sid = 0, None, None
        for r in g.itertuples():
            gap = prev_t is not None and (r.event_ts - prev_t) > pd.Timedelta(minutes=30)
            change = r.session_id is not None and prev_sid is not None and r.session_id != prev_sid
            if prev_t is None or gap or change:
                seq += 1
            expected[r.event_key] = seq
            prev_t = r.event_ts
            prev_sid = r.session_id if r.session_id is not None else prev_sid
    assert got == expected
    assert max(expected.values()) > 10


def test_sessionize_without_event_key_breaks_ties_the_same_on_any_layout(spark):
    # no event_key: equal timestamps are ordered by the other columns (event_type, session_id here)
    ddl = "customer_id STRING, event_type STRING, event_ts TIMESTAMP, session_id STRING"
    t = _t(12, 0)
    rows = [("c1", "search", t, "B"), ("c1", "page_view", t, "A"), ("c1", "add_to_cart", t, "A"),
            ("c1", "purchase", t + timedelta(minutes=1), "B")]
    # add_to_cart (A), page_view (A) | search (B: new session), purchase (B)
    want = {"add_to_cart": (1, 1), "page_view": (1, 2), "search": (2, 1), "purchase": (2, 2)}
    layouts = {"as listed": spark.createDataFrame(rows, ddl).coalesce(1),
               "reversed": spark.createDataFrame(rows[::-1], ddl).coalesce(1),
               "3 partitions": spark.createDataFrame(rows, ddl).repartition(3)}
    for name, ev in layouts.items():
        got = {r["event_type"]: (r["session_seq"], r["event_seq"]) for r in sessions.sessionize(ev, 30).collect()}
        assert got == want, name


def test_load_states(tmp_path):
    assert sessions.load_states(tmp_path / "missing.yaml") == sessions.DEFAULT_STATES
    p = tmp_path / "states.yaml"
    p.write_text("states:\n  page_view: browse\n  purchase: conversion\n")
    assert sessions.load_states(p) == {"page_view": "browse", "purchase": "conversion"}
    p.write_text("nothing: here\n")
    with pytest.raises(ValueError, match="states"):
        sessions.load_states(p)
