"""Loading and validating ``conf/segments.yaml`` without Spark: YAML syntax and structure,
allowed keys (with "did you mean" hints), segment names, typed thresholds (int, float,
string, bool, quantile), ``${...}`` placeholders defined and every threshold used, sequence
kinds and their parameters, families with unique priorities. Every problem is collected with
its YAML line and segment name and raised as one :class:`SegmentConfigError`.
"""
from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any

import yaml

from seglake.stages.segments.model import Segment, SegmentConfigError, Threshold
from seglake.stages.segments.rules import _PLACEHOLDER, _strip_literals
from seglake.stages.segments.sequences import SEQUENCE_KINDS

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_SEGMENT_KEYS = ("name", "description", "rule", "sequence", "thresholds", "family", "priority", "enabled")
_THRESHOLD_KEYS = ("type", "value", "of")
_THRESHOLD_TYPES = ("int", "float", "string", "bool", "quantile")


def did_you_mean(value: Any, choices) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to ``value``, or an empty string."""
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return type(value).__name__ if value is not None else "null"


def _value_matches(kind: str, value: Any) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in ("float", "quantile"):
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(float(value)))
    if kind == "string":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    return False


def _node_get(node: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


def _line(node: yaml.Node | None, default: int) -> int:
    return node.start_mark.line + 1 if node is not None else default


def _duplicate_keys(node: yaml.Node, problems: list[str], where: str) -> None:
    """PyYAML keeps the last of duplicated mapping keys silently; report them instead."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                if k.value in seen:
                    problems.append(f"line {k.start_mark.line + 1}{where}: key '{k.value}' is repeated "
                                    f"(first at line {seen[k.value]})")
                seen.setdefault(k.value, k.start_mark.line + 1)
            _duplicate_keys(v, problems, where)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _duplicate_keys(item, problems, where)


def _parse_threshold(seg: str, name: str, raw: Any, node: yaml.Node | None, line: int,
                     problems: list[str]) -> Threshold | None:
    tline = _line(node, line)
    where = f"line {tline}, segment '{seg}'"
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", str(name)):
        problems.append(f"{where}: threshold name '{name}' must be an identifier (letters, digits, _)")
        return None
    if isinstance(raw, dict):
        unknown = [k for k in raw if k not in _THRESHOLD_KEYS]
        if unknown:
            problems.append(f"{where}: threshold '{name}' has unknown key '{unknown[0]}' "
                            f"(allowed: {', '.join(_THRESHOLD_KEYS)})")
            return None
        kind, value, of = raw.get("type"), raw.get("value"), raw.get("of")
        if kind not in _THRESHOLD_TYPES:
            problems.append(f"{where}: threshold '{name}' has type {kind!r}; "
                            f"use one of {', '.join(_THRESHOLD_TYPES)}")
            return None
        if "value" not in raw:
            problems.append(f"{where}: threshold '{name}' has no value")
            return None
    else:
        kind, value, of = _type_of(raw), raw, None
        if kind not in ("int", "float", "string", "bool"):
            problems.append(f"{where}: threshold '{name}' must be a number, a string or a boolean, "
                            f"got {kind}")
            return None
    if not _value_matches(kind, value):
        problems.append(f"{where}: threshold '{name}' is declared {kind} but its value {value!r} "
                        f"is {_type_of(value)}")
        return None
    if kind == "quantile":
        if not 0.0 < float(value) < 1.0:
            problems.append(f"{where}: quantile threshold '{name}' must be strictly between 0 and 1, "
                            f"got {value!r}")
            return None
        if not isinstance(of, str) or not of:
            problems.append(f"{where}: quantile threshold '{name}' needs 'of: <feature column>'")
            return None
    elif of is not None:
        problems.append(f"{where}: threshold '{name}' has 'of' but only quantile thresholds take one")
        return None
    if kind == "float":
        value = float(value)
    return Threshold(str(name), kind, value, tline, of)


