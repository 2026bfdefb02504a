"""Journey analysis: Markov transition matrices, absorbing-chain metrics, removal-effect
attribution, paths and funnel (``seglake run journeys --as-of DATE``).

Flow (``run``): silver.events (consented, window ``[as_of - window_days, as_of)``) ->
customer ids from silver.identity_map -> sessions -> journey states (``conf/states.yaml``)
-> transitions counted in Spark (window functions + aggregations) -> ``gold.transition_matrix``.
The first-order matrices are tiny (states x states per segment/channel), so the absorbing
chain algebra (fundamental matrix ``N = (I - Q)^-1``, absorption ``B = N R``, expected steps
``t = N 1``, removal effects) runs on the driver in numpy -> ``gold.journey_metrics``.
Journey paths and the funnel -> ``gold.journey_paths`` / ``gold.journey_metrics``.
The journey graph (PageRank, motif) lives in :mod:`seglake.stages.journey_graph`.

A *journey* is the ordered list of mapped events of one session (scope ``session``) or of
one customer over the window (scope ``customer``), split after every conversion. It begins
in the virtual ``start`` state and ends in ``conversion`` (its last event is a conversion) or
``exit`` (anything else). Every event of the journey contributes one transition into its
state; the last one also contributes ``state -> exit`` unless it is a conversion.

k-order transitions: the from-state is the path of the last ``k`` states (``start`` counts as
a state, shorter histories near the start are kept as they are), joined with ``>``:
``start>browse>product_view -> cart``. Every order counts the same transitions, so each
order's rows of probabilities sum to 1.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import yaml
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

log = logging.getLogger(__name__)

#: the stage runner resolves ``--as-of`` (default: the day after the last event) before run()
USES_AS_OF = True

ALL = "all"  # segment / channel value of the rows that aggregate over that dimension
UNKNOWN_CHANNEL = "unknown"
PATH_SEP = ">"

# --------------------------------------------------------------------------- states spec


@dataclass(frozen=True)
class StateSpec:
    """The journey states of ``conf/states.yaml``.

    Attributes:
        event_states: canonical event_type -> state.
        start: the virtual state every journey begins in.
        conversion: the absorbing success state (also the state of conversion events).
        exit: the absorbing state of journeys that end without converting.
        scope: ``session`` or ``customer``.
        collapse_repeats: count consecutive repeats of a state once.
        funnel: ordered funnel steps (states) after the start.
        motif: chain of states counted as a motif (e.g. product_view, cart, exit).
    """

    event_states: dict[str, str]
    start: str = "start"
    conversion: str = "conversion"
    exit: str = "exit"
    scope: str = "session"
    collapse_repeats: bool = False
    funnel: tuple[str, ...] = ("product_view", "cart", "checkout", "conversion")
    motif: tuple[str, ...] = ("product_view", "cart", "exit")

    def __post_init__(self) -> None:
        if not self.event_states:
            raise ValueError("states spec: 'states' must map at least one event_type to a state")
        if self.scope not in ("session", "customer"):
            raise ValueError(f"states spec: options.scope must be 'session' or 'customer', got {self.scope!r}")
        if self.conversion not in self.event_states.values():
            raise ValueError(f"states spec: no event_type maps to the conversion state {self.conversion!r}")
        for reserved in (self.start, self.exit):
            if reserved in self.event_states.values():
                raise ValueError(f"states spec: state {reserved!r} is virtual and cannot be the state of an event_type")
        known = set(self.states)
        for name, seq in (("funnel", self.funnel), ("motif", self.motif)):
            unknown = [s for s in seq if s not in known]
            if unknown:
                raise ValueError(f"states spec: options.{name} names unknown state(s) {unknown}")

    @property
    def transient(self) -> list[str]:
        """Non-absorbing states in a stable order: start first, then as first mapped."""
        out = [self.start]
        for state in self.event_states.values():
            if state != self.conversion and state not in out:
                out.append(state)
        return out

    @property
    def absorbing(self) -> list[str]:
        return [self.conversion, self.exit]

    @property
    def states(self) -> list[str]:
        return self.transient + self.absorbing


def load_states(path: str | Path) -> StateSpec:
    """Read ``states.yaml`` into a :class:`StateSpec` (clear ``ValueError`` when malformed)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"journey states file not found: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not isinstance(data.get("states"), dict):
        raise ValueError(f"{path}: needs a 'states' mapping of event_type -> state")
    options = data.get("options") or {}
    kwargs: dict[str, Any] = {
        "event_states": {str(k): str(v) for k, v in data["states"].items()},
        "start": str(data.get("start", "start")),
        "conversion": str(data.get("conversion", "conversion")),
        "exit": str(data.get("exit", "exit")),
        "scope": str(options.get("scope", "session")),
        "collapse_repeats": bool(options.get("collapse_repeats", False)),
    }
    if "funnel" in options:
        kwargs["funnel"] = tuple(str(s) for s in options["funnel"])
    if "motif" in options:
        kwargs["motif"] = tuple(str(s) for s in options["motif"])
    try:
        return StateSpec(**kwargs)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


