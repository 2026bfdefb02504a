"""Bronze ingestion (``seglake run ingest``): new landing files -> ``bronze.events_raw``.

Every record is kept: all raw contract fields as strings, the original text in ``_raw``
and ``_malformed = true`` when the record could not be parsed at all (a broken JSON line,
a CSV line with the wrong number of fields). Files are tracked in ``ops.ingested_files``
(path, size, modification time, batch id), so a file is ingested exactly once and a rerun
with no new files appends nothing.

The pure transforms (``parse_json_lines``, ``parse_csv_lines``, ``parquet_to_bronze``,
``add_metadata``) take and return DataFrames; ``run`` does the listing, reading and writing.
"""
from __future__ import annotations

import logging
import time
from typing import Iterable

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from seglake.core import tables
from seglake.core.contracts import BRONZE_EVENTS, INGESTED_FILES, RAW_FIELDS, require_columns
from seglake.core.context import JobContext

log = logging.getLogger(__name__)

BRONZE = BRONZE_EVENTS
LEDGER = INGESTED_FILES

#: The CSV header line (raw contract fields in bronze order).
CSV_HEADER = ",".join(RAW_FIELDS)
FORMAT_BY_EXTENSION = {".jsonl": "json", ".ndjson": "json", ".json": "json", ".csv": "csv",
                       ".parquet": "parquet"}
_CORRUPT = "_corrupt_record"

BRONZE_SCHEMA = T.StructType(
    [T.StructField(c, T.StringType()) for c in RAW_FIELDS]
    + [T.StructField("_raw", T.StringType()), T.StructField("_malformed", T.BooleanType()),
       T.StructField("_format", T.StringType()), T.StructField("_source", T.StringType()),
       T.StructField("_source_file", T.StringType()), T.StructField("_batch_id", T.StringType()),
       T.StructField("_ingested_at", T.TimestampType())]
)
LEDGER_DDL = ("path STRING, size LONG, modification_time TIMESTAMP, format STRING, records LONG, "
              "malformed LONG, batch_id STRING, ingested_at TIMESTAMP")
_PARSE_DDL = ", ".join(f"`{c}` STRING" for c in (*RAW_FIELDS, _CORRUPT))
_PARSE_SCHEMA = T.StructType([T.StructField(c, T.StringType()) for c in RAW_FIELDS]
                             + [T.StructField(_CORRUPT, T.StringType())])


# ------------------------------------------------------------------------------ transforms
def _fields_from(parsed: Column) -> list[Column]:
    return [parsed.getField(c).alias(c) for c in RAW_FIELDS]


def parse_json_lines(lines: DataFrame) -> DataFrame:
    """Parse JSON-lines text into bronze fields.

    Args:
        lines: ``value`` (one line of a .jsonl file) and ``_source_file``.

    Returns:
        The raw contract fields as strings (numbers, booleans and nested objects such as
        ``properties`` keep their JSON text), ``_raw`` (the line) and ``_malformed`` (the
        line is not a JSON object). Blank lines are not records and are dropped.
    """
    require_columns(lines, ["value", "_source_file"], "parse_json_lines")
    parsed = F.from_json(F.col("value"), _PARSE_SCHEMA, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT})
    return (lines.where(F.trim(F.col("value")) != "")
            .select(parsed.alias("p"), "value", "_source_file")
            .select(*_fields_from(F.col("p")), F.col("value").alias("_raw"),
                    (F.col("p").isNull() | F.col("p").getField(_CORRUPT).isNotNull()).alias("_malformed"),
                    "_source_file"))


