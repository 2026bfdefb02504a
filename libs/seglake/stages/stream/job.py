"""`seglake run stream`: Kafka -> bronze.events_raw -> silver.events, exactly once.

Spark's Kafka source reads the topic (``stream.topic``) in micro-batches of at most
``stream.max_offsets_per_trigger`` messages; each micro-batch, in ``foreachBatch``:

1. becomes bronze rows as batch ingest makes them from a JSON-lines file
   (:func:`seglake.stages.ingest.parse_json_lines`; an empty message is a malformed record,
   not dropped), with ``_source`` ``kafka``, ``_source_file`` ``kafka://topic/partition/offset``
   and ``_batch_id`` ``stream-<query>-<micro-batch>``; appended to bronze as a Delta idempotent
   write (``txnAppId`` = ``seglake-stream-<query id>``, ``txnVersion`` = the micro-batch id), so
   a micro-batch replayed after a crash is not appended twice;
2. is cleaned by the batch clean itself (:func:`seglake.stages.clean.clean_batches_now`: the
   same standardize / quarantine / dedupe / impute / Great Expectations / MERGE into silver,
   and the same ``ops.clean_batches`` ledger, so a replayed micro-batch that was already cleaned
   is a no-op and one that was not is cleaned once). A micro-batch clean sets aside (reject share
   above ``clean.max_reject_share``) stays in bronze, listed in ``ops.clean_set_aside``; the
   stream goes on (``seglake run clean --retry-set-aside`` after a fix).

The query id comes from the checkpoint (``<checkpoints>/stream/<topic>``): a restart with the same
checkpoint resumes at the first offset not committed; a deleted checkpoint starts a new query id,
so its micro-batch ids (from 0 again) are never mistaken for ones already written.

3. advances the event-time watermark, starts timers for the trigger rules of
   ``conf/segments.yaml`` (``triggers:``), judges the timers that are due and fires them into
   ``gold.segment_triggers`` exactly once (:mod:`seglake.stages.stream.triggers`), and appends
   its ``ops.stream_progress`` row (watermark, events, late events, timers, firings) as a Delta
   idempotent write (``seglake-stream-progress-<query id>``, micro-batch id).

Before the query starts, the timers already due at the recorded watermark are judged once, so
a stream started after a batch ``seglake run identity`` fires the triggers that were waiting for
their identifiers to be linked, even when the topic holds nothing new.

``--trigger available-now`` (default, for schedulers) processes what the topic holds and stops;
``--trigger continuous`` runs micro-batches every ``stream.interval_seconds`` until stopped
(``--timeout-seconds`` for a bounded run). Identity: the stream looks identifiers up in the
current ``silver.identity_map``; an identifier it does not know yet is linked by the next batch
``seglake run identity`` (its timers wait for that, up to ``stream.unlinked_wait_hours``).
"""
from __future__ import annotations

import json
import logging
import re
import time
from datetime import datetime, timezone

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.config import ConfigError, join
from seglake.core.context import JobContext
from seglake.core.contracts import BRONZE_EVENTS
from seglake.stages import clean, ingest
from seglake.stages.segments.job import segments_file
from seglake.stages.segments.triggers import load_triggers
from seglake.stages.stream import triggers as T

log = logging.getLogger(__name__)

TRIGGERS = ("available-now", "continuous")
SOURCE = "kafka"


def add_arguments(parser) -> None:  # noqa: D103 - argparse hook
    parser.add_argument("--trigger", choices=TRIGGERS, default="available-now",
                        help="available-now: what the topic holds, then stop (default); continuous: until stopped")
    parser.add_argument("--bootstrap-servers", default=None, help="Kafka brokers (default stream.kafka_bootstrap_servers)")
    parser.add_argument("--topic", default=None, help="topic (default stream.topic)")
    parser.add_argument("--timeout-seconds", type=float, default=None,
                        help="continuous: stop after this many seconds (default: run until stopped)")


def checkpoint_dir(cfg, topic: str) -> str:
    return join(cfg.path("checkpoints"), "stream", topic)


def query_id(spark, checkpoint: str) -> str:
    """The stream's query id as its checkpoint records it (``metadata``, written at the first start)."""
    text = spark.read.text(join(checkpoint, "metadata")).first()[0]   # one line
    return json.loads(text)["id"]


