"""The stream's trigger engine: event-time watermark, per-event timers in a Delta table, and the
judgement of due timers against the customers' events.

Per micro-batch (after bronze and the clean, :mod:`seglake.stages.stream.job`):

1. **Watermark.** The micro-batch's new silver rows (``_batch_id``) give its largest
   event time; the stream's watermark is the largest event time seen minus
   ``stream.watermark_delay_minutes``, never moving back (kept per topic in
   ``ops.stream_progress``). An event older than the watermark before this micro-batch is
   *late*: it is cleaned into silver and kept in bronze like any other, counted in
   ``ops.stream_progress.late_events``, but starts no timer (its rules were judged already).
2. **Timers** (``ops.stream_timers``): each on-time event that can start a trigger
   (:data:`~seglake.stages.segments.triggers.TRIGGER_KINDS`) gets a timer, due ``due_hours``
   after it: ``timer_id`` = trigger:event_key, the event's key, time and date, ``due_ts``,
   ``registered_at`` and the topic (whose watermark judges it). No identifier is copied: the deciding event is read back from silver
   when judged, so an erasure (which deletes the silver row) also cancels the timer.
3. **Judgement** of every timer with ``due_ts < watermark`` — by then every event of the
   window has arrived or is late. The deciding event's customer comes from the current
   ``silver.identity_map`` (:func:`~seglake.core.contracts.attach_customer_id`). A timer whose
   identifier is not linked yet waits: the next batch ``seglake run identity`` links it and the
   next micro-batch (or the next start of the stream, which judges first) decides it; after
   ``stream.unlinked_wait_hours`` of wall-clock time it is dropped and counted. Customers
   whose consent is withdrawn (``ops.consent``) are never fired for. Each kind is then decided
   over the customer's consented silver events (across all their devices), with built-in Spark
   joins and windows:

   * cart_abandonment: no purchase in [cart, cart + abandon_hours] (both ends included);
   * high_intent_abandonment: that, and a product view in [cart - cart_within, cart] that ends
     a burst of ``min_views`` views within ``view_window_minutes``;
   * repeat_purchase: the purchases of (t - 180 days, t], counted up to this one in
     (event_ts, event_key) order, are exactly ``min_purchases_180d``;
   * re_engagement: the customer's previous event is at least ``inactive_days`` and at most
     :data:`HISTORY_DAYS` before this one.
4. **Firing**: ``gold.segment_triggers`` gets (trigger, customer_id, event_ts, event_key, due_ts,
   fired_at, rule_version, batch_id) by a MERGE on (trigger, event_key): one row per deciding
   event, whatever replays. Judged timers are then deleted. A micro-batch killed anywhere and
   replayed converges: timers are re-registered idempotently, re-judged to the same answer, and
   the MERGE inserts no second row.
"""
from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta, timezone

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.config import Config
from seglake.core.contracts import (CONSENT_EVENT_TYPES, IDENTIFIERS, IDENTITY_EXCLUDED, IDENTITY_MAP,
                                    SEGMENT_TRIGGERS, SILVER_EVENTS, STREAM_PROGRESS, STREAM_TIMERS,
                                    attach_customer_id, customer_events, exclude_withdrawn, profiling_events)
from seglake.stages.segments.triggers import TRIGGER_KINDS, Trigger

log = logging.getLogger(__name__)

#: re_engagement looks this far back for the previous event (a customer gone longer is not re-engaged)
HISTORY_DAYS = 365
#: repeat_purchase counts purchases over this many days (the repeat_buyers feature: purchases_180d)
REPEAT_DAYS = 180
_US_PER_HOUR = 3_600_000_000
#: the silver identifier columns, in anchor order
IDENTITIES_FOR_ANCHOR: tuple[str, ...] = tuple(c for _, c in IDENTIFIERS)


def _us(col) -> Column:
    return F.unix_micros(col)


def _from_micros(us: int | None) -> datetime | None:
    """A timestamp read as microseconds since the epoch: PySpark hands TIMESTAMP values back as naive
    datetimes in the Python process's local zone, so they are read as numbers instead."""
    return None if us is None else datetime.fromtimestamp(us / 1_000_000, timezone.utc)


