"""The generator's driver: ``generate(spark, out_dir, ...)`` (``seglake generate``).

Runs the per-person simulation with ``mapInPandas`` (:mod:`.simulation`), writes the
per-event truth and the ground-truth tables (:mod:`.truth`), renders the raw records
(:mod:`.render`) as JSON lines, CSV and Parquet under ``landing/<format>/<yyyy-mm-dd>/``
(Spark's partition folders renamed by :func:`_tidy_landing`), and returns the exact counts,
also written to ``ground_truth/counts.json``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from seglake.core.contracts import RAW_FIELDS
from seglake.core.spark import session_settings
from seglake.devtools.generate.model import (
    _SIM_SCHEMA, ARCH_NAMES, DUPLICATE_KINDS, EFFECT_ARCHETYPES, EFFECT_DAYS, EFFECT_PROB, EXPERIMENT,
    EXPERIMENT_DAYS, EXPERIMENT_END_GAP_DAYS, GENERATOR_VERSION, MALFORMED_KINDS,
)
from seglake.devtools.generate.render import sim_to_truth, truth_to_records
from seglake.devtools.generate.batches import _simulate_batches
from seglake.devtools.generate.truth import identifiers_truth, persons_truth, transitions_truth

log = logging.getLogger(__package__)             # "seglake.devtools.generate", as before the split

#: session settings while generating (the previous values are restored afterwards)
_SESSION_CONF = {
    # the rendering of timestamps and days is in UTC
    "spark.sql.session.timeZone": "UTC",
    # Whole-stage code generation turns the wide rendering projection (render.truth_to_records)
    # into Java methods of 20-30 KB of bytecode, which HotSpot never JIT-compiles (its
    # HugeMethodLimit is 8,000 bytes): they ran interpreted. With Spark's limit at the JVM's, such
    # stages fall back to per-operator generated code in small methods, about half the CPU per
    # rendered record; the smaller stages keep whole-stage code generation. Same output.
    "spark.sql.codegen.hugeMethodLimit": "8000",
}


def _local_dir(out_dir: str | os.PathLike) -> Path:
    text = str(out_dir)
    if "://" in text and not text.startswith("file://"):
        raise ValueError(f"generate writes to a local folder; out_dir {text!r} is not local")
    return Path(text.removeprefix("file://")).resolve()


def _tidy_landing(folder: Path, extension: str) -> int:
    """Rename Spark's ``_day=YYYY-MM-DD/part-*.txt`` into ``YYYY-MM-DD/part-*.<ext>``; drop markers."""
    files = 0
    for sub in sorted(folder.iterdir()):
        if sub.is_file():
            sub.unlink()                                   # _SUCCESS, .crc
            continue
        day_dir = folder / sub.name.removeprefix("_day=")
        sub.rename(day_dir)
        for f in sorted(day_dir.iterdir()):
            if f.name.startswith(".") or f.name.startswith("_"):
                f.unlink()
            elif not f.name.endswith(extension):
                f.rename(f.with_name(f.name.split(".")[0] + extension))
                files += 1
            else:
                files += 1
    return files


def _counts(agg: list, *, customers: int, shared: int, files: dict, events: int, seed: int,
            start_date: date, end_date: date, t0: float) -> dict:
    """The counts of a generated data set from the (_kind, _defect, _fmt) aggregation rows."""
    by_kind = {k: 0 for k in ("valid", *DUPLICATE_KINDS, "malformed")}
    mal_by_kind = {k: 0 for k in MALFORMED_KINDS}
    by_format = {"json": 0, "csv": 0, "parquet": 0}
    consent_false = missing_duration = 0
    for row in agg:
        by_kind[row["_kind"]] += row["n"]
        by_format[row["_fmt"]] += row["n"]
        if row["_defect"]:
            mal_by_kind[row["_defect"]] += row["n"]
        if row["_kind"] == "valid":
            consent_false += row["consent_false"] or 0
            missing_duration += row["no_duration"] or 0
    dups = {k: by_kind[k] for k in DUPLICATE_KINDS}
    counts = {
        "raw_records": sum(by_kind.values()),
        "valid_events": by_kind["valid"],
        "duplicates_injected": sum(dups.values()),
        "duplicates_by_kind": dups,
        "malformed_injected": by_kind["malformed"],
        "malformed_by_kind": mal_by_kind,
        "bronze_unparseable_records": mal_by_kind["broken_json"],
        "consent_false_events": consent_false,
        "missing_duration_events": missing_duration,
        "persons": customers,
        "shared_identifiers": shared,
        "records_by_format": by_format,
        "files_by_format": files,
        "events_requested": events,
        "seed": seed,
        "generator_version": GENERATOR_VERSION,
        "start_date": start_date.isoformat(),
        "end_date": end_date.isoformat(),
        "archetypes": list(ARCH_NAMES),
        "seconds": round(time.time() - t0, 1),
    }
    return counts


