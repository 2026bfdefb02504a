"""The rule language of a segment: a boolean Spark SQL expression over
``gold.customer_features`` whose thresholds are written ``${name}``. Placeholders are
substituted as validated SQL literals (:func:`sql_literal`, :func:`render_rule`), never by
formatting raw configuration text into SQL; :func:`rule_columns` lists the feature columns a
rule mentions (the membership ``reason``); :func:`validate_rules` checks every rule with
Spark's own parser and analyzer against the features schema.
"""
from __future__ import annotations

import contextlib
import difflib
import logging
import math
import re
from typing import Any, Iterator

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from seglake.stages.segments.model import Segment, SegmentConfigError, Threshold

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_IDENTIFIER = re.compile(r"`([^`]+)`|\b([A-Za-z_][A-Za-z0-9_]*)\b")
_NUMERIC = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)


def _strip_literals(text: str) -> str:
    return _STRING_LITERAL.sub("''", text)


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