def _utc(ts: datetime | None) -> datetime | None:
    """A datetime given by a caller, made timezone-aware (naive = UTC)."""
    return ts.replace(tzinfo=timezone.utc) if ts is not None and ts.tzinfo is None else ts


def watermark(spark: SparkSession, cfg: Config, topic: str) -> datetime | None:
    """The topic's current watermark (the largest recorded in ``ops.stream_progress``), or None."""
    if not tables.exists(spark, cfg, STREAM_PROGRESS):
        return None
    return _from_micros(tables.read(spark, cfg, STREAM_PROGRESS).where(F.col("topic") == topic)
                        .agg(F.max(F.unix_micros("watermark"))).first()[0])


def new_events(spark: SparkSession, cfg: Config, batch_id: str) -> DataFrame | None:
    """The silver rows a micro-batch inserted (all of them: event time and lateness count every
    event; only consented behaviour starts timers, :func:`timers_for`); None while silver.events does
    not exist (every micro-batch so far set aside by clean)."""
    if not tables.exists(spark, cfg, SILVER_EVENTS):
        return None
    silver = tables.read(spark, cfg, SILVER_EVENTS).where(F.col("_batch_id") == batch_id)
    return silver.select("event_key", "event_ts", "event_date", "event_type", "consent", *IDENTITIES_FOR_ANCHOR)


def batch_stats(events: DataFrame, before: datetime | None) -> dict:
    """events, max_event_ts and late_events (event time before the watermark ``before``): one job."""
    late = (F.col("event_ts") < F.lit(before)) if before is not None else F.lit(False)
    row = events.agg(F.count(F.lit(1)).alias("events"), F.max(F.unix_micros("event_ts")).alias("max_event_ts"),
                     F.count(F.when(late, 1)).alias("late_events")).first().asDict()
    return {**row, "max_event_ts": _from_micros(row["max_event_ts"])}


def advance(before: datetime | None, max_event_ts: datetime | None, delay_minutes: float) -> datetime | None:
    """The watermark after a micro-batch: the largest event time minus the delay, never back."""
    if max_event_ts is None:
        return before
    before, max_event_ts = _utc(before), _utc(max_event_ts)
    candidate = max_event_ts - timedelta(minutes=delay_minutes)
    return candidate if before is None or candidate > before else before


def timers_for(events: DataFrame, triggers: list[Trigger], before: datetime | None, batch_id: str,
               topic: str) -> DataFrame:
    """Timer rows of the on-time ``events`` (event time at or after the watermark ``before``) of ``topic``."""
    behaviour = profiling_events(events).where(~F.col("event_type").isin(*CONSENT_EVENT_TYPES))
    on_time = behaviour if before is None else behaviour.where(F.col("event_ts") >= F.lit(before))
    parts = []
    for trig in triggers:
        starts = TRIGGER_KINDS[trig.kind].starts
        if starts == ("*",):
            # any event may re-engage, but only one whose identifier had no event of this micro-batch
            # in the inactive_days before it can: the earliest per identifier and any after such a gap
            # per identifier tuple (not the first identifier alone: events sharing an identifier the
            # identity guard excludes may be different persons); one tuple is one customer
            gap_us = int(trig.params["inactive_days"]) * 24 * _US_PER_HOUR
            previous = F.lag("event_ts").over(Window.partitionBy(*IDENTITIES_FOR_ANCHOR)
                                              .orderBy("event_ts", "event_key"))
            picked = (on_time.withColumn("_previous", previous)
                      .where(F.col("_previous").isNull() | (_us("event_ts") - _us("_previous") >= F.lit(gap_us)))
                      .select("event_ts", "event_key", "event_date"))
        else:
            picked = on_time.where(F.col("event_type").isin(*starts)).select("event_ts", "event_key", "event_date")
        due_us = int(round(trig.due_hours() * _US_PER_HOUR))
        parts.append(picked.select(
            F.concat_ws(":", F.lit(trig.name), "event_key").alias("timer_id"), F.lit(trig.name).alias("trigger"),
            "event_key", "event_ts", "event_date",
            F.timestamp_micros(_us("event_ts") + F.lit(due_us)).alias("due_ts"),
            F.current_timestamp().alias("registered_at"), F.lit(batch_id).alias("batch_id"),
            F.lit(topic).alias("topic")))
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out