def parse_csv_lines(lines: DataFrame, header: str = CSV_HEADER) -> DataFrame:
    """Parse CSV text lines (RFC 4180 quoting, ``""`` escapes) into bronze fields.

    Args:
        lines: ``value`` (one line of a .csv file) and ``_source_file``.
        header: the header line, which is skipped (columns in ``RAW_FIELDS`` order).

    Returns:
        The raw contract fields as strings, ``_raw`` (the line) and ``_malformed`` (wrong
        number of fields). Empty fields are null.
    """
    require_columns(lines, ["value", "_source_file"], "parse_csv_lines")
    parsed = F.from_csv(F.col("value"), _PARSE_DDL,
                        {"mode": "PERMISSIVE", "escape": '"', "columnNameOfCorruptRecord": _CORRUPT})
    return (lines.where((F.trim(F.col("value")) != "") & (F.col("value") != F.lit(header)))
            .select(parsed.alias("p"), "value", "_source_file")
            .select(*_fields_from(F.col("p")), F.col("value").alias("_raw"),
                    (F.col("p").isNull() | F.col("p").getField(_CORRUPT).isNotNull()).alias("_malformed"),
                    "_source_file"))


def parquet_to_bronze(rows: DataFrame) -> DataFrame:
    """Typed or string Parquet rows -> bronze fields.

    Args:
        rows: Parquet records (any subset of the raw fields, any types) and ``_source_file``.

    Returns:
        The raw contract fields cast to string (absent fields null; maps/structs as JSON),
        ``_raw`` = the record as JSON (``to_json`` of all its fields) and ``_malformed`` false.
    """
    require_columns(rows, ["_source_file"], "parquet_to_bronze")
    data_cols = [c for c in rows.columns if c != "_source_file"]
    types = dict(rows.dtypes)

    def as_string(c: str) -> Column:
        if c not in types:
            return F.lit(None).cast("string").alias(c)
        if types[c].startswith(("map", "struct", "array")):
            return F.to_json(F.col(c)).alias(c)
        return F.col(c).cast("string").alias(c)

    raw = F.to_json(F.struct(*[F.col(c) for c in data_cols])) if data_cols else F.lit("{}")
    return rows.select(*[as_string(c) for c in RAW_FIELDS], raw.alias("_raw"),
                       F.lit(False).alias("_malformed"), "_source_file")


def add_metadata(df: DataFrame, fmt: str, source: str, batch_id: str, ingested_at: Column) -> DataFrame:
    """Add ``_format``, ``_source``, ``_batch_id``, ``_ingested_at`` in bronze column order."""
    out = (df.withColumn("_format", F.lit(fmt)).withColumn("_source", F.lit(source))
           .withColumn("_batch_id", F.lit(batch_id)).withColumn("_ingested_at", ingested_at))
    return out.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in BRONZE_SCHEMA.fields])


def file_format(path: Column) -> Column:
    """json | csv | parquet from a path's extension (null for other files)."""
    low = F.lower(path)
    out = F.lit(None).cast("string")
    for ext, fmt in FORMAT_BY_EXTENSION.items():
        out = F.when(low.endswith(ext), F.lit(fmt)).otherwise(out)
    return out


# ------------------------------------------------------------------------------ I/O
def list_landing(spark: SparkSession, landing: str, formats: Iterable[str]) -> DataFrame:
    """path, size, modification_time, format of every landing file (recursively).

    Uses the ``binaryFile`` source without its ``content`` column, so only the listing is
    read; works the same on object stores.
    """
    listing = (spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(landing)
               .select(F.col("path"), F.col("length").alias("size"),
                       F.col("modificationTime").alias("modification_time")))
    base = F.element_at(F.split(F.col("path"), "/"), -1)
    return (listing.withColumn("format", file_format(F.col("path")))
            .where(F.col("format").isin(*formats) & ~base.startswith(".") & ~base.startswith("_")))


def _landing_exists(spark: SparkSession, landing: str) -> bool:
    if "://" not in landing or landing.startswith("file:"):
        from pathlib import Path
        return Path(landing.removeprefix("file://").removeprefix("file:")).exists()
    return True                                       # object stores: let the reader decide


def _read(spark: SparkSession, fmt: str, paths: list[str]) -> DataFrame:
    if fmt == "parquet":
        raw = spark.read.option("mergeSchema", "true").parquet(*paths)
        return parquet_to_bronze(raw.withColumn("_source_file", F.col("_metadata.file_path")))
    lines = spark.read.text(paths).select("value", F.col("_metadata.file_path").alias("_source_file"))
    return parse_json_lines(lines) if fmt == "json" else parse_csv_lines(lines)


