"""Bronze ingestion (``seglake run ingest``): new landing files -> ``bronze.events_raw``.

Every record is kept: all raw contract fields as strings, the original text in ``_raw``
and ``_malformed = true`` when the record could not be parsed at all (a broken JSON line,
a CSV line with the wrong number of fields). Files are tracked in ``ops.ingested_files``
(path, size, modification time, batch id), so a file is ingested exactly once and a rerun
with no new files appends nothing — also when a run is killed between its bronze commit and
its ledger commit, or two ingests run at once (see :func:`run`).

The pure transforms (``parse_json_lines``, ``parse_csv_lines``, ``parquet_to_bronze``,
``add_metadata``) take and return DataFrames; ``run`` does the listing, reading and writing.
"""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from typing import Iterable, Iterator

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from seglake.core import faults, leases, tables
from seglake.core.contracts import BRONZE_EVENTS, INGESTED_FILES, RAW_FIELDS, UNREADABLE_FILES, require_columns
from seglake.core.context import JobContext

log = logging.getLogger(__name__)

BRONZE = BRONZE_EVENTS
LEDGER = INGESTED_FILES
#: Delta idempotent-write id of bronze appends (``txnAppId``); see :func:`run`
TXN_APP_ID = "seglake-ingest"
_META_TAG = "ingest"
#: listings (or ledger writes) tried when concurrent ingests keep committing first
ATTEMPTS = 3

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
UNREADABLE = UNREADABLE_FILES
UNREADABLE_DDL = "path STRING, size LONG, modification_time TIMESTAMP, format STRING, reason STRING, batch_id STRING"
LEDGER_DDL = ("path STRING, size LONG, modification_time TIMESTAMP, format STRING, records LONG, "
              "malformed LONG, batch_id STRING, ingested_at TIMESTAMP")
_PARSE_DDL = ", ".join(f"`{c}` STRING" for c in (*RAW_FIELDS, _CORRUPT))
_PARSE_SCHEMA = T.StructType([T.StructField(c, T.StringType()) for c in RAW_FIELDS]
                             + [T.StructField(_CORRUPT, T.StringType())])


# ------------------------------------------------------------------------------ transforms
def _fields_from(parsed: Column) -> list[Column]:
    return [parsed.getField(c).alias(c) for c in RAW_FIELDS]


def _strip_bom(value: Column) -> Column:
    """The line without a leading byte-order mark (U+FEFF: the first line of a file saved "with
    BOM" by some editors and exports), which would otherwise break its JSON or CSV parse."""
    return F.regexp_replace(value, "^\uFEFF", "")


