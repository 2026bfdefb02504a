"""`seglake run stream`: a real Kafka topic -> bronze -> silver through the batch clean, exactly
once: the same silver as batch ingest + clean of the same files, nothing twice on a rerun or a
full resend."""
from __future__ import annotations

import json
import shutil

import pytest
from pyspark.sql import functions as F

from conftest import REPO, TRIGGER_STREAM, make_cfg
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

    # stream: the same files through the topic, in micro-batches of at most 400 messages
    topic = "stream-exactly-once"
    sent = produce.produce(spark, str(landing), kafka_broker.bootstrap_servers, topic, partitions=2)
    cfg = make_cfg(tmp_path / "stream", stream={"max_offsets_per_trigger": 400})
    args = {"bootstrap_servers": kafka_broker.bootstrap_servers, "topic": topic}
    first = run_job(JobContext(spark, cfg, args=args), "stream").summary
    assert first["micro_batches"] == 2 and first["records_in"] == sent["sent"] == 721
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


# --------------------------------------------------------------------------- triggers
def _firings(spark, cfg):
    rows = tables.read(spark, cfg, "gold.segment_triggers").collect()
    return sorted((r["trigger"], r["customer_id"], r["event_key"]) for r in rows)


REPO_YAML = REPO / "conf" / "segments.yaml"


def _burst_before(t, views, p) -> bool:
    """A product view in [t - cart_within, t] ending a burst of min_views views within view_window."""
    import pandas as pd
    win, within = pd.Timedelta(minutes=p["view_window_minutes"]), pd.Timedelta(minutes=p["cart_within_minutes"])
    return any(t - within <= v <= t and sum(v - win <= w <= v for w in views) >= p["min_views"] for v in views)


def _expected_firings(events, wm, rules):
    """Every rule recomputed in pandas from the consented events with their customers (an
    independent computation: the stream judges timers with Spark joins and windows)."""
    import pandas as pd
    hour = pd.Timedelta(hours=1)
    ev = events.sort_values(["customer_id", "event_ts", "event_key"])
    wm = pd.Timestamp(wm).tz_localize(None) if pd.Timestamp(wm).tzinfo else pd.Timestamp(wm)
    out = set()
    for cust, g in ev.groupby("customer_id"):
        ts, kinds, keys = list(g["event_ts"]), list(g["event_type"]), list(g["event_key"])
        buys = [t for t, k in zip(ts, kinds) if k == "purchase"]
        views = [t for t, k in zip(ts, kinds) if k == "product_view"]
        for i, (t, kind, key) in enumerate(zip(ts, kinds, keys)):
            for r in rules:
                p = r.params
                if r.kind in ("cart_abandonment", "high_intent_abandonment") and kind == "add_to_cart":
                    due = t + p["abandon_hours"] * hour
                    if due >= wm or any(t <= b <= due for b in buys):     # judged once due < watermark
                        continue
                    if r.kind == "high_intent_abandonment" and not _burst_before(t, views, p):
                        continue
                    out.add((r.name, cust, key))
                elif r.kind == "repeat_purchase" and kind == "purchase" and t < wm:
                    n = sum(1 for j in range(i + 1) if kinds[j] == "purchase" and ts[j] > t - pd.Timedelta(days=180))
                    if n == p["min_purchases_180d"]:
                        out.add((r.name, cust, key))
                elif r.kind == "re_engagement" and t < wm and i > 0:
                    gap = t - ts[i - 1]
                    if pd.Timedelta(days=p["inactive_days"]) <= gap <= pd.Timedelta(days=365):
                        out.add((r.name, cust, key))
    return sorted(out)


