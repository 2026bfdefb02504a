"""Table maintenance: compact, checkpoint and VACUUM every Delta table of the lakehouse.

``seglake run maintain [--table T [--table U ...]] [--allow-short-retention]``

For each table of the contract (:data:`~seglake.core.contracts.KNOWN_TABLES`) that exists, or
only the ones named by ``--table``:

1. reads its file count and size (``DESCRIBE DETAIL``: numFiles, sizeInBytes);
2. OPTIMIZE: bin-packs small files into large ones, or Z-orders by the columns configured in
   ``maintain.zorder`` for that table. One new commit that removes the small files and adds
   the compacted ones: the rows are the same, only their files change;
3. writes a Delta checkpoint of the latest version (``_delta_log/<version>.checkpoint.parquet``),
   so readers rebuild the table state from one Parquet file instead of replaying every JSON
   commit since the last one. It goes through the JVM (``DeltaLog``); where there is none
   (Spark Connect) it logs a warning and goes on: Delta still checkpoints every 10 commits;
4. VACUUM with ``maintain.vacuum_retention_hours``: deletes the files no table version of the
   last N hours references (e.g. the small files OPTIMIZE replaced, once they are old enough).

**The retention rule.** A retention below :data:`SAFE_RETENTION_HOURS` (Delta's default 7 days)
is refused unless ``--allow-short-retention`` is given: VACUUM would delete files that a
reader or writer still working on an older table version needs (it fails, or a writer commits
on top of data that is gone) and time travel within that window stops working. The check is
done here; Delta's own (``spark.databricks.delta.retentionDurationCheck.enabled``) stays on in
the session and :func:`seglake.core.tables.vacuum` switches it off for the one allowed call.

**Leases.** ``ops.job_leases`` is not compacted like the other tables: :func:`seglake.core.leases.compact`
removes the rows of leases that expired a day ago, compacts it and VACUUMs it with Delta's default
retention whatever ``maintain.vacuum_retention_hours`` says (a shorter one could delete a row file
a starting job is about to commit); its result is the summary's ``job_leases``. With a retention
below 168 h the tables are maintained under an exclusive lease (:func:`seglake.core.leases.exclusive`):
maintain waits for running jobs, and jobs started meanwhile wait for it.

**ops.run_log.** OPTIMIZE and VACUUM are run through ``DeltaTable`` here, not through the writers
of :mod:`seglake.core.tables`, so the run journal records neither a read nor a commit: the job's
row has empty ``rows_in`` and ``rows_out`` — maintenance neither reads rows as an input nor
writes rows (an OPTIMIZE commit's metrics count files and bytes, not output rows, and counting
its rewritten rows as written would double-count every table daily). What it did is in the
summary: files and bytes before and after, per table and in total.

Run it from a scheduler (e.g. daily) when no job writes: OPTIMIZE is safe with concurrent
readers, and concurrent appends do not conflict with it, but an overwrite or MERGE of the same
partitions makes one of the two fail.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterable

from pyspark.sql import SparkSession

from seglake.core import leases, tables
from seglake.core.config import Config
from seglake.core.context import JobContext
from seglake.core.contracts import JOB_LEASES, KNOWN_TABLES

log = logging.getLogger(__name__)

#: Delta's default ``delta.deletedFileRetentionDuration`` (7 days): VACUUM with a shorter
#: retention needs ``--allow-short-retention``.
SAFE_RETENTION_HOURS = tables.DELTA_RETENTION_HOURS
#: Delta's own retention check: on in every session, off only inside tables.vacuum's short-retention call
_RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"


def add_arguments(parser) -> None:
    """``--table`` (repeatable) and ``--allow-short-retention``."""
    parser.add_argument("--table", action="append", default=[], metavar="T",
                        help="maintain only this table, e.g. silver.events; repeatable (default: every existing table)")
    parser.add_argument("--allow-short-retention", action="store_true", dest="allow_short_retention",
                        help=f"allow maintain.vacuum_retention_hours below {SAFE_RETENTION_HOURS} h: only when "
                             "no other job reads or writes the lakehouse (they could lose files)")


# --------------------------------------------------------------------------- settings

def selected_tables(names: Iterable[str] | None) -> list[str]:
    """The tables named by ``--table`` in the contract's order (every known table when none
    is named); an unknown name is a ValueError listing the known ones."""
    wanted = [n.strip() for n in (names or []) if n and n.strip()]
    if not wanted:
        return list(KNOWN_TABLES)
    unknown = sorted(set(wanted) - set(KNOWN_TABLES))
    if unknown:
        raise ValueError(f"unknown table(s) for --table: {', '.join(unknown)}; "
                         f"choose from {', '.join(KNOWN_TABLES)}")
    return [t for t in KNOWN_TABLES if t in set(wanted)]


def vacuum_retention(cfg: Config, allow_short: bool = False) -> float:
    """``maintain.vacuum_retention_hours``, checked against the safety rule (module doc)."""
    hours = cfg.get("maintain.vacuum_retention_hours", SAFE_RETENTION_HOURS)
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or hours < 0:
        raise ValueError(f"maintain.vacuum_retention_hours must be a number of hours >= 0, got {hours!r}")
    if hours < SAFE_RETENTION_HOURS and not allow_short:
        raise ValueError(
            f"maintain.vacuum_retention_hours is {hours:g} h, below Delta's safety retention of "
            f"{SAFE_RETENTION_HOURS} h: VACUUM would delete files that readers or writers still working "
            "on an older table version need (they fail or lose data) and time travel within that window "
            "stops working. Pass --allow-short-retention to run it anyway, only when no other job reads "
            "or writes the lakehouse.")
    return float(hours)


def zorder_columns(cfg: Config) -> dict[str, list[str]]:
    """``maintain.zorder`` (table -> Z-order columns), validated: known tables, non-empty lists of
    column names, no identifying column (see :data:`seglake.core.filestats.IDENTIFYING_COLUMNS`:
    seglake keeps no statistics for them, so Delta refuses to Z-order by them)."""
    raw = cfg.get("maintain.zorder") or {}
    if not isinstance(raw, dict):
        raise ValueError(f"maintain.zorder must be a mapping of table -> columns, got {raw!r}")
    out: dict[str, list[str]] = {}
    for table, cols in raw.items():
        if table not in KNOWN_TABLES:
            raise ValueError(f"maintain.zorder: unknown table {table!r}; choose from {', '.join(KNOWN_TABLES)}")
        if not isinstance(cols, list) or not cols or not all(isinstance(c, str) and c for c in cols):
            raise ValueError(f"maintain.zorder.{table} must be a non-empty list of column names, got {cols!r}")
        identifying = [c for c in cols if c in tables.IDENTIFYING_COLUMNS or c.endswith("_hash")]
        if identifying:
            raise ValueError(
                f"maintain.zorder.{table}: {', '.join(identifying)} identif{'ies' if len(identifying) == 1 else 'y'} "
                "a person; seglake keeps no Delta statistics for such columns (erasure leaves no trace in "
                "_delta_log), so Z-ordering by them is impossible; choose non-identifying columns")
        out[table] = list(cols)
    return out


def check_zorder(table: str, cols: list[str], columns: list[str], partition_columns: list[str]) -> None:
    """The Z-order columns of ``table`` exist and are not partition columns (Delta refuses those)."""
    missing = [c for c in cols if c not in columns]
    if missing:
        raise ValueError(f"maintain.zorder.{table}: no column {', '.join(missing)} in {table} "
                         f"(it has {', '.join(columns)})")
    partitioned = [c for c in cols if c in partition_columns]
    if partitioned:
        raise ValueError(f"maintain.zorder.{table}: {', '.join(partitioned)} partition(s) the table; "
                         "Z-order only by columns inside the partitions")


# --------------------------------------------------------------------------- Delta operations

def _quoted(path: str) -> str:
    return "delta.`" + path.replace("`", "``") + "`"


def detail(spark: SparkSession, path: str) -> dict:
    """numFiles, sizeInBytes and partitionColumns of the table's current version (from its log)."""
    row = spark.sql(f"DESCRIBE DETAIL {_quoted(path)}").select(
        "numFiles", "sizeInBytes", "partitionColumns").first()
    return {"files": int(row["numFiles"] or 0), "bytes": int(row["sizeInBytes"] or 0),
            "partition_columns": list(row["partitionColumns"] or [])}


