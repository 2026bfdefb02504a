"""Point-in-time propensity snapshots: a late-arriving event and a later identity merge do not
change the features of a snapshot taken before them (issue #20), while the scoring snapshot,
which sees everything known now, does include both.

Real stages on a copy of the reliability chain's lakehouse after ``sessions`` (generated data,
40 persons, 1-10 September): the snapshot at D; then a second landing batch holds a purchase of
a logged-in user dated before D (late) and, after D, an event that links an anonymous-only
customer's device to that user (a merge); ingest to sessions again, the snapshot at D again.
"""
from __future__ import annotations

import json
from datetime import date, datetime, timezone

import pytest
from pyspark.sql import functions as F

from conftest import make_cfg

D = date(2026, 9, 6)
AS_OF = date(2026, 9, 11)


def _ev(n, at, kind, **ids):
    e = {"event_id": f"pit{n:04d}", "event_type": kind, "event_ts": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
         "source": "web", "consent": True, "page_url": "https://shop.example.com/p", **ids}
    if kind == "purchase":
        e.update(product_id="p1", category="shoes", price=40.0, quantity=1, revenue=40.0, currency="USD")
    return e


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
    """The features at ``day``, doubles rounded to 9 decimals: the snapshot built from silver sums
    in another order than the one from the enriched table (1e-16 apart)."""
    def norm(v):
        return round(v, 9) if isinstance(v, float) else v
    return sorted(tuple((k, norm(v)) for k, v in r.asDict().items()) for r in
                  df.where(F.col("as_of_date") == F.lit(day)).drop("as_of_date").collect())


def _diff(a, b):
    """The (customer, column, before, after) that differ, for the failure message."""
    da, db = {dict(r)["customer_id"]: dict(r) for r in a}, {dict(r)["customer_id"]: dict(r) for r in b}
    return [(c, k, da[c][k], db.get(c, {}).get(k)) for c in da for k in da[c] if da[c][k] != db.get(c, {}).get(k)]


def _customer(spark, cfg, identifier):
    from seglake.core import tables
    return (tables.read(spark, cfg, "silver.identity_map").where(F.col("identifier") == identifier)
            .select("customer_id").first()[0])


def _pick(spark, cfg):
    """(a user id whose customer has events before D, an anonymous id of ANOTHER customer known by
    anonymous identifiers only, with events before D) in the generated chain data."""
    from seglake.core import tables
    idmap = tables.read(spark, cfg, "silver.identity_map")
    seen = (tables.read(spark, cfg, "silver.enriched_events").where(F.col("event_ts") < F.lit(D).cast("timestamp"))
            .select("customer_id").distinct())
    kinds = idmap.groupBy("customer_id").agg(F.collect_set("identifier_type").alias("kinds"))
    anon_only = kinds.where(~F.arrays_overlap("kinds", F.array(*[F.lit(k) for k in
                                                               ("user_id", "email", "phone")])))
    user = (idmap.where(F.col("identifier_type") == "user_id").join(seen, "customer_id")
            .orderBy("identifier").first()["identifier"])
    anon = (idmap.where(F.col("identifier_type") == "anonymous_id").join(anon_only, "customer_id")
            .join(seen, "customer_id").orderBy("identifier").first()["identifier"])
    return user, anon


@pytest.mark.slow   # reruns five stages on a copy of the reliability chain's lakehouse (~1.5 min)
def test_a_late_event_and_a_later_merge_leave_the_snapshot_at_d_unchanged(spark, chain_lakes, tmp_path):
    import shutil

    root = tmp_path / "lake"
    shutil.copytree(chain_lakes["sessions"], root)     # generated data, 40 persons, 1-10 September
    cfg = make_cfg(root)
    before, cuts = _snapshot(spark, cfg, [D], AS_OF)
    assert cuts[D] == "all known now"                  # nothing is newer than the one backfill yet
    at_d = _rows(before, D)
    user, anon = _pick(spark, cfg)
    a_before, b_before = _customer(spark, cfg, user), _customer(spark, cfg, anon)
    assert a_before != b_before and len(at_d) > 10

    late = _ev(0, datetime(2026, 9, 4, 12, 0, tzinfo=timezone.utc), "purchase", user_id=user)
    link = _ev(1, datetime(2026, 9, 8, 9, 0, tzinfo=timezone.utc), "page_view", user_id=user, anonymous_id=anon)
    land = root / "_input" / "landing" / "2026-09-12"
    land.mkdir(parents=True)
    (land / "events.jsonl").write_text("\n".join(json.dumps(r) for r in (late, link)) + "\n")
    _stages(spark, cfg)
    assert _customer(spark, cfg, anon) == _customer(spark, cfg, user)   # the map merged them

    after, cuts = _snapshot(spark, cfg, [D], AS_OF)
    assert cuts[D].startswith("ingested before") and "identity_map v" in cuts[D]
    got = _rows(after, D)
    assert got == at_d, _diff(at_d, got)[:10]           # neither the late purchase nor the merge

    # everything known now, at the same date D: the late purchase counts and anon is the user's
    now, cuts_now = _snapshot(spark, cfg, [], D)
    assert cuts_now[D] == "all known now"
    now_rows = {r["customer_id"]: r for r in now.collect()}
    then_rows = {r["customer_id"]: r for r in after.where(F.col("as_of_date") == F.lit(D)).collect()}
    merged = _customer(spark, cfg, user)
    assert len(now_rows) == len(then_rows) - 1
    assert now_rows[merged]["purchases_total"] == (then_rows[a_before]["purchases_total"]
                                                   + then_rows[b_before]["purchases_total"] + 1)