# --------------------------------------------------------------------------- helpers


def _require(df: DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} needs column(s) {missing}; got {df.columns}")


def _journey_partition(spec: StateSpec) -> list[str]:
    """Window partition of the journey's base key. customer_id always leads, so input that is
    already hash-partitioned by customer (sessionize's output) needs no further shuffle."""
    return ["customer_id", "session_key"] if spec.scope == "session" else ["customer_id"]


# --------------------------------------------------------------------------- transforms


def assign_states(events: DataFrame, spec: StateSpec, keep_unmapped: bool = False) -> DataFrame:
    """Add ``state`` (journey state of the canonical ``event_type``).

    Args:
        events: needs ``event_type``.
        spec: the states spec.
        keep_unmapped: keep events whose type has no state (``state`` null); by default they
            are dropped (journeys ignore them).

    Returns:
        ``events`` plus ``state``.
    """
    _require(events, ["event_type"], "assign_states")
    if "state" in events.columns:
        raise ValueError("assign_states: input already has a 'state' column")
    pairs: list[Column] = []
    for event_type, state in sorted(spec.event_states.items()):
        pairs += [F.lit(event_type), F.lit(state)]
    out = events.withColumn("state", F.create_map(*pairs)[F.col("event_type")])
    return out if keep_unmapped else out.where(F.col("state").isNotNull())


def build_journeys(events: DataFrame, spec: StateSpec) -> DataFrame:
    """Cut mapped events into journeys.

    Args:
        events: one row per event with ``customer_id, session_key, event_ts, event_seq,
            state, channel``; rows with a null ``state`` are ignored.
        spec: the states spec (scope, collapse of repeats).

    Returns:
        The mapped events plus ``journey_part`` (INT, journeys before this one in the same
        session/customer), ``journey_key`` (STRING), ``journey_pos`` (1.. in the journey),
        ``is_last`` (BOOLEAN) and ``journey_channel`` (the channel of the journey's first
        session: its first non-null ``channel`` over all its events, side events included;
        else ``unknown``).
    """
    _require(events, ["customer_id", "session_key", "event_ts", "event_seq", "state", "channel"],
             "build_journeys")
    base = _journey_partition(spec)
    order = [F.col("event_ts"), F.col("event_seq")]
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


def _journey_window(spec: StateSpec) -> Window:
    return Window.partitionBy(*_journey_partition(spec), "journey_part").orderBy("event_ts", "event_seq")


def journey_transitions(journeys: DataFrame, spec: StateSpec, max_order: int = 3) -> DataFrame:
    """One row per (transition, order) of every journey.

    Args:
        journeys: output of :func:`build_journeys` (needs ``customer_id, journey_key,
            journey_pos, is_last, journey_channel, state, event_ts, event_seq``).
        spec: the states spec.
        max_order: highest Markov order k (1..max_order rows per transition).

    Returns:
        ``customer_id, journey_key, channel, order, from_state, to_state`` where
        ``from_state`` is the last ``order`` states joined with ``>``.
    """
    if not 1 <= int(max_order) <= 5:
        raise ValueError(f"journey_transitions: max_order must be between 1 and 5, got {max_order}")
    _require(journeys, ["customer_id", "journey_key", "journey_part", "journey_pos", "is_last",
                        "journey_channel", "state", "event_ts", "event_seq"], "journey_transitions")
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
    return (lags
            .select("customer_id", "journey_key", F.col("journey_channel").alias("channel"),
                    F.explode(F.filter(F.array(*rows), lambda r: r.isNotNull())).alias("t"))
            .select("customer_id", "journey_key", "channel", "t.order", "t.from_state", "t.to_state"))


