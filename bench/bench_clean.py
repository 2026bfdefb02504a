"""Clean-stage throughput: bronze.events_raw -> silver.events (+ quarantine, GX gate, run log).

Uses the generated data of ``<workdir>/../_data-<events>`` (shared with bench_ingest; generated
untimed when missing). Cleans the ingest benchmark's lakehouse of the same size when it holds
bronze and no silver yet; otherwise ingests (untimed) into a fresh lakehouse. Times
``seglake.stages.clean.run`` only, and checks its counts against counts.json.
"""
from __future__ import annotations

import time
from pathlib import Path

from benchdata import config_for, ensure_data, lake_config, sibling_lake


def bench_clean(spark, workdir: Path, events: int) -> dict:
    from seglake.stages import clean, ingest
    from seglake.core import tables
    from seglake.core.context import JobContext

    data, counts = ensure_data(spark, workdir, events)
    ingested = sibling_lake(workdir, "ingest", events, "bronze/events_raw")
    if ingested and not sibling_lake(workdir, "ingest", events, "silver/events"):
        cfg = config_for(ingested, data)
    else:
        cfg = lake_config(workdir, data)
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
            "lakehouse": str(cfg.lakehouse),
            "checks": checks}


def benchmarks() -> dict:
    return {"clean": bench_clean}
