"""`seglake run stream`: a real Kafka topic -> bronze -> silver through the batch clean, exactly
once: the same silver as batch ingest + clean of the same files, nothing twice on a rerun or a
full resend."""
from __future__ import annotations

import json
import shutil

import pytest
from pyspark.sql import functions as F

from conftest import make_cfg
from seglake.core import tables
from seglake.core.context import JobContext
from seglake.core.runner import run_job
from seglake.stages.stream import produce
from test_stream_produce import _landing

#: silver columns that name the run, not the event
RUN_COLUMNS = ("_ingested_at", "_batch_id", "_run_id")


def _silver(spark, cfg):
    df = tables.read(spark, cfg, "silver.events")
    return sorted(tuple(r) for r in df.drop(*RUN_COLUMNS).orderBy("event_key").collect())


@pytest.mark.slow
def test_stream_gives_batch_silver_exactly_once(spark, kafka_broker, tmp_path):
    landing, _ = _landing(tmp_path / "input")
    # batch: ingest + clean of the files
    batch_cfg = make_cfg(tmp_path / "batch")
    shutil.copytree(landing, tmp_path / "batch" / "_input" / "landing")
    run_job(JobContext(spark, batch_cfg), "ingest")
    run_job(JobContext(spark, batch_cfg, args={"skip_docs": True}), "clean")

    # stream: the same files through the topic, in micro-batches of at most 300 messages
    topic = "stream-exactly-once"
    sent = produce.produce(spark, str(landing), kafka_broker.bootstrap_servers, topic, partitions=2)
    cfg = make_cfg(tmp_path / "stream", stream={"max_offsets_per_trigger": 300})
    args = {"bootstrap_servers": kafka_broker.bootstrap_servers, "topic": topic}
    first = run_job(JobContext(spark, cfg, args=args), "stream").summary
    assert first["micro_batches"] == 3 and first["records_in"] == sent["sent"] == 721
    assert first["inserted"] == 720 and first["quarantined"] == 1 and first["set_aside"] == 0

    assert _silver(spark, cfg) == _silver(spark, batch_cfg)
    q = tables.read(spark, cfg, "silver.events_quarantine")
    assert [r["reason"] for r in q.collect()] == ["broken_json"]
    bronze = tables.read(spark, cfg, "bronze.events_raw")
    assert bronze.count() == 721 and bronze.select("_source_file").distinct().count() == 721
    assert {r["_source"] for r in bronze.select("_source").distinct().collect()} == {"kafka"}

    # nothing new in the topic: a rerun adds nothing
    again = run_job(JobContext(spark, cfg, args=args), "stream")
    assert again.summary["micro_batches"] == 0 and again.status == "noop"
    assert tables.read(spark, cfg, "bronze.events_raw").count() == 721

    # the whole replay sent again: bronze keeps every message, silver gets no duplicate
    produce.produce(spark, str(landing), kafka_broker.bootstrap_servers, topic)
    resent = run_job(JobContext(spark, cfg, args=args), "stream").summary
    assert resent["records_in"] == 721 and resent["inserted"] == 0
    assert tables.read(spark, cfg, "bronze.events_raw").count() == 1442
    assert _silver(spark, cfg) == _silver(spark, batch_cfg)
    batches = tables.read(spark, cfg, "ops.clean_batches").where(F.col("_batch_id").startswith("stream-"))
    assert batches.count() == first["micro_batches"] + resent["micro_batches"]


@pytest.mark.slow
def test_poison_messages_are_kept_in_bronze_and_set_aside_and_the_stream_goes_on(spark, kafka_broker, tmp_path):
    from confluent_kafka import Producer

    from test_stream_produce import _event
    topic = "stream-poison"
    produce.ensure_topic(kafka_broker.bootstrap_servers, topic, 1)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers})
    for value in ("not json at all", ""):                     # a broken record and an empty message
        producer.produce(topic, value=value.encode())
    assert producer.flush(30) == 0
    cfg = make_cfg(tmp_path / "lake", stream={"max_offsets_per_trigger": 1})   # one message per micro-batch
    args = {"bootstrap_servers": kafka_broker.bootstrap_servers, "topic": topic}
    first = run_job(JobContext(spark, cfg, args=args), "stream")
    assert first.summary["micro_batches"] == 2 and first.summary["set_aside"] == 2    # no crash, no retry loop
    bronze = tables.read(spark, cfg, "bronze.events_raw")
    assert sorted((r["_raw"], r["_malformed"]) for r in bronze.collect()) == [("", True), ("not json at all", True)]
    aside = tables.read(spark, cfg, "ops.clean_set_aside").select("_batch_id").collect()
    assert sorted(r["_batch_id"] for r in aside) == sorted(r["_batch_id"] for r in bronze.select("_batch_id").collect())

    producer.produce(topic, key=b"u1", value=json.dumps(_event(1)).encode())
    assert producer.flush(30) == 0
    later = run_job(JobContext(spark, cfg, args=args), "stream").summary
    assert later["micro_batches"] == 1 and later["inserted"] == 1 and later["set_aside"] == 0
    assert [r["event_id"] for r in tables.read(spark, cfg, "silver.events").collect()] == ["e0001"]