def customer_transition_counts(transitions: DataFrame) -> DataFrame:
    """Count transitions per (customer_id, channel, order, from_state, to_state).

    The grouping keys start with customer_id, so input partitioned by customer aggregates
    without a shuffle; the result is much smaller than the events and feeds both the
    per-channel and the per-segment matrices.
    """
    _require(transitions, ["customer_id", "channel", "order", "from_state", "to_state"],
             "customer_transition_counts")
    return (transitions.groupBy("customer_id", "channel", "order", "from_state", "to_state")
            .agg(F.count(F.lit(1)).alias("count")))


def with_probabilities(counts: DataFrame) -> DataFrame:
    """Add ``probability`` = count / row total, a row being (order, segment, channel, from_state)."""
    _require(counts, ["order", "segment", "channel", "from_state", "to_state", "count"], "with_probabilities")
    row = Window.partitionBy("order", "segment", "channel", "from_state")
    return counts.withColumn("probability", F.col("count") / F.sum("count").over(row))


def transition_matrix(customer_counts: DataFrame, membership: DataFrame | None = None) -> DataFrame:
    """The transition matrices: overall, per journey channel and (when given) per segment.

    Args:
        customer_counts: output of :func:`customer_transition_counts`.
        membership: ``customer_id, segment`` (a customer may be in several segments), or None.

    Returns:
        ``order, segment, channel, from_state, to_state, count (LONG), probability (DOUBLE)``;
        ``segment = 'all'`` / ``channel = 'all'`` on the rows that aggregate over it.
    """
    by_channel = (customer_counts.groupBy("order", "channel", "from_state", "to_state")
                  .agg(F.sum("count").alias("count")).withColumn("segment", F.lit(ALL)))
    overall = (by_channel.groupBy("order", "from_state", "to_state").agg(F.sum("count").alias("count"))
               .withColumn("segment", F.lit(ALL)).withColumn("channel", F.lit(ALL)))
    cols = ["order", "segment", "channel", "from_state", "to_state", "count"]
    out = overall.select(cols).unionByName(by_channel.select(cols))
    if membership is not None:
        _require(membership, ["customer_id", "segment"], "transition_matrix membership")
        members = membership.select("customer_id", F.col("segment").cast("string")).distinct()
        by_segment = (customer_counts.join(members, "customer_id")
                      .groupBy("order", "segment", "from_state", "to_state")
                      .agg(F.sum("count").alias("count")).withColumn("channel", F.lit(ALL)))
        out = out.unionByName(by_segment.select(cols))
    return with_probabilities(out.withColumn("count", F.col("count").cast("long")))


# --------------------------------------------------------------------------- channel paths


