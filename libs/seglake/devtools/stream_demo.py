"""``seglake demo --stream`` (``make demo-stream``): the real-time triggers end to end, and the
live run the stream latency benchmark (``bench/stream_latency.py``) measures.

1. generates the demo events (or reuses them) and runs the batch ingest, clean and identity on
   them: the history, so the persons' identifiers are known to the stream;
2. starts a Kafka broker of its own (``<lakehouse>/_kafka``; stopped by its pid at the end,
   whatever happens);
3. replays the same events into a new topic as *live* events (event time = the moment each is
   sent, new event ids: :func:`seglake.stages.stream.produce.live_value`) at ``--rate`` a second,
   while ``seglake run stream --trigger continuous`` runs in the same process;
4. stops the stream once it has read every message sent, and prints the triggers it fired with
   their latency: from the moment the rule became decidable (``due_ts``: the deciding event's
   time, plus the rule's waiting time for abandonment) to the trigger row's commit (``fired_at``).

The demo judges cart abandonment (the ``cart_abandonment`` triggers) after
:data:`DEMO_ABANDON_MINUTES` minute instead of the 15 of ``conf/segments.yaml``; high-intent
abandonment keeps its 24 hours, so it does not fire within a demo (a copy of the file with that change is written to
``<lakehouse>/_stream_demo/segments.yaml``), with a 5-second watermark delay and 2-second
micro-batches, so the triggers show within a demo's minutes. Timers due after the last event's
watermark stay pending (listed as such): event time does not move without events.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.context import JobContext
from seglake.core.contracts import SEGMENT_TRIGGERS, STREAM_PROGRESS, STREAM_TIMERS

log = logging.getLogger(__name__)

DEMO_ABANDON_MINUTES = 1.0
DEMO_STREAM = {"watermark_delay_minutes": 5 / 60, "interval_seconds": 2, "max_offsets_per_trigger": 20000}


def demo_segments(source: Path, out: Path, abandon_minutes: float = DEMO_ABANDON_MINUTES) -> Path:
    """A copy of the segments YAML whose cart_abandonment triggers wait ``abandon_minutes``."""
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    for trig in data.get("triggers") or []:
        if trig.get("kind") == "cart_abandonment":
            trig.setdefault("thresholds", {})["abandon_hours"] = abandon_minutes / 60
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# written by seglake demo --stream from " + str(source) + "\n"
                   + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return out


def live_run(spark, cfg, landing: str, servers: str, topic: str, rate: float, limit: int | None = None,
             timeout: float = 3600.0) -> dict:
    """Produce ``landing`` live into ``topic`` (a thread) while the stream runs continuously in this
    process; stop the stream once it has read every message sent. Returns the producer's and the
    stream's summaries and the wall-clock seconds until the stream caught up."""
    from seglake.core.runner import run_job
    from seglake.stages.stream import produce

    sent: dict = {}
    failure: list[BaseException] = []
    tag = f"live-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}"

    def producer() -> None:
        try:
            sent.update(produce.produce(spark, landing, servers, topic, rate=rate, partitions=1, live_tag=tag,
                                        limit=limit))
        except BaseException as exc:             # reported by the main thread
            failure.append(exc)

    produce.ensure_topic(servers, topic, 1)
    started = time.monotonic()
    thread = threading.Thread(target=producer, name="seglake-demo-producer", daemon=True)
    thread.start()

    def caught_up(totals: dict) -> bool:
        return bool(failure) or (not thread.is_alive() and totals["records_in"] >= sent.get("sent", 0))

    args = {"trigger": "continuous", "bootstrap_servers": servers, "topic": topic, "timeout_seconds": timeout,
            "stop_when": caught_up}
    result = run_job(JobContext(spark, cfg, args=args), "stream")
    thread.join(timeout=60)
    if failure:
        raise failure[0]
    return {"produced": sent, "stream": result.summary, "seconds": round(time.monotonic() - started, 1),
            "live_tag": tag}