def bronze_rows(batch: DataFrame, topic: str, batch_id: str) -> DataFrame:
    """Kafka messages (value, partition, offset) -> bronze rows, as ingest makes them from JSON lines."""
    lines = batch.select(F.col("value").cast("string").alias("value"),
                         F.concat_ws("/", F.lit(f"kafka://{topic}"), F.col("partition").cast("string"),
                                     F.col("offset").cast("string")).alias("_source_file"))
    return ingest.add_metadata(ingest.parse_json_lines(lines, keep_blank=True), "json", SOURCE, batch_id,
                               F.current_timestamp())


def _raise_failure(exc, servers: str, timeout_ms: int) -> None:
    """The query's failure as one sentence: a broker that did not answer says so and what to do."""
    text = str(exc)
    log.debug("stream: the query failed: %s", text)
    # the innermost "SomethingError: message" line of the (Python or JVM) trace names the cause
    causes = re.findall(r"^\s*([\w.]*(?:Error|Exception)): (.+)$", text, flags=re.M)
    if "TimeoutException" in text or "imed out" in text:
        raise RuntimeError(f"Kafka at {servers} did not answer within {timeout_ms / 1000:g} s (is the broker "
                           "running? a local one: seglake kafka status); nothing was lost: rerun the stream "
                           "once the broker is back, it resumes at its checkpoint") from None
    cause = f"{causes[-1][0].rsplit('.', 1)[-1]}: {causes[-1][1].strip()}" if causes else \
        (text.splitlines()[0] if text else "no message")
    raise RuntimeError(f"the stream query failed: {cause}") from None


