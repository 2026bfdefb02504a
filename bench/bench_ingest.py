"""Generation and bronze-ingestion throughput.

``generate`` writes ``<workdir>/../_data-<events>`` (shared with ``ingest``, which reuses it
when present and generates it, untimed, otherwise). ``ingest`` runs ``seglake.stages.ingest.run``
into a fresh lakehouse and times that call only.
"""
from __future__ import annotations

import time
from pathlib import Path

from benchdata import data_dir, ensure_data, generate_into, lake_config


def bench_generate(spark, workdir: Path, events: int) -> dict:
    out = data_dir(workdir, events)
    t0 = time.perf_counter()
    counts = generate_into(spark, out, events)
    seconds = time.perf_counter() - t0
    return {"events": counts["valid_events"], "raw_records": counts["raw_records"], "seconds": seconds,
            "persons": counts["persons"], "files": sum(counts["files_by_format"].values()),
            "landing_bytes": sum(p.stat().st_size for p in (out / "landing").rglob("*") if p.is_file())}


def bench_ingest(spark, workdir: Path, events: int) -> dict:
    from seglake.stages import ingest
    from seglake.core import tables
    from seglake.core.context import JobContext

    data, counts = ensure_data(spark, workdir, events)
    cfg = lake_config(workdir, data)
    t0 = time.perf_counter()
    summary = ingest.run(JobContext(spark, cfg))
    seconds = time.perf_counter() - t0
    bronze = tables.read(spark, cfg, "bronze.events_raw").count()
    if bronze != counts["raw_records"]:
        raise AssertionError(f"bronze holds {bronze} rows, counts.json says {counts['raw_records']}")
    return {"events": summary["records"], "seconds": seconds, "files": summary["files"],
            "malformed": summary["malformed"], "bronze_rows": bronze}


def benchmarks() -> dict:
    return {"generate": bench_generate, "ingest": bench_ingest}
