"""Benchmark: identity + sessions + features throughput (events/s of silver.events).

Benchmark-module contract: ``benchmarks() -> {name: fn(spark, workdir, events) -> dict}``.
``fn`` reuses ``<workdir>/lakehouse`` when silver.events is already there (built by an
earlier benchmark of the same size); otherwise it generates ``events`` events and runs
ingest + clean first (not timed). Then it times the identity job (full build), the
sessions job and the features job for one as_of, and returns seconds and events/s.

Standalone: ``python bench/bench_features.py --events 100000 --workdir /tmp/bench_feat``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable


def _cfg(workdir: Path):
    from seglake.config import load_config
    return load_config("local", overrides={"paths": {"lakehouse": str(Path(workdir) / "lakehouse")}})


def _prepare(spark, cfg, workdir: Path, events: int) -> dict:
    from seglake import tables
    from seglake.context import JobContext
    from seglake.pipeline import run_job
    if tables.exists(spark, cfg, "silver.events"):
        return {"prepared": "reused"}
    from seglake.generate import generate
    t0 = time.perf_counter()
    generate(spark, str(Path(cfg.lakehouse) / "_input"), events=events, customers=max(100, events // 50), seed=1)
    ctx = JobContext(spark, cfg, run_id="bench-prep")
    for job in ("ingest", "clean"):
        run_job(ctx, job)
    return {"prepared": "generated", "prepare_s": round(time.perf_counter() - t0, 1)}


def identity_sessions_features(spark, workdir, events: int) -> dict:
    """Time the identity (full), sessions and features jobs on ``events`` generated events."""
    from seglake import tables
    from seglake.context import JobContext
    from seglake.pipeline import run_job
    workdir = Path(workdir)
    cfg = _cfg(workdir)
    out: dict = {"events_requested": events, **_prepare(spark, cfg, workdir, events)}
    n = tables.read(spark, cfg, "silver.events").count()
    out["silver_events"] = n
    ctx = JobContext(spark, cfg, run_id="bench", args={"full": True})
    for job in ("identity", "sessions", "features"):
        result = run_job(ctx, job)
        out[f"{job}_s"] = round(result.seconds, 2)
        out[f"{job}_events_per_s"] = round(n / result.seconds) if result.seconds else None
        out[f"{job}_summary"] = {k: v for k, v in result.summary.items() if isinstance(v, (int, float, str))}
    total = out["identity_s"] + out["sessions_s"] + out["features_s"]
    out["total_s"] = round(total, 2)
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
    from seglake.spark import get_spark
    cfg = _cfg(Path(a.workdir))
    spark = get_spark(cfg, app_name="bench-features")
    res = identity_sessions_features(spark, a.workdir, a.events)
    text = json.dumps(res, indent=2, default=str)
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
