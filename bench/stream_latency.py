"""Stream throughput and trigger latency at increasing event rates, on this machine:
``python bench/stream_latency.py [--events 20000] [--rates 100 300 1000 3000] [--seconds 60]``
(``make bench-stream``). Run it alone: two cores shared with anything else measure the sharing.

Set-up (not timed): generated events (seed 42) are ingested, cleaned and linked in batch (the
history: the stream looks the persons' identifiers up), and a Kafka broker is started (stopped by
its pid at the end). Then, per rate, a new topic gets the generated events replayed *live* at that
rate for ``--seconds`` (event time = the moment each is sent, new event ids) while
``seglake run stream --trigger continuous`` runs in this process, until it has read every message.

Measured per rate:

* ``sustained_events_per_s``: messages sent / seconds from the first send until the stream had
  read them all (a lower bound: it includes the stream's start and the last micro-batch after the
  producer stopped); ``events_per_busy_second``: events / seconds spent inside micro-batches
  (what the stream can take when micro-batches run back to back); ``micro_batch_seconds``;
* ``event_to_silver_s``: per micro-batch, its commit time minus its newest event's time
  (p50/p95/max): how far silver runs behind the events;
* trigger latency, per trigger and overall: ``fired_at - due_ts`` (the moment the rule became
  decidable: the deciding event's time, plus the abandonment wait) of the firings due during the
  phase, p50/p95/p99/max.

Settings of the run (written in the JSON): watermark delay 5 s, micro-batches every 2 s, at most
20,000 messages each, cart abandonment judged after ``--abandon-seconds`` (15 s) instead of the
15 minutes of conf/segments.yaml so that carts are decided within a phase; the other rules as
configured (high-intent abandonment's 24 hours never come due in a phase). Results: ``bench/results/stream_latency-<events>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))


def _percentiles(values: list[float]) -> dict:
    import numpy as np
    if not values:
        return {"n": 0}
    a = np.asarray(values, dtype=float)
    return {"n": int(a.size), "p50": round(float(np.percentile(a, 50)), 2), "p95": round(float(np.percentile(a, 95)), 2),
            "p99": round(float(np.percentile(a, 99)), 2), "max": round(float(a.max()), 2)}


def phase_figures(spark, cfg, topic: str, phase_start: datetime) -> dict:
    """Micro-batch lag and trigger latency of one phase (small tables: micro-batches, firings)."""
    from pyspark.sql import functions as F

    from seglake.core import tables
    from seglake.core.contracts import SEGMENT_TRIGGERS, STREAM_PROGRESS
    progress = (tables.read(spark, cfg, STREAM_PROGRESS).where((F.col("topic") == topic) & (F.col("events") > 0))
                .select(((F.unix_micros("committed_at") - F.unix_micros("max_event_ts")) / 1e6).alias("lag"),
                        "events", "seconds")
                .collect())
    busy = sum(r["seconds"] for r in progress)
    fired = (tables.read(spark, cfg, SEGMENT_TRIGGERS).where(F.col("due_ts") >= F.lit(phase_start))
             .select("trigger", ((F.unix_micros("fired_at") - F.unix_micros("due_ts")) / 1e6).alias("s")).collect())
    per: dict[str, list[float]] = {}
    for r in fired:
        per.setdefault(r["trigger"], []).append(r["s"])
    return {"event_to_silver_s": _percentiles([r["lag"] for r in progress]),
            "micro_batch_seconds": _percentiles([r["seconds"] for r in progress]),
            "events_per_busy_second": round(sum(r["events"] for r in progress) / busy, 1) if busy else None,
            "trigger_latency_s": _percentiles([r["s"] for r in fired]),
            "trigger_latency_by_trigger_s": {k: _percentiles(v) for k, v in sorted(per.items())}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20000, help="generated events (the replay source)")
    parser.add_argument("--rates", type=float, nargs="+", default=[100, 300, 1000, 3000], help="events/s offered")
    parser.add_argument("--seconds", type=float, default=60, help="seconds of sending per rate")
    parser.add_argument("--abandon-seconds", type=float, default=15)
    parser.add_argument("--workdir", default=os.environ.get("SEGLAKE_BENCH_DIR", "/tmp/seglake-bench-stream"))
    parser.add_argument("--results", default=str(BENCH_DIR / "results"))
    args = parser.parse_args(argv)

    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "great_expectations", "seglake.core.quality"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import shutil

    from run import machine_info
    from seglake.core.config import load_config
    from seglake.core.context import JobContext
    from seglake.core.runner import run_chain
    from seglake.core.spark import get_spark
    from seglake.devtools import kafka, stream_demo
    from seglake.devtools.generate import generate
    from seglake.stages.segments.job import segments_file

    load_start = os.getloadavg()
    work = Path(args.workdir)
    lake = work / "lake"
    shutil.rmtree(lake, ignore_errors=True)
    stream = {**stream_demo.DEMO_STREAM}
    base = load_config("local", None, {"paths": {"lakehouse": str(lake)}})
    yaml_file = stream_demo.demo_segments(segments_file(base), work / "segments.yaml", args.abandon_seconds / 60)
    cfg = load_config("local", None, {"paths": {"lakehouse": str(lake)}, "stream": stream,
                                      "segments": {"config_file": str(yaml_file)}})
    spark = get_spark(cfg, app_name="seglake-bench-stream")
    data = work / f"_data-{args.events}"
    if not (data / "ground_truth" / "counts.json").exists():
        generate(spark, data, args.events, seed=42)
    shutil.copytree(data / "landing", lake / "_input" / "landing")
    run_chain(JobContext(spark, cfg), ["ingest", "clean", "identity"])       # the history (not timed)
    broker = kafka.start(work / "_kafka")
    phases = []
    try:
        for rate in args.rates:
            start = datetime.now(timezone.utc)
            topic = f"bench-{int(rate)}-{start.strftime('%H%M%S')}"
            limit = int(rate * args.seconds)
            load = os.getloadavg()
            out = stream_demo.live_run(spark, cfg, str(lake / "_input" / "landing"), broker.bootstrap_servers, topic,
                                       rate, limit=limit)
            sent = out["produced"]["sent"]
            phase = {"offered_rate": rate, "sent": sent, "send_seconds": out["produced"]["seconds"],
                     "seconds_until_read": out["seconds"],
                     "sustained_events_per_s": round(sent / out["seconds"], 1),
                     "micro_batches": out["stream"]["micro_batches"], "fired": out["stream"]["fired"],
                     "late_events": out["stream"]["late_events"], "load_before": [round(x, 2) for x in load],
                     **phase_figures(spark, cfg, topic, start)}
            print(json.dumps(phase), flush=True)
            phases.append(phase)
    finally:
        kafka.stop(broker)
    result = {"benchmark": "stream_latency", "events_generated": args.events, "seconds_per_rate": args.seconds,
              "settings": {"stream": stream, "abandon_seconds": args.abandon_seconds, "topic_partitions": 1},
              "load_average_at_start": [round(x, 2) for x in load_start],
              "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
              "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info(spark), "phases": phases}
    out_file = Path(args.results) / f"stream_latency-{args.events}.json"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out_file}")
    print(f"{'rate':>6} {'sent':>7} {'sustained/s':>12} {'busy ev/s':>10} {'batches':>8} {'silver lag p50/p95 s':>21} "
          f"{'trigger latency p50/p95/p99 s':>30} {'fired':>6}")
    for p in phases:
        lag, lat = p["event_to_silver_s"], p["trigger_latency_s"]
        print(f"{p['offered_rate']:>6.0f} {p['sent']:>7} {p['sustained_events_per_s']:>12} "
              f"{p['events_per_busy_second']:>10} {p['micro_batches']:>8} "
              f"{lag.get('p50', '-'):>10}/{lag.get('p95', '-'):<10} "
              f"{lat.get('p50', '-'):>12}/{lat.get('p95', '-')}/{lat.get('p99', '-'):<8} {lat.get('n', 0):>6}")
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
