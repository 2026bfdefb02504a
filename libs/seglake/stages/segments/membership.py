"""Segment membership and its changes: exact quantile cutoffs (one job, any partitioning),
every enabled segment evaluated for the features rows of an as-of date (rule segments in one
pass, sequence segments joined with their evidence), a JSON ``reason`` per membership, family
precedence (lowest priority number wins), and entered / exited rows against the previous
as-of (:func:`segment_changes`).
"""
from __future__ import annotations

from datetime import date

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from seglake.core.contracts import require_columns
from seglake.core.quantiles import exact_quantiles
from seglake.stages.segments.model import Segment
from seglake.stages.segments.rules import render_rule, rule_columns
from seglake.stages.segments.sequences import sequence_evidence


def resolve_quantiles(features: DataFrame, segments: list[Segment]) -> dict[tuple[str, str], float | None]:
    """Cutoff values of quantile thresholds: exact, the same on any partitioning
    (:func:`seglake.core.quantiles.exact_quantiles`, one job).

    Returns ``{(segment, threshold): value}``: the smallest value of the column whose cumulative
    share of the customers reaches the threshold's ``value`` (``percentile_disc``).
    """
    wanted = [(s.name, t) for s in segments for t in s.thresholds.values() if t.type == "quantile"]
    if not wanted:
        return {}
    found = exact_quantiles(features, {f"q{i}": (t.of, float(t.value)) for i, (_, t) in enumerate(wanted)})
    return {(seg, t.name): found[f"q{i}"] for i, (seg, t) in enumerate(wanted)}


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
    require_columns(features, ("customer_id",), "evaluate_segments")
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