def channel_touchpoints(events: DataFrame, spec: StateSpec) -> DataFrame:
    """One touchpoint per session: its entry channel and whether it converted.

    Args:
        events: sessionized events with ``customer_id, session_key, event_ts, event_seq,
            channel, state`` (``state`` may be null: every session is a touch, side events too).
        spec: the states spec.

    Returns:
        ``customer_id, session_key, touch_ts, channel, converted``.
    """
    _require(events, ["customer_id", "session_key", "event_ts", "event_seq", "channel", "state"],
             "channel_touchpoints")
    first = F.min_by(F.lower(F.col("channel")),
                     F.when(F.col("channel").isNotNull(), F.struct("event_ts", "event_seq")))
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
    _require(touchpoints, ["customer_id", "session_key", "touch_ts", "channel", "converted"],
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


# --------------------------------------------------------------------------- paths + funnel


def journey_summaries(journeys: DataFrame, spec: StateSpec, max_states: int = 10) -> DataFrame:
    """One row per journey: its path string and the furthest ordered funnel step reached.

    Args:
        journeys: output of :func:`build_journeys`.
        spec: the states spec (funnel steps).
        max_states: longer journeys show their first ``max_states`` states then ``...``.

    Returns:
        ``customer_id, journey_key, n_states, converted, path, funnel_step`` (0 = none of the
        funnel steps reached in order; i = the first i steps reached in order).
    """
    _require(journeys, ["customer_id", "journey_key", "journey_pos", "state"], "journey_summaries")
    seq = (journeys.groupBy("customer_id", "journey_key")
           .agg(F.sort_array(F.collect_list(F.struct("journey_pos", "state"))).alias("_s"))
           .withColumn("_states", F.transform("_s", lambda x: x["state"])))
    n = F.size("_states")
    last = F.element_at("_states", -1)
    converted = last == spec.conversion
    shown = F.concat_ws(PATH_SEP, F.slice("_states", 1, max_states))
    path = F.concat_ws(PATH_SEP, F.lit(spec.start), shown,
                       F.when(n > max_states, F.lit("...")),
                       F.when(~converted, F.lit(spec.exit)))
    steps = F.array(*[F.lit(s) for s in spec.funnel])
    # the funnel's exit step (if configured) is reached by the terminal, so append it
    states = F.when(converted, F.col("_states")).otherwise(F.concat("_states", F.array(F.lit(spec.exit))))
    reached = F.aggregate(states, F.lit(0), lambda acc, s: F.when(
        (acc < len(spec.funnel)) & (s == F.element_at(steps, acc + 1)), acc + 1).otherwise(acc))
    return seq.select("customer_id", "journey_key", n.alias("n_states"), converted.alias("converted"),
                      path.alias("path"), reached.alias("funnel_step"))


def _ranked(counts: DataFrame, limit: int) -> DataFrame:
    """``path, journeys`` -> the ``limit`` largest with ``share`` (of all) and ``rank`` (ties by path).

    The global ordering runs on the ``limit`` rows only (sort + limit keeps a top-k per
    partition), so no single-partition window over all paths.
    """
    total = counts.agg(F.sum("journeys").alias("_total"))
    top = counts.orderBy(F.desc("journeys"), F.asc("path")).limit(limit)
    return (top.crossJoin(total)
            .select("path", "journeys", (F.col("journeys") / F.col("_total")).alias("share"),
                    F.row_number().over(Window.orderBy(F.desc("journeys"), F.asc("path"))).alias("rank")))


def top_paths(summaries: DataFrame, limit: int = 20) -> DataFrame:
    """The ``limit`` most frequent full journey paths: ``path, journeys, share, rank``."""
    _require(summaries, ["path"], "top_paths")
    return _ranked(summaries.groupBy("path").agg(F.count(F.lit(1)).alias("journeys")), limit)


def funnel_counts(summaries: DataFrame) -> DataFrame:
    """``funnel_step, journeys``: journeys whose furthest reached step is exactly this one."""
    return summaries.groupBy("funnel_step").agg(F.count(F.lit(1)).alias("journeys"))


# --------------------------------------------------------------------------- absorbing chain (driver)


@dataclass
class Chain:
    """An absorbing Markov chain over named states (driver-side, small)."""

    transient: list[str]
    absorbing: list[str]
    Q: np.ndarray  # transient -> transient
    R: np.ndarray  # transient -> absorbing

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, str, float]], transient: Sequence[str],
                  absorbing: Sequence[str]) -> "Chain":
        """Build from (from_state, to_state, probability) rows.

        States of ``transient`` without any outgoing row (never observed) move to the last
        absorbing state (exit) with probability 1, so the chain stays absorbing.
        Unknown states raise ValueError.
        """
        transient, absorbing = list(transient), list(absorbing)
        ti = {s: i for i, s in enumerate(transient)}
        ai = {s: i for i, s in enumerate(absorbing)}
        Q = np.zeros((len(transient), len(transient)))
        R = np.zeros((len(transient), len(absorbing)))
        for frm, to, p in rows:
            if frm not in ti:
                raise ValueError(f"chain: from_state {frm!r} is not a transient state {transient}")
            if to in ti:
                Q[ti[frm], ti[to]] += p
            elif to in ai:
                R[ti[frm], ai[to]] += p
            else:
                raise ValueError(f"chain: to_state {to!r} is not a known state")
        empty = (Q.sum(axis=1) + R.sum(axis=1)) == 0
        R[empty, -1] = 1.0
        return cls(transient, absorbing, Q, R)

    def fundamental(self) -> np.ndarray:
        """N = (I - Q)^-1: expected visits to each transient state."""
        return np.linalg.inv(np.eye(len(self.transient)) - self.Q)

    def absorption(self) -> np.ndarray:
        """B = N R: probability of ending in each absorbing state, from each transient state."""
        return np.linalg.solve(np.eye(len(self.transient)) - self.Q, self.R)

    def expected_steps(self) -> np.ndarray:
        """t = N 1: expected number of transitions until absorption, from each transient state."""
        return np.linalg.solve(np.eye(len(self.transient)) - self.Q, np.ones(len(self.transient)))

    def p_absorb(self, start: str, target: str) -> float:
        return float(self.absorption()[self.transient.index(start), self.absorbing.index(target)])

    def without(self, state: str, sink: str) -> "Chain":
        """The chain with ``state`` removed: every transition into it goes to ``sink`` instead."""
        i = self.transient.index(state)
        Q, R = self.Q.copy(), self.R.copy()
        R[:, self.absorbing.index(sink)] += Q[:, i]
        Q[:, i] = 0.0
        return Chain(self.transient, self.absorbing, Q, R)

    def removal_effects(self, start: str, target: str, sink: str) -> dict[str, float]:
        """Removal effect of every transient state but ``start``: 1 - P(target | removed) / P(target).

        0 for every state when the chain never reaches ``target``.
        """
        base = self.p_absorb(start, target)
        out = {}
        for state in self.transient:
            if state == start:
                continue
            out[state] = 0.0 if base <= 0 else 1.0 - self.without(state, sink).p_absorb(start, target) / base
        return out


