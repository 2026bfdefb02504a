"""Sessions: per customer, a new session after an inactivity gap or a source session_id change.

Everything is window functions over events partitioned by customer_id (one shuffle), no
per-customer Python. Session boundaries of an event depend only on the events before it,
so sessionizing events before a cut-off gives the same sessions (truncated) as
sessionizing everything: the features job relies on this for point-in-time correctness.

The ``seglake run sessions`` job is :func:`seglake.stages.enriched.run`: it keeps
silver.enriched_events up to date and derives silver.sessions from it with these functions.

Table silver.sessions (partitioned by session_date): customer_id, session_key,
session_start, session_end, duration_s, n_events, n_pages, n_products, entry_state,
exit_state, converted, device_type, channel, session_date, _run_id.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Mapping

import yaml
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

log = logging.getLogger(__name__)

#: used when conf/states.yaml is absent (same as the shipped states.yaml)
DEFAULT_STATES: dict[str, str] = {
    "page_view": "browse", "app_open": "browse", "search": "search", "product_view": "product_view",
    "add_to_cart": "cart", "checkout_start": "checkout", "purchase": "conversion",
}
DEFAULT_PAGE_EVENTS = ("page_view", "product_view", "app_open")
SESSION_COLUMNS = ("customer_id", "session_key", "session_start", "session_end", "duration_s", "n_events",
                   "n_pages", "n_products", "entry_state", "exit_state", "converted", "device_type", "channel",
                   "session_date")


def load_states(path: str | Path | None) -> dict[str, str]:
    """event_type -> journey state from a states.yaml (its ``states:`` mapping), else the default."""
    if path is None or not Path(path).exists():
        return dict(DEFAULT_STATES)
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    states = data.get("states") if isinstance(data, dict) else None
    if not isinstance(states, dict) or not states:
        raise ValueError(f"{path}: expected a non-empty 'states:' mapping of event_type -> state")
    return {str(k): str(v) for k, v in states.items()}


def state_col(event_type: Column, states: Mapping[str, str]) -> Column:
    """The journey state of an event type (null for side events), from a small literal map."""
    if not states:
        return F.lit(None).cast("string")
    lookup = F.create_map(*[F.lit(x) for kv in sorted(states.items()) for x in kv])
    return F.try_element_at(lookup, event_type)  # null for a missing key, also in ANSI mode


def event_order(events: DataFrame) -> list[Column]:
    """A customer's events in time order with a total tie-break for equal timestamps.

    ``event_ts``, then ``event_key`` (silver's unique key, the MERGE key of clean) when the
    input has it. Without it (hand-built or ground-truth inputs) the ties are broken by every
    other sortable column, by name (map and variant columns cannot be sorted), so only rows
    equal in all of them (differing at most in map/variant columns) can swap places.
    """
    if "event_key" in events.columns:
        return [F.col("event_ts"), F.col("event_key")]
    unsortable = ("map<", "variant")
    rest = sorted(f.name for f in events.schema.fields if f.name not in ("customer_id", "event_ts")
                  and not any(t in f.dataType.simpleString() for t in unsortable))
    return [F.col("event_ts")] + [F.col(c) for c in rest]


def sessionize(events_with_customer: DataFrame, inactivity_minutes: int,
               split_on_session_id: bool = True) -> DataFrame:
    """Add session_key, session_seq and event_seq to events that carry a customer_id.

    A session starts at a customer's first event, after a gap of more than
    ``inactivity_minutes`` since the previous event, or when the source ``session_id``
    (when present on both) differs from the last one seen.

    Args:
        events_with_customer: needs customer_id, event_ts; session_id and event_key used
            when present (event_key breaks ties of equal timestamps deterministically; without
            it the other columns do, see :func:`event_order`).
        inactivity_minutes: the gap, > 0.
        split_on_session_id: also split on a source session_id change.

    Returns:
        The events plus session_key (``<customer_id>:<epoch millis of the session start>``,
        unique per customer session unless two of them start in the same millisecond: a
        session_id change at an equal timestamp), session_seq (1.. per customer), event_seq
        (1.. per session).
        (session_seq, event_seq) numbers a customer's events in :func:`event_order`: the order
        later stages use (``seglake.stages.journeys.EVENT_ORDER``).
    """
    df = events_with_customer
    missing = [c for c in ("customer_id", "event_ts") if c not in df.columns]
    if missing:
        raise ValueError(f"sessionize needs column(s) {', '.join(missing)}; got {', '.join(df.columns)}")
    if not isinstance(inactivity_minutes, int) or inactivity_minutes <= 0:
        raise ValueError(f"sessions.inactivity_minutes must be a positive integer, got {inactivity_minutes!r}")
    for c in ("session_key", "session_seq", "event_seq"):
        if c in df.columns:
            raise ValueError(f"events already have a {c} column; sessionize would overwrite it")
    order = event_order(df)
    w = Window.partitionBy("customer_id").orderBy(*order)
    ts_ms = F.unix_millis(F.col("event_ts"))
    gap = ts_ms - F.lag(ts_ms).over(w)
    new = F.lag(ts_ms).over(w).isNull() | (gap > F.lit(inactivity_minutes * 60_000))
    if split_on_session_id and "session_id" in df.columns:
        prev_sid = F.last("session_id", ignorenulls=True).over(w.rowsBetween(Window.unboundedPreceding, -1))
        new = new | (F.col("session_id").isNotNull() & prev_sid.isNotNull() & (F.col("session_id") != prev_sid))
    df = df.withColumn("_new", new).withColumn("_rn", F.row_number().over(w))
    running = w.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    df = (df.withColumn("session_seq", F.sum(F.col("_new").cast("int")).over(running))
          .withColumn("_start", F.last(F.when(F.col("_new"), ts_ms), ignorenulls=True).over(running))
          .withColumn("_first", F.last(F.when(F.col("_new"), F.col("_rn")), ignorenulls=True).over(running)))
    df = df.withColumn("session_key", F.concat(F.col("customer_id"), F.lit(":"), F.col("_start").cast("string")))
    # a session is a run of the customer's events in this order: its n-th event is n - 1 rows after
    # its first (the same numbers as row_number() per (customer, session_seq), without a second sort)
    df = df.withColumn("event_seq", (F.col("_rn") - F.col("_first") + 1).cast("int"))
    return df.drop("_new", "_start", "_rn", "_first")


def session_table(sessionized: DataFrame, states: Mapping[str, str] | None = None,
                  page_event_types: Iterable[str] = DEFAULT_PAGE_EVENTS) -> DataFrame:
    """One row per session from :func:`sessionize`'s output.

    entry_state / exit_state are the journey states of the first / last event of the
    session that has one (side events are skipped; null when none has); converted is true
    when the session has a purchase; device_type and channel are the first non-null ones.

    Returns:
        The silver.sessions columns (see module docstring), without _run_id.
    """
    states = dict(DEFAULT_STATES if states is None else states)
    pages = list(page_event_types)
    df = sessionized.withColumn("_state", state_col(F.col("event_type"), states))
    # the position in the customer's event order: unique per customer, so first/last are never a
    # tie, even when two sessions of a customer start in the same millisecond (same session_key)
    seq = F.struct("session_seq", "event_seq")

    def first_nonnull(c: str) -> Column:
        known = F.col(c).isNotNull() & (F.col(c) != F.lit("unknown"))  # silver writes "unknown" devices
        return F.coalesce(F.min_by(F.col(c), F.when(known, seq)), F.max(F.when(F.col(c) == "unknown", F.col(c))))

    agg = df.groupBy("customer_id", "session_key").agg(
        F.min("event_ts").alias("session_start"),
        F.max("event_ts").alias("session_end"),
        F.count(F.lit(1)).alias("n_events"),
        F.sum(F.col("event_type").isin(pages).cast("int")).alias("n_pages"),
        # a set, not countDistinct: that would shuffle every event by (session, product) first
        F.size(F.collect_set("product_id")).alias("n_products"),
        F.min_by(F.col("_state"), F.when(F.col("_state").isNotNull(), seq)).alias("entry_state"),
        F.max_by(F.col("_state"), F.when(F.col("_state").isNotNull(), seq)).alias("exit_state"),
        F.max((F.col("event_type") == "purchase").cast("int")).alias("_conv"),
        first_nonnull("device_type").alias("device_type"),
        first_nonnull("channel").alias("channel"),
    )
    return agg.select(
        "customer_id", "session_key", "session_start", "session_end",
        ((F.unix_micros("session_end") - F.unix_micros("session_start")) / F.lit(1e6)).alias("duration_s"),
        F.col("n_events").cast("int").alias("n_events"), F.col("n_pages").cast("int").alias("n_pages"),
        F.col("n_products").cast("int").alias("n_products"), "entry_state", "exit_state",
        (F.col("_conv") == 1).alias("converted"), "device_type", "channel",
        F.to_date("session_start").alias("session_date"))


def states_for(cfg) -> dict[str, str]:
    """The event_type -> state mapping of the journeys' states file, else the default."""
    name = cfg.get("journeys.states_file") or "states.yaml"
    return load_states(cfg.conf_file(name))
