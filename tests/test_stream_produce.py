"""`seglake stream produce`: raw files replayed into a real Kafka topic, in event-time order,
with late, duplicated and cut records, checked against the files read back in plain Python."""
from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seglake.core.contracts import RAW_FIELDS
from seglake.stages.stream import produce

T0 = datetime(2026, 9, 1, tzinfo=timezone.utc)
STEP = timedelta(minutes=10)
BROKEN = '{"user_id": "u-broken", "event_ty'


def _event(i: int) -> dict:
    return {"event_id": f"e{i:04d}", "user_id": f"u{i % 9}", "event_type": "page_view",
            "event_ts": (T0 + i * STEP).strftime("%Y-%m-%dT%H:%M:%SZ"), "source": "web"}


def _landing(root: Path) -> tuple[Path, list[str]]:
    """720 events 10 minutes apart over 5 days, spread over JSON lines, CSV and Parquet files
    (every third to CSV, every fifth of the rest to Parquet), plus one broken JSON line.
    Returns the folder and the messages expected, as plain Python computes them."""
    land = root / "landing" / "2026-09-01"
    land.mkdir(parents=True)
    expected, lines, rows, records = [], [], [], []
    for i in range(720):
        e = _event(i)
        if i % 3 == 0:
            rows.append(e)
            expected.append(json.dumps(e, separators=(",", ":")))     # to_json's compact form
        elif i % 5 == 0:
            records.append(e)
            expected.append(json.dumps(e, separators=(",", ":")))
        else:
            lines.append(json.dumps(e))
            expected.append(lines[-1])                                  # a JSON line goes as it is
    lines.append(BROKEN)
    expected.append(BROKEN)
    (land / "events.jsonl").write_text("\n".join(lines) + "\n")
    with open(land / "events.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(RAW_FIELDS))
        w.writeheader()
        w.writerows(rows)
    pq.write_table(pa.Table.from_pylist(records), land / "events.parquet")
    return root / "landing", expected


def _consume(bootstrap: str, topic: str, n: int, timeout: float = 60.0) -> list[tuple[str | None, str]]:
    import time

    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{topic}", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe([topic])
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        m = c.poll(1.0)
        if m is not None and m.error() is None:
            out.append((m.key().decode() if m.key() else None, m.value().decode()))
    extra = c.poll(2.0)                                 # nothing beyond what was expected
    c.close()
    assert extra is None or extra.error() is not None, "more messages than sent"
    return out


def _ts(value: str) -> datetime | None:
    try:
        return datetime.strptime(json.loads(value)["event_ts"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except (ValueError, KeyError):
        return None


def test_replay_sends_every_record_as_ingest_reads_it_in_event_time_order(spark, kafka_broker, tmp_path):
    landing, expected = _landing(tmp_path)
    summary = produce.produce(spark, str(landing), kafka_broker.bootstrap_servers, "replay-plain", partitions=1)
    assert summary["sent"] == summary["records"] == 721 and summary["topic_created"]
    assert summary["late"] == summary["duplicates"] == summary["made_malformed"] == 0
    got = _consume(kafka_broker.bootstrap_servers, "replay-plain", 721)
    # CSV rows arrive as the JSON of their non-empty fields; compare parsed objects for those
    assert sorted(v for _, v in got) == sorted(expected)
    times = [t for _, v in got if (t := _ts(v)) is not None]
    assert len(times) == 720 and times == sorted(times)                  # event-time order
    assert {k for k, v in got if v != BROKEN} == {f"u{i}" for i in range(9)}   # keyed by user_id


@pytest.mark.slow
def test_late_duplicate_and_cut_records_are_what_the_summary_says(spark, kafka_broker, tmp_path):
    landing, expected = _landing(tmp_path)
    summary = produce.produce(spark, str(landing), kafka_broker.bootstrap_servers, "replay-disturbed",
                              partitions=1, late_share=0.1, late_seconds=86_400, duplicate_share=0.05,
                              malformed_share=0.02, seed=3)
    got = [v for _, v in _consume(kafka_broker.bootstrap_servers, "replay-disturbed", summary["sent"])]
    assert len(got) == summary["sent"] == 721 + summary["duplicates"]
    # duplicates: byte-identical second copies
    counts: dict[str, int] = {}
    for v in got:
        counts[v] = counts.get(v, 0) + 1
    assert sum(c - 1 for c in counts.values()) == summary["duplicates"] > 0
    # cut records: no longer JSON, each the first half of exactly one original message
    originals = set(expected)
    cut = [v for v in set(got) if v not in originals]
    assert len(cut) == summary["made_malformed"] > 0
    for v in cut:
        assert [o for o in originals if o[: len(o) // 2] == v] != []
        with pytest.raises(json.JSONDecodeError):
            json.loads(v)
    # late records: sent a day after their time, so behind every message sent before them by
    # hours (in one partition the topic keeps the sending order); an on-time record never is
    running, behind = None, 0
    seen: set[str] = set()
    for v in got:
        t = _ts(v)
        if t is None or v in seen:                 # cut records, the broken line, second copies
            seen.add(v)
            continue
        seen.add(v)
        if running is not None and running - t > timedelta(hours=1):
            behind += 1
        running = t if running is None else max(running, t)
    assert behind == summary["late"] > 0
    # the same seed gives the same choices
    again = produce.replay_frame(produce.read_landing(spark, str(landing)), late_share=0.1, late_seconds=86_400,
                                 duplicate_share=0.05, malformed_share=0.02, seed=3)
    kinds = {r["kind"]: r["n"] for r in again.groupBy("kind").count().withColumnRenamed("count", "n").collect()}
    assert kinds.get("late", 0) == summary["late"] and kinds.get("duplicate", 0) == summary["duplicates"]


def test_a_live_message_gets_the_send_time_and_a_new_event_id():
    now = datetime(2026, 12, 5, 1, 2, 3, 456789, tzinfo=timezone.utc)
    live = json.loads(produce.live_value(json.dumps(_event(3)), "live-x", now))
    assert live == {**_event(3), "event_id": "e0003-live-x", "event_ts": "2026-12-05T01:02:03.456Z"}
    assert produce.live_value(BROKEN, "live-x", now) == BROKEN           # not JSON: sent as it is
    assert produce.live_value("[1, 2]", "live-x", now) == "[1, 2]"