def chain_metrics(chain: Chain, start: str, conversion: str, exit_state: str) -> list[dict]:
    """Absorbing-chain metrics of one matrix as rows ``metric, subject_type, subject, value, rank``.

    Metrics: ``conversion_probability`` and ``expected_steps`` per transient state,
    ``expected_visits`` (N[start, s]), ``dropoff_mass`` (N[start, s] * P(s -> exit): the
    share of journeys that exit right after s; they sum to P(exit | start)), ranked,
    ``removal_effect`` and ``attributed_share`` (removal effects normalised to sum 1) per state.
    """
    B = chain.absorption()
    t = chain.expected_steps()
    N = chain.fundamental()
    ci, ei = chain.absorbing.index(conversion), chain.absorbing.index(exit_state)
    si = chain.transient.index(start)
    rows: list[dict] = []

    def add(metric: str, subject_type: str, subject: str, value: float, rank: int | None = None) -> None:
        rows.append({"metric": metric, "subject_type": subject_type, "subject": subject,
                     "value": float(value), "rank": rank})

    for i, s in enumerate(chain.transient):
        add("conversion_probability", "state", s, B[i, ci])
        add("expected_steps", "state", s, t[i])
        add("expected_visits", "state", s, N[si, i])
    drop = {s: N[si, i] * chain.R[i, ei] for i, s in enumerate(chain.transient)}
    for r, (s, v) in enumerate(sorted(drop.items(), key=lambda kv: (-kv[1], kv[0])), start=1):
        add("dropoff_mass", "transition", f"{s}{PATH_SEP}{exit_state}", v, r)
    effects = chain.removal_effects(start, conversion, exit_state)
    total = sum(max(v, 0.0) for v in effects.values())
    for r, (s, v) in enumerate(sorted(effects.items(), key=lambda kv: (-kv[1], kv[0])), start=1):
        add("removal_effect", "state", s, v, r)
        add("attributed_share", "state", s, (max(v, 0.0) / total) if total > 0 else 0.0, r)
    return rows


def channel_attribution(rows: Iterable[tuple[str, str, int]], spec: StateSpec) -> list[dict]:
    """Removal-effect attribution over the channel-level chain.

    Args:
        rows: (from_state, to_state, count) of :func:`channel_path_transitions` (collected:
            channels x channels, small).
        spec: the states spec (start / conversion / exit names).

    Returns:
        Metric rows (subject_type ``channel``): ``removal_effect``, ``attributed_share`` and
        ``attributed_conversions`` per channel, plus ``conversion_probability`` of the start.
    """
    rows = [(f, t, float(c)) for f, t, c in rows]
    totals: dict[str, float] = {}
    for f, _, c in rows:
        totals[f] = totals.get(f, 0.0) + c
    channels = sorted({s for f, t, _ in rows for s in (f, t)} - {spec.start, spec.conversion, spec.exit})
    chain = Chain.from_rows([(f, t, c / totals[f]) for f, t, c in rows], [spec.start] + channels,
                            [spec.conversion, spec.exit])
    conversions = sum(c for _, t, c in rows if t == spec.conversion)
    out = [{"metric": "conversion_probability", "subject_type": "channel", "subject": spec.start,
            "value": chain.p_absorb(spec.start, spec.conversion), "rank": None}]
    effects = chain.removal_effects(spec.start, spec.conversion, spec.exit)
    total = sum(max(v, 0.0) for v in effects.values())
    for r, (ch, v) in enumerate(sorted(effects.items(), key=lambda kv: (-kv[1], kv[0])), start=1):
        share = (max(v, 0.0) / total) if total > 0 else 0.0
        out += [{"metric": "removal_effect", "subject_type": "channel", "subject": ch, "value": v, "rank": r},
                {"metric": "attributed_share", "subject_type": "channel", "subject": ch, "value": share, "rank": r},
                {"metric": "attributed_conversions", "subject_type": "channel", "subject": ch,
                 "value": share * conversions, "rank": r}]
    return out