def generate(spark: SparkSession, out_dir: str | os.PathLike, events: int, customers: int | None = None,
             seed: int = 42, start_date: date = date(2026, 8, 1), end_date: date = date(2026, 10, 31),
             files_per_day: int | None = None, experiment_b_share: float = 0.5) -> dict:
    """Generate landing files and ground truth under ``out_dir``; return the counts.

    Args:
        spark: the session (its time zone and code generation settings are changed while
            generating, see ``_SESSION_CONF``; the previous values are restored).
        out_dir: local folder; ``landing/`` and ``ground_truth/`` are replaced.
        events: approximate number of valid events (``counts['valid_events']`` is exact).
        customers: number of persons (default ``events // 50``).
        seed: makes the output deterministic.
        start_date, end_date: the event window (inclusive).
        files_per_day: files per format and day (default: 1 per ~2M events, 1..4).
        experiment_b_share: the share of persons the site puts in variant B of the planted
            experiment (0.5; another value plants a sample-ratio mismatch against the 50/50 design).

    Returns:
        The dict also written to ``ground_truth/counts.json``.
    """
    if events < 1:
        raise ValueError(f"events must be a positive number, got {events}")
    customers = customers if customers is not None else max(1, events // 50)
    if customers < 1:
        raise ValueError(f"customers must be a positive number, got {customers}")
    if end_date <= start_date:
        raise ValueError(f"end_date {end_date} must be after start_date {start_date}")
    if not 0.0 < experiment_b_share < 1.0:
        raise ValueError(f"experiment_b_share must be between 0 and 1 (exclusive), got {experiment_b_share}")
    t0 = time.time()
    out = _local_dir(out_dir)
    landing, gt = out / "landing", out / "ground_truth"
    for folder in (landing, gt):
        if folder.exists():
            shutil.rmtree(folder)
    gt.mkdir(parents=True)
    start_ms = int(datetime.combine(start_date, datetime.min.time(), timezone.utc).timestamp() * 1000)
    end_ms = int(datetime.combine(end_date + timedelta(days=1), datetime.min.time(), timezone.utc).timestamp() * 1000) - 1
    # shared store-kiosk devices (giant-component guard): each linked to ~40 user_ids, more
    # than identity.max_persons_per_identifier (20); too few persons to plant one below 60
    kiosks = max(1, customers // 10_000) if customers >= 60 else 0
    kiosk_share = min(0.6, 40.0 * kiosks / customers) if kiosks else 0.0
    mean_events = events / customers
    exp_end = end_date - timedelta(days=EXPERIMENT_END_GAP_DAYS)          # exclusive
    exp_start = max(start_date, exp_end - timedelta(days=EXPERIMENT_DAYS))
    day_ms = lambda d: int(datetime.combine(d, datetime.min.time(), timezone.utc).timestamp() * 1000)  # noqa: E731
    experiment = (day_ms(exp_start), day_ms(exp_end), float(experiment_b_share))
    files_per_day = files_per_day or max(1, min(4, events // 2_000_000))
    if files_per_day < 1:
        raise ValueError(f"files_per_day must be a positive number, got {files_per_day}")

    with session_settings(spark, _SESSION_CONF):
        parts = max(2, min(400, customers // 4000))
        sim = spark.range(0, customers, 1, parts).mapInPandas(
            _simulate_batches(seed, start_ms, end_ms, mean_events, kiosks, kiosk_share, experiment), _SIM_SCHEMA)
        truth_path = str(gt / "events.parquet")
        sim_to_truth(sim, seed).write.mode("overwrite").parquet(truth_path)
        log.info("simulated %d persons in %.1fs", customers, time.time() - t0)
        truth = spark.read.parquet(truth_path)
        persons_truth(truth, end_date).coalesce(1).write.mode("overwrite").parquet(str(gt / "persons.parquet"))
        identifiers_truth(truth).coalesce(1).write.mode("overwrite").parquet(str(gt / "identifiers.parquet"))
        transitions_truth(spark).coalesce(1).write.mode("overwrite").parquet(str(gt / "transitions.parquet"))
        log.info("wrote the ground-truth tables (%.1fs)", time.time() - t0)

        records = truth_to_records(truth, seed)
        bucket = F.pmod(F.col("event_uid"), F.lit(files_per_day))
        files = {}
        for fmt, ext in (("json", ".jsonl"), ("csv", ".csv"), ("parquet", ".parquet")):
            part = records.where(F.col("_fmt") == fmt).repartition("_day", bucket)
            target = landing / fmt
            if fmt == "json":
                part.select("_day", "_line").write.partitionBy("_day").mode("overwrite").text(str(target))
            elif fmt == "csv":
                (part.select("_day", *RAW_FIELDS).write.partitionBy("_day").mode("overwrite")
                 .option("header", True).option("escape", '"').csv(str(target)))
            else:
                part.select("_day", *RAW_FIELDS).write.partitionBy("_day").mode("overwrite").parquet(str(target))
            files[fmt] = _tidy_landing(target, ext)
            log.info("wrote %d %s files (%.1fs)", files[fmt], fmt, time.time() - t0)

        # exact counts from the records just written (one aggregation; the result is tiny)
        agg = records.groupBy("_kind", "_defect", "_fmt").agg(
            F.count(F.lit(1)).alias("n"),
            F.sum((~F.col("_consent")).cast("long")).alias("consent_false"),
            F.sum(F.col("_no_duration").cast("long")).alias("no_duration"),
        ).collect()
        shared = (spark.read.parquet(str(gt / "identifiers.parquet"))
                  .where(F.col("person_id").isNull()).count())

    counts = _counts(agg, customers=customers, shared=shared, files=files, events=events, seed=seed,
                     start_date=start_date, end_date=end_date, t0=t0)
    counts["experiment"] = {
        "name": EXPERIMENT, "start": exp_start.isoformat(), "end": exp_end.isoformat(),
        "variant_b_share": float(experiment_b_share), "effect_archetypes": list(EFFECT_ARCHETYPES),
        "effect_prob": EFFECT_PROB, "effect_days": EFFECT_DAYS,
        "note": "potential outcomes per person in ground_truth/persons.parquet (exp_*)",
    }
    (gt / "counts.json").write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")
    log.info("generated %d raw records (%d valid) in %.1fs", counts["raw_records"], counts["valid_events"],
             counts["seconds"])
    return counts
