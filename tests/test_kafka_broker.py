"""The local Kafka broker (seglake.devtools.kafka): a real KRaft broker started, used through
the Python client and Spark's Kafka source, restarted with its data, and stopped by its pid."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seglake.devtools import kafka
from seglake.devtools.procs import is_ours

REPO = Path(__file__).resolve().parents[1]


def _create_topic(bootstrap: str, name: str, partitions: int = 2) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    futures[name].result(timeout=30)


def _produce(bootstrap: str, topic: str, records: list[tuple[str, str]]) -> None:
    from confluent_kafka import Producer
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value in records:
        producer.produce(topic, key=key.encode(), value=value.encode())
    assert producer.flush(30) == 0


@pytest.mark.slow   # starts, restarts and stops a real broker (~30 s)
def test_broker_serves_the_client_and_spark_restarts_with_its_data_and_stops_by_pid(spark, tmp_path):
    folder = tmp_path / "kafka"
    broker = kafka.start(folder)
    try:
        assert kafka.start(folder).pid == broker.pid            # a second start finds the running one
        st = kafka.status(folder)
        assert st["running"] and st["answers"] and st["bootstrap_servers"] == broker.bootstrap_servers
        recorded = json.loads((folder / kafka.STATE_FILE).read_text())
        assert recorded["pid"] == broker.pid and recorded["port"] == broker.port

        records = [(f"k{i % 7}", json.dumps({"n": i})) for i in range(500)]
        _create_topic(broker.bootstrap_servers, "events", partitions=2)
        _produce(broker.bootstrap_servers, "events", records)

        # Spark's Kafka source (batch read) sees exactly what was produced
        df = (spark.read.format("kafka").option("kafka.bootstrap.servers", broker.bootstrap_servers)
              .option("subscribe", "events").option("startingOffsets", "earliest")
              .option("endingOffsets", "latest").load())
        got = sorted((r["key"].decode(), r["value"].decode()) for r in df.select("key", "value").collect())
        assert got == sorted(records)
        assert {r["partition"] for r in df.select("partition").distinct().collect()} == {0, 1}

        # stop by pid, then a restart in the same folder keeps the topic and its records
        assert kafka.stop(folder) == broker.pid
        assert not kafka.status(folder)["running"] and not (folder / kafka.STATE_FILE).exists()
        assert not is_ours(broker.pid, str(broker.config))        # that JVM is gone
        broker = kafka.start(folder)
        again = (spark.read.format("kafka").option("kafka.bootstrap.servers", broker.bootstrap_servers)
                 .option("subscribe", "events").option("startingOffsets", "earliest")
                 .option("endingOffsets", "latest").load())
        assert again.count() == 500
    finally:
        kafka.stop(folder)
    assert kafka.stop(folder) is None                          # nothing left to stop


@pytest.mark.slow
def test_the_cli_starts_reports_and_stops_a_broker(tmp_path):
    folder = tmp_path / "kafka-cli"
    env = {**os.environ, "SEGLAKE_KAFKA_DIR": str(folder)}
    cli = [sys.executable, "-m", "seglake.cli", "kafka"]
    started = subprocess.run(cli + ["start"], capture_output=True, text=True, env=env, timeout=180)
    try:
        assert started.returncode == 0, started.stderr
        info = json.loads(started.stdout.strip().splitlines()[-1])
        assert info["bootstrap_servers"].startswith("127.0.0.1:")
        st = json.loads(subprocess.run(cli + ["status"], capture_output=True, text=True, env=env).stdout)
        assert st["running"] and st["answers"] and st["pid"] == info["pid"]
    finally:
        stopped = subprocess.run(cli + ["stop"], capture_output=True, text=True, env=env, timeout=60)
    assert stopped.returncode == 0 and f"pid {info['pid']}" in stopped.stdout
    assert not is_ours(info["pid"], kafka.MAIN_CLASS)
    st = json.loads(subprocess.run(cli + ["status"], capture_output=True, text=True, env=env).stdout)
    assert st == {"running": False, "dir": str(folder)}