# --------------------------------------------------------------------------- job

MATRIX_TABLE = "gold.transition_matrix"
METRICS_TABLE = "gold.journey_metrics"
PATHS_TABLE = "gold.journey_paths"
METRICS_SCHEMA = ("segment string, channel string, metric string, subject_type string, subject string, "
                  "value double, rank int")
#: silver.events columns the stage reads (identifiers for attach_customer_id).
_EVENT_COLUMNS = ("user_id", "anonymous_id", "device_id", "email_hash", "phone_hash", "event_type",
                  "event_ts", "event_date", "channel", "page_url", "consent", "session_id", "source")


def kstep_paths(matrix: DataFrame, k: int, limit: int = 20) -> DataFrame:
    """The ``limit`` most frequent k-step paths (k transitions, k + 1 states) of the overall matrix.

    They are the order-k rows whose from-state holds a full history of k states.

    Returns:
        ``path, journeys (LONG: occurrences), share, rank``.
    """
    _require(matrix, ["order", "segment", "channel", "from_state", "to_state", "count"], "kstep_paths")
    rows = matrix.where((F.col("order") == k) & (F.col("segment") == ALL) & (F.col("channel") == ALL)
                        & (F.size(F.split("from_state", PATH_SEP)) == k))
    counts = rows.select(F.concat_ws(PATH_SEP, "from_state", "to_state").alias("path"),
                         F.col("count").cast("long").alias("journeys"))
    return _ranked(counts, limit)


def funnel_metrics(step_counts: dict[int, int], spec: StateSpec) -> list[dict]:
    """Funnel rows from {furthest step reached: journeys} (collected: len(funnel) + 1 numbers).

    Metrics per step (subject = the step's state, rank = its position, 0 = start):
    ``funnel_journeys`` (journeys reaching the step in order), ``funnel_step_rate``
    (share of the previous step's journeys) and ``funnel_dropoff`` (1 - step rate).
    """
    total = sum(step_counts.values())
    reached = [sum(v for s, v in step_counts.items() if s >= i) for i in range(len(spec.funnel) + 1)]
    rows = [{"metric": "funnel_journeys", "subject_type": "step", "subject": spec.start,
             "value": float(total), "rank": 0}]
    for i, state in enumerate(spec.funnel, start=1):
        prev = reached[i - 1]
        rate = reached[i] / prev if prev else 0.0
        rows += [{"metric": "funnel_journeys", "subject_type": "step", "subject": state,
                  "value": float(reached[i]), "rank": i},
                 {"metric": "funnel_step_rate", "subject_type": "step", "subject": state, "value": rate, "rank": i},
                 {"metric": "funnel_dropoff", "subject_type": "step", "subject": state,
                  "value": 1.0 - rate if prev else 0.0, "rank": i}]
    return rows


def matrix_metrics(first_order: Iterable[Any], spec: StateSpec) -> list[dict]:
    """Absorbing-chain metrics for every (segment, channel) first-order matrix.

    Args:
        first_order: rows with ``segment, channel, from_state, to_state, probability`` of
            order 1 (collected: groups x states^2, small).
        spec: the states spec.
    """
    groups: dict[tuple[str, str], list[tuple[str, str, float]]] = {}
    for r in first_order:
        groups.setdefault((r["segment"], r["channel"]), []).append(
            (r["from_state"], r["to_state"], float(r["probability"])))
    out = []
    for (segment, channel), rows in sorted(groups.items()):
        chain = Chain.from_rows(rows, spec.transient, spec.absorbing)
        for m in chain_metrics(chain, spec.start, spec.conversion, spec.exit):
            out.append({"segment": segment, "channel": channel, **m})
    return out


