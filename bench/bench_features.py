"""Benchmark: identity + sessions + features throughput (events/s of silver.events).

Benchmark-module contract: ``benchmarks() -> {name: fn(spark, workdir, events) -> dict}``.
``fn`` reuses the clean benchmark's lakehouse of the same size when it is there; otherwise
it ingests and cleans the shared generated data (``bench/benchdata.py``) first (not timed).
Then it times the identity job (full build), the sessions job and the features job for one
as_of, and returns seconds and events/s.

Standalone: ``python bench/bench_features.py --events 100000 --workdir /tmp/bench_feat``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]


def _prepare(spark, workdir: Path, events: int) -> tuple[object, dict]:
    """A config whose lakehouse holds silver.events for ``events`` generated events.

    Reuses the lakehouse the clean benchmark of the same size cleaned (its own, or the ingest
    benchmark's) when it is there; otherwise ingests and cleans the shared generated data (untimed).
    """
    from seglake.core import tables
    from seglake.core.context import JobContext
    from seglake.core.runner import run_job
    from benchdata import config_for, ensure_data, lake_config, sibling_lake

    data, _ = ensure_data(spark, workdir, events)
    cleaned = (sibling_lake(workdir, "clean", events, "silver/events")
               or sibling_lake(workdir, "ingest", events, "silver/events"))
    if cleaned:
        return config_for(cleaned, data), {"prepared": f"reused {cleaned}"}
    t0 = time.perf_counter()
    cfg = lake_config(workdir, data)
    ctx = JobContext(spark, cfg, run_id="bench-prep")
    for job in ("ingest", "clean"):
        run_job(ctx, job)
    assert tables.exists(spark, cfg, "silver.events")
    return cfg, {"prepared": "ingested and cleaned", "prepare_s": round(time.perf_counter() - t0, 1)}


def identity_sessions_features(spark, workdir, events: int) -> dict:
    """Time the identity (full), sessions and features jobs on ``events`` generated events."""
    from seglake.core import tables
    from seglake.core.context import JobContext
    from seglake.core.runner import run_job
    cfg, prepared = _prepare(spark, Path(workdir), events)
    out: dict = {"events_requested": events, **prepared}
    n = tables.read(spark, cfg, "silver.events").count()
    out["silver_events"] = out["events"] = n
    ctx = JobContext(spark, cfg, run_id="bench", args={"full": True})
    for job in ("identity", "sessions", "features"):
        result = run_job(ctx, job)
        out[f"{job}_s"] = round(result.seconds, 2)
        out[f"{job}_events_per_s"] = round(n / result.seconds) if result.seconds else None
        out[f"{job}_summary"] = {k: v for k, v in result.summary.items() if isinstance(v, (int, float, str))}
    total = out["identity_s"] + out["sessions_s"] + out["features_s"]
    out["total_s"] = round(total, 2)
    out["seconds"] = total
    out["events_per_s"] = round(n / total) if total else None
    return out


def benchmarks() -> dict[str, Callable]:
    return {"identity_sessions_features": identity_sessions_features}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--workdir", default="/tmp/seglake_bench_features")
    parser.add_argument("--out", default=None, help="write the result JSON here")
    a = parser.parse_args()
    import sys
    sys.path[:0] = [str(REPO / "libs"), str(REPO / "bench")]
    from benchdata import config_for
    from seglake.core.spark import get_spark
    spark = get_spark(config_for(Path(a.workdir) / "lake"), app_name="bench-features")
    res = identity_sessions_features(spark, Path(a.workdir) / f"identity_sessions_features-{a.events}", a.events)
    text = json.dumps(res, indent=2, default=str)
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
