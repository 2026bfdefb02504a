"""Clean-stage throughput: bronze.events_raw -> silver.events (+ quarantine, GX gate, run log).

Uses the generated data of ``<workdir>/../_data-<events>`` (shared with bench_ingest; generated
untimed when missing), ingests it untimed into a fresh lakehouse, then times
``seglake.clean.run`` only, and checks its counts against counts.json.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path


def bench_clean(spark, workdir: Path, events: int) -> dict:
    from seglake import clean, ingest, tables
    from seglake.config import load_config
    from seglake.context import JobContext
    from seglake.generate import generate

    data = workdir.parent / f"_data-{events}"
    counts_file = data / "ground_truth" / "counts.json"
    if not (counts_file.exists() and json.loads(counts_file.read_text()).get("events_requested") == events):
        generate(spark, data, events, seed=42)
    counts = json.loads(counts_file.read_text())
    lake = workdir / "lake"
    shutil.rmtree(lake, ignore_errors=True)
    repo = Path(__file__).resolve().parents[1]
    cfg = load_config("local", repo / "conf", overrides={"paths": {"lakehouse": str(lake),
                                                                   "landing": str(data / "landing")}})
    ingest.run(JobContext(spark, cfg))

    t0 = time.perf_counter()
    summary = clean.run(JobContext(spark, cfg))
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    rerun = clean.run(JobContext(spark, cfg))
    rerun_seconds = time.perf_counter() - t1

    silver = tables.read(spark, cfg, "silver.events").count()
    checks = {
        "silver_equals_valid_events": silver == counts["valid_events"],
        "deduplicated_equals_injected": summary["deduplicated"] == counts["duplicates_injected"],
        "quarantined_equals_injected": summary["quarantined"] == counts["malformed_injected"],
        "rerun_is_noop": rerun["batches"] == 0,
    }
    return {"events": summary["records_in"], "seconds": seconds,
            "events_per_s": round(summary["records_in"] / seconds, 1), "silver_rows": silver,
            "deduplicated": summary["deduplicated"], "quarantined": summary["quarantined"],
            "imputed": summary["imputed_durations"], "rerun_seconds": round(rerun_seconds, 1),
            "checks": checks}


def benchmarks() -> dict:
    return {"clean": bench_clean}
