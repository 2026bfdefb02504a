"""Rule-based behavioral segments defined as data (``conf/segments.yaml``).

A segment is a boolean Spark SQL expression over ``gold.customer_features`` (``rule``),
an event-sequence condition evaluated with window functions over profiled silver events
(``sequence``), or both (a customer must satisfy both). Thresholds are typed parameters,
written into a rule as ``${name}`` and substituted as validated SQL literals (integers,
finite numbers, booleans, quoted/escaped strings, or a data-driven quantile cutoff), never
by formatting raw configuration text into SQL.

Segments of one ``family`` are mutually exclusive: a customer qualifying for several keeps
only the one with the lowest ``priority`` number.

``run(ctx)`` (``seglake run segments --as-of DATE``):

1. loads and validates the YAML (structure, names, threshold types) and every rule against
   the features schema with Spark's own parser/analyzer; any problem stops the job with one
   message naming the segment and the YAML line, before anything is written;
2. writes ``gold.segment_membership`` (customer_id, segment, as_of_date, reason = JSON of the
   values that made the rule true; replaceWhere on as_of_date, history kept);
3. writes ``gold.segment_changes`` (entered / exited vs the previous as_of_date present in
   membership);
4. writes ``gold.segment_health`` (size, share, revenue share, conversion rate, change vs the
   previous as_of, alert and too-small flags) and ``gold.segment_overlap`` (pairwise Jaccard).
"""
from __future__ import annotations

import contextlib
import difflib
import logging
import math
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

log = logging.getLogger(__name__)

#: the stage runner resolves ``--as-of`` (default: the day after the last event) before run()
USES_AS_OF = True

MEMBERSHIP = "gold.segment_membership"
CHANGES = "gold.segment_changes"
HEALTH = "gold.segment_health"
OVERLAP = "gold.segment_overlap"
FEATURES = "gold.customer_features"

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_IDENTIFIER = re.compile(r"`([^`]+)`|\b([A-Za-z_][A-Za-z0-9_]*)\b")
_SEGMENT_KEYS = ("name", "description", "rule", "sequence", "thresholds", "family", "priority", "enabled")
_THRESHOLD_KEYS = ("type", "value", "of")
_THRESHOLD_TYPES = ("int", "float", "string", "bool", "quantile")
_NUMERIC = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)


