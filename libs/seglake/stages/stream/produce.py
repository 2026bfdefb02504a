"""`seglake stream produce`: replay raw files into a Kafka topic, as a live source would send them.

The files are read with batch ingest's own readers (:func:`seglake.stages.ingest.read_files`),
so the stream sees what batch ingest sees: a JSON line is sent as it is (malformed ones too),
a CSV row as the JSON object of its non-empty fields (a CSV line that does not parse, as its
text), a Parquet record as its JSON. Records go out in event-time order (clean's own timestamp
parser; a record without a readable time at a pseudo-random point of the replayed span), and
chosen shares of them are disturbed the way real feeds are:

- **late**: sent ``late_seconds`` after their event time (a device that was offline);
- **duplicate**: sent a second time, byte for byte, 30 s later (a client retry);
- **malformed**: cut in half, so the JSON no longer parses (a truncated write).

Which records are disturbed is decided by a hash of the record and ``seed``, so a replay is
the same on any partitioning and any run. The key of each message is the first of user_id,
anonymous_id, device_id present (one person's events stay in one partition, in order), never
the email. ``rate`` caps messages per second (0: as fast as the broker takes them).

``live=True`` sends the records as new live events (:func:`live_value`): each JSON message gets
the wall-clock time it is sent at as its ``event_ts`` and ``-<live_tag>`` appended to its
``event_id`` (so a replay of data already cleaned is new events, not duplicates), for demos and
latency benchmarks, where "event time to trigger" must be a wall-clock delay.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from datetime import datetime, timezone

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from seglake.core.config import ConfigError
from seglake.core.spark import persist_events
from seglake.stages import ingest
from seglake.stages.clean_rules import parse_event_ts

log = logging.getLogger(__name__)

#: seconds after the original send of a duplicate (a client's retry)
DUPLICATE_DELAY_SECONDS = 30
_SCALE = 1_000_000


def _share(record: Column, seed: int, purpose: str, share: float) -> Column:
    """True for a pseudo-random ``share`` of records, fixed by the record text, seed and purpose."""
    if share <= 0:
        return F.lit(False)
    bucket = F.pmod(F.xxhash64(record, F.lit(seed), F.lit(purpose)), F.lit(_SCALE))
    return bucket < F.lit(int(round(share * _SCALE)))


def message_value(fmt: Column) -> Column:
    """The message of one raw record: JSON lines and Parquet as their raw JSON text, a CSV row as
    the JSON object of its non-empty fields (a CSV line that does not parse: its text)."""
    from seglake.core.contracts import RAW_FIELDS
    as_json = F.to_json(F.struct(*[F.col(c) for c in RAW_FIELDS]))   # null fields are left out
    return F.when((fmt == "csv") & ~F.col("_malformed"), as_json).otherwise(F.col("_raw"))


def read_landing(spark: SparkSession, landing: str) -> DataFrame:
    """Every raw file under ``landing`` (recursively) as bronze fields plus ``_format``."""
    files = ingest.list_landing(spark, landing, sorted(set(ingest.FORMAT_BY_EXTENSION.values())))
    by_format: dict[str, list[str]] = {}
    for row in files.select("path", "format").collect():    # the file listing: one row per file
        by_format.setdefault(row["format"], []).append(row["path"])
    if not by_format:
        raise FileNotFoundError(f"no raw files (.jsonl, .json, .ndjson, .csv, .parquet) under {landing}")
    parts = [ingest.read_files(spark, fmt, sorted(paths)).withColumn("_format", F.lit(fmt))
             for fmt, paths in sorted(by_format.items())]
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part)
    return out


def replay_frame(raw: DataFrame, *, late_share: float = 0.0, late_seconds: int = 3600,
                 duplicate_share: float = 0.0, malformed_share: float = 0.0, seed: int = 7) -> DataFrame:
    """The messages to send, in sending order: ``key, value, event_ts, send_at, kind``.

    ``kind`` is ``event`` (sent at its event time), ``late``, ``duplicate`` (the second copy)
    or ``malformed`` (cut in half); ``send_at`` is the event time the message is sent at (the
    order of the replay, not a wall-clock time).
    """
    for name, share in (("late_share", late_share), ("duplicate_share", duplicate_share),
                        ("malformed_share", malformed_share)):
        if not 0.0 <= share <= 1.0:
            raise ConfigError(f"{name} must be between 0 and 1, got {share}")
    if late_seconds < 0:
        raise ConfigError(f"late_seconds must be >= 0, got {late_seconds}")
    msgs = raw.select(F.coalesce("user_id", "anonymous_id", "device_id").alias("key"),
                      message_value(F.col("_format")).alias("value"),
                      parse_event_ts(F.col("event_ts")).alias("event_ts"))
    span = msgs.agg(F.min("event_ts").alias("lo"), F.max("event_ts").alias("hi")).first()
    lo = span["lo"]
    secs = int((span["hi"] - lo).total_seconds()) if lo is not None else 0
    # a record without a readable time goes out at a fixed pseudo-random point of the span
    where = F.pmod(F.xxhash64(F.col("value"), F.lit(seed), F.lit("when")), F.lit(max(secs, 1)))
    at = F.coalesce(F.col("event_ts"), F.lit(lo).cast("timestamp") + F.make_dt_interval(secs=where)) \
        if lo is not None else F.col("event_ts")
    late = _share(F.col("value"), seed, "late", late_share) & F.col("event_ts").isNotNull()
    broken = _share(F.col("value"), seed, "malformed", malformed_share)
    cut = F.substring(F.col("value"), 1, (F.length(F.col("value")) / 2).cast("int"))
    sent = msgs.select(
        "key", F.when(broken, cut).otherwise(F.col("value")).alias("value"), "event_ts",
        F.when(late, at + F.make_dt_interval(secs=F.lit(late_seconds))).otherwise(at).alias("send_at"),
        F.when(broken, "malformed").when(late, "late").otherwise("event").alias("kind"))
    again = (sent.where(_share(F.col("value"), seed, "duplicate", duplicate_share))
             .select("key", "value", "event_ts",
                     (F.col("send_at") + F.make_dt_interval(secs=F.lit(DUPLICATE_DELAY_SECONDS))).alias("send_at"),
                     F.lit("duplicate").alias("kind")))
    return sent.unionByName(again)


def live_value(value: str, live_tag: str, now: datetime | None = None) -> str:
    """The message as a live event sent ``now``: event_ts = now (UTC, milliseconds), event_id + ``-tag``.
    A message that is not a JSON object (a malformed record) is sent as it is."""
    try:
        record = json.loads(value)
    except ValueError:
        return value
    if not isinstance(record, dict):
        return value
    now = now or datetime.now(timezone.utc)
    record["event_ts"] = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    if record.get("event_id") is not None:
        record["event_id"] = f"{record['event_id']}-{live_tag}"
    return json.dumps(record, separators=(",", ":"))


def ensure_topic(bootstrap_servers: str, topic: str, partitions: int) -> bool:
    """Create ``topic`` when it does not exist; True when it was created."""
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    if topic in admin.list_topics(timeout=30).topics:
        return False
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(timeout=30)
    return True


def produce(spark: SparkSession, landing: str, bootstrap_servers: str, topic: str, *, rate: float = 0.0,
            partitions: int = 2, late_share: float = 0.0, late_seconds: int = 3600,
            duplicate_share: float = 0.0, malformed_share: float = 0.0, seed: int = 7,
            progress_seconds: float = 10.0, live_tag: str | None = None, limit: int | None = None) -> dict:
    """Send the raw records under ``landing`` to ``topic``; a summary of what was sent.

    Raises:
        ConfigError: a share outside 0..1, a negative lateness or rate (before anything is sent).

    ``live_tag``: send as live events (:func:`live_value`); ``limit``: at most this many messages.
    """
    if rate < 0:
        raise ConfigError(f"rate must be >= 0 messages per second, got {rate}")
    created = ensure_topic(bootstrap_servers, topic, partitions)
    # read twice (the time span, then the sorted replay with its duplicates branch): parsed once
    raw = persist_events(read_landing(spark, landing))
    try:
        frame = replay_frame(raw, late_share=late_share, late_seconds=late_seconds,
                             duplicate_share=duplicate_share, malformed_share=malformed_share, seed=seed)
        ordered = frame.orderBy("send_at", "key", "value", "kind")
        return _send(ordered.limit(limit) if limit else ordered, bootstrap_servers, topic, rate,
                     progress_seconds, created, live_tag)
    finally:
        raw.unpersist()


def _send(ordered: DataFrame, bootstrap_servers: str, topic: str, rate: float, progress_seconds: float,
          created: bool, live_tag: str | None = None) -> dict:
    """Send ``ordered`` (key, value, kind) in its order, at most ``rate`` messages a second."""
    from confluent_kafka import KafkaException, Producer
    errors: list[str] = []

    def delivered(err, _msg) -> None:
        if err is not None:
            errors.append(str(err))

    producer = Producer({"bootstrap.servers": bootstrap_servers, "enable.idempotence": True,
                         "linger.ms": 5, "queue.buffering.max.messages": 200_000})
    kinds: Counter = Counter()
    start = last_log = time.monotonic()
    n = 0
    # one partition of the sorted replay at a time on the driver, never the whole of it
    for row in ordered.select("key", "value", "kind").toLocalIterator(prefetchPartitions=True):
        while True:
            try:
                value = row["value"] or ""
                producer.produce(topic, key=row["key"].encode() if row["key"] else None,
                                 value=(live_value(value, live_tag) if live_tag else value).encode(),
                                 on_delivery=delivered)
                break
            except BufferError:            # the local queue is full: let the broker catch up
                producer.poll(0.5)
        producer.poll(0)
        n += 1
        kinds[row["kind"]] += 1
        if rate:
            ahead = start + n / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        now = time.monotonic()
        if now - last_log >= progress_seconds:
            log.info("stream produce: %d messages sent to %s (%.0f/s)", n, topic, n / (now - start))
            last_log = now
    left = producer.flush(60)
    seconds = time.monotonic() - start
    if left or errors:
        raise KafkaException(f"{left} messages not delivered, {len(errors)} delivery errors "
                             f"(first: {errors[0] if errors else '-'}) to {topic} at {bootstrap_servers}")
    summary = {"topic": topic, "topic_created": created, "bootstrap_servers": bootstrap_servers,
               "sent": n, "records": n - kinds["duplicate"], "late": kinds["late"],
               "duplicates": kinds["duplicate"], "made_malformed": kinds["malformed"],
               "seconds": round(seconds, 2), "messages_per_second": round(n / seconds, 1) if seconds else None}
    log.info("stream produce: %s", summary)
    return summary