@pytest.mark.slow
def test_stream_triggers_fire_exactly_what_the_rules_and_the_batch_segments_say(spark, stream_triggered):
    from datetime import date, datetime, timedelta, timezone

    from seglake.core.contracts import customer_events
    from seglake.stages.segments import cart_abandonment, high_intent_abandonment
    from seglake.stages.segments.triggers import load_triggers
    from seglake.stages.stream import triggers as T

    cfg, topic, sent, out = (stream_triggered[k] for k in ("cfg", "topic", "sent", "summary"))
    assert out["records_in"] == sent["sent"]
    assert out["micro_batches"] == -(-sent["sent"] // TRIGGER_STREAM["max_offsets_per_trigger"])
    assert out["late_events"] == 0                     # one partition, in event-time order
    rules = load_triggers(REPO_YAML)
    wm = T.watermark(spark, cfg, topic)
    events = customer_events(spark, cfg, columns=["event_ts", "event_key", "event_type"],
                             consent_at=datetime.now(timezone.utc)).toPandas()   # 1,500 events
    fired = _firings(spark, cfg)
    expected = _expected_firings(events, wm, rules)
    assert fired == expected
    counts = {name: sum(1 for f in fired if f[0] == name) for name in {r.name for r in rules}}
    assert counts["abandoned_cart_email"] >= 10 and counts["high_intent_abandoner"] >= 1, counts
    assert out["fired"] == len(fired)

    # the batch sequence segments at as-of dates the watermark has passed: the customers whose
    # latest judged cart the stream fired for are exactly the batch segment's members
    by_name = {r.name: r for r in rules}
    carts = events[events["event_type"] == "add_to_cart"]
    members = {"abandoned_cart_email": set(), "high_intent_abandoner": set()}
    for as_of in (date(2026, 9, 5), date(2026, 9, 8), date(2026, 9, 10)):
        midnight = datetime(as_of.year, as_of.month, as_of.day)
        batch_events = customer_events(spark, cfg, end=as_of, consent_at=datetime.now(timezone.utc),
                                       columns=["event_ts", "event_type"])
        for trig, fn in (("abandoned_cart_email", cart_abandonment), ("high_intent_abandoner", high_intent_abandonment)):
            params = dict(by_name[trig].params, lookback_days=30)
            batch = {r["customer_id"] for r in fn(batch_events, as_of, **params).collect()}
            judged = carts[carts["event_ts"] <= midnight - timedelta(hours=params["abandon_hours"])]
            if trig == "high_intent_abandoner":     # the batch judges the latest cart that followed a burst
                views = events[events["event_type"] == "product_view"].groupby("customer_id")["event_ts"].apply(list)
                judged = judged[[_burst_before(t, views.get(c, []), params)
                                 for c, t in zip(judged["customer_id"], judged["event_ts"])]]
            latest = judged.sort_values(["event_ts", "event_key"]).groupby("customer_id").tail(1)
            fired_keys = {f[2] for f in fired if f[0] == trig}
            stream = {c for c, k in zip(latest["customer_id"], latest["event_key"]) if k in fired_keys}
            assert stream == batch, (as_of, trig, stream ^ batch)
            members[trig] |= batch
    assert members["abandoned_cart_email"] and members["high_intent_abandoner"], members


@pytest.mark.slow
def test_a_stream_run_while_the_broker_is_down_fails_clearly_and_a_rerun_after_its_restart_loses_nothing(
        spark, tmp_path):
    """A broker of its own (stopped mid-way, restarted on the same folder and port): the run during the
    outage fails with the broker's address in its message; the next run reads every message once."""
    from seglake.core.runner import JobFailed
    from seglake.devtools import kafka
    from seglake.devtools.procs import is_ours

    landing, _ = _landing(tmp_path / "input")
    folder = tmp_path / "kafka"
    broker = kafka.start(folder)
    try:
        # the broker's own bookkeeping: a second start finds the running one, its state file names it
        assert kafka.start(folder).pid == broker.pid
        st = kafka.status(folder)
        assert st["running"] and st["answers"] and st["bootstrap_servers"] == broker.bootstrap_servers
        recorded = json.loads((folder / kafka.STATE_FILE).read_text())
        assert recorded["pid"] == broker.pid and recorded["port"] == broker.port
        topic = "stream-broker-restart"
        sent = produce.produce(spark, str(landing), broker.bootstrap_servers, topic, partitions=2)
        cfg = make_cfg(tmp_path / "lake", stream={"max_offsets_per_trigger": 400, "kafka_timeout_seconds": 20.0})
        args = {"bootstrap_servers": broker.bootstrap_servers, "topic": topic}
        first = run_job(JobContext(spark, cfg, args=args), "stream").summary     # 400 + 321 messages
        assert first["records_in"] == 721 and first["micro_batches"] == 2
        produce.produce(spark, str(landing), broker.bootstrap_servers, topic)   # a full resend, then ...
        assert kafka.stop(folder) == broker.pid                                 # ... the broker goes down,
        assert not kafka.status(folder)["running"] and not (folder / kafka.STATE_FILE).exists()
        assert not is_ours(broker.pid, str(broker.config))                      # stopped by its pid
        with pytest.raises(JobFailed) as down:
            run_job(JobContext(spark, cfg, args=args), "stream")
        assert f"Kafka at {broker.bootstrap_servers} did not answer" in str(down.value)
        restarted = kafka.start(folder)                 # the same folder: its topics and messages
        assert restarted.bootstrap_servers == broker.bootstrap_servers and restarted.pid != broker.pid
        again = run_job(JobContext(spark, cfg, args=args), "stream").summary
        assert again["records_in"] == sent["sent"] == 721 and again["inserted"] == 0
        bronze = tables.read(spark, cfg, "bronze.events_raw")
        assert bronze.count() == 1442 and bronze.select("_source_file").distinct().count() == 1442
        assert tables.read(spark, cfg, "silver.events").count() == 720
    finally:
        kafka.stop(folder)
    assert kafka.stop(folder) is None                   # nothing left to stop


@pytest.mark.slow
def test_late_messages_are_counted_and_kept_in_bronze_and_silver(spark, kafka_broker, tmp_path):
    """10% of the messages sent two days late, micro-batches of 250: the late count equals what the
    sent order gives in plain Python (older than the newest event time of the earlier
    micro-batches minus the 10-minute watermark delay)."""
    from datetime import datetime, timedelta

    from test_stream_produce import _consume
    landing, _ = _landing(tmp_path / "input")
    topic = "stream-late"
    sent = produce.produce(spark, str(landing), kafka_broker.bootstrap_servers, topic, partitions=1,
                           late_share=0.1, late_seconds=2 * 86_400)
    per_batch = 250           # 3 micro-batches of the 721 messages: the late ones fall in the 2nd and 3rd
    cfg = make_cfg(tmp_path / "lake", stream={"max_offsets_per_trigger": per_batch})
    out = run_job(JobContext(spark, cfg, args={"bootstrap_servers": kafka_broker.bootstrap_servers,
                                               "topic": topic}), "stream").summary

    # the expected count, from the messages in offset order (one partition: per_batch per micro-batch)
    values = [v for _k, v in _consume(kafka_broker.bootstrap_servers, topic, sent["sent"])]
    newest, expected = None, 0
    for start in range(0, len(values), per_batch):
        times = []
        for v in values[start:start + per_batch]:
            try:
                times.append(datetime.strptime(json.loads(v)["event_ts"], "%Y-%m-%dT%H:%M:%SZ"))
            except ValueError:                       # the broken record: no event time
                continue
        watermark = newest - timedelta(minutes=10) if newest else None
        expected += sum(1 for t in times if watermark and t < watermark)
        newest = max([newest, *times] if newest else times)
    assert sent["late"] > 0 and out["late_events"] == expected > 0
    assert out["micro_batches"] == 3 and out["inserted"] == 720           # late events are kept ...
    assert tables.read(spark, cfg, "bronze.events_raw").count() == 721
    progress = tables.read(spark, cfg, "ops.stream_progress")
    assert progress.agg(F.sum("late_events")).first()[0] == expected     # ... and counted per micro-batch