def ensure_stats(spark: SparkSession, path: str, cols: list[str]) -> list[str]:
    """Z-ordering needs min/max statistics of its columns (Delta refuses it otherwise), and the
    event tables keep them only of the columns their readers filter on
    (:data:`seglake.core.filestats.STATS_COLUMNS_OF`): the Z-order columns the table keeps no
    statistics of are added to its ``delta.dataSkippingStatsColumns`` (one commit; the OPTIMIZE
    that follows rewrites the files, with them). The columns added (none: no commit)."""
    from delta.tables import DeltaTable

    dt = DeltaTable.forPath(spark, path)
    props = dict(dt.detail().first()["properties"] or {})
    fields = dt.toDF().schema.fields
    have = tables.kept_stats_columns(props, fields)
    missing = [c for c in cols if c not in have]
    if missing:
        listed = props.get("delta.dataSkippingStatsColumns")
        kept = ([c.strip() for c in listed.split(",") if c.strip()] if listed
                else [f"`{f.name}`" for f in fields if f.name in have])
        value = ",".join(kept + [f"`{c}`" for c in missing]).replace("'", "\\'")
        spark.sql(f"ALTER TABLE {_quoted(path)} SET TBLPROPERTIES ('delta.dataSkippingStatsColumns' = '{value}')")
        log.info("maintain: %s now keeps file statistics of %s too (Z-order needs them)", path, ", ".join(missing))
    return missing