def register(spark: SparkSession, cfg: Config, timers: DataFrame) -> None:
    """Add the timers not registered yet (MERGE on timer_id: a replay adds nothing)."""
    tables.merge(spark, timers, cfg, STREAM_TIMERS, ["timer_id"])


# --------------------------------------------------------------------------- judgement
def _customers_of(spark: SparkSession, cfg: Config, due: DataFrame, lo, hi) -> DataFrame:
    """``due`` with the customer of its deciding event (null: not linked yet) and ``in_silver``."""
    silver = (tables.read(spark, cfg, SILVER_EVENTS)
              .where((F.col("event_date") >= F.lit(lo)) & (F.col("event_date") <= F.lit(hi)))
              .select("event_date", "event_key", *IDENTITIES_FOR_ANCHOR))
    excluded = (tables.read(spark, cfg, IDENTITY_EXCLUDED).select("identifier_type", "identifier")
                if tables.exists(spark, cfg, IDENTITY_EXCLUDED) else None)
    if tables.exists(spark, cfg, IDENTITY_MAP):
        linked = attach_customer_id(silver, tables.read(spark, cfg, IDENTITY_MAP), excluded)
    else:
        linked = silver.withColumn("customer_id", F.lit(None).cast("string"))
    linked = linked.select("event_date", "event_key", "customer_id", F.lit(True).alias("in_silver"))
    return due.join(linked, ["event_date", "event_key"], "left").fillna(False, ["in_silver"])


#: per kind: (days of history before the earliest due timer's day it needs, event types it reads;
#: None = all)
_HISTORY: dict[str, tuple[int, tuple[str, ...] | None]] = {
    "cart_abandonment": (0, ("purchase",)),
    "high_intent_abandonment": (1, ("purchase", "product_view")),    # bursts may end the day before
    "repeat_purchase": (REPEAT_DAYS + 1, ("purchase",)),
    "re_engagement": (HISTORY_DAYS + 1, None),
}


def _days_back(trig: Trigger) -> int:
    """Whole days of events before the earliest due timer's day that ``trig`` reads."""
    if trig.kind == "high_intent_abandonment":       # the burst: cart_within + view_window before the cart
        minutes = float(trig.params["cart_within_minutes"]) + float(trig.params["view_window_minutes"])
        return int(math.ceil(minutes / 1440)) + 1
    return _HISTORY[trig.kind][0]


def _history(spark: SparkSession, cfg: Config, due: DataFrame, rules: list[Trigger], lo, hi) -> DataFrame:
    """The one read of silver a judgement makes: the consented events (customer_id, event_ts,
    event_key, event_type) of the due timers' customers, as far back as the rules need."""
    kinds = {t.kind for t in rules}
    days = max(_days_back(t) for t in rules)
    wanted = [_HISTORY[k][1] for k in kinds]
    types = None if any(t is None for t in wanted) else sorted({t for ts in wanted for t in ts})
    ev = customer_events(spark, cfg, start=lo - timedelta(days=days), end=hi, end_inclusive=True, event_types=types,
                         columns=["event_ts", "event_key", "event_type"], withdrawals=False)
    return ev.join(due.select("customer_id").distinct(), "customer_id", "left_semi")


def _abandoned(history: DataFrame, due: DataFrame, trig: Trigger) -> DataFrame:
    """timer_id of the carts that had no purchase in [cart, due] (and, high intent, a burst before)."""
    purchases = history.where(F.col("event_type") == "purchase").select("customer_id", F.col("event_ts").alias("p_ts"))
    bought = (due.join(purchases, "customer_id")
              .where((F.col("p_ts") >= F.col("event_ts")) & (F.col("p_ts") <= F.col("due_ts")))
              .select("timer_id").distinct())
    out = due.join(bought, "timer_id", "left_anti")
    if trig.kind == "high_intent_abandonment":
        views_us = int(round(float(trig.params["view_window_minutes"]) * 60_000_000))
        cart_us = int(round(float(trig.params["cart_within_minutes"]) * 60_000_000))
        views = history.where(F.col("event_type") == "product_view").select(
            "customer_id", F.col("event_ts").alias("v_ts"))
        per_customer = Window.partitionBy("customer_id").orderBy(_us("v_ts")).rangeBetween(-views_us, 0)
        bursts = views.withColumn("n", F.count(F.lit(1)).over(per_customer)) \
            .where(F.col("n") >= int(trig.params["min_views"]))
        burst_ok = (out.join(bursts, "customer_id")
                    .where((_us("v_ts") <= _us("event_ts")) & (_us("event_ts") - _us("v_ts") <= F.lit(cart_us)))
                    .select("timer_id").distinct())
        out = out.join(burst_ok, "timer_id", "left_semi")
    return out.select("timer_id")