class SegmentConfigError(ValueError):
    """One or more problems in the segment definitions; ``problems`` lists them."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        if len(problems) == 1:
            message = f"{source} {problems[0]}; nothing was written."
        else:
            message = (f"{source} has {len(problems)} problems (nothing was written): "
                       + "; ".join(problems) + ".")
        super().__init__(message)


# --------------------------------------------------------------------------- definitions
@dataclass(frozen=True)
class Threshold:
    """A typed rule parameter. ``of`` is the feature column of a ``quantile`` threshold."""

    name: str
    type: str
    value: Any
    line: int
    of: str | None = None


@dataclass(frozen=True)
class Segment:
    """One validated segment definition (``line``: the YAML line of its entry)."""

    name: str
    description: str
    rule: str | None
    sequence: str | None
    thresholds: dict[str, Threshold]
    family: str | None
    priority: int | None
    line: int
    rule_line: int
    enabled: bool = True

    def where(self) -> str:
        return f"line {self.line}, segment '{self.name}'"


@dataclass(frozen=True)
class SequenceKind:
    """An event-sequence condition: its parameters (name -> type) and its evaluator."""

    params: dict[str, str]
    evaluate: Callable[..., DataFrame]
    lookback_param: str = "lookback_days"


# --------------------------------------------------------------------------- YAML loading
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


def _strip_literals(text: str) -> str:
    return _STRING_LITERAL.sub("''", text)


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
    unknown_top = [k for k in data if k != "segments"]
    if unknown_top:
        problems.append(f"line 1: unknown top-level key '{unknown_top[0]}' (only 'segments' is allowed)")

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
                close = difflib.get_close_matches(str(key), _SEGMENT_KEYS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
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
            close = difflib.get_close_matches(str(sequence), SEQUENCE_KINDS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
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
                    close = difflib.get_close_matches(ph, list(raw_thr), n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
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


# --------------------------------------------------------------------------- rule rendering
def sql_literal(thr: Threshold, value: Any | None = None) -> str:
    """Render a validated threshold value as a Spark SQL literal (never raw config text)."""
    value = thr.value if value is None and thr.type != "quantile" else value
    if thr.type == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"threshold '{thr.name}' must be an integer, got {value!r}")
        return f"({int(value)})" if value < 0 else str(int(value))
    if thr.type in ("float", "quantile"):
        if value is None:
            return "CAST(NULL AS DOUBLE)"
        number = float(value)
        if not math.isfinite(number):
            raise TypeError(f"threshold '{thr.name}' must be a finite number, got {value!r}")
        text = repr(number) + "D"
        return f"({text})" if number < 0 else text
    if thr.type == "bool":
        return "TRUE" if value else "FALSE"
    if thr.type == "string":
        escaped = str(value).replace("\\", "\\\\").replace("'", "\\'")
        return f"'{escaped}'"
    raise TypeError(f"unknown threshold type {thr.type!r}")


def render_rule(segment: Segment, quantiles: dict[str, float | None] | None = None) -> str:
    """The rule with every ``${name}`` replaced by its validated SQL literal.

    Args:
        segment: a parsed segment with a rule.
        quantiles: resolved cutoffs of quantile thresholds (name -> value); 0.0 when absent
            (used for validation, where only types matter).
    """
    if segment.rule is None:
        raise ValueError(f"segment '{segment.name}' has no rule")
    quantiles = quantiles or {}

    def repl(match: re.Match) -> str:
        thr = segment.thresholds[match.group(1)]
        if thr.type == "quantile":
            return sql_literal(thr, quantiles.get(thr.name, 0.0))
        return sql_literal(thr)

    return _PLACEHOLDER.sub(repl, segment.rule)


def rule_columns(segment: Segment, columns: list[str]) -> list[str]:
    """Feature columns a rule mentions (in schema order), for the membership ``reason``."""
    if segment.rule is None:
        return []
    text = _PLACEHOLDER.sub(" ", _strip_literals(segment.rule))
    mentioned = {(a or b).lower() for a, b in _IDENTIFIER.findall(text)}
    return [c for c in columns if c.lower() in mentioned and c not in ("customer_id",)]


@contextlib.contextmanager
def _quiet_pyspark_errors() -> Iterator[None]:
    """PySpark logs every analysis error with a full JVM stack; validation expects errors."""
    loggers = [logging.getLogger(n) for n in ("SQLQueryContextLogger", "DataFrameQueryContextLogger")]
    saved = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        yield
    finally:
        for lg, s in zip(loggers, saved):
            lg.disabled = s


def _spark_problem(exc: Exception, columns: list[str]) -> str:
    from pyspark.errors import AnalysisException, ParseException

    condition = exc.getCondition() if hasattr(exc, "getCondition") else None
    params = exc.getMessageParameters() if hasattr(exc, "getMessageParameters") else {}
    if isinstance(exc, AnalysisException) and condition and condition.startswith("UNRESOLVED_COLUMN"):
        missing = str(params.get("objectName", "?")).strip("`")
        close = difflib.get_close_matches(missing, columns, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown column '{missing}' in rule{hint}"
    if isinstance(exc, AnalysisException) and condition and condition.startswith("UNRESOLVED_ROUTINE"):
        return f"unknown function in rule: {str(exc).splitlines()[0].split('SQLSTATE')[0].strip()}"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    first = first.split(" SQLSTATE")[0].strip()
    if isinstance(exc, ParseException):
        return f"malformed rule expression: {first}"
    return f"invalid rule: {first}"


def validate_rules(spark: SparkSession, segments: list[Segment], schema: T.StructType,
                   source: str = "segments.yaml") -> None:
    """Check every rule with Spark's parser and analyzer against the features ``schema``.

    Each rule must parse, name only existing columns, be a boolean row-level expression
    (no aggregate or window), and evaluate on a row of nulls without a runtime error
    (e.g. an ANSI cast of a string threshold to a number). Quantile thresholds must name a
    numeric column.

    Raises:
        SegmentConfigError: one message with every problem (segment name and YAML line).
    """
    from pyspark.errors import PySparkException

    columns = list(schema.fieldNames())
    lowered = {c.lower(): schema[c].dataType for c in columns}
    nullable = T.StructType([T.StructField(f.name, f.dataType, True) for f in schema.fields])
    empty = spark.createDataFrame([], nullable)
    nulls = spark.createDataFrame([tuple(None for _ in nullable.fields)], nullable)
    problems: list[str] = []
    checked: list[tuple[Segment, str]] = []
    with _quiet_pyspark_errors():
        for seg in segments:
            for thr in seg.thresholds.values():
                if thr.type == "quantile":
                    dtype = lowered.get(str(thr.of).lower())
                    if dtype is None:
                        close = difflib.get_close_matches(str(thr.of), columns, n=1)
                        hint = f" (did you mean '{close[0]}'?)" if close else ""
                        problems.append(f"line {thr.line}, segment '{seg.name}': quantile threshold "
                                        f"'{thr.name}' is of unknown column '{thr.of}'{hint}")
                    elif not isinstance(dtype, _NUMERIC):
                        problems.append(f"line {thr.line}, segment '{seg.name}': quantile threshold "
                                        f"'{thr.name}' needs a numeric column, '{thr.of}' is {dtype.simpleString()}")
            if seg.rule is None:
                continue
            where = f"line {seg.rule_line}, segment '{seg.name}'"
            try:
                expr = render_rule(seg)
                dtype = empty.select(F.expr(expr).alias("v")).schema["v"].dataType
                if not isinstance(dtype, T.BooleanType):
                    problems.append(f"{where}: the rule must be a true/false condition, "
                                    f"but it gives {dtype.simpleString()}")
                    continue
                empty.where(F.expr(expr)).schema  # aggregates / window functions are refused here
                checked.append((seg, expr))
            except PySparkException as exc:
                problems.append(f"{where}: {_spark_problem(exc, columns)}")
        # evaluate on one row of nulls to surface runtime (ANSI) errors such as a string
        # threshold cast to a number: all rules in one job, rule by rule only on failure
        if checked:
            try:
                nulls.select(*[F.expr(e).alias(f"r{i}") for i, (_, e) in enumerate(checked)]).collect()
            except PySparkException:
                for seg, expr in checked:
                    try:
                        nulls.select(F.expr(expr).alias("v")).collect()
                    except PySparkException as exc:
                        problems.append(f"line {seg.rule_line}, segment '{seg.name}': "
                                        f"{_spark_problem(exc, columns)}")
    if problems:
        raise SegmentConfigError(source, problems)


# --------------------------------------------------------------------------- sequence rules
def _epoch_us(as_of: date) -> int:
    """Microseconds since the epoch of ``as_of`` 00:00 UTC (timestamps compare in micros)."""
    midnight = datetime.combine(as_of, time(0), tzinfo=timezone.utc)
    return int(midnight.timestamp()) * 1_000_000


def _require(df: DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} needs columns {', '.join(missing)}, which the input does not have")


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
    _require(events, ("customer_id", "event_type", "event_ts"), "cart_abandonment")
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
    _require(events, ("customer_id", "event_type", "event_ts"), "high_intent_abandonment")
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


# --------------------------------------------------------------------------- membership
def resolve_quantiles(features: DataFrame, segments: list[Segment]) -> dict[tuple[str, str], float | None]:
    """Cutoff values of quantile thresholds, computed in one aggregation over ``features``.

    Returns ``{(segment, threshold): value}``; the single result row is small (one number
    per quantile threshold), hence the ``first()``.
    """
    wanted = [(s.name, t) for s in segments for t in s.thresholds.values() if t.type == "quantile"]
    if not wanted:
        return {}
    aggs = [F.percentile_approx(F.col(t.of).cast("double"), float(t.value), 10000).alias(f"q{i}")
            for i, (_, t) in enumerate(wanted)]
    row = features.agg(*aggs).first()
    return {(seg, t.name): (None if row[f"q{i}"] is None else float(row[f"q{i}"]))
            for i, (seg, t) in enumerate(wanted)}


def _reason_struct(segment: Segment, columns: list[str], quantiles: dict[tuple[str, str], float | None],
                   evidence: str | None = None) -> F.Column:
    fields = [F.col(c) for c in rule_columns(segment, columns)]
    fields += [F.lit(v).cast("double").alias(name) for (seg, name), v in quantiles.items() if seg == segment.name]
    if evidence is not None:
        fields.append(F.col(f"{evidence}.*"))
    if not fields:
        fields = [F.lit(True).alias("rule")]
    return F.to_json(F.struct(*fields))


def evaluate_segments(features: DataFrame, segments: list[Segment], as_of: date,
                      events: DataFrame | None = None,
                      quantiles: dict[tuple[str, str], float | None] | None = None) -> DataFrame:
    """Membership of every enabled segment for the features rows of ``as_of``.

    Args:
        features: ``gold.customer_features`` rows (customer_id + feature columns); only the
            rows with ``as_of_date == as_of`` are used when the column is present.
        segments: validated definitions (:func:`parse_segments` + :func:`validate_rules`).
        as_of: the as-of date (exclusive event cut-off).
        events: profiled events with customer_id (needed only for sequence segments).
        quantiles: resolved quantile cutoffs; computed from ``features`` when None.

    Returns:
        customer_id, segment, as_of_date (DATE), reason (JSON string); family precedence
        applied (one segment per customer and family, lowest priority number wins).
    """
    _require(features, ("customer_id",), "evaluate_segments")
    active = [s for s in segments if s.enabled]
    if "as_of_date" in features.columns:
        features = features.where(F.col("as_of_date") == F.lit(as_of))
    if quantiles is None:
        quantiles = resolve_quantiles(features, active)
    columns = features.columns
    parts: list[DataFrame] = []

    rule_only = [s for s in active if s.sequence is None]
    if rule_only:
        entries = []
        for seg in rule_only:
            cutoffs = {t: v for (s, t), v in quantiles.items() if s == seg.name}
            cond = F.coalesce(F.expr(render_rule(seg, cutoffs)), F.lit(False))
            entries.append(F.when(cond, F.struct(F.lit(seg.name).alias("segment"),
                                                 _reason_struct(seg, columns, quantiles).alias("reason"))))
        # one pass over features: an array of the segments each customer is in, exploded
        parts.append(features.select("customer_id", F.explode(F.filter(F.array(*entries), lambda x: x.isNotNull()))
                                     .alias("m"))
                     .select("customer_id", F.col("m.segment").alias("segment"), F.col("m.reason").alias("reason")))

    for seg in (s for s in active if s.sequence is not None):
        if events is None:
            raise ValueError(f"segment '{seg.name}' is an event-sequence segment: events are required")
        evidence = sequence_evidence(events, seg, as_of)
        joined = features.join(evidence, "customer_id", "inner")
        if seg.rule is not None:
            cutoffs = {t: v for (s, t), v in quantiles.items() if s == seg.name}
            joined = joined.where(F.coalesce(F.expr(render_rule(seg, cutoffs)), F.lit(False)))
        parts.append(joined.select("customer_id", F.lit(seg.name).alias("segment"),
                                   _reason_struct(seg, columns, quantiles, "evidence").alias("reason")))

    if not parts:
        raise ValueError("no enabled segments to evaluate")
    members = parts[0]
    for part in parts[1:]:
        members = members.unionByName(part)
    members = apply_families(members, active)
    return members.select("customer_id", "segment", F.lit(as_of).cast("date").alias("as_of_date"), "reason")


def apply_families(members: DataFrame, segments: list[Segment]) -> DataFrame:
    """Keep, per customer and family, only the segment with the lowest priority number.

    Args:
        members: customer_id, segment, ... rows.
        segments: definitions giving each segment's family and priority.
    """
    families = [s for s in segments if s.family is not None]
    if not families:
        return members
    fam = F.create_map(*[x for s in families for x in (F.lit(s.name), F.lit(s.family))])
    prio = F.create_map(*[x for s in families for x in (F.lit(s.name), F.lit(s.priority))])
    tagged = members.withColumn("_family", fam[F.col("segment")]).withColumn("_prio", prio[F.col("segment")])
    rank = F.row_number().over(Window.partitionBy("customer_id", "_family").orderBy("_prio", "segment"))
    return (tagged.withColumn("_rank", F.when(F.col("_family").isNotNull(), rank).otherwise(F.lit(1)))
            .where(F.col("_rank") == 1).drop("_family", "_prio", "_rank"))


# --------------------------------------------------------------------------- changes, health, overlap
def segment_changes(current: DataFrame, previous: DataFrame | None, as_of: date,
                    previous_as_of: date | None) -> DataFrame:
    """Entered / exited rows by comparing membership of ``as_of`` with the previous as-of.

    Args:
        current: membership rows of ``as_of`` (customer_id, segment, reason).
        previous: membership rows of ``previous_as_of`` (None on the first run: everyone enters).

    Returns:
        customer_id, segment, change (entered|exited), as_of_date, previous_as_of_date, reason.
    """
    cur = current.select("customer_id", "segment", "reason")
    prev_date = F.lit(previous_as_of).cast("date")
    if previous is None:
        out = cur.select("customer_id", "segment", F.lit("entered").alias("change"), "reason")
    else:
        prev = previous.select("customer_id", "segment", F.lit(True).alias("_prev"))
        both = cur.withColumn("_cur", F.lit(True)).join(prev, ["customer_id", "segment"], "full_outer")
        out = (both.where(F.col("_cur").isNull() | F.col("_prev").isNull())
               .select("customer_id", "segment",
                       F.when(F.col("_cur").isNotNull(), F.lit("entered")).otherwise(F.lit("exited")).alias("change"),
                       "reason"))
    return out.select("customer_id", "segment", "change", F.lit(as_of).cast("date").alias("as_of_date"),
                      prev_date.alias("previous_as_of_date"), "reason")


def segment_overlap(members: DataFrame, max_jaccard: float) -> DataFrame:
    """Pairwise Jaccard overlap between segments (self-join on customer_id; one row per pair).

    Returns:
        segment_a < segment_b, size_a, size_b, intersection, union_size, jaccard, high_overlap;
        only pairs sharing at least one customer.
    """
    m = members.select("customer_id", "segment")
    sizes = m.groupBy("segment").agg(F.count(F.lit(1)).alias("size"))
    pairs = (m.alias("a").join(m.alias("b"), "customer_id")
             .where(F.col("a.segment") < F.col("b.segment"))
             .groupBy(F.col("a.segment").alias("segment_a"), F.col("b.segment").alias("segment_b"))
             .agg(F.count(F.lit(1)).alias("intersection")))
    out = (pairs.join(sizes.select(F.col("segment").alias("segment_a"), F.col("size").alias("size_a")), "segment_a")
           .join(sizes.select(F.col("segment").alias("segment_b"), F.col("size").alias("size_b")), "segment_b")
           .withColumn("union_size", F.col("size_a") + F.col("size_b") - F.col("intersection"))
           .withColumn("jaccard", F.col("intersection") / F.col("union_size")))
    return out.select("segment_a", "segment_b", "size_a", "size_b", "intersection", "union_size", "jaccard",
                      (F.col("jaccard") > F.lit(float(max_jaccard))).alias("high_overlap"))


def segment_health(members: DataFrame, features: DataFrame, segments: list[Segment],
                   previous_sizes: DataFrame | None, changes: DataFrame, overlap: DataFrame, *,
                   as_of: date, alert_size_change: float, min_size: int,
                   revenue_column: str, conversion_column: str) -> DataFrame:
    """One row per enabled segment: size, share, revenue share, conversion, change, flags.

    Args:
        members: membership rows of ``as_of`` (customer_id, segment).
        features: features rows of ``as_of`` (customer_id, ``revenue_column``, ``conversion_column``).
        segments: definitions (a segment without members still gets a row, size 0).
        previous_sizes: segment, previous_size at the previous as-of (None on the first run).
        changes: segment_changes rows of this as-of.
        overlap: :func:`segment_overlap` rows.
        alert_size_change: relative size move that raises an alert (0.3 = 30 %).
        min_size: segments smaller than this are flagged ``too_small``.
        revenue_column: feature summed for the revenue share.
        conversion_column: feature whose value > 0 counts a member as converted.
    """
    _require(features, ("customer_id", revenue_column, conversion_column), "segment_health")
    spark = members.sparkSession
    defs = spark.createDataFrame(
        [(s.name, s.family, s.sequence is not None) for s in segments if s.enabled],
        "segment string, family string, is_sequence boolean")
    feats = features.select("customer_id", F.coalesce(F.col(revenue_column).cast("double"), F.lit(0.0)).alias("_rev"),
                            (F.coalesce(F.col(conversion_column), F.lit(0)) > 0).alias("_conv"))
    totals = feats.agg(F.count(F.lit(1)).alias("customers"), F.sum("_rev").alias("total_revenue"))
    stats = (members.select("customer_id", "segment").join(feats, "customer_id", "left")
             .groupBy("segment").agg(F.count(F.lit(1)).alias("size"),
                                     F.sum(F.coalesce("_rev", F.lit(0.0))).alias("revenue"),
                                     F.sum(F.when(F.col("_conv"), 1).otherwise(0)).alias("converters")))
    moves = changes.groupBy("segment").agg(
        F.sum(F.when(F.col("change") == "entered", 1).otherwise(0)).alias("entered"),
        F.sum(F.when(F.col("change") == "exited", 1).otherwise(0)).alias("exited"))
    pairs = overlap.select(F.col("segment_a").alias("segment"), F.col("segment_b").alias("other"), "jaccard") \
        .unionByName(overlap.select(F.col("segment_b").alias("segment"), F.col("segment_a").alias("other"), "jaccard"))
    top = pairs.groupBy("segment").agg(F.max(F.struct("jaccard", "other")).alias("t"))
    out = (defs.join(stats, "segment", "left").join(moves, "segment", "left").join(top, "segment", "left")
           .crossJoin(totals))
    if previous_sizes is not None:
        out = out.join(previous_sizes, "segment", "left") \
            .withColumn("previous_size", F.coalesce(F.col("previous_size"), F.lit(0)).cast("long"))
    else:
        out = out.withColumn("previous_size", F.lit(None).cast("long"))
    size = F.coalesce(F.col("size"), F.lit(0)).cast("long")
    change = F.when(F.col("previous_size") > 0, (size - F.col("previous_size")) / F.col("previous_size"))
    alert = (F.when(F.col("previous_size").isNull(), F.lit(False))
             .when(F.col("previous_size") == 0, size > 0)
             .otherwise(F.abs(change) > F.lit(float(alert_size_change))))
    return out.select(
        F.lit(as_of).cast("date").alias("as_of_date"), "segment", "family", "is_sequence",
        size.alias("size"),
        F.col("customers").cast("long").alias("customers"),
        F.when(F.col("customers") > 0, size / F.col("customers")).otherwise(F.lit(0.0)).alias("share"),
        F.coalesce(F.col("revenue"), F.lit(0.0)).alias("revenue"),
        F.when(F.col("total_revenue") > 0, F.coalesce(F.col("revenue"), F.lit(0.0)) / F.col("total_revenue"))
        .otherwise(F.lit(0.0)).alias("revenue_share"),
        F.when(size > 0, F.coalesce(F.col("converters"), F.lit(0)) / size).alias("conversion_rate"),
        "previous_size", change.alias("size_change"),
        F.coalesce(F.col("entered"), F.lit(0)).cast("long").alias("entered"),
        F.coalesce(F.col("exited"), F.lit(0)).cast("long").alias("exited"),
        alert.alias("alert"),
        F.when(alert & (F.col("previous_size") == 0), F.lit("appeared (was empty)"))
        .when(alert, F.format_string("size moved %+.0f%% (more than %.0f%%)", change * 100,
                                     F.lit(float(alert_size_change) * 100)))
        .alias("alert_reason"),
        (size < F.lit(int(min_size))).alias("too_small"),
        F.col("t.jaccard").alias("max_jaccard"), F.col("t.other").alias("max_overlap_with"),
    )


# --------------------------------------------------------------------------- job
def add_arguments(parser) -> None:
    """``--check``: validate conf/segments.yaml against the features schema and stop."""
    parser.add_argument("--check", action="store_true",
                        help="validate the segment definitions against gold.customer_features and write nothing")


def segments_file(cfg) -> Path:
    """Path of the segments YAML (``segments.config_file``, relative to the conf folder)."""
    name = Path(str(cfg.get("segments.config_file")))
    return name if name.is_absolute() else cfg.conf_file(str(name))


def _events_for_sequences(ctx, as_of: date, segments: list[Segment]) -> DataFrame:
    from datetime import timedelta

    from seglake.core.contracts import customer_events

    days = max(int(s.thresholds[SEQUENCE_KINDS[s.sequence].lookback_param].value)
               for s in segments if s.sequence is not None) + 2
    return customer_events(ctx.spark, ctx.cfg, start=as_of - timedelta(days=days), end=as_of, end_inclusive=True,
                           event_types=("product_view", "add_to_cart", "purchase"),
                           columns=("event_type", "event_ts")).select("customer_id", "event_type", "event_ts")


def run(ctx) -> dict:
    """Compute segment membership, changes, health and overlap for ``--as-of``."""
    from seglake.core import tables

    cfg, spark = ctx.cfg, ctx.spark
    source = segments_file(cfg)
    segments = load_segments(source)
    active = [s for s in segments if s.enabled]
    all_features = tables.read(spark, cfg, FEATURES)
    validate_rules(spark, active, all_features.schema, str(source))
    if ctx.args.get("check"):
        return {"segments_file": str(source), "segments_valid": len(active),
                "disabled": len(segments) - len(active)}

    as_of = ctx.resolve_as_of()
    features = all_features.where(F.col("as_of_date") == F.lit(as_of))
    if features.limit(1).count() == 0:
        raise ValueError(f"gold.customer_features has no rows for as_of_date {as_of}: "
                         f"run `seglake run features --as-of {as_of}` first")
    events = _events_for_sequences(ctx, as_of, active) if any(s.sequence for s in active) else None
    quantiles = resolve_quantiles(features, active)
    members = evaluate_segments(features, active, as_of, events, quantiles)
    slice_ = f"as_of_date = '{as_of.isoformat()}'"
    tables.overwrite(members.withColumn("run_id", F.lit(ctx.run_id)), cfg, MEMBERSHIP,
                     partition_by=["as_of_date"], replace_where=slice_)
    membership = tables.read(spark, cfg, MEMBERSHIP)
    current = membership.where(F.col("as_of_date") == F.lit(as_of)).cache()

    # the previous as-of present in membership (one small aggregate over a partition column)
    prev_row = membership.where(F.col("as_of_date") < F.lit(as_of)).agg(F.max("as_of_date").alias("d")).first()
    previous_as_of = prev_row["d"] if prev_row else None
    previous = (membership.where(F.col("as_of_date") == F.lit(previous_as_of))
                if previous_as_of is not None else None)
    changes = segment_changes(current, previous, as_of, previous_as_of)
    tables.overwrite(changes.withColumn("run_id", F.lit(ctx.run_id)), cfg, CHANGES,
                     partition_by=["as_of_date"], replace_where=slice_)
    changes = tables.read(spark, cfg, CHANGES).where(F.col("as_of_date") == F.lit(as_of))

    max_jaccard = float(cfg.get("segments.max_overlap_jaccard"))
    overlap = segment_overlap(current, max_jaccard)
    tables.overwrite(overlap.select(F.lit(as_of).cast("date").alias("as_of_date"), "*",
                                    F.lit(ctx.run_id).alias("run_id")),
                     cfg, OVERLAP, partition_by=["as_of_date"], replace_where=slice_)
    overlap = tables.read(spark, cfg, OVERLAP).where(F.col("as_of_date") == F.lit(as_of))

    previous_sizes = (previous.groupBy("segment").agg(F.count(F.lit(1)).alias("previous_size"))
                      if previous is not None else None)
    health = segment_health(
        current, features, active, previous_sizes, changes, overlap, as_of=as_of,
        alert_size_change=float(cfg.get("segments.alert_size_change")),
        min_size=int(cfg.get("segments.min_size")),
        revenue_column=str(cfg.get("segments.revenue_column")),
        conversion_column=str(cfg.get("segments.conversion_column")))
    tables.overwrite(health.withColumn("run_id", F.lit(ctx.run_id))
                     .withColumn("computed_at", F.current_timestamp()),
                     cfg, HEALTH, partition_by=["as_of_date"], replace_where=slice_)

    # one row per segment: small
    rows = (tables.read(spark, cfg, HEALTH).where(F.col("as_of_date") == F.lit(as_of))
            .select("segment", "size", "alert", "alert_reason", "too_small", "entered", "exited")
            .orderBy("segment").collect())
    current.unpersist()
    alerts = [r["segment"] for r in rows if r["alert"]]
    for r in rows:
        if r["alert"]:
            log.warning("segment %s: %s (as_of %s)", r["segment"], r["alert_reason"], as_of)
    too_small = [r["segment"] for r in rows if r["too_small"]]
    flagged = overlap.where(F.col("high_overlap")).count()
    return {
        "as_of": as_of.isoformat(),
        "segments": len(rows),
        "memberships": sum(r["size"] for r in rows),
        "entered": sum(r["entered"] for r in rows),
        "exited": sum(r["exited"] for r in rows),
        "alerts": ", ".join(alerts) if alerts else "none",
        "too_small": ", ".join(too_small) if too_small else "none",
        "high_overlap_pairs": flagged,
        "previous_as_of": previous_as_of.isoformat() if previous_as_of else "none",
        "sizes": {r["segment"]: r["size"] for r in rows},
    }