def parse_segments(text: str, source: str = "segments.yaml") -> list[Segment]:
    """Parse and validate segment definitions (everything that needs no Spark).

    Checks: YAML syntax, structure, allowed keys, names (lowercase identifiers, unique),
    threshold types, ``${...}`` placeholders defined and thresholds used, sequence kinds and
    their parameters, families with unique priorities.

    Raises:
        SegmentConfigError: listing every problem with its YAML line and segment name.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}" if mark is not None else "somewhere"
        raise SegmentConfigError(source, [f"{at}: not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    problems: list[str] = []
    if root is not None:
        _duplicate_keys(root, problems, "")
    items_node = _node_get(root, "segments") if root is not None else None
    if not isinstance(data, dict) or not isinstance(data.get("segments"), list) \
            or not isinstance(items_node, yaml.SequenceNode):
        raise SegmentConfigError(source, ["line 1: the file must hold 'segments:' followed by a list of segments"])
    unknown_top = [k for k in data if k not in ("segments", "triggers")]
    if unknown_top:
        problems.append(f"line 1: unknown top-level key '{unknown_top[0]}' (only 'segments' and 'triggers' "
                        "are allowed)")

    segments: list[Segment] = []
    first_line: dict[str, int] = {}
    family_prio: dict[tuple[str, int], str] = {}
    for raw, node in zip(data["segments"], items_node.value):
        line = _line(node, 1)
        if not isinstance(raw, dict):
            problems.append(f"line {line}: each segment must be a mapping with name, description, rule ...")
            continue
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(f"line {_line(_node_get(node, 'name'), line)}: segment name {name!r} must be a "
                            "lowercase identifier (a-z, 0-9, _)")
            continue
        where = f"line {line}, segment '{name}'"
        if name in first_line:
            problems.append(f"{where}: duplicate segment name (first defined at line {first_line[name]})")
            continue
        first_line[name] = line
        before = len(problems)
        for key in raw:
            if key not in _SEGMENT_KEYS:
                hint = did_you_mean(str(key), _SEGMENT_KEYS)
                problems.append(f"line {_line(_node_get(node, str(key)), line)}, segment '{name}': "
                                f"unknown key '{key}'{hint}")
        description = raw.get("description")
        if not isinstance(description, str) or not description.strip():
            problems.append(f"{where}: a description (text) is required")
        rule, sequence = raw.get("rule"), raw.get("sequence")
        rule_line = _line(_node_get(node, "rule"), line)
        if rule is None and sequence is None:
            problems.append(f"{where}: needs a 'rule' (SQL expression over customer features) "
                            "and/or a 'sequence' (event-sequence kind)")
        if rule is not None and (not isinstance(rule, str) or not rule.strip()):
            problems.append(f"line {rule_line}, segment '{name}': rule must be a non-empty SQL expression string")
            rule = None
        if sequence is not None and sequence not in SEQUENCE_KINDS:
            hint = did_you_mean(str(sequence), SEQUENCE_KINDS)
            problems.append(f"line {_line(_node_get(node, 'sequence'), line)}, segment '{name}': unknown "
                            f"sequence kind {sequence!r}{hint}; known: {', '.join(SEQUENCE_KINDS)}")
            sequence = None
        enabled = raw.get("enabled", True)
        if not isinstance(enabled, bool):
            problems.append(f"{where}: enabled must be true or false, got {enabled!r}")
        family, priority = raw.get("family"), raw.get("priority")
        if family is not None and (not isinstance(family, str) or not _NAME.match(family)):
            problems.append(f"{where}: family {family!r} must be a lowercase identifier")
        if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
            problems.append(f"line {_line(_node_get(node, 'priority'), line)}, segment '{name}': "
                            f"priority must be an integer, got {_type_of(priority)} {priority!r}")
        elif family is not None and priority is None:
            problems.append(f"{where}: segment of family '{family}' needs an integer priority "
                            "(lower wins)")
        elif priority is not None and family is None:
            problems.append(f"{where}: priority given without a family")
        elif family is not None and enabled is not False:
            other = family_prio.get((family, priority))
            if other is not None:
                problems.append(f"{where}: priority {priority} is already used by '{other}' in family "
                                f"'{family}' (priorities must differ)")
            family_prio[(family, priority)] = name

        thresholds: dict[str, Threshold] = {}
        raw_thr = raw.get("thresholds", {}) or {}
        thr_node = _node_get(node, "thresholds")
        if not isinstance(raw_thr, dict):
            problems.append(f"line {_line(thr_node, line)}, segment '{name}': thresholds must be a mapping "
                            "name -> value or name -> {type, value}")
            raw_thr = {}
        for tname, tvalue in raw_thr.items():
            thr = _parse_threshold(name, tname, tvalue, _node_get(thr_node, str(tname)), line, problems)
            if thr is not None:
                thresholds[thr.name] = thr

        used: set[str] = set()
        if isinstance(rule, str):
            text_wo = _strip_literals(rule)
            for ph in _PLACEHOLDER.findall(rule):
                used.add(ph)
                if ph not in thresholds and ph not in raw_thr:
                    hint = did_you_mean(ph, list(raw_thr))
                    problems.append(f"line {rule_line}, segment '{name}': rule uses ${{{ph}}} but no threshold "
                                    f"'{ph}' is defined{hint}")
            if "$" in _PLACEHOLDER.sub("", rule):
                problems.append(f"line {rule_line}, segment '{name}': '$' may only appear as ${{threshold}}")
            if ";" in text_wo:
                problems.append(f"line {rule_line}, segment '{name}': a rule is one expression; ';' is not allowed")
            if re.search(r"\bselect\b", text_wo, flags=re.IGNORECASE):
                problems.append(f"line {rule_line}, segment '{name}': subqueries are not allowed in a rule "
                                "(use feature columns)")
        if isinstance(sequence, str):
            kind = SEQUENCE_KINDS[sequence]
            for pname, ptype in kind.params.items():
                used.add(pname)
                thr = thresholds.get(pname)
                if pname not in raw_thr:
                    problems.append(f"{where}: sequence '{sequence}' needs threshold '{pname}' ({ptype})")
                elif thr is not None and not (thr.type == ptype or (ptype == "float" and thr.type == "int")):
                    problems.append(f"line {thr.line}, segment '{name}': threshold '{pname}' of sequence "
                                    f"'{sequence}' must be {ptype}, got {thr.type} {thr.value!r}")
                elif thr is not None and float(thr.value) <= 0:
                    problems.append(f"line {thr.line}, segment '{name}': threshold '{pname}' must be "
                                    f"positive, got {thr.value!r}")
        for tname in raw_thr:
            if str(tname) not in used:
                tline = _line(_node_get(thr_node, str(tname)), line)
                problems.append(f"line {tline}, segment '{name}': threshold '{tname}' is defined but not used "
                                "by the rule or the sequence")
        if len(problems) == before:
            segments.append(Segment(name, description.strip(), rule.strip() if isinstance(rule, str) else None,
                                    sequence, thresholds, family, priority, line, rule_line,
                                    enabled is not False))
    if problems:
        raise SegmentConfigError(source, problems)
    if not segments:
        raise SegmentConfigError(source, ["line 1: no segments are defined"])
    return segments


def load_segments(path: str | Path) -> list[Segment]:
    """Read and validate a segments YAML file (see :func:`parse_segments`)."""
    path = Path(path)
    if not path.exists():
        raise SegmentConfigError(str(path), ["line 1: file not found"])
    return parse_segments(path.read_text(encoding="utf-8"), str(path))