def parse_json_lines(lines: DataFrame, keep_blank: bool = False) -> DataFrame:
    """Parse JSON-lines text into bronze fields.

    Args:
        lines: ``value`` (one line of a .jsonl file) and ``_source_file``.
        keep_blank: keep blank (or null) values as malformed records instead of dropping them
            (a Kafka message is a record even when it is empty; a blank line in a file is not).

    Returns:
        The raw contract fields as strings (numbers, booleans and nested objects such as
        ``properties`` keep their JSON text), ``_raw`` (the line) and ``_malformed`` (the
        line is not a JSON object). Blank lines are not records and are dropped, unless
        ``keep_blank``.
    """
    require_columns(lines, ["value", "_source_file"], "parse_json_lines")
    lines = lines.withColumn("value", _strip_bom(F.coalesce(F.col("value"), F.lit(""))))
    parsed = F.from_json(F.col("value"), _PARSE_SCHEMA, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT})
    return (lines.where(F.lit(keep_blank) | (F.trim(F.col("value")) != ""))
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
    lines = lines.withColumn("value", _strip_bom(F.col("value")))
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
        if types[c].startswith("timestamp"):   # with its offset: the text means one instant in any session zone
            return F.date_format(F.col(c), "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX").alias(c)
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


#: a day in a landing path: a folder named ``2026-09-01`` (or ``dt=``/``date=2026-09-01``)
_PATH_DAY = r"/(?:dt=|date=)?(\d{4}-\d{2}-\d{2})/"


def file_day(path: Column, modification_time: Column) -> Column:
    """The day a landing file belongs to: the last ``YYYY-MM-DD`` folder of its path (also
    ``dt=``/``date=YYYY-MM-DD``), else the day of its modification time (in the session time
    zone, which jobs set to ``time.zone``)."""
    day_text = F.regexp_extract(path, r".*" + _PATH_DAY, 1)
    from_path = F.try_to_timestamp(day_text, F.lit("yyyy-MM-dd")).cast("date")   # "" or 2026-13-45: null
    return F.coalesce(from_path, F.to_date(modification_time))


def _landing_exists(spark: SparkSession, landing: str) -> bool:
    if "://" not in landing or landing.startswith("file:"):
        from pathlib import Path
        return Path(landing.removeprefix("file://").removeprefix("file:")).exists()
    return True                                       # object stores: let the reader decide


def parquet_defect(spark: SparkSession, path: str) -> str | None:
    """Why a Parquet file cannot be read (None: it looks whole): empty, too short, or without the
    ``PAR1`` magic at both ends (a truncated or partly uploaded file). Eight bytes read per file
    on the driver (local files directly, others through Hadoop's file system)."""
    if path.startswith("file:") or "://" not in path:
        from pathlib import Path
        local = Path(path.removeprefix("file://").removeprefix("file:"))
        size = local.stat().st_size
        with local.open("rb") as fh:
            head = fh.read(4)
            fh.seek(max(0, size - 4))
            tail = fh.read(4)
    else:
        jvm = spark._jvm
        file = jvm.org.apache.hadoop.fs.Path(path)
        fs = file.getFileSystem(spark._jsc.hadoopConfiguration())
        size = int(fs.getFileStatus(file).getLen())
        stream = fs.open(file)
        try:   # byte by byte: py4j copies arrays, so readFully into a Python buffer cannot work
            head = bytes(stream.read() & 0xFF for _ in range(min(4, size)))
            stream.seek(max(0, size - 4))
            tail = bytes(stream.read() & 0xFF for _ in range(min(4, size)))
        finally:
            stream.close()
    if size == 0:
        return "empty file (0 bytes)"
    if size < 12:
        return f"too short for Parquet ({size} bytes)"
    if head != b"PAR1" or tail != b"PAR1":
        return "not a whole Parquet file (no PAR1 magic at start and end: truncated or not Parquet)"
    return None


def _read_parquet(spark: SparkSession, paths: list[str]) -> DataFrame:
    """Parquet files as bronze rows. Files whose schemas merge are read together; when two files
    type one column differently (a timestamp here, a string there: Spark cannot merge them), the
    files are read in groups of one schema each (one footer read per file) and the groups, all
    cast to bronze's strings, are unioned."""
    def bronze(df: DataFrame) -> DataFrame:
        return parquet_to_bronze(df.withColumn("_source_file", F.col("_metadata.file_path")))

    try:
        return bronze(spark.read.option("mergeSchema", "true").parquet(*paths))
    except Exception as exc:  # noqa: BLE001 - only a schema merge failure is handled here
        if "CANNOT_MERGE" not in str(exc) and "Failed to merge" not in str(exc):
            raise
    groups: dict[str, list[str]] = {}
    for path in paths:
        groups.setdefault(spark.read.parquet(path).schema.json(), []).append(path)
    log.info("ingest: %d Parquet files in %d incompatible schemas; reading each schema apart",
             len(paths), len(groups))
    parts = [bronze(spark.read.option("mergeSchema", "true").parquet(*group)) for group in groups.values()]
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part)
    return out


def read_files(spark: SparkSession, fmt: str, paths: list[str]) -> DataFrame:
    """Raw files of one format (json | csv | parquet) as bronze fields: the raw contract fields as
    strings, ``_raw`` and ``_malformed`` (see the parse functions above), and ``_source_file``."""
    if fmt == "parquet":
        return _read_parquet(spark, paths)
    lines = spark.read.text(paths).select("value", F.col("_metadata.file_path").alias("_source_file"))
    return parse_json_lines(lines) if fmt == "json" else parse_csv_lines(lines)