def latency(spark, cfg, since: datetime) -> dict:
    """Per trigger: firings since ``since`` and the latency due_ts -> fired_at (seconds) p50/p95/p99/max."""
    # one row per trigger name: bounded by the rules, not by events or customers
    rows = (tables.read(spark, cfg, SEGMENT_TRIGGERS).where(F.col("fired_at") >= F.lit(since))
            .select("trigger", (F.unix_micros("fired_at") - F.unix_micros("due_ts")).alias("us"))
            .groupBy("trigger").agg(
                F.count(F.lit(1)).alias("fired"),
                F.percentile_approx("us", [0.5, 0.95, 0.99], 10000).alias("p"), F.max("us").alias("max"))
            .orderBy("trigger").collect())
    return {r["trigger"]: {"fired": r["fired"], "p50_s": r["p"][0] / 1e6, "p95_s": r["p"][1] / 1e6,
                           "p99_s": r["p"][2] / 1e6, "max_s": r["max"] / 1e6} for r in rows}


def run_demo(spark, cfg, lake: Path, rate: float, echo=print) -> int:
    """Steps 2-4 of the module description on a lakehouse whose history is already cleaned and linked."""
    from seglake.devtools import kafka

    echo(f"[s1] kafka       starting a broker in {lake / '_kafka'} ...")
    broker = kafka.start(lake / "_kafka")
    try:
        echo(f"[s1] kafka       broker pid {broker.pid} at {broker.bootstrap_servers}")
        since = datetime.now(timezone.utc)
        topic = f"seglake-demo-{since.strftime('%Y%m%d%H%M%S')}"
        landing = str(lake / "_input" / "landing")
        echo(f"[s2] stream      replaying {landing} live into {topic} at {rate:.0f} events/s while "
             "`seglake run stream --trigger continuous` runs ...")
        out = live_run(spark, cfg, landing, broker.bootstrap_servers, topic, rate)
        s = out["stream"]
        echo(f"[s2] stream      {out['produced']['sent']} messages sent in {out['produced']['seconds']} s; the stream "
             f"read {s['records_in']} in {s['micro_batches']} micro-batches ({out['seconds']} s in all): "
             f"{s['inserted']} into silver, {s['quarantined']} quarantined, {s['late_events']} late, "
             f"{s['timers']} timers, {s['fired']} triggers fired")
        stats = latency(spark, cfg, since)
        echo("\ntrigger                  fired   latency due -> committed (s): p50    p95    p99    max")
        for name, v in stats.items():
            echo(f"{name:<24}{v['fired']:>6}   {'':>30}{v['p50_s']:>5.1f}  {v['p95_s']:>5.1f}  "
                 f"{v['p99_s']:>5.1f}  {v['max_s']:>5.1f}")
        if not stats:
            echo("(no trigger fired)")
        first = (tables.read(spark, cfg, SEGMENT_TRIGGERS)      # eight rows (limit), for the printout.where(F.col("fired_at") >= F.lit(since))
                 .orderBy("fired_at", "trigger").limit(8).collect())
        echo("\nfirst firings: trigger, customer_id, deciding event time, due, fired at, rule version")
        for r in first:
            echo(f"  {r['trigger']:<22} {r['customer_id']}  {r['event_ts']:%H:%M:%S.%f}"[:-3]
                 + f"  {r['due_ts']:%H:%M:%S}  {r['fired_at']:%H:%M:%S.%f}"[:-3] + f"  {r['rule_version']}")
        # one row per trigger name: bounded by the rules
        pending = ({r["trigger"]: r["count"] for r in tables.read(spark, cfg, STREAM_TIMERS)
                    .groupBy("trigger").count().collect()} if tables.exists(spark, cfg, STREAM_TIMERS) else {})
        wm = tables.read(spark, cfg, STREAM_PROGRESS).agg(F.max("watermark")).first()[0]
        echo(f"\ntimers still pending, due after the watermark {wm} (only the next events move it): "
             + (", ".join(f"{k} {v}" for k, v in sorted(pending.items())) or "none"))
        echo(f"triggers: {cfg.table_path(SEGMENT_TRIGGERS)}")
    finally:
        pid = kafka.stop(broker)
        echo(f"[s3] kafka       broker pid {pid} stopped")
    return 0