def run(ctx: JobContext) -> dict:
    spark, cfg, args = ctx.spark, ctx.cfg, ctx.args
    servers = args.get("bootstrap_servers") or cfg.get("stream.kafka_bootstrap_servers")
    if not servers:
        raise ConfigError("no Kafka brokers: pass --bootstrap-servers HOST:PORT or set "
                          "stream.kafka_bootstrap_servers (a local broker: seglake kafka start)")
    topic = args.get("topic") or cfg.get("stream.topic")
    trigger = args.get("trigger") or "available-now"
    if trigger not in TRIGGERS:
        raise ConfigError(f"--trigger must be one of {', '.join(TRIGGERS)}, got {trigger!r}")
    checkpoint = checkpoint_dir(cfg, topic)
    rules = load_triggers(segments_file(cfg))        # a configuration error stops before any work
    delay = float(cfg.get("stream.watermark_delay_minutes"))
    totals = {"micro_batches": 0, "records_in": 0, "inserted": 0, "quarantined": 0, "set_aside": 0,
              "late_events": 0, "timers": 0, "fired": 0}
    ids: dict[str, str] = {}
    wm = {"now": T.watermark(spark, cfg, topic)}
    # timers due at the recorded watermark (e.g. waiting for an identity run): judged before new data
    first = T.judge(spark, cfg, rules, wm["now"], f"judge-{ctx.run_id}", topic)
    totals["fired"] += first["fired"]
    if first["due"]:
        log.info("stream: %s timers were due at the start (watermark %s): %s", first["due"], wm["now"], first)

    def process(batch: DataFrame, micro_batch: int) -> None:
        if batch.isEmpty():                     # e.g. a new query's first trigger on an empty topic
            return
        t0 = time.monotonic()
        if "query" not in ids:                  # read once per run (setdefault would read it every batch)
            ids["query"] = query_id(spark, checkpoint)
        qid = ids["query"]
        batch_id = f"stream-{qid[:8]}-{micro_batch:08d}"
        tables.append(bronze_rows(batch, topic, batch_id), cfg, BRONZE_EVENTS,
                      txn=(f"seglake-stream-{qid}", micro_batch))
        done = clean.clean_batches_now(JobContext(spark, cfg, run_id=batch_id, args={"skip_docs": True}), [batch_id])
        if done.get("set_aside"):
            log.warning("stream: micro-batch %s set aside by clean (see ops.clean_set_aside): %s",
                        batch_id, done["set_aside"])
        t1 = time.monotonic()
        # triggers: read back what this micro-batch put in silver (also right after a crash and replay)
        before = wm["now"]
        events = T.new_events(spark, cfg, batch_id)          # None: no silver yet (all set aside so far)
        stats = T.batch_stats(events, before) if events is not None else \
            {"events": 0, "max_event_ts": None, "late_events": 0}
        n_timers = 0
        if rules and events is not None:
            timers = T.timers_for(events, rules, before, batch_id, topic).localCheckpoint()
            n_timers = timers.count()
            T.register(spark, cfg, timers)
        after = T.advance(before, stats["max_event_ts"], delay)
        judged = T.judge(spark, cfg, rules, after, batch_id, topic)
        T.record_progress(spark, cfg, {
            "topic": topic, "query_id": qid, "micro_batch": micro_batch, "batch_id": batch_id,
            "watermark": after, "max_event_ts": stats["max_event_ts"], "events": stats["events"],
            "late_events": stats["late_events"], "timers": n_timers, "due": judged["due"], "fired": judged["fired"],
            "not_linked": judged["not_linked"], "seconds": round(time.monotonic() - t0, 2),
            "committed_at": datetime.now(timezone.utc)},
            txn=(f"seglake-stream-progress-{qid}", micro_batch))
        wm["now"] = after
        # the run's totals move only once the micro-batch is complete (a caller stopping the query on
        # them never interrupts one half done)
        totals["micro_batches"] += 1
        for key in ("records_in", "inserted", "quarantined"):
            totals[key] += int(done.get(key) or 0)
        totals["set_aside"] += 1 if done.get("set_aside") else 0
        totals["late_events"] += stats["late_events"]
        totals["timers"] += n_timers
        totals["fired"] += judged["fired"]
        if stats["late_events"]:
            log.warning("stream: micro-batch %s: %s events older than the watermark %s (kept in bronze and "
                        "silver, no trigger judged for them)", batch_id, stats["late_events"], before)
        log.info("stream: micro-batch %s: %s records, %s inserted, %s quarantined (%.1f s); watermark %s, %s new "
                 "timers, %s due, %s fired, %s waiting for identity (%.1f s)", batch_id, done.get("records_in"),
                 done.get("inserted"), done.get("quarantined"), t1 - t0, after, n_timers, judged["due"],
                 judged["fired"], judged["not_linked"], time.monotonic() - t1)

    timeout_ms = int(float(cfg.get("stream.kafka_timeout_seconds")) * 1000)
    source = (spark.readStream.format("kafka").option("kafka.bootstrap.servers", servers)
              .option("subscribe", topic).option("startingOffsets", cfg.get("stream.starting_offsets"))
              .option("maxOffsetsPerTrigger", int(cfg.get("stream.max_offsets_per_trigger")))
              .option("failOnDataLoss", "true")
              # a broker that does not answer fails the run within the timeout instead of hanging
              .option("kafka.default.api.timeout.ms", str(timeout_ms)).option("kafka.request.timeout.ms",
                                                                            str(timeout_ms))
              .option("fetchOffset.numRetries", "1").load())
    writer = (source.writeStream.foreachBatch(process).option("checkpointLocation", checkpoint)
              .queryName(f"seglake-stream-{topic}"))
    writer = (writer.trigger(availableNow=True) if trigger == "available-now"
              else writer.trigger(processingTime=f"{int(cfg.get('stream.interval_seconds'))} seconds"))
    started = time.monotonic()
    query = writer.start()
    log.info("stream: query %s reading %s from %s (%s), checkpoint %s", query.id, topic, servers, trigger, checkpoint)
    from pyspark.errors import StreamingQueryException
    try:
        _await(query, trigger, args, started, totals)
    except StreamingQueryException as exc:
        _raise_failure(exc, servers, timeout_ms)
    if query.exception() is not None:
        _raise_failure(query.exception(), servers, timeout_ms)
    if not totals["micro_batches"] and not first["due"]:
        ctx.status = "noop"
    return {**totals, "watermark": str(wm["now"]) if wm["now"] else None,
            "topic": topic, "query_id": str(query.id), "checkpoint": checkpoint,
            "seconds": round(time.monotonic() - started, 1)}


def _await(query, trigger: str, args: dict, started: float, totals: dict) -> None:
    """Wait for the query: to its end (available-now), or until stopped, timed out or stop_when."""
    if trigger == "available-now":
        query.awaitTermination()
    else:
        timeout = args.get("timeout_seconds")
        stop_when = args.get("stop_when")     # in-process callers (the stream demo): callable(totals) -> bool
        try:
            if stop_when is None:
                finished = query.awaitTermination(timeout) if timeout else query.awaitTermination()
            else:
                finished = False
                while not finished and not stop_when(dict(totals)) and \
                        (not timeout or time.monotonic() - started < timeout):
                    finished = query.awaitTermination(1.0)
        finally:
            if query.isActive:
                query.stop()
        log.info("stream: stopped after %.0f s (%s)", time.monotonic() - started,
                 "query ended" if finished else "timeout" if stop_when is None else "stopped by the caller")
