"""Point-in-time propensity snapshots: a late-arriving event and a later identity merge do not
change the features of a snapshot taken before them (issue #20), while the scoring snapshot,
which sees everything known now, does include both.

Real stages on a small planted lakehouse: batch 1 (ingest, clean, identity, consent, sessions),
the snapshot at D; then batch 2 holds a purchase of u-a dated before D (late) and a login that
links the anonymous device a-b to u-b after D (a merge); the same stages again, the snapshot at
D again.
"""
from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

import pytest
from pyspark.sql import functions as F

from conftest import make_cfg

D = date(2026, 9, 10)
AS_OF = date(2026, 10, 1)
START = datetime(2026, 8, 3, 10, 0, tzinfo=timezone.utc)


def _ev(n, at, kind, **ids):
    e = {"event_id": f"pit{n:04d}", "event_type": kind, "event_ts": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
         "source": "web", "consent": True, "page_url": "https://shop.example.com/p", **ids}
    if kind == "purchase":
        e.update(product_id="p1", category="shoes", price=40.0, quantity=1, revenue=40.0, currency="USD")
    return e


def _batch1():
    rows = []
    for day in range(0, 50, 3):                       # u-a: views every 3 days, a purchase every 9
        at = START + timedelta(days=day)
        rows.append(_ev(len(rows), at, "page_view", user_id="u-a"))
        if day % 9 == 0:
            rows.append(_ev(len(rows), at + timedelta(minutes=5), "purchase", user_id="u-a"))
    for day in range(1, 50, 4):                       # u-b logged in, a-b an anonymous device
        rows.append(_ev(len(rows), START + timedelta(days=day), "page_view", user_id="u-b"))
        rows.append(_ev(len(rows), START + timedelta(days=day, hours=3), "product_view", anonymous_id="a-b"))
    return rows


def _batch2(n0):
    late = _ev(n0, datetime(2026, 9, 5, 12, 0, tzinfo=timezone.utc), "purchase", user_id="u-a")
    link = _ev(n0 + 1, datetime(2026, 9, 15, 9, 0, tzinfo=timezone.utc), "page_view", user_id="u-b",
               anonymous_id="a-b")
    return [late, link]


def _stages(spark, cfg):
    from seglake.core.context import JobContext
    from seglake.core.runner import run_job
    for job in ("ingest", "clean", "identity", "consent", "sessions"):
        run_job(JobContext(spark, cfg, args={"skip_docs": True} if job == "clean" else {}), job)


def _snapshot(spark, cfg, past, scoring):
    from seglake.core.context import JobContext
    from seglake.stages import enriched
    from seglake.stages.propensity.snapshots import snapshot_features

    events = enriched.read(spark, cfg, consent_at=scoring)
    feats, cuts = snapshot_features(JobContext(spark, cfg, as_of=scoring), past, scoring, events)
    return feats, cuts


def _rows(df, day):
    return sorted(tuple(r) for r in df.where(F.col("as_of_date") == F.lit(day)).drop("as_of_date").collect())


def _customer(spark, cfg, identifier):
    from seglake.core import tables
    return (tables.read(spark, cfg, "silver.identity_map").where(F.col("identifier") == identifier)
            .select("customer_id").first()[0])


@pytest.mark.slow   # two passes of five stages (~2.5 min)
def test_a_late_event_and_a_later_merge_leave_the_snapshot_at_d_unchanged(spark, tmp_path):
    root = tmp_path / "lake"
    cfg = make_cfg(root)
    land = root / "_input" / "landing"
    rows = _batch1()
    (land / "2026-09-25").mkdir(parents=True)
    (land / "2026-09-25" / "events.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    _stages(spark, cfg)
    before, cuts = _snapshot(spark, cfg, [D], AS_OF)
    assert cuts[D] == "all known now"                  # nothing is newer than the one backfill yet
    at_d = _rows(before, D)
    a_before, b_before, ab_before = (_customer(spark, cfg, i) for i in ("u-a", "u-b", "a-b"))
    assert len({a_before, b_before, ab_before}) == 3 and len(at_d) == 3

    (land / "2026-09-26").mkdir()
    (land / "2026-09-26" / "events.jsonl").write_text(
        "\n".join(json.dumps(r) for r in _batch2(len(rows))) + "\n")
    _stages(spark, cfg)
    assert _customer(spark, cfg, "a-b") == _customer(spark, cfg, "u-b")   # the map merged them

    after, cuts = _snapshot(spark, cfg, [D], AS_OF)
    assert cuts[D].startswith("ingested before") and "identity_map v0" in cuts[D]
    assert _rows(after, D) == at_d                     # neither the late purchase nor the merge

    # everything known now, at the same date D: the late purchase counts and a-b is u-b's
    now, cuts_now = _snapshot(spark, cfg, [], D)
    assert cuts_now[D] == "all known now"
    now_rows = {r["customer_id"]: r for r in now.collect()}
    then_rows = {r["customer_id"]: r for r in after.where(F.col("as_of_date") == F.lit(D)).collect()}
    a_now = _customer(spark, cfg, "u-a")
    assert now_rows[a_now]["purchases_total"] == then_rows[a_before]["purchases_total"] + 1
    assert len(now_rows) == 2 and len(then_rows) == 3
    b_now = _customer(spark, cfg, "u-b")
    assert (now_rows[b_now]["product_views_total"]
            == then_rows[ab_before]["product_views_total"] + then_rows[b_before]["product_views_total"])
