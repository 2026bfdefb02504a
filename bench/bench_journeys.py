"""Journey transition-matrix cost at growing event counts.

Input: the generator's per-event truth (``ground_truth/events.parquet`` of
``<workdir>/../_data-<events>``, shared with the ingest benchmark; generated, untimed, when
missing), consented events only, the person id standing in for the customer id (identity
resolution is benchmarked by its own stage).

Sizes above ``REPLICATE_ABOVE`` (1M) with no generated data of their own are the 1M data
replicated k = round(events / 1M) times under distinct customer ids (``<person>#<copy>``),
built in Spark: the generator at 10M/50M costs far more than the matrix it feeds, and
replication keeps the per-customer paths realistic while the first-order counts scale exactly
by k (a check in the result). A generated dataset of the requested size, when present, is used
instead.

* ``journeys_matrix``: sessionized events (sessionized and written to Parquet once,
  untimed) -> journeys -> transitions of orders 1..3 -> matrices overall and per channel ->
  Delta. This is the transition-matrix computation of ``seglake run journeys``.
* ``journeys_sessionize_matrix``: the same, timed from the unsessionized events
  (sessionize + matrix), i.e. what the stage pays per run on top of reading silver.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from benchdata import data_dir, ensure_data

REPO = Path(__file__).resolve().parents[1]


REPLICATE_ABOVE = 1_000_000


def _truth_events(spark, workdir: Path, events: int):
    """(consented events: customer_id, event_ts, event_type, channel; how they were made)."""
    from pyspark.sql import functions as F

    copies = 1
    if events > REPLICATE_ABOVE and not (data_dir(workdir, events) / "ground_truth" / "counts.json").exists():
        copies, events = max(1, round(events / REPLICATE_ABOVE)), REPLICATE_ABOVE
    data, _ = ensure_data(spark, workdir, events)
    truth = spark.read.parquet(str(data / "ground_truth" / "events.parquet")).where(F.col("consent"))
    customer = F.col("person_id")
    if copies > 1:
        truth = truth.crossJoin(spark.range(copies).withColumnRenamed("id", "copy"))
        customer = F.concat_ws("#", "person_id", F.col("copy").cast("string"))
    source = f"generated {events:,}" + (f" x {copies} copies" if copies > 1 else "")
    return truth.select(customer.alias("customer_id"), "event_ts", "event_type", "channel"), source, copies


def _matrix(spark, sessionized, out: Path) -> dict:
    from pyspark.sql import functions as F

    from seglake.stages import journeys as J

    spec = J.load_states(REPO / "conf" / "states.yaml")
    states = J.assign_states(sessionized, spec, keep_unmapped=True)
    counts = J.transition_counts(J.journey_transitions(J.build_journeys(states, spec), spec, 3))
    matrix = J.transition_matrix(counts)
    matrix.write.format("delta").mode("overwrite").save(str(out))
    written = spark.read.format("delta").load(str(out))
    row = written.agg(F.count(F.lit(1)).alias("rows"),
                      F.sum(F.when((F.col("order") == 1) & (F.col("channel") == "all"), F.col("count")))
                      .alias("transitions")).first()
    return {"matrix_rows": row["rows"], "transitions": row["transitions"]}


def _sessionize(events):
    from seglake.stages.sessions import sessionize

    return sessionize(events, 30).select("customer_id", "session_key", "event_ts", "event_seq",
                                         "event_type", "channel")


def _scaling_check(spark, workdir: Path, name: str, out: Path, copies: int) -> dict:
    """With k copies: every first-order count equals k x the 1M run's (when that run is on disk)."""
    from pyspark.sql import functions as F

    base = workdir.parent / f"{workdir.name.rsplit('-', 1)[0]}-{REPLICATE_ABOVE}" / name
    if copies == 1 or not (base / "_delta_log").exists():
        return {}
    key = ["from_state", "to_state", "channel", "segment"]
    first = lambda p: (spark.read.format("delta").load(str(p))  # noqa: E731
                       .where(F.col("order") == 1).select(*key, "count"))
    mismatched = (first(out).join(first(base).withColumnRenamed("count", "base"), key, "full")
                  .where(~F.coalesce(F.col("count") == F.col("base") * copies, F.lit(False))).count())
    return {"first_order_counts_equal_copies_times_1m": mismatched == 0}


def _run(spark, workdir: Path, events: int, name: str, sessionize_timed: bool) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    truth, source, copies = _truth_events(spark, workdir, events)
    staged = workdir / "input.parquet"
    (truth if sessionize_timed else _sessionize(truth)).write.mode("overwrite").parquet(str(staged))
    data = spark.read.parquet(str(staged))
    n = data.count()
    out = workdir / name
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    result = _matrix(spark, _sessionize(data) if sessionize_timed else data, out)
    seconds = time.perf_counter() - t0
    checks = _scaling_check(spark, workdir, name, out, copies)
    return {"events": n, "seconds": seconds, "source": source, **result, **checks}


def bench_journeys_matrix(spark, workdir: Path, events: int) -> dict:
    return _run(spark, workdir, events, "transition_matrix", sessionize_timed=False)


def bench_journeys_sessionize_matrix(spark, workdir: Path, events: int) -> dict:
    return _run(spark, workdir, events, "transition_matrix_s", sessionize_timed=True)


def benchmarks() -> dict:
    return {"journeys_matrix": bench_journeys_matrix,
            "journeys_sessionize_matrix": bench_journeys_sessionize_matrix}