def _repeat(history: DataFrame, due: DataFrame, trig: Trigger) -> DataFrame:
    """timer_id of the purchases that bring the last 180 days' purchases to exactly the threshold."""
    purchases = history.where(F.col("event_type") == "purchase").select(
        "customer_id", F.col("event_ts").alias("p_ts"), F.col("event_key").alias("p_key"))
    window_us = REPEAT_DAYS * 24 * _US_PER_HOUR
    counted = (due.join(purchases, "customer_id")
               .where((_us("p_ts") > _us("event_ts") - F.lit(window_us))
                      & ((F.col("p_ts") < F.col("event_ts"))
                         | ((F.col("p_ts") == F.col("event_ts")) & (F.col("p_key") <= F.col("event_key")))))
               .groupBy("timer_id").count())
    return counted.where(F.col("count") == int(trig.params["min_purchases_180d"])).select("timer_id")


def _reengaged(history: DataFrame, due: DataFrame, trig: Trigger) -> DataFrame:
    """timer_id of the events whose customer's previous event is inactive_days..HISTORY_DAYS before."""
    events = history.select("customer_id", F.col("event_ts").alias("e_ts"), F.col("event_key").alias("e_key"))
    before = (due.join(events, "customer_id")
              .where((F.col("e_ts") < F.col("event_ts"))
                     | ((F.col("e_ts") == F.col("event_ts")) & (F.col("e_key") < F.col("event_key"))))
              .where(_us("e_ts") >= _us("event_ts") - F.lit(HISTORY_DAYS * 24 * _US_PER_HOUR))
              .groupBy("timer_id").agg(F.max("e_ts").alias("previous_ts")))
    gap_us = int(trig.params["inactive_days"]) * 24 * _US_PER_HOUR
    return (before.join(due.select("timer_id", "event_ts"), "timer_id")
            .where(_us("previous_ts") <= _us("event_ts") - F.lit(gap_us)).select("timer_id"))


_JUDGES = {"cart_abandonment": _abandoned, "high_intent_abandonment": _abandoned,
           "repeat_purchase": _repeat, "re_engagement": _reengaged}