def _ingest_meta(commit: dict) -> dict | None:
    """The ``ingest`` entry of a bronze commit's userMetadata (batch id, txn version, files), or None."""
    meta = commit.get("userMetadata")
    if not meta or not meta.startswith("{"):
        return None
    return json.loads(meta).get(_META_TAG)


def _ingest_commits(spark: SparkSession, cfg, since: int = -1,
                    until: int | None = None) -> Iterator[tuple[dict, dict | None]]:
    """The bronze commits in ``(since, until]`` that appended data (operation WRITE), newest
    first, with their ingest metadata (None for appends made before ingest recorded it)."""
    for c in tables.commits(spark, cfg, BRONZE, since=since, until=until):
        if c["operation"] == "WRITE":
            yield c, _ingest_meta(c)


def _ledgered(spark: SparkSession, cfg, batch_id: str) -> bool:
    if not tables.exists(spark, cfg, LEDGER):
        return False
    # data skipping on batch_id's file statistics: a few ledger files are read at most
    return bool(tables.read(spark, cfg, LEDGER).where(F.col("batch_id") == batch_id).limit(1).count())


def last_txn(spark: SparkSession, cfg, bronze_version: int | None) -> int:
    """The txnVersion of the newest ingest commit in bronze up to ``bronze_version`` (-1: none)."""
    if bronze_version is None:
        return -1
    for _, meta in _ingest_commits(spark, cfg, until=bronze_version):
        return int(meta["txn"]) if meta else -1
    return -1


def repair_ledger(spark: SparkSession, cfg) -> list[str]:
    """Write the ledger rows of every bronze batch that has none, oldest first; returns their ids.

    Bronze and the ledger are two tables, so they cannot change in one commit. The bronze
    commit carries the batch's file list in its userMetadata (atomically with the data); the
    ledger rows follow. A run killed between the two leaves a batch without ledger rows: this
    finds it (walking bronze's appends back to the newest one that is ledgered — normally one
    commit) and writes them, before anything is listed, so its files are never read twice.
    """
    if not tables.exists(spark, cfg, BRONZE):
        return []
    missing = []
    for _, meta in _ingest_commits(spark, cfg):
        if meta is None or _ledgered(spark, cfg, meta["batch_id"]):
            break
        missing.append(meta)
    for meta in reversed(missing):
        _write_ledger(spark, cfg, meta)
    return [m["batch_id"] for m in reversed(missing)]


def _write_ledger(spark: SparkSession, cfg, meta: dict) -> None:
    """Ledger rows (MERGE on path: a file is never listed twice) of one bronze batch, with its
    per-file counts read back from bronze (a pruned scan of three columns, one row per file)."""
    batch_id = meta["batch_id"]
    per_file = {r["_source_file"]: r for r in (
        tables.read(spark, cfg, BRONZE).where(F.col("_batch_id") == batch_id)
        .groupBy("_source_file").agg(F.count(F.lit(1)).alias("records"),
                                     F.sum(F.col("_malformed").cast("long")).alias("malformed"),
                                     F.max("_ingested_at").alias("at"))
        .collect())}
    files = [dict(zip(("path", "size", "modification_time", "format"), f)) for f in meta["files"]]
    unmatched = set(per_file) - {f["path"] for f in files}
    if unmatched:                                       # a path spelled differently by the reader
        raise RuntimeError(f"ingest: bronze rows name files not in the listing: {sorted(unmatched)[:3]}")
    at = max((r["at"] for r in per_file.values()), default=None)
    rows = []
    for f in files:
        counts = per_file.get(f["path"])
        rows.append((f["path"], int(f["size"]), datetime.fromisoformat(f["modification_time"]), f["format"],
                     int(counts["records"]) if counts else 0, int(counts["malformed"] or 0) if counts else 0,
                     batch_id, at))
    tables.merge(spark, spark.createDataFrame(rows, LEDGER_DDL), cfg, LEDGER, keys=["path"])


def _ledger_totals(spark: SparkSession, cfg, batch_id: str) -> dict:
    """records, malformed and records per format of one batch, from its ledger rows (one per file)."""
    out: dict = {"records": 0, "malformed": 0}
    # one row per format (<= 3)
    for r in (tables.read(spark, cfg, LEDGER).where(F.col("batch_id") == batch_id).groupBy("format")
              .agg(F.sum("records").alias("records"), F.sum("malformed").alias("malformed")).collect()):
        out["records"] += int(r["records"])
        out["malformed"] += int(r["malformed"])
        out[f"{r['format']} records"] = int(r["records"])
    return out


