"""Event-sequence segments, evaluated with window functions over profiled silver events
(customer_id, event_type, event_ts) before the as-of date: cart abandonment and high-intent
(view burst then cart) abandonment. ``SEQUENCE_KINDS`` maps each ``sequence:`` kind of the
YAML to its typed parameters and its evaluator; :func:`sequence_evidence` runs a segment's
kind and returns customer_id plus an evidence struct.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from typing import Callable

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from seglake.core.contracts import require_columns
from seglake.stages.segments.model import Segment


@dataclass(frozen=True)
class SequenceKind:
    """An event-sequence condition: its parameters (name -> type) and its evaluator."""

    params: dict[str, str]
    evaluate: Callable[..., DataFrame]
    lookback_param: str = "lookback_days"


def _epoch_us(as_of: date) -> int:
    """Microseconds since the epoch of ``as_of`` 00:00 UTC (timestamps compare in micros)."""
    midnight = datetime.combine(as_of, time(0), tzinfo=timezone.utc)
    return int(midnight.timestamp()) * 1_000_000


def _micros(hours: float = 0.0, minutes: float = 0.0, days: float = 0.0) -> int:
    return int(round(((days * 24 + hours) * 60 + minutes) * 60 * 1_000_000))


def cart_abandonment(events: DataFrame, as_of: date, *, abandon_hours: float,
                     lookback_days: int) -> DataFrame:
    """Customers whose latest observable add-to-cart had no purchase within ``abandon_hours``.

    Only events before ``as_of`` (00:00 UTC) count. A cart is observable when at least
    ``abandon_hours`` passed between it and ``as_of`` and it is at most ``lookback_days``
    old. "Within" is inclusive: a purchase exactly ``abandon_hours`` after the cart (or at
    the same instant) converts it.

    Args:
        events: profiled events with ``customer_id``, ``event_type`` (canonical), ``event_ts``.
        as_of: exclusive cut-off date.
        abandon_hours: purchase window after the cart.
        lookback_days: how far back a cart may be.

    Returns:
        customer_id, evidence (struct: cart_ts, next_purchase_ts, hours_without_purchase).
    """
    require_columns(events, ("customer_id", "event_type", "event_ts"), "cart_abandonment")
    end_us = _epoch_us(as_of)
    window_us = _micros(hours=abandon_hours)
    start_us = end_us - _micros(days=lookback_days)
    ts_us = F.unix_micros("event_ts")
    after = Window.partitionBy("customer_id").orderBy(ts_us).rangeBetween(0, Window.unboundedFollowing)
    scored = (
        events.where(F.col("event_type").isin("add_to_cart", "purchase") & F.col("customer_id").isNotNull()
                     & (ts_us < F.lit(end_us)) & (ts_us >= F.lit(start_us)))
        .select("customer_id", "event_type", "event_ts")
        .withColumn("next_purchase_ts",
                    F.min(F.when(F.col("event_type") == "purchase", F.col("event_ts"))).over(after))
    )
    carts = scored.where((F.col("event_type") == "add_to_cart") & (ts_us <= F.lit(end_us - window_us)))
    latest = carts.groupBy("customer_id").agg(
        # max of a struct compares field by field: the latest cart, deterministic on ties
        F.max(F.struct(F.col("event_ts").alias("cart_ts"), "next_purchase_ts")).alias("c"))
    return _unpurchased(latest, end_us, window_us, [])


def high_intent_abandonment(events: DataFrame, as_of: date, *, min_views: int, view_window_minutes: float,
                            cart_within_minutes: float, abandon_hours: float,
                            lookback_days: int) -> DataFrame:
    """Customers whose latest observable high-intent cart had no purchase within ``abandon_hours``.

    A view burst ends at a product_view that has at least ``min_views`` product views in
    the ``view_window_minutes`` up to and including it (so 3 views spanning 9 minutes is a
    burst for a 10-minute window, spanning 11 minutes is not). A high-intent cart is an
    add_to_cart at most ``cart_within_minutes`` after a burst. It is observable when it is
    at least ``abandon_hours`` before ``as_of`` and at most ``lookback_days`` old; it is
    abandoned when no purchase follows within ``abandon_hours`` (inclusive).

    Args:
        events: profiled events with ``customer_id``, ``event_type``, ``event_ts``.
        as_of: exclusive cut-off date (00:00 UTC).

    Returns:
        customer_id, evidence (struct: cart_ts, burst_ts, views_in_window, next_purchase_ts,
        hours_without_purchase).
    """
    require_columns(events, ("customer_id", "event_type", "event_ts"), "high_intent_abandonment")
    end_us = _epoch_us(as_of)
    window_us = _micros(hours=abandon_hours)
    views_us = _micros(minutes=view_window_minutes)
    cart_us = _micros(minutes=cart_within_minutes)
    # events needed: carts of the lookback, plus the views bursts that may precede them
    start_us = end_us - _micros(days=lookback_days) - views_us - cart_us
    ts_us = F.unix_micros("event_ts")
    by_customer = Window.partitionBy("customer_id").orderBy(ts_us)
    is_view = F.col("event_type") == "product_view"
    scored = (
        events.where(F.col("event_type").isin("product_view", "add_to_cart", "purchase")
                     & F.col("customer_id").isNotNull() & (ts_us < F.lit(end_us)) & (ts_us >= F.lit(start_us)))
        .select("customer_id", "event_type", "event_ts")
        .withColumn("views_in_window",
                    F.count(F.when(is_view, 1)).over(by_customer.rangeBetween(-views_us, 0)))
        .withColumn("last_burst", F.max(
            F.when(is_view & (F.col("views_in_window") >= min_views),
                   F.struct(F.col("event_ts").alias("burst_ts"), F.col("views_in_window").alias("views")))
        ).over(by_customer.rangeBetween(Window.unboundedPreceding, 0)))
        .withColumn("next_purchase_ts",
                    F.min(F.when(F.col("event_type") == "purchase", F.col("event_ts")))
                    .over(by_customer.rangeBetween(0, Window.unboundedFollowing)))
    )
    carts = scored.where(
        (F.col("event_type") == "add_to_cart") & F.col("last_burst").isNotNull()
        & (ts_us - F.unix_micros("last_burst.burst_ts") <= F.lit(cart_us))
        & (ts_us <= F.lit(end_us - window_us)) & (ts_us >= F.lit(end_us - _micros(days=lookback_days))))
    latest = carts.groupBy("customer_id").agg(F.max(F.struct(
        F.col("event_ts").alias("cart_ts"), "next_purchase_ts",
        F.col("last_burst.burst_ts").alias("burst_ts"), F.col("last_burst.views").alias("views"))).alias("c"))
    return _unpurchased(latest, end_us, window_us,
                        [F.col("c.burst_ts").alias("burst_ts"), F.col("c.views").alias("views_in_window")])


def _unpurchased(latest: DataFrame, end_us: int, window_us: int, extra: list) -> DataFrame:
    """Customers whose latest cart ``c`` saw no purchase within ``window_us``, with the evidence.

    ``latest`` has customer_id and a struct ``c`` (cart_ts, next_purchase_ts, ...); ``extra``
    are further evidence columns read from ``c``.
    """
    gap_us = (F.coalesce(F.unix_micros("c.next_purchase_ts"), F.lit(end_us)) - F.unix_micros("c.cart_ts"))
    return (
        latest.where(F.col("c.next_purchase_ts").isNull()
                     | (F.unix_micros("c.next_purchase_ts") - F.unix_micros("c.cart_ts") > F.lit(window_us)))
        .select("customer_id", F.struct(
            F.col("c.cart_ts").alias("cart_ts"), *extra,
            F.col("c.next_purchase_ts").alias("next_purchase_ts"),
            F.round(gap_us / F.lit(3_600_000_000), 2).alias("hours_without_purchase"),
        ).alias("evidence"))
    )


SEQUENCE_KINDS: dict[str, SequenceKind] = {
    "cart_abandonment": SequenceKind(
        {"abandon_hours": "float", "lookback_days": "int"}, cart_abandonment),
    "high_intent_abandonment": SequenceKind(
        {"min_views": "int", "view_window_minutes": "float", "cart_within_minutes": "float",
         "abandon_hours": "float", "lookback_days": "int"}, high_intent_abandonment),
}


def sequence_evidence(events: DataFrame, segment: Segment, as_of: date) -> DataFrame:
    """Evaluate a segment's ``sequence`` condition: customer_id, evidence struct."""
    if segment.sequence is None:
        raise ValueError(f"segment '{segment.name}' has no sequence condition")
    kind = SEQUENCE_KINDS[segment.sequence]
    params = {p: segment.thresholds[p].value for p in kind.params}
    return kind.evaluate(events, as_of, **params)
