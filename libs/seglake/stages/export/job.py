"""``seglake run export``: segment changes and triggers -> ``ops.outbox`` -> destinations.

One run:

1. reads conf/destinations.yaml and builds every enabled destination (or ``--destination NAME``):
   a wrong setting or a missing secret stops the run before anything is written;
2. adds the new messages to ``ops.outbox`` (:mod:`seglake.stages.export.outbox`: keys, send times,
   suppression, frequency caps) with one insert-only MERGE on ``idempotency_key``;
3. cancels open messages of customers who withdrew consent or unsubscribed since, and removes
   customers who withdrew consent from what each destination holds (once per destination:
   ``ops.export_removals``);
4. delivers, per destination, the open messages due at ``--now`` (default: the clock) in chunks
   of ``export.chunk_size``: each chunk is frozen (local checkpoint), handed to the destination
   once, and its outcomes are MERGEd into the outbox before the next chunk; a message whose
   delivery failed for good is copied to ``ops.dead_letter``.

A run killed anywhere converges on rerun: the outbox insert is keyed, a chunk whose outcomes were
not recorded is sent again under the same idempotency keys (which the destinations honour), and
the files destination rebuilds the same extract. ``--dry-run`` writes and sends nothing: it prints
what would be added and what is due, by destination and segment or trigger.
"""
from __future__ import annotations

import logging
import math
import time
from datetime import date, datetime, timezone

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from seglake.core import faults, tables
from seglake.core.config import Config
from seglake.core.context import JobContext
from seglake.core.contracts import (DEAD_LETTER, EXPORT_REMOVALS, OUTBOX, SEGMENT_CHANGES, SEGMENT_TRIGGERS,
                                    withdrawn_customers)
from seglake.stages.export import settings as export_settings
from seglake.stages.export.base import MESSAGE_COLUMNS, Destination
from seglake.stages.export.outbox import (OPEN_STATES, OUTBOX_COLUMNS, mark_suppressed, new_messages,
                                          suppressed_customers)
from seglake.stages.export.settings import DestinationSpec, ExportSettings

log = logging.getLogger(__name__)

#: deletion vectors: a chunk's outcome MERGE rewrites only its own rows, not every file they sit in
#: (without them each chunk of a 1M-row outbox copied the whole table; erase purges them: REORG)
OUTBOX_PROPERTIES = {"delta.enableDeletionVectors": "true"}

DEAD_LETTER_COLUMNS = ("idempotency_key", "destination", "channel", "customer_id", "kind", "name", "change",
                       "version", "payload", "attempts", "response", "error", "dead_at", "run_id")


def add_arguments(parser) -> None:
    parser.add_argument("--destination", default=None, metavar="NAME",
                        help="only this destination of conf/destinations.yaml (default: every enabled one)")
    parser.add_argument("--dry-run", action="store_true",
                        help="write and send nothing: print what would be added to the outbox and what is due")
    parser.add_argument("--now", default=None, metavar="TIME",
                        help="deliver what is due at this UTC time (ISO-8601; default: now), e.g. to replay a day")


def build(spec: DestinationSpec, cfg: Config, exp: ExportSettings) -> Destination:
    """The destination object of ``spec`` (validates the settings of its type)."""
    if spec.type == "webhook":
        from seglake.stages.export.webhook import WebhookDestination
        return WebhookDestination(spec.name, spec.settings, cfg)
    if spec.type == "postgres":
        from seglake.stages.export.postgres import PostgresDestination
        return PostgresDestination(spec.name, spec.settings, cfg)
    from seglake.stages.export.files import FilesDestination
    return FilesDestination(spec.name, spec.settings, cfg, policies=exp.policies, segments=spec.segments)