def optimize(spark: SparkSession, path: str, zorder: list[str] | None = None) -> None:
    """OPTIMIZE: compaction, or Z-order by ``zorder`` (after :func:`ensure_stats`). Runs eagerly;
    one commit when files change."""
    from delta.tables import DeltaTable

    if zorder:
        ensure_stats(spark, path, list(zorder))
    builder = DeltaTable.forPath(spark, path).optimize()
    if zorder:
        builder.executeZOrderBy(list(zorder))
    else:
        builder.executeCompaction()


def checkpoint(spark: SparkSession, path: str) -> int | None:
    """Write a Delta checkpoint of the table's latest version; that version, or None (with a
    warning) when it could not be written, e.g. without a JVM gateway (Spark Connect).

    Delta 4.x API (``org.apache.spark.sql.delta``): ``DeltaLog.forTableWithSnapshot(spark, path)``
    gives the log and its freshly updated snapshot, ``DeltaLog.checkpoint(snapshot,
    catalogTableOpt)`` writes it (``None``: a path-based table); ``DeltaLog.forTable(spark, path)``
    and the deprecated no-argument ``checkpoint()`` (the log's current snapshot) are the
    fallback. Delta swallows checkpoint errors (it logs them), so success is confirmed by
    finding the checkpoint file of that version.
    """
    try:
        jvm, jspark = spark._jvm, spark._jsparkSession
        if jvm is None or jspark is None:
            raise AttributeError("no JVM gateway")
    except Exception as exc:  # noqa: BLE001 - Spark Connect raises its own attribute error
        log.warning("maintain: no checkpoint written for %s: the session has no JVM gateway (Spark Connect?): %s",
                    path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None
    try:
        delta_log_class = jvm.org.apache.spark.sql.delta.DeltaLog
        try:
            pair = delta_log_class.forTableWithSnapshot(jspark, path)
            delta_log, snapshot = pair._1(), pair._2()
            delta_log.checkpoint(snapshot, jvm.scala.Option.apply(None))
            version = int(snapshot.version())
        except Exception:  # noqa: BLE001 - a Delta build without these overloads: the deprecated one
            delta_log = delta_log_class.forTable(jspark, path)
            delta_log.checkpoint()
            version = int(delta_log.unsafeVolatileSnapshot().version())
        hadoop_path = jvm.org.apache.hadoop.fs.Path
        pattern = hadoop_path(f"{path.rstrip('/')}/_delta_log/{version:020d}.checkpoint*")
        found = pattern.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).globStatus(pattern)
        if not found:
            raise RuntimeError(f"no checkpoint file of version {version} after the call (see the Spark log)")
        return version
    except Exception as exc:  # noqa: BLE001 - a missing checkpoint slows readers, it loses nothing
        log.warning("maintain: no checkpoint written for %s: %s: %s", path, type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "")
        return None


