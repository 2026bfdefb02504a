"""Real-time trigger definitions: the ``triggers:`` section of ``conf/segments.yaml``.

A trigger is a rule the stream (``seglake run stream``) judges as events arrive and that fires
once per deciding event into ``gold.segment_triggers``. Each names a ``kind`` (below) and takes
its thresholds from the batch segment it names (``segment:``) — one definition, two engines —
with optional per-trigger overrides (``thresholds:``), e.g. the abandoned-cart email judged after
15 minutes while the ``cart_abandoners`` segment waits 48 hours:

    triggers:
      - name: abandoned_cart_email
        description: an add-to-cart with no purchase within 15 minutes
        kind: cart_abandonment
        segment: cart_abandoners          # abandon_hours, lookback_days from the segment ...
        thresholds: {abandon_hours: 0.25} # ... but 15 minutes here
        version: 1

Kinds (``TRIGGER_KINDS``): what starts a timer (``starts``), when it is due (``due``: hours
after the event, a threshold name or 0) and its parameters:

* ``cart_abandonment``: an add_to_cart; due ``abandon_hours`` later; fires when no purchase of
  the customer falls in [cart, cart + abandon_hours] (the batch ``cart_abandonment`` sequence).
* ``high_intent_abandonment``: as above, and the cart came at most ``cart_within_minutes`` after
  a view burst (``min_views`` product views within ``view_window_minutes``).
* ``repeat_purchase``: a purchase that makes the customer's purchases of the last 180 days reach
  ``min_purchases_180d`` (the ``repeat_buyers`` rule crossed); due at the purchase itself.
* ``re_engagement``: a customer's first event after at least ``inactive_days`` without any
  (the ``inactive`` segment left); due at the event itself.

A timer is due when the stream's event-time watermark passes it (every event up to then has
arrived or is late): see :mod:`seglake.stages.stream.triggers`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from seglake.stages.segments.model import Segment, SegmentConfigError


@dataclass(frozen=True)
class TriggerKind:
    """What starts a timer (event types), when it is due, and the typed parameters."""

    starts: tuple[str, ...]
    params: dict[str, str]
    due_param: str | None = None      # hours after the event; None = at the event


TRIGGER_KINDS: dict[str, TriggerKind] = {
    "cart_abandonment": TriggerKind(("add_to_cart",), {"abandon_hours": "float"}, "abandon_hours"),
    "high_intent_abandonment": TriggerKind(
        ("add_to_cart",), {"min_views": "int", "view_window_minutes": "float", "cart_within_minutes": "float",
                           "abandon_hours": "float"}, "abandon_hours"),
    "repeat_purchase": TriggerKind(("purchase",), {"min_purchases_180d": "int"}),
    "re_engagement": TriggerKind(("*",), {"inactive_days": "int"}),
}
_TRIGGER_KEYS = ("name", "description", "kind", "segment", "thresholds", "version", "enabled")


@dataclass(frozen=True)
class Trigger:
    """One validated trigger: its kind's parameters resolved (segment, then overrides)."""

    name: str
    description: str
    kind: str
    params: dict[str, Any]
    segment: str | None
    version: int
    line: int

    @property
    def rule_version(self) -> str:
        """``v<version>-<hash>``: the version written in the YAML plus a hash of the kind and the
        parameters, so a threshold edited without a version bump still shows in the output."""
        digest = hashlib.sha256(json.dumps([self.kind, self.params], sort_keys=True).encode()).hexdigest()[:8]
        return f"v{self.version}-{digest}"

    def due_hours(self) -> float:
        param = TRIGGER_KINDS[self.kind].due_param
        return float(self.params[param]) if param else 0.0


