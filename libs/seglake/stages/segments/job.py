"""The ``segments`` job (``seglake run segments --as-of DATE [--check]``): loads and
validates ``conf/segments.yaml`` against ``gold.customer_features``, then writes
``gold.segment_membership``, ``gold.segment_changes``, ``gold.segment_overlap`` and
``gold.segment_health`` for the as-of date (replaceWhere on as_of_date, history kept) and
returns the run summary (sizes, entered / exited, alerts, too-small segments).
"""
from __future__ import annotations

import logging
from datetime import date, timedelta
from pathlib import Path

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.contracts import (CUSTOMER_FEATURES, SEGMENT_CHANGES, SEGMENT_HEALTH,
                                    SEGMENT_MEMBERSHIP, SEGMENT_OVERLAP, exclude_withdrawn)
from seglake.stages import enriched
from seglake.stages.segments.health import segment_health, segment_overlap
from seglake.stages.segments.membership import evaluate_segments, resolve_quantiles, segment_changes
from seglake.stages.segments.model import Segment
from seglake.stages.segments.rules import validate_rules
from seglake.stages.segments.sequences import SEQUENCE_KINDS
from seglake.stages.segments.validation import load_segments
from seglake.stages.segments.value import rule_schema, with_value

log = logging.getLogger(__name__)

#: the stage runner resolves ``--as-of`` (default: the day after the last event) before run()
USES_AS_OF = True

MEMBERSHIP = SEGMENT_MEMBERSHIP
CHANGES = SEGMENT_CHANGES
HEALTH = SEGMENT_HEALTH
OVERLAP = SEGMENT_OVERLAP
FEATURES = CUSTOMER_FEATURES


def add_arguments(parser) -> None:
    """``--check``: validate conf/segments.yaml against the features schema and stop."""
    parser.add_argument("--check", action="store_true",
                        help="validate the segment definitions against gold.customer_features and write nothing")


def segments_file(cfg) -> Path:
    """Path of the segments YAML (``segments.config_file``, relative to the conf folder)."""
    name = Path(str(cfg.get("segments.config_file")))
    return name if name.is_absolute() else cfg.conf_file(str(name))


def _events_for_sequences(ctx, as_of: date, segments: list[Segment]) -> DataFrame:
    days = max(int(s.thresholds[SEQUENCE_KINDS[s.sequence].lookback_param].value)
               for s in segments if s.sequence is not None) + 2
    return enriched.read(ctx.spark, ctx.cfg, start=as_of - timedelta(days=days), end=as_of, end_inclusive=True,
                         event_types=("product_view", "add_to_cart", "purchase"),
                         columns=("event_type", "event_ts")).select("customer_id", "event_type", "event_ts")


def run(ctx) -> dict:
    """Compute segment membership, changes, health and overlap for ``--as-of``."""
    cfg, spark = ctx.cfg, ctx.spark
    source = segments_file(cfg)
    segments = load_segments(source)
    active = [s for s in segments if s.enabled]
    all_features = tables.read(spark, cfg, FEATURES)
    validate_rules(spark, active, rule_schema(all_features.schema), str(source))
    if ctx.args.get("check"):
        from seglake.stages.segments.triggers import load_triggers
        return {"segments_file": str(source), "segments_valid": len(active),
                "disabled": len(segments) - len(active), "triggers_valid": len(load_triggers(source))}

    as_of = ctx.resolve_as_of()
    features = all_features.where(F.col("as_of_date") == F.lit(as_of))
    if features.limit(1).count() == 0:
        raise ValueError(f"gold.customer_features has no rows for as_of_date {as_of}: "
                         f"run `seglake run features --as-of {as_of}` first")
    # consent: features written before a withdrawal was recorded still hold the customer; a
    # withdrawn customer is in no segment from the as_of on (and so leaves it: an `exited` change)
    features = exclude_withdrawn(spark, cfg, features, as_of)
    # CLV tiers: gold.customer_value's columns at as_of (segments needing them are skipped without it)
    features, active, skipped = with_value(spark, cfg, features, active, as_of)
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
        "skipped": (", ".join(skipped) + " (no gold.customer_value rows: run clv)") if skipped else "none",
        "sizes": {r["segment"]: r["size"] for r in rows},
    }