def _membership(spark, cfg, as_of: date) -> DataFrame | None:
    """customer_id, segment of gold.segment_membership at ``as_of`` (else the latest before), or None."""
    from seglake.core import tables

    if not cfg.get("journeys.per_segment", True) or not tables.exists(spark, cfg, "gold.segment_membership"):
        return None
    members = tables.read(spark, cfg, "gold.segment_membership")
    latest = (members.where(F.col("as_of_date") <= F.lit(as_of))
              .agg(F.max("as_of_date").alias("d")).first()["d"])  # one scalar
    if latest is None:
        return None
    if latest != as_of:
        log.warning("journeys: no segment membership at %s, using the one of %s", as_of, latest)
    return members.where(F.col("as_of_date") == F.lit(latest)).select("customer_id", "segment").distinct()


def sessionized_events(spark, cfg, window_start: date, as_of: date) -> DataFrame:
    """Consented silver.events of the window with customer ids and sessions (the stage's input).

    Returns:
        ``customer_id, session_key, event_ts, event_seq, event_type, channel, page_url``.
    """
    from seglake.core.contracts import customer_events
    from seglake.stages.sessions import sessionize

    with_customer = customer_events(spark, cfg, start=window_start, end=as_of, columns=_EVENT_COLUMNS)
    sessions = sessionize(with_customer, int(cfg.get("sessions.inactivity_minutes")),
                          split_on_session_id=bool(cfg.get("sessions.split_on_session_id", True)))
    return sessions.select("customer_id", "session_key", "event_ts", "event_seq", "event_type",
                           "channel", "page_url")


def add_arguments(parser) -> None:  # noqa: D103 - argparse hook
    parser.add_argument("--no-graph", action="store_true",
                        help="skip the journey graph (PageRank and motif counts)")