# --------------------------------------------------------------------------- the job

def human_bytes(n: int) -> str:
    """``38_200_000`` -> ``"38.2 MB"`` (decimal units)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover - the loop always returns


def maintain_table(spark: SparkSession, cfg: Config, table: str, retention_hours: float,
                   zorder: list[str] | None = None, before: dict | None = None) -> dict:
    """OPTIMIZE, checkpoint and VACUUM one table; files/bytes before and after, checkpoint version."""
    path = cfg.table_path(table)
    before = before or detail(spark, path)
    optimize(spark, path, zorder)
    checkpoint_version = checkpoint(spark, path)
    # retention already checked by vacuum_retention; Delta's own check is off for this call only
    tables.vacuum(spark, cfg, table, retention_hours)
    after = detail(spark, path)
    return {"files_before": before["files"], "files_after": after["files"],
            "bytes_before": before["bytes"], "bytes_after": after["bytes"],
            "checkpoint_version": checkpoint_version}


def run(ctx: JobContext) -> dict:
    """Compact, checkpoint and VACUUM every existing Delta table (or those named by ``--table``)."""
    spark, cfg = ctx.spark, ctx.cfg
    # every check before the first table is touched
    wanted = selected_tables(ctx.args.get("table"))
    retention = vacuum_retention(cfg, bool(ctx.args.get("allow_short_retention")))
    zorder = zorder_columns(cfg)
    present = [t for t in wanted if t != JOB_LEASES and tables.exists(spark, cfg, t)]
    missing = [t for t in wanted if t not in present and t != JOB_LEASES]
    if ctx.args.get("table"):
        for table in missing:
            log.warning("maintain: %s does not exist yet at %s - skipped", table, cfg.table_path(table))
    details: dict[str, dict] = {}
    for table in present:
        details[table] = detail(spark, cfg.table_path(table))
        if table in zorder:
            columns = spark.read.format("delta").load(cfg.table_path(table)).columns  # schema only
            check_zorder(table, zorder[table], columns, details[table]["partition_columns"])
    if retention < SAFE_RETENTION_HOURS:
        log.warning("maintain: VACUUM retention %g h is below %d h (--allow-short-retention): files of "
                    "older versions are deleted; no other job may read or write the lakehouse now",
                    retention, SAFE_RETENTION_HOURS)

    by_table: dict[str, str] = {}
    checkpoints: dict[str, int | None] = {}
    totals = {"files_before": 0, "files_after": 0, "bytes_before": 0, "bytes_after": 0}
    # a short retention deletes files a running writer may still commit: be alone in the lakehouse
    alone = leases.exclusive(spark, cfg, ctx.run_id) if present and retention < SAFE_RETENTION_HOURS \
        else contextlib.nullcontext()
    with alone:
        for index, table in enumerate(present, start=1):
            result = maintain_table(spark, cfg, table, retention, zorder.get(table), details[table])
            for key in totals:
                totals[key] += result[key]
            checkpoints[table] = result["checkpoint_version"]
            by_table[table] = (f"{result['files_before']} -> {result['files_after']} files, "
                               f"{human_bytes(result['bytes_before'])} -> {human_bytes(result['bytes_after'])}")
            log.info("maintain: [%d/%d] %s: %d files (%s) -> %d files (%s)%s", index, len(present), table,
                     result["files_before"], human_bytes(result["bytes_before"]), result["files_after"],
                     human_bytes(result["bytes_after"]),
                     f", z-ordered by {', '.join(zorder[table])}" if table in zorder else "")
    pruned = leases.compact(spark, cfg) if JOB_LEASES in wanted and tables.exists(spark, cfg, JOB_LEASES) else None

    if not present and pruned is None:
        ctx.status = "noop"
    summary: dict = {"tables": len(present), **totals, "vacuum_retention_hours": retention,
                     "by_table": by_table, "checkpoints": checkpoints}
    used = {t: ", ".join(c) for t, c in zorder.items() if t in present}
    if used:
        summary["zorder"] = used
    if pruned is not None:
        summary["job_leases"] = pruned
    if missing and ctx.args.get("table"):
        summary["missing"] = missing
    return summary
