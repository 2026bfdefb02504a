"""Clean stage: bronze.events_raw -> silver.events (+ silver.events_quarantine).

``seglake run clean`` reads the bronze batches not cleaned yet, and

1. standardizes every record (timestamps in any contract format -> UTC ``event_ts``;
   event types, devices, sources, channels and currencies from ``conf/standardize.yaml``;
   numeric casts; durations in seconds; scroll depth 0..1; properties as a map);
2. hashes PII (``device_id``, email, phone) with the salted SHA-256 of :mod:`seglake.core.pii`;
3. routes each bad record to quarantine with one reason code (:data:`REASONS`);
4. deduplicates exactly once: ``event_key`` = event_id, else a hash of identifiers + UTC
   epoch millis + canonical type; duplicates inside the batch are dropped here, duplicates of
   rows already in silver by the MERGE on ``event_key`` (pruned to the batch's dates);
5. imputes missing durations with the median per event type x device (fallback
   per event type, then global), flagging ``duration_imputed``;
6. validates the result with the Great Expectations suite ``expectations/silver_events.json``
   (:mod:`seglake.core.quality`); when a critical expectation fails, each pending batch is
   validated alone and those that fail alone are set aside (the others are cleaned); a
   failure only of the batches together stops the job before silver is written; a batch whose reject share is above ``clean.max_reject_share`` is set aside
   (:mod:`seglake.stages.clean_batches`) and the other batches are cleaned;
7. (the stage runner writes its ``ops.run_log`` row; a run with no new batch is a ``noop``).

``--as-of D`` (a scheduler's run for the interval ending at D) also **re-cleans day D**: the
batches holding landing files of day D-1 (:func:`seglake.stages.clean_batches.batches_of_day`) that
were cleaned before are listed in ``ops.clean_rebuilds`` first, then cleaned again from bronze
with the code and configuration of now; their silver rows are replaced in the one MERGE that
inserts the new ones (rows of those batches updated, inserted, or deleted when the new
derivation no longer has them) and their quarantine rows by a replaceWhere. A run that dies
midway leaves the batches listed: the next clean, with or without ``--as-of``, finishes them.

Consent: consent=false events stay in silver.events (audit, erasure, exact counts) but every
downstream stage reads events through :func:`seglake.core.contracts.profiling_events`, which keeps consent=true only.

The row-level rules (steps 1-4) are pure functions in :mod:`seglake.stages.clean_rules`,
re-exported here; :func:`run` does the I/O.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seglake.core import erasure, pii, quality, tables, timezones
from seglake.core.contracts import BRONZE_EVENTS, CLEAN_BATCHES, CLEAN_REBUILDS, QUARANTINE, SILVER_EVENTS
from seglake.core.context import JobContext
from seglake.core.spark import persist_events, session_settings
from seglake.stages import clean_batches
from seglake.stages.clean_rules import (  # noqa: F401 - part of clean's API
    META_FIELDS, REASONS, SILVER_COLUMNS, Standards, check_bronze_schema, dedupe_batch, derived_event_key,
    load_standards, naive_zone_column, parse_consent, parse_event_ts, parse_properties, quarantine_rows,
    standardize, to_silver, with_raw_order)
from seglake.stages.impute import duration_medians, impute_duration  # noqa: F401 - part of clean's API

log = logging.getLogger(__name__)

BRONZE = BRONZE_EVENTS
SILVER = SILVER_EVENTS
CLEANED_BATCHES = CLEAN_BATCHES

# --------------------------------------------------------------------------- job

def _sql_quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def add_arguments(parser) -> None:  # noqa: D103 - argparse hook
    parser.add_argument("--skip-docs", action="store_true",
                        help="do not refresh the Great Expectations Data Docs HTML")
    clean_batches.add_arguments(parser)


#: session settings while clean runs (the previous values come back afterwards): the standardizing
#: projection compiles to Java methods of 15 KB (42 KB with the dedupe filter), above HotSpot's
#: 8,000-byte limit for JIT compilation, so under whole-stage code generation they ran interpreted;
#: with Spark's limit at the JVM's, such stages fall back to per-operator code in small methods.
#: Same rows (1M-event silver equal by hash); clean 79.0/69.4 s -> 66.4/61.5 s in alternating runs.
_SESSION_CONF = {"spark.sql.codegen.hugeMethodLimit": "8000"}


def run(ctx: JobContext) -> dict:
    """Clean the pending bronze batches into silver.events; see the module docstring."""
    with session_settings(ctx.spark, _SESSION_CONF):
        return _run(ctx, datetime.now(timezone.utc))


def clean_batches_now(ctx: JobContext, batch_ids: list[str]) -> dict:
    """Clean only these bronze batches (those of them not cleaned yet): the stream's micro-batches
    (:mod:`seglake.stages.stream`) go through exactly the batch clean, one batch at a time."""
    with session_settings(ctx.spark, _SESSION_CONF):
        return _run(ctx, datetime.now(timezone.utc), only=batch_ids)


def _impute_decimals(cfg) -> int:
    decimals = cfg.get("clean.impute_decimals")     # an int: the config layer checks the type
    if not 0 <= decimals <= 9:
        raise ValueError(f"clean.impute_decimals must be a whole number from 0 to 9, got {decimals!r}")
    return decimals


def _run(ctx: JobContext, started: datetime, only: list[str] | None = None) -> dict:
    spark, cfg = ctx.spark, ctx.cfg
    decimals = _impute_decimals(cfg)                  # a config error fails before any work
    std = load_standards(cfg.conf_file(cfg.get("clean.standardize_file") or "standardize.yaml"))
    salt = pii.salt(cfg)
    bronze = tables.read(spark, cfg, BRONZE)
    check_bronze_schema(bronze)

    # only: the named batches (file statistics on _batch_id skip the rest of bronze)
    scope = bronze if only is None else bronze.where(F.col("_batch_id").isin(list(only)))
    if ctx.as_of_given and only is None:
        clean_batches.request_rebuild(spark, cfg, ctx.as_of, ctx.run_id)
    rebuilding = frozenset(clean_batches.rebuild_requests(spark, cfg))   # this run's, or a killed run's
    batch_ids, skipped = clean_batches.pending(spark, cfg, scope, bool(ctx.args.get("retry_set_aside")),
                                               also=rebuilding)
    if skipped:
        log.warning("clean: %d set-aside batch(es) skipped (see %s; --retry-set-aside after a fix)",
                    len(skipped), clean_batches.CLEAN_SET_ASIDE)
    if not batch_ids:
        summary = {"batches": 0, "records_in": 0, "note": "no new bronze batches: nothing to clean"}
        if skipped:
            summary["set_aside_skipped"] = len(skipped)
        ctx.status = "noop"
        return summary

    max_ts = started + timedelta(minutes=float(cfg.get("clean.max_future_skew_minutes")))
    standardized = standardize(bronze.where(F.col("_batch_id").isin(batch_ids)), std, salt, max_ts,
                               bool(cfg.get("clean.consent_default", False)), properties_as_text=True,
                               naive_zones=timezones.naive_zones(cfg, std.sources.values()))
    # records of persons erased earlier (ops.erasure_requests) never reach silver or quarantine again
    standardized = erasure.erased_filter(spark, cfg, standardized, erasure.STANDARDIZED_COLUMNS)
    # the raw line (needed by the erasure filter above) is replaced by its 32-byte hash, the dedupe's
    # last tie-break, before the batch is persisted: about half of the persisted and shuffled bytes
    standardized = persist_events(with_raw_order(standardized))
    try:
        return _write(ctx, started, standardized, batch_ids, max_ts, decimals, rebuilding=rebuilding)
    finally:
        standardized.unpersist()


def _failing_alone(ctx: JobContext, silver: DataFrame, batch_ids: list[str], max_ts: datetime) -> list[str]:
    """The batches that fail the quality suite's critical expectations when validated alone.
    A batch with no row left in ``silver`` (all duplicates of another pending batch, or all of
    erased persons) is not validated: an empty frame fails max/min checks for no fault of its own."""
    log.warning("clean: the quality suite failed on %d batches together; validating each alone", len(batch_ids))
    # one row per pending batch: small
    present = {r["_batch_id"] for r in silver.select("_batch_id").distinct().collect()}
    out = []
    for b in batch_ids:
        if b not in present:
            continue
        alone = quality.validate(
            silver.where(F.col("_batch_id") == b), ctx.cfg.get("clean.suite") or "silver_events", ctx.cfg,
            f"{ctx.run_id}-{b}", parameters={"max_event_ts": max_ts.astimezone(timezone.utc).replace(tzinfo=None)},
            build_docs=False)
        if not alone.success:
            out.append(b)
    return out


def _culprits(ctx: JobContext, result, silver: DataFrame, batch_ids: list[str], candidates: set[str],
              max_ts: datetime) -> list[str]:
    """Batches to set aside after the suite failed on ``batch_ids`` together; raises
    :class:`~seglake.core.quality.QualityError` (the job stops, exit 1) when the failure is not
    one of data in some batches: a table-level expectation failed (the columns: a code or
    contract fault, not a batch's), or no batch fails alone (they fail only together)."""
    if any(not item.get("column") for item in result.failed):
        quality.require(result, SILVER)
    culprits = _failing_alone(ctx, silver, batch_ids, max_ts) if len(batch_ids) > 1 else list(batch_ids)
    culprits = [b for b in culprits if b in candidates]    # a batch with no record at all is never one
    if not culprits:
        quality.require(result, SILVER)
    return culprits


def _local(small: DataFrame) -> DataFrame:
    """``small`` computed now and held as a local relation (no Spark job when it is read again).
    Only for frames bounded by configuration, never by events or customers (clean passes the
    duration medians: event types x devices rows)."""
    return small.sparkSession.createDataFrame(small.collect(), small.schema)  # small by contract: see above


def _same_row() -> str:
    """SQL: target row ``t`` equals source row ``s`` in every silver column but the run id (maps
    compared as sorted entries: Spark cannot compare maps)."""
    return " AND ".join(
        "array_sort(map_entries(t.properties)) <=> array_sort(map_entries(s.properties))" if c == "properties"
        else f"t.`{c}` <=> s.`{c}`" for c in SILVER_COLUMNS if c != "_run_id")


def _write(ctx: JobContext, started: datetime, standardized: DataFrame, batch_ids: list[str],
           max_ts: datetime, impute_decimals: int, attempt: int = 0, rebuilding: frozenset = frozenset()) -> dict:
    """Judge, dedupe, impute, validate and write ``batch_ids``; those in ``rebuilding`` were cleaned
    before and their rows in silver and quarantine are replaced."""
    spark, cfg = ctx.spark, ctx.cfg
    # one row per batch and reason code (<= batches x (len(REASONS) + 1)): small
    max_share = float(cfg.get("clean.max_reject_share"))
    good, bad = clean_batches.judge(standardized.groupBy("_batch_id", "_reason").count().collect(), max_share)
    set_aside = clean_batches.set_aside(spark, cfg, bad, max_share, ctx.run_id) if bad else {}
    if not good:
        ctx.status = "set_aside"
        return {"batches": 0, "records_in": 0, "set_aside": set_aside,
                "note": f"every pending batch was set aside (see {clean_batches.CLEAN_SET_ASIDE})"}
    if bad:
        batch_ids = sorted(good)
        standardized = standardized.where(F.col("_batch_id").isin(batch_ids))
    records_in = sum(s["records"] for s in good.values())
    by_reason: dict[str, int] = {}
    for s in good.values():
        for reason, n in s["by_reason"].items():
            by_reason[reason] = by_reason.get(reason, 0) + n
    quarantined = sum(by_reason.values())
    valid = records_in - quarantined

    valid_rows = standardized.where(F.col("_reason").isNull()).drop("_bronze", "_reason")
    # the medians of the deduplicated batch, from the dedupe of a narrow projection (the same rows
    # win: same keys, same order), fetched (types x devices rows: small) so that the imputation's
    # three broadcast joins do not each compute them; then the wide rows are deduplicated once,
    # straight into the persisted silver batch (no persisted copy of the deduplicated batch)
    medians = _local(duration_medians(dedupe_batch(valid_rows.select(
        "event_key", "_ingested_at", "_source_file", "_raw_order", "event_type", "device_type", "duration_s")),
        impute_decimals))
    silver = persist_events(to_silver(impute_duration(dedupe_batch(valid_rows), medians), ctx.run_id))
    culprits: list[str] = []
    try:
        # a handful of numbers: small
        stats = silver.agg(
            F.count(F.lit(1)).alias("n"), F.sum(F.col("duration_imputed").cast("int")).alias("imputed"),
            F.sum((~F.col("consent")).cast("int")).alias("consent_false"),
            F.min("event_date").alias("lo"), F.max("event_date").alias("hi")).first()
        n_unique = int(stats["n"])

        result = quality.validate(
            silver, cfg.get("clean.suite") or "silver_events", cfg, ctx.run_id + (f"-{attempt}" if attempt else ""),
            parameters={"max_event_ts": max_ts.astimezone(timezone.utc).replace(tzinfo=None)},
            build_docs=bool(cfg.get("clean.build_data_docs")) and not ctx.args.get("skip_docs"))
        if not result.success:
            culprits = _culprits(ctx, result, silver, batch_ids, set(good), max_ts)
    except BaseException:
        silver.unpersist()
        raise
    if culprits:          # nothing written yet: free the cache, then clean the others
        silver.unpersist()
        return _set_aside_and_clean_the_rest(ctx, started, standardized, batch_ids, max_ts, impute_decimals,
                                             attempt, result, culprits, good, set_aside, rebuilding)
    try:
        q = quarantine_rows(standardized, ctx.run_id, started)
        tables.overwrite(q, cfg, QUARANTINE, replace_where="_batch_id IN ("
                         + ", ".join(_sql_quote(b) for b in batch_ids) + ")")
        inserted = updated = deleted = 0
        replacing = sorted(set(batch_ids) & rebuilding)
        if n_unique or (replacing and tables.exists(spark, cfg, SILVER)):
            before = tables.version(spark, cfg, SILVER)
            # rows of re-cleaned batches: replaced by their new derivation (only where it differs), in
            # the same commit
            theirs = ("t._batch_id IN (" + ", ".join(_sql_quote(b) for b in replacing) + ")") if replacing else None
            tables.merge(spark, silver, cfg, SILVER, keys=["event_key"], partition_by=["event_date"],
                         extra_condition=(f"t.event_date >= DATE'{stats['lo'].isoformat()}' AND "
                                          f"t.event_date <= DATE'{stats['hi'].isoformat()}'") if n_unique else None,
                         update_condition=f"{theirs} AND NOT ({_same_row()})" if theirs else None,
                         delete_unmatched=theirs)
            commit = tables.last_commit(spark, cfg, SILVER)
            # a MERGE that changes nothing (every row already in silver) makes no commit
            if before is None:
                inserted = n_unique
            elif commit["version"] > before:
                m = commit["metrics"]
                inserted = int(m.get("numTargetRowsInserted") or 0)
                updated = int(m.get("numTargetRowsUpdated") or 0)
                deleted = int(m.get("numTargetRowsDeleted") or 0)
    finally:
        silver.unpersist()

    now = datetime.now(timezone.utc)
    done = spark.createDataFrame([(b, ctx.run_id, now) for b in batch_ids],
                                 "_batch_id STRING, run_id STRING, cleaned_at TIMESTAMP")
    tables.merge(spark, done, cfg, CLEANED_BATCHES, keys=["_batch_id"], update=bool(replacing))
    clean_batches.release(spark, cfg, batch_ids)
    clean_batches.rebuilt(spark, cfg, replacing)

    summary = {
        "batches": len(batch_ids),
        "records_in": records_in,
        "valid": valid,
        "duplicates_in_batch": valid - n_unique,
        "duplicates_vs_silver": n_unique - inserted - updated,
        "deduplicated": valid - inserted - updated,
        "inserted": inserted,
        "quarantined": quarantined,
        "quarantined_by_reason": dict(sorted(by_reason.items())),
        "imputed_durations": int(stats["imputed"] or 0),
        "consent_false": int(stats["consent_false"] or 0),
        "quality": result.headline(),
        "quality_results": result.results_path,
        "data_docs": result.docs_path,
    }
    if replacing:
        summary.update({"rebuilt_batches": len(replacing), "rebuilt_rows_updated": updated,
                        "rebuilt_rows_deleted": deleted})
    if set_aside:
        summary["set_aside"] = set_aside
        ctx.status = "set_aside"
    summary["duration_s"] = round((datetime.now(timezone.utc) - started).total_seconds(), 1)
    return summary


def _set_aside_and_clean_the_rest(ctx: JobContext, started: datetime, standardized: DataFrame, batch_ids: list[str],
                                  max_ts: datetime, impute_decimals: int, attempt: int, result, culprits: list[str],
                                  good: dict, set_aside: dict, rebuilding: frozenset = frozenset()) -> dict:
    """Set aside the batches that failed the suite alone, then clean the others as if the
    culprits had never been pending (their own medians, dedupe and checks)."""
    n = len(batch_ids)
    why = (f"failed the quality suite on its own (with {n} batches together: {result.summary()})" if n > 1
           else f"failed the quality suite: {result.summary()}")
    set_aside = {**set_aside, **clean_batches.set_aside(
        ctx.spark, ctx.cfg, {b: good[b] for b in culprits}, float(ctx.cfg.get("clean.max_reject_share")),
        ctx.run_id, reasons={b: why for b in culprits})}
    rest = [b for b in batch_ids if b not in culprits]
    ctx.status = "set_aside"
    if not rest:
        return {"batches": 0, "records_in": 0, "set_aside": set_aside, "quality": result.headline(),
                "note": f"every pending batch was set aside (see {clean_batches.CLEAN_SET_ASIDE})"}
    summary = _write(ctx, started, standardized.where(F.col("_batch_id").isin(rest)), rest, max_ts,
                     impute_decimals, attempt + 1, rebuilding)
    summary["set_aside"] = {**set_aside, **summary.get("set_aside", {})}
    summary["quality_with_set_aside_batches"] = result.headline()
    return summary