def judge(spark: SparkSession, cfg: Config, triggers: list[Trigger], wm: datetime | None, batch_id: str,
          topic: str, now: datetime | None = None) -> dict:
    """Decide every timer of ``topic`` due at its watermark ``wm``; fire, then delete the decided timers.

    Each topic has its own event time: a timer is judged by the watermark of the topic whose event
    started it.

    Returns:
        counts: due, fired, not_linked (still waiting), dropped_unlinked, no_consent, erased, retired
        (timers of triggers no longer defined).
    """
    counts = {"due": 0, "fired": 0, "not_linked": 0, "dropped_unlinked": 0, "no_consent": 0, "erased": 0,
              "retired": 0}
    if wm is None or not tables.exists(spark, cfg, STREAM_TIMERS):
        return counts
    now = now or datetime.now(timezone.utc)
    by_name = {t.name: t for t in triggers}
    timers = tables.read(spark, cfg, STREAM_TIMERS)
    # strictly before: an event stamped exactly at the watermark is still on time (late is < watermark),
    # so a timer due at the watermark waits for the next move
    due = timers.where((F.col("topic") == topic) & (F.col("due_ts") < F.lit(wm)))
    span = due.agg(F.count(F.lit(1)).alias("n"), F.min("event_date").alias("lo"),
                   F.max(F.to_date("due_ts")).alias("hi"),
                   F.count(F.when(~F.col("trigger").isin(*by_name) if by_name else F.lit(True), 1)).alias("retired")
                   ).first()
    if not span["n"]:
        return counts
    counts["due"], counts["retired"] = int(span["n"]), int(span["retired"])
    lo, hi = span["lo"], max(span["hi"], span["lo"])
    # the one read of the due timers: every later join reuses it (and it is cut from the timers table's
    # lineage before the same table is deleted from)
    due = _customers_of(spark, cfg, due, lo, hi).localCheckpoint()
    waited_out = F.col("registered_at") < F.lit(now - timedelta(hours=float(cfg.get("stream.unlinked_wait_hours"))))
    linked = due.where(F.col("customer_id").isNotNull())
    consented = exclude_withdrawn(spark, cfg, linked, now).localCheckpoint()
    n_linked, n_consented = linked.count(), consented.count()
    counts["no_consent"] = n_linked - n_consented
    fired = []
    # one row per trigger name (bounded by the rules in segments.yaml, not by events)
    present = {r["trigger"] for r in consented.select("trigger").distinct().collect()} & set(by_name)
    history = (_history(spark, cfg, consented, [by_name[n] for n in present], lo, hi).localCheckpoint()
               if present else None)
    for name in sorted(present):
        trig = by_name[name]
        mine = consented.where(F.col("trigger") == name)
        hits = _JUDGES[trig.kind](history, mine, trig)
        fired.append(mine.join(hits, "timer_id", "left_semi").select(
            "trigger", "customer_id", "event_ts", "event_key", "due_ts",
            F.current_timestamp().alias("fired_at"), F.lit(trig.rule_version).alias("rule_version"),
            F.lit(batch_id).alias("batch_id")))
    stats = due.agg(
        F.count(F.when(~F.col("in_silver"), 1)).alias("erased"),
        F.count(F.when(F.col("in_silver") & F.col("customer_id").isNull() & ~waited_out, 1)).alias("not_linked"),
        F.count(F.when(F.col("in_silver") & F.col("customer_id").isNull() & waited_out, 1)).alias("dropped_unlinked"),
    ).first()
    counts.update({k: int(stats[k]) for k in ("erased", "not_linked", "dropped_unlinked")})
    if fired:
        rows = fired[0]
        for f in fired[1:]:
            rows = rows.unionByName(f)
        before = tables.last_commit(spark, cfg, SEGMENT_TRIGGERS)["version"] \
            if tables.exists(spark, cfg, SEGMENT_TRIGGERS) else None
        tables.merge(spark, rows, cfg, SEGMENT_TRIGGERS, ["trigger", "event_key"])
        after = tables.last_commit(spark, cfg, SEGMENT_TRIGGERS)
        # new rows only (Delta's commit metrics): a replayed judgement that finds its firings in place adds 0
        counts["fired"] = tables.rows_written(after) if after["version"] != before else 0
    # decided: every due timer except those still waiting for their identifier to be linked
    decided = due.where(~(F.col("in_silver") & F.col("customer_id").isNull() & ~waited_out)).select("timer_id")
    tables.delete_matching(spark, cfg, STREAM_TIMERS, decided, "timer_id")
    return counts


def record_progress(spark: SparkSession, cfg: Config, row: dict, txn: tuple[str, int] | None) -> None:
    """Append the micro-batch's progress row (watermark, counts) as an idempotent Delta write."""
    schema = ("topic STRING, query_id STRING, micro_batch BIGINT, batch_id STRING, watermark TIMESTAMP, "
              "max_event_ts TIMESTAMP, events BIGINT, late_events BIGINT, timers BIGINT, due BIGINT, fired BIGINT, "
              "not_linked BIGINT, seconds DOUBLE, committed_at TIMESTAMP")
    names = [f.split()[0] for f in schema.split(", ")]
    df = spark.createDataFrame([tuple(row.get(n) for n in names)], schema)
    tables.append(df, cfg, STREAM_PROGRESS, txn=txn, properties=tables.BOOKKEEPING_PROPERTIES, merge_schema=True)