def parse_triggers(data: dict, root: yaml.Node | None, segments: list[Segment],
                   source: str = "segments.yaml") -> list[Trigger]:
    """Validate the ``triggers:`` list of a parsed segments YAML (``data``, its node ``root``).

    Raises:
        SegmentConfigError: every problem with its YAML line and trigger name.
    """
    from seglake.stages.segments.validation import (_NAME, _line, _node_get, _type_of, _value_matches,
                                                     did_you_mean)

    raw_list = data.get("triggers")
    if raw_list is None:
        return []
    list_node = _node_get(root, "triggers") if root is not None else None
    if not isinstance(raw_list, list) or not isinstance(list_node, yaml.SequenceNode):
        raise SegmentConfigError(source, [f"line {_line(list_node, 1)}: 'triggers:' must be a list of triggers"])
    by_name = {s.name: s for s in segments}
    problems: list[str] = []
    out: list[Trigger] = []
    seen: dict[str, int] = {}
    for raw, node in zip(raw_list, list_node.value):
        line = _line(node, 1)
        if not isinstance(raw, dict):
            problems.append(f"line {line}: each trigger must be a mapping with name, description, kind ...")
            continue
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(f"line {line}: trigger name {name!r} must be a lowercase identifier (a-z, 0-9, _)")
            continue
        where = f"line {line}, trigger '{name}'"
        if name in seen:
            problems.append(f"{where}: duplicate trigger name (first defined at line {seen[name]})")
            continue
        seen[name] = line
        before = len(problems)
        for key in raw:
            if key not in _TRIGGER_KEYS:
                hint = did_you_mean(str(key), _TRIGGER_KEYS)
                problems.append(f"line {_line(_node_get(node, str(key)), line)}, trigger '{name}': "
                                f"unknown key '{key}'{hint}")
        description = raw.get("description")
        if not isinstance(description, str) or not description.strip():
            problems.append(f"{where}: a description (text) is required")
        kind_name = raw.get("kind")
        kind = TRIGGER_KINDS.get(kind_name) if isinstance(kind_name, str) else None
        if kind is None:
            hint = did_you_mean(str(kind_name), TRIGGER_KINDS)
            problems.append(f"{where}: unknown kind {kind_name!r}{hint}; known: {', '.join(TRIGGER_KINDS)}")
            continue
        version = raw.get("version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            problems.append(f"{where}: version must be a whole number >= 1, got {version!r}")
        enabled = raw.get("enabled", True)
        if not isinstance(enabled, bool):
            problems.append(f"{where}: enabled must be true or false, got {enabled!r}")
        params: dict[str, Any] = {}
        seg_name = raw.get("segment")
        if seg_name is not None:
            seg = by_name.get(seg_name) if isinstance(seg_name, str) else None
            if seg is None:
                hint = did_you_mean(str(seg_name), by_name)
                problems.append(f"{where}: segment {seg_name!r} is not defined{hint}")
            else:
                params.update({p: seg.thresholds[p].value for p in kind.params if p in seg.thresholds})
        overrides = raw.get("thresholds", {}) or {}
        if not isinstance(overrides, dict):
            problems.append(f"{where}: thresholds must be a mapping name -> value")
            overrides = {}
        for pname, value in overrides.items():
            if pname not in kind.params:
                hint = did_you_mean(str(pname), kind.params)
                problems.append(f"{where}: kind '{kind_name}' has no threshold '{pname}'{hint}")
                continue
            params[pname] = value.get("value") if isinstance(value, dict) else value
        for pname, ptype in kind.params.items():
            value = params.get(pname)
            if value is None:
                problems.append(f"{where}: kind '{kind_name}' needs threshold '{pname}' ({ptype}), from "
                                "its segment or its own thresholds")
            elif not (_value_matches(ptype, value) or (ptype == "float" and _value_matches("int", value))):
                problems.append(f"{where}: threshold '{pname}' must be {ptype}, got {_type_of(value)} {value!r}")
            elif float(value) <= 0:
                problems.append(f"{where}: threshold '{pname}' must be positive, got {value!r}")
        if len(problems) == before and enabled is not False:
            out.append(Trigger(name, description.strip(), kind_name,
                               {p: params[p] for p in kind.params}, seg_name, int(version), line))
    if problems:
        raise SegmentConfigError(source, problems)
    return out


def load_triggers(path: str | Path) -> list[Trigger]:
    """The enabled triggers of a segments YAML file (its segments validated too)."""
    from seglake.stages.segments.validation import load_segments

    path = Path(path)
    segments = load_segments(path)          # validates the file, including its top-level keys
    text = path.read_text(encoding="utf-8")
    return parse_triggers(yaml.safe_load(text), yaml.compose(text, Loader=yaml.SafeLoader), segments, str(path))
