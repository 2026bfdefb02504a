"""Journey transition-matrix cost at growing event counts.

Input: the generator's per-event truth (``ground_truth/events.parquet`` of
``<workdir>/../_data-<events>``, shared with the ingest benchmark; generated, untimed, when
missing), consented events only, the person id standing in for the customer id (identity
resolution is benchmarked by its own stage).

* ``journeys_matrix``: sessionized events (sessionized and written to Parquet once,
  untimed) -> journeys -> transitions of orders 1..3 -> matrices overall and per channel ->
  Delta. This is the transition-matrix computation of ``seglake run journeys``.
* ``journeys_sessionize_matrix``: the same, timed from the unsessionized events
  (sessionize + matrix), i.e. what the stage pays per run on top of reading silver.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _data_dir(workdir: Path, events: int) -> Path:
    return workdir.parent / f"_data-{events}"


def _truth_events(spark, workdir: Path, events: int):
    from pyspark.sql import functions as F

    data = _data_dir(workdir, events)
    counts_file = data / "ground_truth" / "counts.json"
    if not (counts_file.exists() and json.loads(counts_file.read_text()).get("events_requested") == events):
        from seglake.generate import generate

        generate(spark, data, events, seed=42)
    truth = spark.read.parquet(str(data / "ground_truth" / "events.parquet"))
    return truth.where(F.col("consent")).select(
        F.col("person_id").alias("customer_id"), "event_ts", "event_type", "channel")


def _matrix(spark, sessionized, out: Path) -> dict:
    from pyspark.sql import functions as F

    from seglake import journeys as J

    spec = J.load_states(REPO / "conf" / "states.yaml")
    states = J.assign_states(sessionized, spec, keep_unmapped=True)
    counts = J.customer_transition_counts(J.journey_transitions(J.build_journeys(states, spec), spec, 3))
    matrix = J.transition_matrix(counts)
    matrix.write.format("delta").mode("overwrite").save(str(out))
    written = spark.read.format("delta").load(str(out))
    row = written.agg(F.count(F.lit(1)).alias("rows"),
                      F.sum(F.when((F.col("order") == 1) & (F.col("channel") == "all"), F.col("count")))
                      .alias("transitions")).first()
    return {"matrix_rows": row["rows"], "transitions": row["transitions"]}


def _sessionize(events):
    from seglake.sessions import sessionize

    return sessionize(events, 30).select("customer_id", "session_key", "event_ts", "event_seq",
                                         "event_type", "channel")


def bench_journeys_matrix(spark, workdir: Path, events: int) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    sess_path = workdir / "sessionized.parquet"
    _sessionize(_truth_events(spark, workdir, events)).write.mode("overwrite").parquet(str(sess_path))
    sessionized = spark.read.parquet(str(sess_path))
    n = sessionized.count()
    out = workdir / "transition_matrix"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    result = _matrix(spark, sessionized, out)
    return {"events": n, "seconds": time.perf_counter() - t0, **result}


def bench_journeys_sessionize_matrix(spark, workdir: Path, events: int) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    raw = workdir / "events.parquet"
    _truth_events(spark, workdir, events).write.mode("overwrite").parquet(str(raw))
    ev = spark.read.parquet(str(raw))
    n = ev.count()
    out = workdir / "transition_matrix_s"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    result = _matrix(spark, _sessionize(ev), out)
    return {"events": n, "seconds": time.perf_counter() - t0, **result}


def benchmarks() -> dict:
    return {"journeys_matrix": bench_journeys_matrix,
            "journeys_sessionize_matrix": bench_journeys_sessionize_matrix}