def run(ctx) -> dict:
    """``seglake run journeys``: transition matrices, journey metrics, paths (see module doc)."""
    from seglake.stages import journey_graph as G
    from seglake.core import tables
    from seglake.core.spark import persist_events

    spark, cfg = ctx.spark, ctx.cfg
    jcfg = cfg["journeys"]
    spec = load_states(cfg.conf_file(jcfg["states_file"]))
    max_order = int(jcfg["max_order"])
    as_of = ctx.resolve_as_of()
    window_start = as_of - timedelta(days=int(jcfg["window_days"]))
    stamp = [F.lit(window_start).cast("date").alias("window_start"),
             F.lit(as_of).cast("date").alias("window_end"),
             F.lit(as_of).cast("date").alias("as_of_date")]
    slice_ = f"as_of_date = '{as_of.isoformat()}'"

    # sessionized events are reused by journeys, channel touchpoints and the page graph
    events = assign_states(sessionized_events(spark, cfg, window_start, as_of), spec, keep_unmapped=True)
    events = persist_events(events)
    membership = _membership(spark, cfg, as_of)
    try:
        journeys = build_journeys(events, spec)
        counts = customer_transition_counts(journey_transitions(journeys, spec, max_order)).persist()
        matrix = transition_matrix(counts, membership).persist()
        tables.overwrite(matrix.select("order", "segment", "channel", "from_state", "to_state", "count",
                                       "probability", *stamp),
                         cfg, MATRIX_TABLE, partition_by=["as_of_date"], replace_where=slice_)
        # ---- driver-side algebra on small collected matrices
        first = (matrix.where(F.col("order") == 1)
                 .select("segment", "channel", "from_state", "to_state", "probability").collect())
        if not first:
            raise ValueError(f"journeys: no journey events in the window [{window_start}, {as_of}): "
                             "nothing to analyse (check --as-of and journeys.window_days)")
        metrics = matrix_metrics(first, spec)
        channel_rows = [(r["from_state"], r["to_state"], r["count"]) for r in
                        channel_path_transitions(channel_touchpoints(events, spec), spec).collect()]
        metrics += [{"segment": ALL, "channel": ALL, **m} for m in channel_attribution(channel_rows, spec)]
        summaries = journey_summaries(journeys, spec, int(jcfg["path_max_states"])).persist()
        steps = {r["funnel_step"]: r["journeys"] for r in funnel_counts(summaries).collect()}
        metrics += [{"segment": ALL, "channel": ALL, **m} for m in funnel_metrics(steps, spec)]
        # ---- paths
        full = top_paths(summaries, int(jcfg["top_paths"])).select(
            F.lit("full").alias("path_kind"), F.lit(None).cast("int").alias("k"), "path", "journeys", "share", "rank")
        k = min(int(jcfg["kstep_paths"]), max_order)
        kstep = kstep_paths(matrix, k, int(jcfg["top_paths"])).select(
            F.lit("kstep").alias("path_kind"), F.lit(k).alias("k"), "path", "journeys", "share", "rank")
        tables.overwrite(full.unionByName(kstep).select("*", *stamp), cfg, PATHS_TABLE,
                         partition_by=["as_of_date"], replace_where=slice_)
        # ---- journey graph (native DataFrame implementation, see seglake.stages.journey_graph)
        top_page = None
        if not ctx.args.get("no_graph"):
            edges = (G.state_edges(matrix) if jcfg["graph_vertices"] == "state" else G.page_edges(events))
            ranks = G.pagerank(edges, float(jcfg["pagerank_damping"]), int(jcfg["pagerank_max_iter"]),
                               float(jcfg["pagerank_tol"]))
            kind = "state" if jcfg["graph_vertices"] == "state" else "page"
            for r in ranks.where(F.col("rank") <= int(jcfg["pagerank_top"])).collect():  # top N: small
                metrics.append({"segment": ALL, "channel": ALL, "metric": "pagerank", "subject_type": kind,
                                "subject": r["vertex"], "value": float(r["pagerank"]), "rank": int(r["rank"])})
                top_page = r["vertex"] if r["rank"] == 1 else top_page
            motif_name = PATH_SEP.join(spec.motif)
            matches = G.find_chain(G.event_edges(journeys, spec), spec.motif)
            for r in G.motif_counts(matches, motif_name, membership).collect():  # one row per segment
                for metric, value in (("motif_matches", r["matches"]), ("motif_customers", r["customers"])):
                    metrics.append({"segment": r["segment"], "channel": ALL, "metric": metric,
                                    "subject_type": "motif", "subject": motif_name,
                                    "value": float(value), "rank": None})
        mdf = spark.createDataFrame([tuple(m.get(c) for c in ("segment", "channel", "metric", "subject_type",
                                                               "subject", "value", "rank")) for m in metrics],
                                    METRICS_SCHEMA)
        tables.overwrite(mdf.select("*", *stamp), cfg, METRICS_TABLE, partition_by=["as_of_date"],
                         replace_where=slice_)
        n_journeys = sum(steps.values())
        overall = {(m["metric"], m["subject_type"], m["subject"]): m["value"] for m in metrics
                   if m["segment"] == ALL and m["channel"] == ALL}
        drop = min((m for m in metrics if m["metric"] == "dropoff_mass" and m["segment"] == ALL
                    and m["channel"] == ALL), key=lambda m: m["rank"])
        channels = [m for m in metrics if m["metric"] == "attributed_share" and m["subject_type"] == "channel"]
        top_channel = min(channels, key=lambda m: m["rank"]) if channels else None
        summary: dict[str, Any] = {
            "journeys": n_journeys,
            "p_conversion": round(overall.get(("conversion_probability", "state", spec.start), 0.0), 4),
            "top_dropoff": f"{drop['subject']} ({drop['value']:.3f})",
            "top_channel": (f"{top_channel['subject']} ({top_channel['value']:.2f})" if top_channel else None),
            "matrix_rows": matrix.count(),
            "segments": (membership.select("segment").distinct().count() if membership is not None else 0),
            "window": f"{window_start}..{as_of}",
        }
        if top_page is not None:
            summary["top_page"] = top_page
        motif_key = ("motif_matches", "motif", PATH_SEP.join(spec.motif))
        if motif_key in overall:
            summary["motif_" + PATH_SEP.join(spec.motif)] = int(overall[motif_key])
        return summary
    finally:
        for df in (events, locals().get("counts"), locals().get("matrix"), locals().get("summaries")):
            if df is not None:
                df.unpersist()