def _attempt(ctx: JobContext, landing: str, formats: list[str], source: str, max_files: int) -> dict:
    """One listing + bronze append + ledger write; ``{"skipped": True}`` when another ingest
    committed first (Delta's idempotent write skipped ours)."""
    spark, cfg = ctx.spark, ctx.cfg
    # the order matters: bronze's version first, then the repair and the listing, so that any
    # ingest commit the listing cannot know of has a txnVersion >= ours (see ``run``)
    bronze_version = tables.version(spark, cfg, BRONZE)
    txn = last_txn(spark, cfg, bronze_version) + 1
    recovered = repair_ledger(spark, cfg)
    if recovered:
        log.warning("ingest: %d earlier batch(es) were in bronze without their ledger rows (a run "
                    "stopped between its two commits); ledger repaired: %s", len(recovered), ", ".join(recovered))
    faults.point("ingest.after_repair")
    listing = list_landing(spark, landing, formats)
    if tables.exists(spark, cfg, LEDGER):
        listing = listing.join(tables.read(spark, cfg, LEDGER).select("path"), "path", "left_anti")
    # one row per file (not per event): small enough to bring to the driver
    new_files = (listing.withColumn("day", file_day(F.col("path"), F.col("modification_time")))
                 .orderBy("modification_time", "path").collect())
    later = []
    if ctx.as_of_given:   # --as-of D: the files of days before D; later days wait for their run
        later = [r for r in new_files if r["day"] >= ctx.as_of]
        new_files = [r for r in new_files if r["day"] < ctx.as_of]
        if later:
            log.info("ingest: --as-of %s: %d file(s) of later days left for later runs", ctx.as_of, len(later))
    if max_files > 0:
        new_files = new_files[:max_files]
    unreadable = {r["path"]: why for r in new_files if r["format"] == "parquet"
                  and (why := parquet_defect(spark, r["path"])) is not None}
    if unreadable:
        _record_unreadable(spark, cfg, [r for r in new_files if r["path"] in unreadable], unreadable, ctx.run_id)
        new_files = [r for r in new_files if r["path"] not in unreadable]
    log.info("ingest: %d new file(s) under %s", len(new_files), landing)
    summary: dict = {"batch_id": ctx.run_id, "landing": landing, "files": len(new_files),
                     "records": 0, "malformed": 0, "ledger_repaired": len(recovered),
                     "unreadable_files": len(unreadable)}
    if ctx.as_of_given:
        summary["later_files"] = len(later)
    if not new_files:
        return summary

    ingested_at = F.current_timestamp()               # one value for the whole write
    parts = []
    for fmt in formats:
        paths = [r["path"] for r in new_files if r["format"] == fmt]
        if paths:
            log.info("ingest: reading %d %s file(s)", len(paths), fmt)
            parts.append(add_metadata(read_files(spark, fmt, paths), fmt, source, ctx.run_id, ingested_at))
    batch = parts[0]
    for part in parts[1:]:
        batch = batch.unionByName(part)
    meta = {"batch_id": ctx.run_id, "txn": txn,
            "files": [[r["path"], int(r["size"]), r["modification_time"].isoformat(), r["format"]] for r in new_files]}
    tables.append(batch, cfg, BRONZE, user_metadata=json.dumps({_META_TAG: meta}), txn=(TXN_APP_ID, txn))
    since = -1 if bronze_version is None else bronze_version
    if not any(m and m["batch_id"] == ctx.run_id for _, m in _ingest_commits(spark, cfg, since=since)):
        return {**summary, "skipped": True}           # Delta skipped the write: txn already used
    log.info("ingest: appended batch %s to %s", ctx.run_id, BRONZE)
    faults.point("ingest.after_bronze")
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _write_ledger(spark, cfg, meta)
            break
        except Exception as exc:  # noqa: BLE001 - only Delta's concurrency conflicts are retried
            if not leases.is_conflict(exc) or attempt == ATTEMPTS:
                raise
            if _ledgered(spark, cfg, ctx.run_id):     # a concurrent ingest's repair wrote them
                break
    faults.point("ingest.after_ledger")
    summary.update(_ledger_totals(spark, cfg, ctx.run_id))
    return summary


