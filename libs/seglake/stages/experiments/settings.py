"""conf/experiments.yaml: the A/B tests `seglake run experiments` analyses.

Loaded and checked before anything is read: every mistake is reported as one
:class:`ExperimentConfigError` naming the file, the line, the experiment and the key (with a
did-you-mean for a misspelt key or metric); several mistakes are listed in one message. It is a
``ConfigError``, so the CLI exits 2 with that sentence and no stack trace.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from seglake.core.config import ConfigError
from seglake.stages.segments.validation import _duplicate_keys, _line, _node_get, did_you_mean

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_VARIANT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")
KEYS = ("name", "description", "enabled", "segments", "start", "end", "assignment", "logged_as", "salt",
        "variants", "primary_metric", "secondary_metrics", "guardrails", "pre_period_days",
        "minimum_detectable_effect", "power", "alpha")
VARIANT_KEYS = ("name", "weight", "control")
ASSIGNMENTS = ("hash", "logged")
#: metric -> kind (proportion: 0/1 per customer; mean: a number per customer)
METRICS = {"conversion_rate": "proportion", "revenue_per_customer": "mean", "orders_per_customer": "mean",
           "average_order_value": "mean"}
_RETENTION = re.compile(r"^retention_(\d{1,3})d$")
#: hash buckets (0..BUCKETS-1) the weights are cut from
BUCKETS = 10_000


class ExperimentConfigError(ConfigError):
    """One or more problems in conf/experiments.yaml."""


def metric_kind(metric: str) -> str | None:
    """``proportion`` or ``mean`` for a known metric (``retention_<N>d`` included), else None."""
    if metric in METRICS:
        return METRICS[metric]
    return "proportion" if _RETENTION.match(metric) else None


def retention_days(metric: str) -> int | None:
    m = _RETENTION.match(metric)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Variant:
    name: str
    weight: float
    control: bool


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    enabled: bool
    segments: tuple[str, ...]        # empty: every exposed customer (logged assignment only)
    start: date
    end: date                        # exclusive
    assignment: str                  # hash | logged
    logged_as: str                   # properties['experiment'] in the events
    salt: str
    variants: tuple[Variant, ...]
    primary_metric: str
    secondary_metrics: tuple[str, ...]
    guardrails: tuple[str, ...]
    pre_period_days: int
    minimum_detectable_effect: float | None
    power: float
    alpha: float
    line: int

    @property
    def control(self) -> str:
        return next(v.name for v in self.variants if v.control)

    @property
    def weights(self) -> dict[str, float]:
        return {v.name: v.weight for v in self.variants}

    def metrics(self) -> list[tuple[str, str]]:
        """(metric, role) in report order: primary, secondary, guardrail."""
        return ([(self.primary_metric, "primary")] + [(m, "secondary") for m in self.secondary_metrics]
                + [(m, "guardrail") for m in self.guardrails])

    def bucket_bounds(self) -> list[tuple[str, int, int]]:
        """(variant, first bucket, last bucket + 1): the weights cut [0, BUCKETS) in file order."""
        total = sum(v.weight for v in self.variants)
        out, lo, acc = [], 0, 0.0
        for i, v in enumerate(self.variants):
            acc += v.weight
            hi = BUCKETS if i == len(self.variants) - 1 else int(round(BUCKETS * acc / total))
            out.append((v.name, lo, hi))
            lo = hi
        return out


def _date(value: Any) -> date | None:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _metric_problem(metric: Any, where: str, key: str, exp_days: int | None) -> str | None:
    if not isinstance(metric, str) or metric_kind(metric) is None:
        return (f"{where}: {key} '{metric}' is not a metric{did_you_mean(metric, METRICS)} "
                f"(known: {', '.join(METRICS)}, retention_<N>d)")
    n = retention_days(metric)
    if n is not None and exp_days is not None and not 0 < n < exp_days:
        return f"{where}: {key} '{metric}' needs 0 < N < the experiment's length ({exp_days} days)"
    return None


def _parse(raw: Any, node: yaml.Node | None, problems: list[str], known_segments: set[str] | None) -> Experiment | None:
    line = _line(node, 0)
    if not isinstance(raw, dict):
        problems.append(f"line {line}: each experiment must be a mapping of keys, not {type(raw).__name__}")
        return None
    name = raw.get("name")
    where = f"line {line}, experiment '{name}'"
    before = len(problems)

    def key_line(key: str) -> int:
        return _line(_node_get(node, key), line) if node is not None else line

    def bad(key: str, message: str) -> None:
        problems.append(f"line {key_line(key)}, experiment '{name}': {key} {message}")

    for key in raw:
        if key not in KEYS:
            problems.append(f"line {key_line(str(key))}, experiment '{name}': unknown key '{key}'"
                            f"{did_you_mean(key, KEYS)}")
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(f"{where}: name must be lowercase letters, digits and _ (starting with a letter)")
    for key in ("start", "end", "variants", "primary_metric"):
        if key not in raw:
            problems.append(f"{where}: '{key}' is required")
    start, end = _date(raw.get("start")), _date(raw.get("end"))
    if "start" in raw and start is None:
        bad("start", f"'{raw.get('start')}' is not a date (YYYY-MM-DD)")
    if "end" in raw and end is None:
        bad("end", f"'{raw.get('end')}' is not a date (YYYY-MM-DD)")
    if start and end and end <= start:
        bad("end", f"{end} must be after start {start} (end is exclusive)")
    days = (end - start).days if start and end and end > start else None
    assignment = raw.get("assignment", "hash")
    if assignment not in ASSIGNMENTS:
        bad("assignment", f"'{assignment}' must be one of {', '.join(ASSIGNMENTS)}{did_you_mean(assignment, ASSIGNMENTS)}")
    segments = raw.get("segments", [])
    if isinstance(segments, str):
        segments = [segments]
    if not isinstance(segments, list) or not all(isinstance(s, str) for s in segments):
        bad("segments", "must be a list of segment names")
        segments = []
    elif len(set(segments)) != len(segments):
        bad("segments", "names a segment twice")
    if not segments and assignment == "hash":
        bad("segments", "is required for hash assignment (seglake assigns the members of the target segments)")
    if known_segments is not None:
        for s in segments:
            if s not in known_segments:
                bad("segments", f"names '{s}', which is not an enabled segment of segments.yaml"
                                f"{did_you_mean(s, known_segments)}")
    variants: list[Variant] = []
    raw_variants = raw.get("variants")
    if "variants" in raw:
        if not isinstance(raw_variants, list) or len(raw_variants) < 2:
            bad("variants", "must list at least two variants")
        else:
            for v in raw_variants:
                if not isinstance(v, dict):
                    bad("variants", f"entry {v!r} must be a mapping with name, weight and optionally control")
                    continue
                unknown = [k for k in v if k not in VARIANT_KEYS]
                if unknown:
                    bad("variants", f"entry '{v.get('name')}' has unknown key '{unknown[0]}'"
                                    f"{did_you_mean(unknown[0], VARIANT_KEYS)}")
                vname, weight = v.get("name"), v.get("weight", 1.0)
                if not isinstance(vname, str) or not _VARIANT.match(vname):
                    bad("variants", f"name {vname!r} must be 1-32 letters, digits, '_', '.' or '-'")
                    continue
                if not _number(weight) or weight <= 0:
                    bad("variants", f"weight of '{vname}' must be a positive number, not {weight!r}")
                    continue
                if not isinstance(v.get("control", False), bool):
                    bad("variants", f"control of '{vname}' must be true or false")
                    continue
                variants.append(Variant(vname, float(weight), bool(v.get("control", False))))
            names = [v.name for v in variants]
            if len(set(names)) != len(names):
                bad("variants", "names a variant twice")
            controls = [v for v in variants if v.control]
            if len(controls) > 1:
                bad("variants", f"has {len(controls)} controls ({', '.join(v.name for v in controls)}); mark one")
            elif variants and not controls:  # the first one is the control unless one is marked
                variants[0] = Variant(variants[0].name, variants[0].weight, True)
    primary = raw.get("primary_metric")
    if "primary_metric" in raw:
        p = _metric_problem(primary, where, "primary_metric", days)
        if p:
            problems.append(p)
    lists = {}
    for key in ("secondary_metrics", "guardrails"):
        values = raw.get(key, []) or []
        if not isinstance(values, list):
            bad(key, "must be a list of metrics")
            values = []
        for m in values:
            p = _metric_problem(m, where, key, days)
            if p:
                problems.append(p)
        lists[key] = tuple(values)
    every = [primary, *lists["secondary_metrics"], *lists["guardrails"]]
    if len(set(map(str, every))) != len(every):
        problems.append(f"{where}: a metric is listed twice among primary_metric, secondary_metrics and guardrails")
    pre = raw.get("pre_period_days", 28)
    if not isinstance(pre, int) or isinstance(pre, bool) or not 0 <= pre <= 366:
        bad("pre_period_days", f"must be a whole number of days from 0 to 366 (0: no CUPED), not {pre!r}")
    mde = raw.get("minimum_detectable_effect")
    if mde is not None and (not _number(mde) or not 0 < mde < 10):
        bad("minimum_detectable_effect", f"must be a relative effect such as 0.1 (10%), not {mde!r}")
    power = raw.get("power", 0.8)
    if not _number(power) or not 0 < power < 1:
        bad("power", f"must be between 0 and 1, not {power!r}")
    alpha = raw.get("alpha", 0.05)
    if not _number(alpha) or not 0 < alpha < 0.5:
        bad("alpha", f"must be between 0 and 0.5, not {alpha!r}")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        bad("enabled", "must be true or false")
    for key in ("description", "logged_as", "salt"):
        if key in raw and not isinstance(raw[key], str):
            bad(key, "must be text")
    if len(problems) > before:
        return None
    return Experiment(
        name=name, description=str(raw.get("description", "")).strip(), enabled=enabled,
        segments=tuple(segments), start=start, end=end, assignment=assignment,
        logged_as=str(raw.get("logged_as", name)), salt=str(raw.get("salt", name)), variants=tuple(variants),
        primary_metric=primary, secondary_metrics=lists["secondary_metrics"], guardrails=lists["guardrails"],
        pre_period_days=int(pre), minimum_detectable_effect=None if mde is None else float(mde),
        power=float(power), alpha=float(alpha), line=line)


def parse_experiments(text: str, source: str, known_segments: set[str] | None = None) -> list[Experiment]:
    """The experiments of a YAML text (``known_segments``: check target segments against them)."""
    problems: list[str] = []
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ExperimentConfigError(f"{source}: not valid YAML{at}: {getattr(exc, 'problem', exc)}.") from None
    if data is None:
        return []
    if not isinstance(data, dict) or set(data) - {"experiments"}:
        extra = sorted(set(data) - {"experiments"}) if isinstance(data, dict) else []
        raise ExperimentConfigError(f"{source}: the file must hold one key, 'experiments' (a list)"
                                    + (f"; unknown key '{extra[0]}'{did_you_mean(extra[0], ['experiments'])}" if extra else "")
                                    + ".")
    items = data.get("experiments") or []
    if not isinstance(items, list):
        raise ExperimentConfigError(f"{source}: 'experiments' must be a list of experiments.")
    nodes = _node_get(root, "experiments")
    item_nodes = nodes.value if isinstance(nodes, yaml.SequenceNode) else [None] * len(items)
    _duplicate_keys(root, problems, "")
    out: list[Experiment] = []
    seen: dict[str, int] = {}
    for raw, node in zip(items, item_nodes):
        exp = _parse(raw, node, problems, known_segments)
        if exp is None:
            continue
        if exp.name in seen:
            problems.append(f"line {exp.line}, experiment '{exp.name}': the name is used twice (first at line {seen[exp.name]})")
            continue
        seen[exp.name] = exp.line
        out.append(exp)
    if problems:
        if len(problems) == 1:
            raise ExperimentConfigError(f"{source} {problems[0]}; nothing was written.")
        raise ExperimentConfigError(f"{source} has {len(problems)} problems (nothing was written): "
                                    + "; ".join(problems) + ".")
    return out


def load_experiments(path: str | Path, known_segments: set[str] | None = None) -> list[Experiment]:
    path = Path(path)
    if not path.exists():
        raise ExperimentConfigError(f"{path}: experiments file not found (experiments.config_file).")
    return parse_experiments(path.read_text(encoding="utf-8"), str(path), known_segments)
