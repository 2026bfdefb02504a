"""Generation and bronze-ingestion throughput.

``generate`` writes ``<workdir>/../_data-<events>`` (shared with ``ingest``, which reuses it
when present and generates it, untimed, otherwise). ``ingest`` runs ``seglake.ingest.run``
into a fresh lakehouse and times that call only.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path


def _data_dir(workdir: Path, events: int) -> Path:
    return workdir.parent / f"_data-{events}"


def _generate(spark, out: Path, events: int) -> dict:
    from seglake.generate import generate

    return generate(spark, out, events, seed=42)


def bench_generate(spark, workdir: Path, events: int) -> dict:
    out = _data_dir(workdir, events)
    t0 = time.perf_counter()
    counts = _generate(spark, out, events)
    seconds = time.perf_counter() - t0
    return {"events": counts["valid_events"], "raw_records": counts["raw_records"], "seconds": seconds,
            "persons": counts["persons"], "files": sum(counts["files_by_format"].values()),
            "landing_bytes": sum(p.stat().st_size for p in (out / "landing").rglob("*") if p.is_file())}


def bench_ingest(spark, workdir: Path, events: int) -> dict:
    from seglake import ingest, tables
    from seglake.config import load_config
    from seglake.context import JobContext

    data = _data_dir(workdir, events)
    counts_file = data / "ground_truth" / "counts.json"
    if not (counts_file.exists() and json.loads(counts_file.read_text()).get("events_requested") == events):
        _generate(spark, data, events)
    counts = json.loads(counts_file.read_text())
    lake = workdir / "lake"
    shutil.rmtree(lake, ignore_errors=True)
    repo = Path(__file__).resolve().parents[1]
    cfg = load_config("local", repo / "conf", overrides={"paths": {"lakehouse": str(lake),
                                                                   "landing": str(data / "landing")}})
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