def _now(ctx: JobContext) -> datetime:
    given = ctx.args.get("now")
    if not given:
        return datetime.now(timezone.utc)
    try:
        at = datetime.fromisoformat(str(given).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--now {given!r} is not an ISO-8601 time (e.g. 2026-09-30T10:00:00Z)") from None
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def _ts(at: datetime):
    """``at`` as a TIMESTAMP literal, whatever the session time zone (epoch microseconds)."""
    return F.timestamp_micros(F.lit(int(at.timestamp() * 1_000_000)))


def _commit_rows(spark: SparkSession, cfg: Config, table: str, before: int | None) -> int:
    """Rows inserted + updated by the table's newest commit if it is newer than ``before``."""
    if not tables.exists(spark, cfg, table):
        return 0
    last = tables.last_commit(spark, cfg, table)
    return tables.rows_written(last) if last["version"] != before else 0


def _version(spark: SparkSession, cfg: Config, table: str) -> int | None:
    return tables.version(spark, cfg, table) if tables.exists(spark, cfg, table) else None


def _breakdown(df: DataFrame, by: list[str]) -> list[dict]:
    # one row per destination x name x state: bounded by the configuration, not by customers
    return [r.asDict() for r in df.groupBy(*by).agg(F.count(F.lit(1)).alias("messages")).orderBy(*by).collect()]


def cancel_suppressed(spark: SparkSession, cfg: Config, exp: ExportSettings, now: datetime, run_id: str) -> int:
    """Open messages of customers now withdrawn or unsubscribed -> ``state = cancelled``."""
    if not tables.exists(spark, cfg, OUTBOX):
        return 0
    open_rows = tables.read(spark, cfg, OUTBOX).where(F.col("state").isin(*OPEN_STATES))
    hit = mark_suppressed(open_rows, suppressed_customers(spark, cfg, exp.policies, now)).where(
        F.col("state") == "suppressed")
    if not hit.limit(1).collect():      # nobody to cancel (the usual case): no MERGE, no empty commit
        return 0
    cancelled = hit.withColumn("state", F.lit("cancelled")).withColumn("run_id", F.lit(run_id)).select(*OUTBOX_COLUMNS)
    before = _version(spark, cfg, OUTBOX)
    tables.merge(spark, cancelled, cfg, OUTBOX, ["idempotency_key"], update=True)
    return _commit_rows(spark, cfg, OUTBOX, before)


def remove_withdrawn(spark: SparkSession, cfg: Config, dests: dict[str, Destination], now: datetime,
                     run_id: str) -> dict[str, int | str]:
    """Remove customers whose consent is withdrawn from every destination, once each
    (``ops.export_removals``: destination, customer_id, reason, removed_at, run_id). A destination
    that fails (its deletion call is refused) is logged and left for the next run."""
    withdrawn = withdrawn_customers(spark, cfg, now)
    out = {}
    for name, dest in dests.items():
        todo = withdrawn
        if tables.exists(spark, cfg, EXPORT_REMOVALS):
            done = tables.read(spark, cfg, EXPORT_REMOVALS).where(F.col("destination") == name).select("customer_id")
            todo = todo.join(done, "customer_id", "left_anti")
        # withdrawn customers: bounded by consent decisions, not by events
        ids = sorted(r["customer_id"] for r in todo.collect())
        if not ids:
            continue
        try:
            result = dest.erase(spark, ids, run_id)
        except Exception as exc:  # noqa: BLE001 - not recorded: the next run tries again; delivery goes on
            log.warning("export: %s: removing %d customer(s) who withdrew consent failed (%s: %s); the next run "
                        "tries again", name, len(ids), type(exc).__name__, str(exc).splitlines()[0][:300])
            out[name] = f"failed for {len(ids)}, retried next run"
            continue
        rows = spark.createDataFrame([(name, c, "consent_withdrawn") for c in ids],
                                     "destination STRING, customer_id STRING, reason STRING")
        tables.merge(spark, rows.withColumn("removed_at", F.current_timestamp()).withColumn("run_id", F.lit(run_id)),
                     cfg, EXPORT_REMOVALS, ["destination", "customer_id"])
        log.info("export: %s: %d customer(s) who withdrew consent removed (%s)", name, len(ids), result)
        out[name] = len(ids)
    return out


def deliver(spark: SparkSession, cfg: Config, name: str, dest: Destination, now: datetime, run_id: str) -> dict:
    """Send the open messages of ``name`` due at ``now``, chunk by chunk (see the module doc)."""
    due = (tables.read(spark, cfg, OUTBOX).where((F.col("destination") == name) & F.col("state").isin(*OPEN_STATES)
                                                  & (F.col("scheduled_at") <= _ts(now))))
    n = due.count()          # decides the number of chunks
    counts = {"due": n, "delivered": 0, "retrying": 0, "dead": 0}
    if not n:
        return counts
    chunk_size = max(1, int(cfg.get("export.chunk_size") or 50000))
    chunks = math.ceil(n / chunk_size)
    log.info("export: %s: %d message(s) due, in %d chunk(s)", name, n, chunks)
    for i in range(chunks):
        t0 = time.monotonic()
        chunk = (due.where(F.pmod(F.xxhash64("idempotency_key"), F.lit(chunks)) == i) if chunks > 1 else due)
        chunk = chunk.localCheckpoint()       # the chunk's rows, frozen before the outbox changes
        # delivered exactly here, once: the outcomes are materialized before they are used twice
        outcomes = dest.deliver(spark, chunk.select(*MESSAGE_COLUMNS), run_id).localCheckpoint()
        faults.point("export.after_deliver")   # sent, outcomes not recorded: a rerun resends this chunk
        stamp = _ts(datetime.now(timezone.utc))
        state = (F.when(F.col("status") == "delivered", F.lit("delivered"))
                 .when(F.col("status") == "retry", F.lit("retrying")).otherwise(F.lit("dead")))
        updated = (chunk.drop("attempts", "response", "error").join(outcomes, "idempotency_key")
                   .withColumn("state", state).withColumn("last_attempt_at", stamp)
                   .withColumn("delivered_at", F.when(F.col("status") == "delivered", stamp)
                               .otherwise(F.col("delivered_at")))
                   .withColumn("run_id", F.lit(run_id)).select(*OUTBOX_COLUMNS))
        tables.merge(spark, updated, cfg, OUTBOX, ["idempotency_key"], update=True)
        dead = updated.where(F.col("state") == "dead").select(
            *[c for c in DEAD_LETTER_COLUMNS if c not in ("dead_at",)]).withColumn("dead_at", stamp)
        # one row per status (<= 3)
        got = {r["status"]: int(r["n"]) for r in outcomes.groupBy("status").agg(F.count(F.lit(1)).alias("n")).collect()}
        if got.get("dead"):
            tables.merge(spark, dead.select(*DEAD_LETTER_COLUMNS), cfg, DEAD_LETTER, ["idempotency_key"])
        counts["delivered"] += got.get("delivered", 0)
        counts["retrying"] += got.get("retry", 0)
        counts["dead"] += got.get("dead", 0)
        secs = time.monotonic() - t0
        size = sum(got.values())
        log.info("export: %s: chunk %d/%d: %d message(s): %d delivered, %d retrying, %d dead (%.1f s, %.0f/s)",
                 name, i + 1, chunks, size, got.get("delivered", 0), got.get("retry", 0), got.get("dead", 0),
                 secs, size / secs if secs > 0 else 0)
    return counts


def status(spark: SparkSession, cfg: Config, now: datetime | None = None) -> list[dict]:
    """Messages per destination and state (pending split into due / scheduled at ``now``)."""
    if not tables.exists(spark, cfg, OUTBOX):
        return []
    now = now or datetime.now(timezone.utc)
    state = F.when((F.col("state") == "pending") & (F.col("scheduled_at") > _ts(now)), F.lit("scheduled")) \
        .otherwise(F.col("state"))
    return _breakdown(tables.read(spark, cfg, OUTBOX).withColumn("state", state), ["destination", "state"])


def run(ctx: JobContext) -> dict:
    """Deliver segment changes and triggers to the destinations of conf/destinations.yaml."""
    spark, cfg = ctx.spark, ctx.cfg
    exp = export_settings.load(cfg)
    specs = exp.enabled(ctx.args.get("destination"))
    if not specs:
        ctx.status = "noop"
        return {"note": f"no enabled destination in {exp.path}"}
    dests = {s.name: build(s, cfg, exp) for s in specs}           # settings and secrets checked here
    now = _now(ctx)
    as_of: date | None = ctx.as_of if ctx.as_of_given else None
    new = new_messages(spark, cfg, exp, specs, as_of, ctx.run_id, now)
    if ctx.args.get("dry_run"):
        summary = {"dry_run": True, "now": now.isoformat(timespec="seconds")}
        if new is not None:
            new = new.withColumn("state", F.when((F.col("state") == "pending") & (F.col("scheduled_at") > _ts(now)),
                                                 F.lit("scheduled")).otherwise(F.col("state")))
            summary["would_add"] = _breakdown(new, ["destination", "kind", "name", "change", "state"])
        if tables.exists(spark, cfg, OUTBOX):
            open_due = tables.read(spark, cfg, OUTBOX).where(
                F.col("state").isin(*OPEN_STATES) & (F.col("scheduled_at") <= _ts(now)))
            summary["due_now"] = _breakdown(open_due.where(F.col("destination").isin(*dests)),
                                            ["destination", "kind", "name"])
        ctx.status = "noop"
        return summary

    if new is None and not tables.exists(spark, cfg, OUTBOX):
        ctx.status = "noop"
        return {"note": f"nothing to export: neither {SEGMENT_CHANGES} nor {SEGMENT_TRIGGERS} exists yet in "
                        f"{cfg.lakehouse} (run segments, or the stream, first)"}
    summary: dict = {"now": now.isoformat(timespec="seconds"), "destinations": ", ".join(dests)}
    added = 0
    if new is not None:
        before = _version(spark, cfg, OUTBOX)
        tables.merge(spark, new, cfg, OUTBOX, ["idempotency_key"], properties=OUTBOX_PROPERTIES)
        added = _commit_rows(spark, cfg, OUTBOX, before)
    summary["messages_added"] = added
    summary["cancelled"] = cancel_suppressed(spark, cfg, exp, now, ctx.run_id)
    removed = remove_withdrawn(spark, cfg, dests, now, ctx.run_id)
    if removed:
        summary["removed_withdrawn"] = removed
    for name, dest in dests.items():
        got = deliver(spark, cfg, name, dest, now, ctx.run_id)
        for k, v in got.items():
            summary[f"{name} {k}"] = v
    if tables.exists(spark, cfg, OUTBOX):
        touched = tables.read(spark, cfg, OUTBOX).where(F.col("run_id") == ctx.run_id)
        summary["this_run"] = {f"{r['destination']} {r['kind']} {r['name']} {r['state']}": r["messages"]
                               for r in _breakdown(touched, ["destination", "kind", "name", "state"])}
    summary["outbox"] = {f"{r['destination']} {r['state']}": r["messages"] for r in status(spark, cfg, now)}
    return summary


def erase_customers(spark: SparkSession, cfg: Config, customer_ids: list[str], run_id: str) -> dict:
    """Called by ``seglake run erase``: remove these customers from every enabled destination
    (CRM rows, extracts) and send the deletion call of those that have one. The outbox rows are
    removed by erase itself (it finds the customer_id column)."""
    if not customer_ids or not export_settings.destinations_file(cfg).exists():
        return {}
    exp = export_settings.load(cfg)
    out = {}
    for spec in exp.enabled():
        out[spec.name] = build(spec, cfg, exp).erase(spark, sorted(customer_ids), run_id)
    return out
