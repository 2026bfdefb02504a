"""The stream's trigger engine (timers, watermark, judgement, exactly-once firing) on planted
scenarios whose answers are written out by hand, through the real batch ingest, clean,
identity and consent; and the ``triggers:`` section of segments.yaml."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from pyspark.sql import functions as F

from conftest import make_cfg
from seglake.core import tables
from seglake.core.context import JobContext
from seglake.core.runner import run_job
from seglake.stages.segments.model import SegmentConfigError
from seglake.stages.segments.triggers import load_triggers, parse_triggers
from seglake.stages.segments.validation import parse_segments
from seglake.stages.stream import triggers as T

T0 = datetime(2026, 9, 1, 10, 0, tzinfo=timezone.utc)
M, D = timedelta(minutes=1), timedelta(days=1)
REPO_YAML = __import__("conftest").REPO / "conf" / "segments.yaml"


def _ev(n, who, kind, at, **extra):
    e = {"event_id": f"t{n:03d}", "event_type": kind, "event_ts": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
         "source": "web", "consent": True, **({"user_id": who} if who.startswith("u-") else {"anonymous_id": who})}
    if kind in ("product_view", "add_to_cart"):
        e.update(product_id="p1", category="shoes", price=50.0)
    if kind == "purchase":
        e.update(product_id="p1", category="shoes", price=50.0, quantity=1, revenue=50.0, currency="USD")
    return {**e, **extra}


def _scenarios():
    """(events, expected firings as (trigger, person, event time)). Persons are user ids, or the
    anonymous id of a device no identity run links to a user."""
    rows = []
    add = lambda who, kind, at, **x: rows.append(_ev(len(rows), who, kind, at, **x))  # noqa: E731
    add("u-a", "add_to_cart", T0)                                  # abandoned
    add("u-b", "add_to_cart", T0); add("u-b", "purchase", T0 + 10 * M)         # bought
    add("u-c", "add_to_cart", T0); add("u-c", "purchase", T0 + 15 * M)         # bought at the limit
    add("u-d", "add_to_cart", T0); add("u-d", "purchase", T0 + 15 * M + timedelta(seconds=1))  # one second late
    for m in (15, 10, 6):                                          # 3 views within 9 minutes, cart 6 min later
        add("u-e", "product_view", T0 - m * M)
    add("u-e", "add_to_cart", T0)
    for m in (20, 14.5, 9):                                        # 3 views spanning 11 minutes: no burst
        add("u-f", "product_view", T0 - m * M)
    add("u-f", "add_to_cart", T0)
    for m in (50, 48, 45):                                         # a burst, but 45 minutes before the cart
        add("u-g", "product_view", T0 - m * M)
    add("u-g", "add_to_cart", T0)
    for at in (T0 - 100 * D, T0 - 50 * D, T0, T0 + D):            # the 3rd purchase in 180 days is at T0
        add("u-h", "purchase", at)
    add("u-r", "page_view", T0 - 40 * D); add("u-r", "page_view", T0)          # back after 40 days
    add("u-s", "page_view", T0 - 29 * D); add("u-s", "page_view", T0)          # back after 29 days: not yet
    add("a-i", "add_to_cart", T0)                                  # cart on a device ...
    add("u-i", "page_view", T0 + M, anonymous_id="a-i")             # ... linked to u-i, who buys on the web
    add("u-i", "purchase", T0 + 5 * M)
    add("a-j", "add_to_cart", T0)                                  # an unlinked device abandons
    add("u-k", "consent_withdrawn", T0 - 60 * M, consent=False)    # withdrew: never fired for
    add("u-k", "add_to_cart", T0)
    expected = {("abandoned_cart_email", p, T0) for p in ("u-a", "u-d", "u-e", "u-f", "u-g", "a-j")}
    expected |= {("high_intent_abandoner", "u-e", T0), ("repeat_buyer", "u-h", T0),
                 ("re_engaged", "u-h", T0 - 50 * D), ("re_engaged", "u-h", T0), ("re_engaged", "u-r", T0)}
    return rows, expected


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    """Ingest + clean of the planted events; timers registered from them as one micro-batch before
    any identity run (so nothing can be linked yet)."""
    root = tmp_path_factory.mktemp("triggers")
    rows, expected = _scenarios()
    land = root / "_input" / "landing" / "2026-09-01"
    land.mkdir(parents=True)
    (land / "events.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = make_cfg(root)
    run_job(JobContext(spark, cfg), "ingest")
    run_job(JobContext(spark, cfg, args={"skip_docs": True}), "clean")
    batch = tables.read(spark, cfg, "silver.events").select("_batch_id").first()[0]
    rules = load_triggers(REPO_YAML)
    T.register(spark, cfg, T.timers_for(T.new_events(spark, cfg, batch), rules, None, batch, "t"))
    return cfg, rules, expected


def _fired(spark, cfg):
    idmap = tables.read(spark, cfg, "silver.identity_map").where(
        F.col("identifier_type").isin("user_id", "anonymous_id"))
    person = {r["customer_id"]: r["identifier"] for r in idmap.orderBy("identifier_type", "identifier")
              .collect() if not r["identifier"].startswith("a-i")}
    rows = tables.read(spark, cfg, "gold.segment_triggers").collect()
    return [(r["trigger"], person[r["customer_id"]], r["event_ts"].astimezone(timezone.utc)) for r in rows], rows


@pytest.mark.slow   # an end-to-end stream run (~70 s)
def test_timers_wait_for_the_watermark_and_for_identity_then_fire_exactly_once(spark, lake):
    cfg, rules, expected = lake
    timers = tables.read(spark, cfg, "ops.stream_timers")
    # one timer per cart per abandonment trigger, per purchase, and per gap of >= 30 days per identifier
    # set (u-i with and without the device a-i: two sets)
    per_trigger = {r["trigger"]: r["count"] for r in timers.groupBy("trigger").count().collect()}
    assert per_trigger == {"abandoned_cart_email": 10, "high_intent_abandoner": 10, "repeat_buyer": 8,
                           "re_engaged": 18}

    # due, but no identity map yet: everything waits
    early = T.judge(spark, cfg, rules, T0 + 16 * M, "b1", "t")
    assert early["fired"] == 0 and early["due"] == early["not_linked"] == 10 + 7 + 18   # u-h's purchase of T0 + 1 day is not due
    assert not tables.exists(spark, cfg, "gold.segment_triggers") or \
        tables.read(spark, cfg, "gold.segment_triggers").count() == 0

    run_job(JobContext(spark, cfg), "identity")
    run_job(JobContext(spark, cfg), "consent")
    # 14 minutes after the carts: the 15-minute timers are not due yet
    assert T.judge(spark, cfg, rules, T0 + 14 * M, "b2", "t")["fired"] == 4      # the re_engaged / repeat ones
    at16 = T.judge(spark, cfg, rules, T0 + 16 * M, "b3", "t")
    fired, _ = _fired(spark, cfg)
    assert at16["fired"] == 6 and at16["no_consent"] == 1, fired              # u-k's cart
    fired, _ = _fired(spark, cfg)
    assert "high_intent_abandoner" not in {t for t, _, _ in fired}          # due only 24 hours after the cart

    assert T.judge(spark, cfg, rules, T0 + 2 * D, "bx", "another-topic")["due"] == 0   # its own event time
    rest = T.judge(spark, cfg, rules, T0 + 2 * D, "b4", "t")
    fired, rows = _fired(spark, cfg)
    assert set(fired) == expected and len(fired) == len(expected)           # planted truth, no duplicate
    assert rest["not_linked"] == 0 and tables.read(spark, cfg, "ops.stream_timers").count() == 0
    versions = {t.name: t.rule_version for t in rules}
    assert all(r["rule_version"] == versions[r["trigger"]] for r in rows)
    assert all(r["due_ts"] - r["event_ts"] == timedelta(minutes=15) for r in rows
               if r["trigger"] == "abandoned_cart_email")

    # a replay (timers registered again, judged again) inserts nothing new
    batch = tables.read(spark, cfg, "silver.events").select("_batch_id").first()[0]
    T.register(spark, cfg, T.timers_for(T.new_events(spark, cfg, batch), rules, None, batch, "t"))
    again = T.judge(spark, cfg, rules, T0 + 2 * D, "b5", "t")
    assert again["due"] == 10 + 10 + 8 + 18 and again["fired"] == 0
    assert sorted(_fired(spark, cfg)[0]) == sorted(fired)


def test_watermark_late_events_and_timers_for_only_on_time_events(spark, lake):
    cfg, rules, _ = lake
    batch = tables.read(spark, cfg, "silver.events").select("_batch_id").first()[0]
    events = T.new_events(spark, cfg, batch)
    stats = T.batch_stats(events, T0)
    # every event counts for event time and lateness (u-k's consent record at T0 - 1 h too) ...
    assert stats["events"] == 33 and stats["late_events"] == 14
    assert stats["max_event_ts"].astimezone(timezone.utc) == T0 + D
    assert T.advance(None, stats["max_event_ts"], 10) == stats["max_event_ts"] - 10 * M
    assert T.advance(T0 + 2 * D, stats["max_event_ts"], 10) == T0 + 2 * D     # never moves back
    # ... but only consented behaviour on time starts timers
    on_time = T.timers_for(events, rules, T0, "x", "t").select("event_ts").collect()
    assert on_time and min(r["event_ts"].astimezone(timezone.utc) for r in on_time) >= T0
    assert T.timers_for(events.where("event_type = 'consent_withdrawn'"), rules, None, "x", "t").count() == 0


SEGMENTS = """
segments:
  - name: cart_abandoners
    description: d
    sequence: cart_abandonment
    thresholds: {abandon_hours: 48.0, lookback_days: 30}
