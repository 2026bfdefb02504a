"""Journeys and their transition matrices, counted in Spark (window functions + aggregations).

:func:`build_journeys` cuts the mapped events of a session (scope ``session``) or customer
(scope ``customer``) into journeys split after every conversion; :func:`journey_transitions`
emits one row per transition and Markov order (the from-state of order k is the path of the
last k states joined with ``>``); :func:`transition_counts` counts them per (order, channel,
from, to, segment set) and :func:`transition_matrix` derives the matrices overall, per journey
channel and per segment and adds row probabilities (``gold.transition_matrix``). The channel
paths (one touchpoint per session, start -> channel -> ... -> conversion | exit) feed the
removal-effect attribution.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from seglake.core.contracts import require_columns
from seglake.stages.journeys.states import (
    ALL, EVENT_ORDER, PATH_SEP, UNKNOWN_CHANNEL, StateSpec, _journey_partition, _journey_window)

def build_journeys(events: DataFrame, spec: StateSpec) -> DataFrame:
    """Cut mapped events into journeys.

    Args:
        events: one row per event with ``customer_id, session_key, event_ts, session_seq,
            event_seq, state, channel`` (:func:`seglake.stages.sessions.sessionize`'s output:
            events are ordered by ``EVENT_ORDER``, total per customer); rows with a null
            ``state`` are ignored.
        spec: the states spec (scope, collapse of repeats).

    Returns:
        The mapped events plus ``journey_part`` (INT, journeys before this one in the same
        session/customer), ``journey_key`` (STRING), ``journey_pos`` (1.. in the journey),
        ``is_last`` (BOOLEAN) and ``journey_channel`` (the channel of the journey's first
        session: its first non-null ``channel`` over all its events, side events included;
        else ``unknown``).
    """
    require_columns(events, ["customer_id", "session_key", *EVENT_ORDER, "state", "channel"], "build_journeys")
    base = _journey_partition(spec)
    order = [F.col(c) for c in EVENT_ORDER]
    w_base = Window.partitionBy(*base).orderBy(*order)
    # the session's channel: first non-null channel of any of its events (side events too)
    w_session = Window.partitionBy("customer_id", "session_key").orderBy(*order).rowsBetween(
        Window.unboundedPreceding, Window.unboundedFollowing)
    df = (events.where(F.col("customer_id").isNotNull())
          .withColumn("_session_channel", F.first(F.lower(F.col("channel")), ignorenulls=True).over(w_session))
          .where(F.col("state").isNotNull()))
    if spec.collapse_repeats:
        df = (df.withColumn("_repeat", F.coalesce(F.lag("state").over(w_base) == F.col("state"), F.lit(False)))
              .where(~F.col("_repeat")).drop("_repeat"))
    # journey number within the base key = conversions strictly before this event
    conv = F.when(F.col("state") == spec.conversion, 1).otherwise(0)
    df = df.withColumn("journey_part", F.coalesce(
        F.sum(conv).over(w_base.rowsBetween(Window.unboundedPreceding, -1)), F.lit(0)).cast("int"))
    w_j = _journey_window(spec)
    w_all = w_j.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    key_parts = [F.col(c).cast("string") for c in base] + [F.col("journey_part").cast("string")]
    # one select: the window expressions share one Window operator (one sort)
    return df.select(
        "*",
        F.concat_ws("#", *key_parts).alias("journey_key"),
        F.row_number().over(w_j).alias("journey_pos"),
        F.lead("state").over(w_j).isNull().alias("is_last"),
        F.coalesce(F.first("_session_channel", ignorenulls=True).over(w_all),
                   F.lit(UNKNOWN_CHANNEL)).alias("journey_channel")).drop("_session_channel")


def journey_transitions(journeys: DataFrame, spec: StateSpec, max_order: int = 3,
                        membership: DataFrame | None = None) -> DataFrame:
    """One row per (transition, order) of every journey.

    Args:
        journeys: output of :func:`build_journeys` (needs ``customer_id, journey_key,
            journey_pos, is_last, journey_channel, state, event_ts, session_seq, event_seq``).
        spec: the states spec.
        max_order: highest Markov order k (1..max_order rows per transition).
        membership: ``customer_id, segment`` or None: adds ``segments`` (:func:`segment_sets`,
            null for non-members),
            joined right after the lag window, whose output is still sorted by customer: on
            journeys built from events shuffled by customer_id alone (as the job does) that is a
            merge join with no shuffle or sort of the journeys (after the explode it would sort
            every transition row again).

    Returns:
        ``customer_id, journey_key, channel, order, from_state, to_state`` where
        ``from_state`` is the last ``order`` states joined with ``>`` [, ``segments``].
    """
    if not 1 <= int(max_order) <= 5:
        raise ValueError(f"journey_transitions: max_order must be between 1 and 5, got {max_order}")
    require_columns(journeys, ["customer_id", "journey_key", "journey_part", "journey_pos", "is_last",
                               "journey_channel", "state", *EVENT_ORDER], "journey_transitions")
    # Same window as build_journeys (partition starts with customer_id, same order): no
    # shuffle and no second sort when the input comes straight from it.
    w = _journey_window(spec)
    pos = F.col("journey_pos")
    lags = journeys.select("*", *[F.lag("state", j).over(w).alias(f"_lag{j}") for j in range(1, max_order + 1)])
    # h[j] = state j steps back (h[0] = this event); position 0 is the virtual start.
    h: list[Column] = [F.col("state")]
    for j in range(1, max_order + 1):
        h.append(F.when(pos - j == 0, F.lit(spec.start)).when(pos - j > 0, F.col(f"_lag{j}")))

    def history(lo: int, hi: int) -> Column:  # states h[hi] .. h[lo], oldest first
        return F.concat_ws(PATH_SEP, *[h[j] for j in range(hi, lo - 1, -1)])

    rows = []
    for k in range(1, max_order + 1):
        rows.append(F.struct(F.lit(k).alias("order"), history(1, k).alias("from_state"),
                             F.col("state").alias("to_state")))
        rows.append(F.when(F.col("is_last") & (F.col("state") != spec.conversion),
                           F.struct(F.lit(k).alias("order"), history(0, k - 1).alias("from_state"),
                                    F.lit(spec.exit).alias("to_state"))))
    keep = []
    if membership is not None:
        lags, keep = lags.join(segment_sets(membership), "customer_id", "left"), ["segments"]
    return (lags
            .select("customer_id", "journey_key", F.col("journey_channel").alias("channel"), *keep,
                    F.explode(F.filter(F.array(*rows), lambda r: r.isNotNull())).alias("t"))
            .select("customer_id", "journey_key", "channel", "t.order", "t.from_state", "t.to_state", *keep))


def segment_sets(membership: DataFrame) -> DataFrame:
    """``customer_id, segments``: each member's distinct segments as a sorted array (one row per customer).

    The transition counts can then be grouped by segment set instead of by customer (see
    :func:`transition_counts`)."""
    require_columns(membership, ["customer_id", "segment"], "segment_sets")
    return (membership.where(F.col("segment").isNotNull())
            .groupBy("customer_id")
            .agg(F.array_sort(F.collect_set(F.col("segment").cast("string"))).alias("segments")))


def transition_counts(transitions: DataFrame) -> DataFrame:
    """Count transitions per (order, channel, from_state, to_state, segments).

    ``segments`` is the customer's segment set (:func:`journey_transitions`; null when the input has no
    such column). The groups are bounded by states x channels x distinct segment sets, not by
    customers or events, so the partial aggregation before the shuffle leaves a handful of rows
    per partition; :func:`transition_matrix` derives every matrix from them.
    """
    require_columns(transitions, ["channel", "order", "from_state", "to_state"], "transition_counts")
    segs = F.col("segments") if "segments" in transitions.columns else F.lit(None).cast("array<string>")
    return (transitions.groupBy("order", "channel", "from_state", "to_state", segs.alias("segments"))
            .agg(F.count(F.lit(1)).alias("count")))


def with_probabilities(counts: DataFrame) -> DataFrame:
    """Add ``probability`` = count / row total, a row being (order, segment, channel, from_state)."""
    require_columns(counts, ["order", "segment", "channel", "from_state", "to_state", "count"], "with_probabilities")
    row = Window.partitionBy("order", "segment", "channel", "from_state")
    return counts.withColumn("probability", F.col("count") / F.sum("count").over(row))


def transition_matrix(counts: DataFrame) -> DataFrame:
    """The transition matrices: overall, per journey channel and per segment (when counts have segment sets).

    Args:
        counts: output of :func:`transition_counts` (a transition of a customer in several
            segments counts once in each of them).

    Returns:
        ``order, segment, channel, from_state, to_state, count (LONG), probability (DOUBLE)``;
        ``segment = 'all'`` / ``channel = 'all'`` on the rows that aggregate over it.
    """
    require_columns(counts, ["order", "channel", "from_state", "to_state", "segments", "count"],
                    "transition_matrix")
    by_channel = (counts.groupBy("order", "channel", "from_state", "to_state")
                  .agg(F.sum("count").alias("count")).withColumn("segment", F.lit(ALL)))
    overall = (by_channel.groupBy("order", "from_state", "to_state").agg(F.sum("count").alias("count"))
               .withColumn("segment", F.lit(ALL)).withColumn("channel", F.lit(ALL)))
    by_segment = (counts.where(F.col("segments").isNotNull())
                  .select("order", "from_state", "to_state", "count", F.explode("segments").alias("segment"))
                  .groupBy("order", "segment", "from_state", "to_state")
                  .agg(F.sum("count").alias("count")).withColumn("channel", F.lit(ALL)))
    cols = ["order", "segment", "channel", "from_state", "to_state", "count"]
    out = overall.select(cols).unionByName(by_channel.select(cols)).unionByName(by_segment.select(cols))
    return with_probabilities(out.withColumn("count", F.col("count").cast("long")))


# --------------------------------------------------------------------------- channel paths


def channel_touchpoints(events: DataFrame, spec: StateSpec) -> DataFrame:
    """One touchpoint per session: its entry channel and whether it converted.

    Args:
        events: sessionized events with ``customer_id, session_key, event_ts, session_seq,
            event_seq, channel, state`` (``state`` may be null: every session is a touch, side
            events too).
        spec: the states spec.

    Returns:
        ``customer_id, session_key, touch_ts, channel, converted``.
    """
    require_columns(events, ["customer_id", "session_key", *EVENT_ORDER, "channel", "state"], "channel_touchpoints")
    # the session's first channel in EVENT_ORDER (unique per customer: no ties)
    first = F.min_by(F.lower(F.col("channel")), F.when(F.col("channel").isNotNull(), F.struct(*EVENT_ORDER)))
    return (events.where(F.col("customer_id").isNotNull())
            .groupBy("customer_id", "session_key")
            .agg(F.min("event_ts").alias("touch_ts"),
                 first.alias("channel"),
                 F.max(F.col("state") == spec.conversion).alias("converted"))
            .withColumn("channel", F.coalesce("channel", F.lit(UNKNOWN_CHANNEL)))
            .withColumn("converted", F.coalesce("converted", F.lit(False))))


def channel_path_transitions(touchpoints: DataFrame, spec: StateSpec) -> DataFrame:
    """Channel-level transitions of customers' paths (split after each converting touch).

    Args:
        touchpoints: output of :func:`channel_touchpoints`.
        spec: the states spec (start / conversion / exit names).

    Returns:
        ``from_state, to_state, count``: start -> channel -> ... -> conversion | exit.
    """
    require_columns(touchpoints, ["customer_id", "session_key", "touch_ts", "channel", "converted"],
             "channel_path_transitions")
    w = Window.partitionBy("customer_id").orderBy("touch_ts", "session_key")
    conv = F.col("converted").cast("int")
    df = touchpoints.withColumn("_path", F.coalesce(
        F.sum(conv).over(w.rowsBetween(Window.unboundedPreceding, -1)), F.lit(0)))
    wp = Window.partitionBy("customer_id", "_path").orderBy("touch_ts", "session_key")
    df = (df.withColumn("_prev", F.coalesce(F.lag("channel").over(wp), F.lit(spec.start)))
            .withColumn("_last", F.lead("channel").over(wp).isNull()))
    terminal = F.when(F.col("converted"), F.lit(spec.conversion)).otherwise(F.lit(spec.exit))
    pairs = F.array(
        F.struct(F.col("_prev").alias("from_state"), F.col("channel").alias("to_state")),
        F.when(F.col("_last"), F.struct(F.col("channel").alias("from_state"), terminal.alias("to_state"))))
    return (df.select(F.explode(F.filter(pairs, lambda p: p.isNotNull())).alias("p"))
            .groupBy("p.from_state", "p.to_state").agg(F.count(F.lit(1)).alias("count")))