def _record_unreadable(spark: SparkSession, cfg, files: list, reasons: dict[str, str], run_id: str) -> None:
    """List files that cannot be read in ``ops.unreadable_files`` (one row per path, size and
    modification time: an unchanged file is not listed again) and say so in the log. They are
    not in the ledger: the next run checks them again (a file still being uploaded is read once
    it is whole)."""
    for r in files:
        log.warning("ingest: skipping unreadable file %s: %s", r["path"], reasons[r["path"]])
    rows = [(r["path"], int(r["size"]), r["modification_time"], r["format"], reasons[r["path"]], run_id)
            for r in files]
    df = spark.createDataFrame(rows, UNREADABLE_DDL).withColumn("found_at", F.current_timestamp())
    tables.merge(spark, df, cfg, UNREADABLE, keys=["path", "size", "modification_time"])


class ConcurrentIngest(RuntimeError):
    """Other ingest runs kept committing first: this one gave up without appending anything."""


def run(ctx: JobContext) -> dict:
    """Ingest the landing files not yet in ``ops.ingested_files`` into ``bronze.events_raw``.

    Exactly once, even when killed or run twice at once: the bronze append carries its file
    list (userMetadata) and a Delta transaction id (``txnAppId`` seglake-ingest, ``txnVersion``
    = the newest ingest commit's + 1, read *before* the listing). A run that listed files
    another ingest committed in the meantime has a txnVersion that ingest already used: Delta
    skips its write (or fails it with a concurrency conflict), and the run lists again. The
    ledger rows follow the bronze commit and are repaired from it by the next run if the job
    stops in between (:func:`repair_ledger`).

    With ``--as-of D`` (a scheduler's run for the interval ending at D) only files of days before
    D are ingested (:func:`file_day`); files of later days are left for their own runs, so a
    rerun or a backfill of day D ingests what belongs to it and no more.
    """
    spark, cfg = ctx.spark, ctx.cfg
    t0 = time.time()
    landing = cfg.path("landing")
    formats = list(cfg.get("ingest.formats") or ["json", "csv", "parquet"])
    source = cfg.get("ingest.source_name") or "landing"
    max_files = int(cfg.get("ingest.max_files_per_run") or 0)
    if not _landing_exists(spark, landing):
        raise ValueError(f"landing folder {landing} does not exist: generate data or set paths.landing")

    for attempt in range(1, ATTEMPTS + 1):
        try:
            summary = _attempt(ctx, landing, formats, source, max_files)
        except Exception as exc:  # noqa: BLE001 - only Delta's concurrency conflicts are retried
            if not leases.is_conflict(exc):
                raise
            why = f"{type(exc).__name__}"
        else:
            if not summary.pop("skipped", False):
                break
            why = "its transaction id was used by a concurrent ingest"
        log.warning("ingest: another ingest run committed first (%s); nothing of this attempt was kept; "
                    "listing again (attempt %d of %d)", why, attempt, ATTEMPTS)
    else:
        raise ConcurrentIngest(f"ingest: other ingest runs committed first {ATTEMPTS} times in a row; this run "
                               f"appended nothing. Run one ingest at a time (rerun `seglake run ingest`).")
    seconds = time.time() - t0
    if not (summary["files"] or summary["ledger_repaired"] or summary["unreadable_files"]):
        ctx.status = "noop"                           # ops.run_log: nothing was written
        summary["note"] = "no new landing files: nothing to ingest"
    if summary["files"]:
        for fmt in formats:
            summary.setdefault(f"{fmt} records", 0)
        summary["records/s"] = int(summary["records"] / seconds) if seconds > 0 else 0
    summary["seconds"] = round(seconds, 1)
    log.info("ingest: %d file(s), %d record(s), %d malformed in %.1fs", summary["files"],
             summary["records"], summary["malformed"], seconds)
    return summary
