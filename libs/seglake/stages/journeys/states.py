"""Journey states: the ``conf/states.yaml`` spec, the mapping of events to states and the
names shared by every journeys module (a leaf: imports nothing from the package).

:class:`StateSpec` holds the event_type -> state mapping, the virtual ``start`` and the
absorbing ``conversion`` / ``exit`` states, the journey scope and the funnel / motif
options; :func:`load_states` reads it from YAML and :func:`assign_states` adds each event's
``state``. The constants ``ALL`` (aggregate segment/channel value), ``UNKNOWN_CHANNEL``,
``PATH_SEP`` and ``EVENT_ORDER`` (the total order of a customer's events) and the journey window
helpers are used by the matrices, paths and graph modules.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from seglake.core.contracts import require_columns

ALL = "all"  # segment / channel value of the rows that aggregate over that dimension
UNKNOWN_CHANNEL = "unknown"
PATH_SEP = ">"
#: The order of a customer's sessionized events, used by every journeys window: the order
#: ``sessionize`` gave them (event_ts, then event_key), as it stored it in session_seq (1.. per
#: customer) and event_seq (1.. per session). (session_seq, event_seq) is unique per customer,
#: so the order is total, also for events with equal timestamps and across a session boundary
#: (event_seq alone restarts at 1 in every session); event_ts leads because it never decreases
#: along that order.
EVENT_ORDER = ("event_ts", "session_seq", "event_seq")

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


def _journey_partition(spec: StateSpec) -> list[str]:
    """Window partition of the journey's base key. customer_id always leads, so input that is
    already hash-partitioned by customer (sessionize's output) needs no further shuffle."""
    return ["customer_id", "session_key"] if spec.scope == "session" else ["customer_id"]


def _journey_window(spec: StateSpec) -> Window:
    """Window over one journey's events in :data:`EVENT_ORDER` (a total order)."""
    return Window.partitionBy(*_journey_partition(spec), "journey_part").orderBy(*EVENT_ORDER)


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
    require_columns(events, ["event_type"], "assign_states")
    if "state" in events.columns:
        raise ValueError("assign_states: input already has a 'state' column")
    pairs: list[Column] = []
    for event_type, state in sorted(spec.event_states.items()):
        pairs += [F.lit(event_type), F.lit(state)]
    out = events.withColumn("state", F.create_map(*pairs)[F.col("event_type")])
    return out if keep_unmapped else out.where(F.col("state").isNotNull())