def run(ctx: JobContext) -> dict:
    """Ingest the landing files not yet in ``ops.ingested_files`` into ``bronze.events_raw``."""
    spark, cfg = ctx.spark, ctx.cfg
    t0 = time.time()
    landing = cfg.path("landing")
    formats = list(cfg.get("ingest.formats") or ["json", "csv", "parquet"])
    source = cfg.get("ingest.source_name") or "landing"
    max_files = int(cfg.get("ingest.max_files_per_run") or 0)
    if not _landing_exists(spark, landing):
        raise ValueError(f"landing folder {landing} does not exist: generate data or set paths.landing")

    listing = list_landing(spark, landing, formats)
    if tables.exists(spark, cfg, LEDGER):
        done = tables.read(spark, cfg, LEDGER).select("path")
        listing = listing.join(done, "path", "left_anti")
    # one row per file (not per event): small enough to bring to the driver
    new_files = listing.orderBy("modification_time", "path").collect()
    if max_files > 0:
        new_files = new_files[:max_files]
    log.info("ingest: %d new file(s) under %s", len(new_files), landing)
    summary: dict = {"batch_id": ctx.run_id, "landing": landing, "files": len(new_files),
                     "records": 0, "malformed": 0}
    if not new_files:
        summary["seconds"] = round(time.time() - t0, 1)
        return summary

    ingested_at = F.current_timestamp()               # one value for the whole write
    parts = []
    for fmt in formats:
        paths = [r["path"] for r in new_files if r["format"] == fmt]
        if paths:
            log.info("ingest: reading %d %s file(s)", len(paths), fmt)
            parts.append(add_metadata(_read(spark, fmt, paths), fmt, source, ctx.run_id, ingested_at))
    batch = parts[0]
    for part in parts[1:]:
        batch = batch.unionByName(part)
    tables.append(batch, cfg, BRONZE)
    log.info("ingest: appended batch %s to %s (%.1fs)", ctx.run_id, BRONZE, time.time() - t0)

    # per-file counts from the batch just written (a pruned scan of three columns; one row
    # per file comes back to the driver)
    per_file = {r["_source_file"]: r for r in (
        tables.read(spark, cfg, BRONZE).where(F.col("_batch_id") == ctx.run_id)
        .groupBy("_source_file").agg(F.count(F.lit(1)).alias("records"),
                                     F.sum(F.col("_malformed").cast("long")).alias("malformed"),
                                     F.max("_ingested_at").alias("at"))
        .collect())}
    ledger_rows = []
    by_format: dict[str, int] = {}
    at = max((r["at"] for r in per_file.values()), default=None)
    for f in new_files:
        counts = per_file.get(f["path"])
        records = int(counts["records"]) if counts else 0
        malformed = int(counts["malformed"] or 0) if counts else 0
        ledger_rows.append((f["path"], int(f["size"]), f["modification_time"], f["format"], records,
                            malformed, ctx.run_id, at))
        summary["records"] += records
        summary["malformed"] += malformed
        by_format[f["format"]] = by_format.get(f["format"], 0) + records
    unmatched = set(per_file) - {f["path"] for f in new_files}
    if unmatched:                                       # a path spelled differently by the reader
        raise RuntimeError(f"ingest: bronze rows name files not in the listing: {sorted(unmatched)[:3]}")
    tables.append(spark.createDataFrame(ledger_rows, LEDGER_DDL), cfg, LEDGER)
    seconds = time.time() - t0
    for fmt in formats:
        summary[f"{fmt} records"] = by_format.get(fmt, 0)
    summary["seconds"] = round(seconds, 1)
    summary["records/s"] = int(summary["records"] / seconds) if seconds > 0 else 0
    log.info("ingest: %d file(s), %d record(s), %d malformed in %.1fs", summary["files"],
             summary["records"], summary["malformed"], seconds)
    return summary