triggers:
  - name: email
    description: d
    kind: cart_abandonment
    segment: cart_abandoners
    thresholds: {abandon_hours: 0.5}
"""


def _parse(text):
    import yaml
    return parse_triggers(yaml.safe_load(text), yaml.compose(text), parse_segments(text), "s.yaml")


def test_trigger_definitions_take_the_segment_thresholds_with_overrides():
    (t,) = _parse(SEGMENTS)
    assert t.params == {"abandon_hours": 0.5} and t.due_hours() == 0.5 and t.rule_version.startswith("v1-")
    (u,) = _parse(SEGMENTS.replace("    thresholds: {abandon_hours: 0.5}\n", ""))
    assert u.params == {"abandon_hours": 48.0} and u.rule_version != t.rule_version


@pytest.mark.parametrize("change, message", [
    (("kind: cart_abandonment", "kind: cart_abandon"), "unknown kind 'cart_abandon' (did you mean 'cart_abandonment'?)"),
    (("segment: cart_abandoners", "segment: cart_abandoner"), "segment 'cart_abandoner' is not defined"),
    (("abandon_hours: 0.5}", "abandon_hour: 0.5}"), "has no threshold 'abandon_hour' (did you mean 'abandon_hours'?)"),
    (("abandon_hours: 0.5}", "abandon_hours: -1}"), "threshold 'abandon_hours' must be positive"),
    (("abandon_hours: 0.5}", "abandon_hours: soon}"), "threshold 'abandon_hours' must be float, got string"),
    (("    segment: cart_abandoners\n    thresholds: {abandon_hours: 0.5}\n", ""), "needs threshold 'abandon_hours'"),
])
def test_trigger_definition_errors_name_the_line_and_the_trigger(change, message):
    with pytest.raises(SegmentConfigError) as err:
        _parse(SEGMENTS.replace(*change))
    assert message in str(err.value) and "line 8, trigger 'email'" in str(err.value)
