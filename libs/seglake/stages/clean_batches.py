"""Which bronze batches clean works on, and bad batches set aside instead of blocking.

A batch whose reject share is above ``clean.max_reject_share`` (a broken export, a new
timestamp format, a wrong source mapping) is **set aside**, and so is a batch that fails a
critical expectation of the quality suite on its own (when the pending batches fail together,
each is validated alone to find which): listed in ``ops.clean_set_aside``
with its reason and counts, left out of silver and quarantine, and skipped by later runs, so
the batches ingested after it are cleaned as usual. The run's status is ``set_aside`` (exit
code 5 from ``seglake run clean``) and its summary names the batches. After a fix (the mapping,
the threshold, the source), ``seglake run clean --retry-set-aside`` takes them again; a batch
that now passes is cleaned and leaves the list.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.config import Config
from seglake.core.contracts import CLEAN_BATCHES, CLEAN_REBUILDS, CLEAN_SET_ASIDE, INGESTED_FILES

log = logging.getLogger(__name__)

SET_ASIDE_DDL = ("_batch_id STRING, reason STRING, records LONG, quarantined LONG, reject_share DOUBLE, "
                 "by_reason MAP<STRING, LONG>, run_id STRING, set_aside_at TIMESTAMP")


def add_arguments(parser) -> None:
    """``--retry-set-aside``: clean the set-aside batches again (after a fix)."""
    parser.add_argument("--retry-set-aside", action="store_true",
                        help="take the batches listed in ops.clean_set_aside again (after fixing their cause)")


def set_aside_ids(spark: SparkSession, cfg: Config) -> list[str]:
    """Batch ids listed in ``ops.clean_set_aside`` (one row per batch: small)."""
    if not tables.exists(spark, cfg, CLEAN_SET_ASIDE):
        return []
    return sorted(r["_batch_id"] for r in tables.read(spark, cfg, CLEAN_SET_ASIDE).select("_batch_id")
                  .collect())  # one row per set-aside batch: small


REBUILDS_DDL = "_batch_id STRING, as_of_date DATE, run_id STRING, requested_at TIMESTAMP"


def pending(spark: SparkSession, cfg: Config, bronze: DataFrame, retry: bool,
            also: frozenset = frozenset()) -> tuple[list[str], list[str]]:
    """(batches to clean now, set-aside batches skipped): bronze batches that are neither
    cleaned nor set aside, plus the cleaned ones in ``also`` (re-cleaned) — set-aside ones too
    when ``retry``. One row per ingest batch: small."""
    ids = bronze.select("_batch_id").distinct()
    if tables.exists(spark, cfg, CLEAN_BATCHES):
        done = tables.read(spark, cfg, CLEAN_BATCHES).select("_batch_id")
        if also:
            done = done.where(~F.col("_batch_id").isin(sorted(also)))
        ids = ids.join(done, "_batch_id", "left_anti")
    candidates = sorted(r["_batch_id"] for r in ids.collect() if r["_batch_id"] is not None)  # per batch: small
    aside = set(set_aside_ids(spark, cfg))
    if retry:
        return candidates, []
    return [b for b in candidates if b not in aside], sorted(aside & set(candidates))


def judge(counts: list, max_share: float) -> tuple[dict[str, dict], dict[str, dict]]:
    """Split per-batch reason counts into (good, bad) batches.

    Args:
        counts: rows of ``_batch_id, _reason, count`` (one per batch and reason: small).
        max_share: ``clean.max_reject_share``.

    Returns:
        Two dicts batch id -> ``{"records", "quarantined", "by_reason"}``; a batch is bad when
        its quarantined share is above ``max_share``.
    """
    stats: dict[str, dict] = {}
    for r in counts:
        s = stats.setdefault(r["_batch_id"], {"records": 0, "quarantined": 0, "by_reason": {}})
        s["records"] += int(r["count"])
        if r["_reason"] is not None:
            s["quarantined"] += int(r["count"])
            s["by_reason"][r["_reason"]] = int(r["count"])
    good, bad = {}, {}
    for batch, s in sorted(stats.items()):
        share = s["quarantined"] / s["records"] if s["records"] else 0.0
        (bad if share > max_share else good)[batch] = {**s, "reject_share": share}
    return good, bad


def set_aside(spark: SparkSession, cfg: Config, bad: dict[str, dict], max_share: float, run_id: str,
              reasons: dict[str, str] | None = None) -> dict[str, str]:
    """List ``bad`` batches in ``ops.clean_set_aside`` (MERGE on the batch: a retry that fails
    again updates its row); returns batch id -> reason, logged as a warning. The reason is the
    reject share unless ``reasons`` gives one (a batch that failed the quality suite)."""
    now = datetime.now(timezone.utc)
    reasons = reasons or {
        b: (f"{s['quarantined']} of {s['records']} records ({s['reject_share']:.1%}) rejected, more than "
            f"clean.max_reject_share={max_share:.1%}; by reason: {dict(sorted(s['by_reason'].items()))}")
        for b, s in bad.items()}
    rows = [(b, reasons[b], s["records"], s["quarantined"], s["reject_share"], s["by_reason"], run_id, now)
            for b, s in bad.items()]
    tables.merge(spark, spark.createDataFrame(rows, SET_ASIDE_DDL), cfg, CLEAN_SET_ASIDE, keys=["_batch_id"],
                 update=True)
    for b, why in reasons.items():
        log.warning("clean: batch %s set aside (listed in %s; rerun with --retry-set-aside after a fix): %s",
                    b, CLEAN_SET_ASIDE, why)
    return reasons


def release(spark: SparkSession, cfg: Config, cleaned: list[str]) -> None:
    """Remove batches that were cleaned from the set-aside list (after a successful retry)."""
    if not cleaned or not tables.exists(spark, cfg, CLEAN_SET_ASIDE):
        return
    listed = set(set_aside_ids(spark, cfg)) & set(cleaned)
    if listed:
        keys = spark.createDataFrame([(b,) for b in sorted(listed)], "_batch_id STRING")
        tables.delete_matching(spark, cfg, CLEAN_SET_ASIDE, keys, on="_batch_id")
        log.info("clean: %d set-aside batch(es) cleaned on retry and removed from %s", len(listed), CLEAN_SET_ASIDE)


def cleaned_since(spark: SparkSession, cfg: Config, since) -> list[str]:
    """Batches ``ops.clean_batches`` says were cleaned (or cleaned again) after ``since`` (small)."""
    if not tables.exists(spark, cfg, CLEAN_BATCHES):
        return []
    return sorted(r["_batch_id"] for r in tables.read(spark, cfg, CLEAN_BATCHES)
                  .where(F.col("cleaned_at") > F.lit(since)).select("_batch_id")
                  .collect())  # one row per ingest batch (grows with runs, not events): small


def batches_of_day(spark: SparkSession, cfg: Config, day) -> list[str]:
    """The bronze batches that hold a landing file of ``day`` (the file-day rule of ingest,
    :func:`seglake.stages.ingest.file_day`, over ``ops.ingested_files``): what a scheduler's run
    for the interval ending the day after (``--as-of day+1``) ingested. One row per batch of the
    day reaches the driver: small."""
    from seglake.stages.ingest import file_day

    if not tables.exists(spark, cfg, INGESTED_FILES):
        return []
    rows = (tables.read(spark, cfg, INGESTED_FILES)
            .where(file_day(F.col("path"), F.col("modification_time")) == F.lit(day).cast("date"))
            .select("batch_id").distinct().collect())   # the day's ingest batches: small
    return sorted(r["batch_id"] for r in rows if r["batch_id"])


def request_rebuild(spark: SparkSession, cfg: Config, as_of, run_id: str) -> list[str]:
    """``clean --as-of D``: list in ``ops.clean_rebuilds`` the already cleaned batches holding
    landing files of day D-1, so that they are cleaned again (by this run, or by the next one if
    this one dies); their ids."""
    from datetime import timedelta

    day = as_of - timedelta(days=1)
    ids = batches_of_day(spark, cfg, day)
    if ids and tables.exists(spark, cfg, CLEAN_BATCHES):
        cleaned = {r["_batch_id"] for r in tables.read(spark, cfg, CLEAN_BATCHES)
                   .where(F.col("_batch_id").isin(ids)).select("_batch_id").collect()}   # the day's: small
        ids = sorted(cleaned)
    else:
        ids = []
    log.info("clean: --as-of %s: %d batch(es) of files of %s cleaned before: cleaning them again", as_of, len(ids),
             day)
    if ids:
        now = datetime.now(timezone.utc)
        rows = spark.createDataFrame([(b, as_of, run_id, now) for b in ids], REBUILDS_DDL)
        tables.merge(spark, rows, cfg, CLEAN_REBUILDS, keys=["_batch_id"], update=True)
    return ids


def rebuild_requests(spark: SparkSession, cfg: Config) -> list[str]:
    """Batches listed in ``ops.clean_rebuilds``: asked to be cleaned again, not done yet (small)."""
    if not tables.exists(spark, cfg, CLEAN_REBUILDS):
        return []
    # one row per batch being cleaned again: small
    return sorted(r["_batch_id"] for r in tables.read(spark, cfg, CLEAN_REBUILDS).select("_batch_id").collect())


def rebuilt(spark: SparkSession, cfg: Config, batch_ids: list[str]) -> None:
    """Remove re-cleaned batches from ``ops.clean_rebuilds`` (after their silver, quarantine and
    ledger rows were written)."""
    if batch_ids and tables.exists(spark, cfg, CLEAN_REBUILDS):
        keys = spark.createDataFrame([(b,) for b in batch_ids], "_batch_id STRING")
        tables.delete_matching(spark, cfg, CLEAN_REBUILDS, keys, on="_batch_id")
