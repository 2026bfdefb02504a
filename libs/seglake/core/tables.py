"""The thin I/O layer: every Delta read and write of the pipeline goes through here.

Tables are addressed by contract name (``silver.events``) and live at
``<lakehouse>/<layer>/<name>/``. Writes are idempotent by construction: MERGE on keys,
``replaceWhere`` on the slice being rebuilt, or a full overwrite of a derived table.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

from pyspark.sql import DataFrame, SparkSession

from seglake.core import faults
from seglake.core.filestats import (  # noqa: F401 - part of tables' API
    IDENTIFYING_COLUMNS, STATS_COLUMNS_OF, kept_stats_columns, stats_columns)
from seglake.core.config import Config
from seglake.core.spark import session_settings

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- run journal

@dataclass
class Journal:
    """What one job run read and wrote, filled in by :func:`read` and the writers while
    :func:`recording` is active (the stage runner turns it into the ``ops.run_log`` counts).

    Attributes:
        reads: table -> the Delta version first read in the run.
        commits: table -> the operation metrics of each commit the run made, in order.
    """

    reads: dict[str, int] = field(default_factory=dict)
    commits: dict[str, list[dict]] = field(default_factory=dict)


_journal: contextvars.ContextVar[Journal | None] = contextvars.ContextVar("seglake_tables_journal", default=None)


@contextlib.contextmanager
def recording() -> Iterator[Journal]:
    """Record the reads and commits of the code run inside the block into a :class:`Journal`."""
    journal = Journal()
    token = _journal.set(journal)
    try:
        yield journal
    finally:
        _journal.reset(token)


def last_commit(spark: SparkSession, cfg: Config, table: str) -> dict:
    """The table's latest commit: version, operation and Delta operation metrics."""
    c = commit_info(spark, cfg, table)
    return {"version": c["version"], "operation": c["operation"], "metrics": c["operationMetrics"]}


def _jvm_delta_log(spark: SparkSession, path: str):
    """Delta's own (cached) log object of the table at ``path``."""
    return spark._jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, path)


#: what a JVM call raises where the driver has no py4j gateway to Delta's internals (Spark
#: Connect: AttributeError on ``spark._jvm``) or a locked-down one refuses the class (Py4JError)
def _jvm_errors() -> tuple[type[BaseException], ...]:
    from py4j.protocol import Py4JError
    return (Py4JError, AttributeError)


def _latest_version(spark: SparkSession, path: str) -> int:
    """The table's newest version from its Delta log (the snapshot Delta itself would read:
    one log listing on the driver, no Spark job)."""
    try:
        jvm = spark._jvm
        none = getattr(getattr(jvm.scala, "None$"), "MODULE$")
        return int(_jvm_delta_log(spark, path).update(False, none, none).version())
    except _jvm_errors():  # Spark Connect, another Delta release: the public (slower) way
        from delta.tables import DeltaTable
        return int(DeltaTable.forPath(spark, path).history(1).select("version").first()[0])


def commit_file(spark: SparkSession, path: str, version: int):
    """(Hadoop path, its file system) of ``_delta_log/<version>.json``, the Delta protocol's commit file."""
    file = spark._jvm.org.apache.hadoop.fs.Path(f"{path}/_delta_log/{int(version):020d}.json")
    return file, file.getFileSystem(spark._jsc.hadoopConfiguration())


def _read_commit_file(spark: SparkSession, path: str, version: int) -> dict | None:
    """The ``commitInfo`` action of ``_delta_log/<version>.json`` (the Delta protocol's commit
    file; a few KB read on the driver), or None when the file is not there."""
    import json

    jvm = spark._jvm
    file, fs = commit_file(spark, path, version)
    if not fs.exists(file):
        return None
    reader = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(fs.open(file), "UTF-8"))
    try:
        while (line := reader.readLine()) is not None:
            if line.startswith('{"commitInfo"'):
                return json.loads(line)["commitInfo"]
    finally:
        reader.close()
    return {}


def commits(spark: SparkSession, cfg: Config, table: str, since: int = -1, until: int | None = None,
            newest_first: bool = True) -> Iterator[dict]:
    """The commits of ``table`` with version in ``(since, until]`` (``until`` None = the latest),
    newest first unless ``newest_first`` is False: dicts with ``version``, ``operation``,
    ``operationParameters``, ``operationMetrics`` and ``userMetadata`` (as ``DESCRIBE HISTORY``
    shows them: values are strings), and ``timestamp`` (epoch milliseconds, or None).

    Read from the commit files of the Delta log on the driver, one small file per commit and
    lazily, without the Spark job (and snapshot) a ``DeltaTable.history()`` call costs. Where
    that is not possible (Spark Connect, a commit file not there: not yet backfilled, or removed
    by log retention) the rest comes from ``history()``; a commit that neither has (log
    retention) is simply absent — callers that need every version check the versions they got.
    """
    path = cfg.table_path(table)
    top = _latest_version(spark, path) if until is None else int(until)
    versions = range(top, since, -1) if newest_first else range(since + 1, top + 1)
    last = None
    for v in versions:
        try:
            info = _read_commit_file(spark, path, v)
        except _jvm_errors():
            info = None
        if info is None:
            rest = _history_commits(spark, path, since, top, newest_first)
            if last is not None:   # the versions not yielded yet, by version (not by position)
                rest = [c for c in rest if (c["version"] < last if newest_first else c["version"] > last)]
            yield from rest
            return
        last = v
        yield {"version": v, "operation": info.get("operation"),
               "operationParameters": {k: _as_text(x) for k, x in (info.get("operationParameters") or {}).items()},
               "operationMetrics": dict(info.get("operationMetrics") or {}),
               "userMetadata": info.get("userMetadata"), "timestamp": info.get("timestamp")}


def _as_text(value) -> str | None:
    """A commitInfo operation parameter as DESCRIBE HISTORY shows it (JSON text; null stays null)."""
    import json
    return value if value is None or isinstance(value, str) else json.dumps(value)


def _history_commits(spark: SparkSession, path: str, since: int, until: int, newest_first: bool) -> list[dict]:
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F
    rows = (DeltaTable.forPath(spark, path).history()
            .where((F.col("version") > since) & (F.col("version") <= until))
            .select("version", "operation", "operationParameters", "operationMetrics", "userMetadata",
                    (F.unix_millis("timestamp")).alias("ts"))
            .collect())  # one small row per commit of the table (grows with runs, not with events)
    out = [{"version": int(r["version"]), "operation": r["operation"],
            "operationParameters": dict(r["operationParameters"] or {}),
            "operationMetrics": dict(r["operationMetrics"] or {}), "userMetadata": r["userMetadata"],
            "timestamp": r["ts"]}
           for r in rows]
    return sorted(out, key=lambda c: c["version"], reverse=newest_first)


def commit_info(spark: SparkSession, cfg: Config, table: str, version: int | None = None) -> dict:
    """One commit of ``table`` (default: the latest) as :func:`commits` describes it."""
    v = _latest_version(spark, cfg.table_path(table)) if version is None else int(version)
    return next(commits(spark, cfg, table, since=v - 1, until=v))


def _journal_commit(spark: SparkSession, cfg: Config, table: str, before: int | None) -> None:
    """Record the table's latest commit in the run journal, if the write made one (Delta skips
    the commit of a write that changes nothing, e.g. an empty append or a MERGE matching nothing:
    then the latest commit is an older one and must not be counted again)."""
    journal = _journal.get()
    if journal is not None:
        commit = last_commit(spark, cfg, table)
        if before is None or commit["version"] > before:
            journal.commits.setdefault(table, []).append(commit)


def _version_before(spark: SparkSession, cfg: Config, table: str) -> int | None:
    """The version before a write, when a run journal will need it (else no log read)."""
    return version(spark, cfg, table) if _journal.get() is not None else None


def rows_written(commit: dict) -> int:
    """Rows a commit added or rewrote, from its Delta operation metrics (no data is read):
    inserted + updated for MERGE, output rows for a write."""
    m = commit.get("metrics") or {}
    if "numTargetRowsInserted" in m:
        return int(m.get("numTargetRowsInserted") or 0) + int(m.get("numTargetRowsUpdated") or 0)
    return int(m.get("numOutputRows") or 0)


def exists(spark: SparkSession, cfg: Config, table: str) -> bool:
    from delta.tables import DeltaTable
    return DeltaTable.isDeltaTable(spark, cfg.table_path(table))


def read(spark: SparkSession, cfg: Config, table: str, version: int | None = None) -> DataFrame:
    """Read a table (optionally an older version). A missing table is a clear error."""
    if not exists(spark, cfg, table):
        raise FileNotFoundError(
            f"table {table} does not exist yet at {cfg.table_path(table)}: run the job that builds it first"
        )
    reader = spark.read.format("delta")
    journal = _journal.get()
    if journal is not None and table not in journal.reads and table not in journal.commits:
        if version is None:  # pin the version, so the recorded input is exactly what the job read
            version = _latest_version(spark, cfg.table_path(table))
        journal.reads[table] = version
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(cfg.table_path(table))


def version(spark: SparkSession, cfg: Config, table: str) -> int | None:
    """Current Delta version of a table, or None when it does not exist."""
    return _latest_version(spark, cfg.table_path(table)) if exists(spark, cfg, table) else None


def _creation_options(df: DataFrame, cfg: Config, table: str, partition_by: Sequence[str],
                      properties: dict | None = None) -> dict:
    """Writer options for a table's first write: statistics only for non-identifying columns
    (those of :data:`STATS_COLUMNS_OF` for the event-sized tables), plus ``properties``
    (``delta.*`` table properties)."""
    if exists(df.sparkSession, cfg, table):
        return {}
    cols = [c for c in stats_columns(df) if c not in partition_by]
    if table in STATS_COLUMNS_OF:
        cols = [c for c in cols if c in STATS_COLUMNS_OF[table]]
    out = dict(properties or {})
    if cols:
        out["delta.dataSkippingStatsColumns"] = ",".join(f"`{c}`" for c in cols)
    else:
        out["delta.dataSkippingNumIndexedCols"] = "0"
    return out


def _partitioned(writer, partition_by: Sequence[str]):
    """Partition the write and cluster rows by partition first (Delta's optimized write: one
    shuffle that bins each partition's rows into right-sized files), so that not every task
    writes a small file into every partition folder."""
    if not partition_by:
        return writer
    return writer.partitionBy(*partition_by).option("optimizeWrite", "true")


def append(df: DataFrame, cfg: Config, table: str, partition_by: Sequence[str] = (),
           user_metadata: str | None = None, properties: dict | None = None,
           txn: tuple[str, int] | None = None, merge_schema: bool = False, create_only: bool = False) -> None:
    """Append ``df`` (creating the table on the first write, with ``properties``; ``merge_schema``
    adds ``df``'s new columns to an existing table; ``create_only`` fails instead of appending
    when the table exists, or comes to exist before this commit: Delta's create conflicts);
    ``user_metadata`` goes into the commit's ``userMetadata`` (see :func:`recorded_metadata`);
    ``txn`` = (app id, version) makes it a Delta idempotent write (``txnAppId``/``txnVersion``):
    skipped when the table already holds a commit of that app id with that version or a newer one."""
    before = _version_before(df.sparkSession, cfg, table)
    writer = df.write.format("delta").mode("errorifexists" if create_only else "append").options(
        **_creation_options(df, cfg, table, partition_by, properties))
    if txn is not None:
        writer = writer.option("txnAppId", txn[0]).option("txnVersion", int(txn[1]))
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    faults.point(f"before_commit:{table}")
    if user_metadata is None:
        _partitioned(writer, partition_by).save(cfg.table_path(table))
    else:  # the metadata must be committed even when there are no rows to add
        with session_settings(df.sparkSession, {"spark.databricks.delta.skipRecordingEmptyCommits": "false"}):
            _partitioned(writer.option("userMetadata", user_metadata), partition_by).save(cfg.table_path(table))
    faults.point(f"after_commit:{table}")
    _journal_commit(df.sparkSession, cfg, table, before)


def overwrite(df: DataFrame, cfg: Config, table: str, partition_by: Sequence[str] = (),
              replace_where: str | None = None, user_metadata: str | None = None,
              properties: dict | None = None, merge_schema: bool = False) -> None:
    """Overwrite the table, or only the rows matching ``replace_where`` (``properties``: as append;
    ``merge_schema``: a ``replace_where`` overwrite may add ``df``'s new columns to the table)."""
    writer = df.write.format("delta").mode("overwrite").options(
        **_creation_options(df, cfg, table, partition_by, properties))
    if replace_where:
        writer = writer.option("replaceWhere", replace_where)
        if merge_schema:
            writer = writer.option("mergeSchema", "true")
    else:
        writer = writer.option("overwriteSchema", "true")
    before = _version_before(df.sparkSession, cfg, table)
    faults.point(f"before_commit:{table}")
    if user_metadata is None:
        _partitioned(writer, partition_by).save(cfg.table_path(table))
    else:
        with session_settings(df.sparkSession, {"spark.databricks.delta.skipRecordingEmptyCommits": "false"}):
            _partitioned(writer.option("userMetadata", user_metadata), partition_by).save(cfg.table_path(table))
    faults.point(f"after_commit:{table}")
    _journal_commit(df.sparkSession, cfg, table, before)


def commit_tag(commit: dict, tag: str):
    """``json[tag]`` of a commit (:func:`commits`) whose userMetadata is a JSON object holding
    ``tag`` (:func:`tagged_commits`), else None."""
    import json

    meta = commit["userMetadata"]
    return json.loads(meta).get(tag) if meta and meta.startswith("{") else None


def recorded_metadata(spark: SparkSession, cfg: Config, table: str, tag: str, depth: int = 50,
                      since: int = -1) -> dict | None:
    """``json[tag]`` of the newest of the table's last ``depth`` commits (and newer than version
    ``since``) whose userMetadata is a JSON object holding ``tag`` (plus ``_version``: that
    commit's version), or None."""
    if not exists(spark, cfg, table):
        return None
    top = _latest_version(spark, cfg.table_path(table))
    for c in commits(spark, cfg, table, since=max(-1, top - depth, since), until=top):
        value = commit_tag(c, tag)
        if value is not None:
            return {**value, "_version": c["version"]}
    return None


def delete_matching(spark: SparkSession, cfg: Config, table: str, keys: DataFrame, on: str,
                    user_metadata: str | None = None) -> None:
    """Delete every row whose ``on`` value is in ``keys`` (one MERGE ... WHEN MATCHED DELETE;
    with deletion vectors the data files are not rewritten); ``user_metadata`` goes into the
    commit (which is then made even when no row matches)."""
    from delta.tables import DeltaTable
    before = _version_before(spark, cfg, table)
    settings = {} if user_metadata is None else {"spark.databricks.delta.commitInfo.userMetadata": user_metadata,
                                                  "spark.databricks.delta.skipRecordingEmptyCommits": "false"}
    faults.point(f"before_commit:{table}")
    with session_settings(spark, settings):
        (DeltaTable.forPath(spark, cfg.table_path(table)).alias("t")
         .merge(keys.select(on).alias("s"), f"t.`{on}` = s.`{on}`").whenMatchedDelete().execute())
    faults.point(f"after_commit:{table}")
    _journal_commit(spark, cfg, table, before)


def merge(spark: SparkSession, df: DataFrame, cfg: Config, table: str, keys: Iterable[str],
          partition_by: Sequence[str] = (), update: bool = False, extra_condition: str | None = None,
          schema_evolution: bool = False, properties: dict | None = None, update_condition: str | None = None,
          delete_unmatched: str | None = None) -> None:
    """Insert rows whose ``keys`` are new (and update matches when ``update``).

    ``update_condition`` (on ``t.``/``s.``): update only the matches where it holds (implies
    ``update``). ``delete_unmatched`` (on ``t.``): delete the target rows where it holds that no
    source row matches, in the same commit (a slice of the table replaced by the source).

    The first write creates the table, atomically: when two writers find it missing at once,
    one creates it and the other's create fails (a Delta conflict, or "path exists") and it
    merges instead, so a row is never inserted twice. ``extra_condition`` (on ``t.``/``s.``) can prune
    the target, e.g. to the partitions the batch touches. ``schema_evolution`` adds the
    source's new columns to the target (for tables that gain columns between versions).
    ``properties``: table properties of the table's creation (as :func:`append`).
    """
    keys = list(keys)
    if not keys:
        raise ValueError("merge needs at least one key column")
    if not exists(spark, cfg, table):
        try:
            append(df, cfg, table, partition_by, properties=properties, create_only=True)
            return
        except Exception as exc:  # noqa: BLE001 - only "someone else created it first" falls through
            if not _created_concurrently(exc):
                raise
            log.info("%s was created by a concurrent writer; merging into it", table)
    before = _version_before(spark, cfg, table)
    from delta.tables import DeltaTable
    cond = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
    if extra_condition:
        cond = f"({extra_condition}) AND {cond}"
    builder = DeltaTable.forPath(spark, cfg.table_path(table)).alias("t").merge(df.alias("s"), cond)
    if schema_evolution:
        builder = builder.withSchemaEvolution()
    if update_condition:
        builder = builder.whenMatchedUpdateAll(condition=update_condition)
    elif update:
        builder = builder.whenMatchedUpdateAll()
    builder = builder.whenNotMatchedInsertAll()
    if delete_unmatched:
        builder = builder.whenNotMatchedBySourceDelete(condition=delete_unmatched)
    faults.point(f"before_commit:{table}")
    builder.execute()
    faults.point(f"after_commit:{table}")
    _journal_commit(spark, cfg, table, before)


#: Delta's concurrent-commit conflicts (delta.exceptions)
_CONFLICT_NAMES = ("ProtocolChangedException", "MetadataChangedException", "ConcurrentAppendException",
                   "ConcurrentWriteException", "ConcurrentTransactionException",
                   "ConcurrentDeleteReadException", "ConcurrentDeleteDeleteException",
                   "DeltaConcurrentModificationException")
#: their error classes, as the message of an unconverted JVM error shows them
_CONFLICT_CLASSES = ("DELTA_PROTOCOL_CHANGED", "DELTA_METADATA_CHANGED", "DELTA_CONCURRENT_APPEND",
                     "DELTA_CONCURRENT_WRITE", "DELTA_CONCURRENT_TRANSACTION", "DELTA_CONCURRENT_DELETE_READ",
                     "DELTA_CONCURRENT_DELETE_DELETE")


def conflict_types() -> tuple[type, ...]:
    """delta.exceptions' conflict classes; importing the module also makes PySpark convert
    Delta's JVM conflicts into them (so it runs before every lease write)."""
    import delta.exceptions as dx
    return tuple(getattr(dx, n) for n in _CONFLICT_NAMES if hasattr(dx, n))


def is_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is one of Delta's concurrent-commit conflicts (by class, or by the JVM class
    or error class named in the message when the error reached Python unconverted)."""
    if isinstance(exc, conflict_types()):
        return True
    text = f"{type(exc).__name__}: {exc}"[:4000]
    return any(name in text for name in _CONFLICT_NAMES + _CONFLICT_CLASSES)


def _created_concurrently(exc: BaseException) -> bool:
    """Whether a create-only write failed because another writer created the table first."""
    return is_conflict(exc) or "DELTA_PATH_EXISTS" in str(exc)[:2000]


#: table properties of the small bookkeeping tables (``ops.job_leases``, ``ops.run_log``) that get
#: a one-row commit or three per job run: a Delta checkpoint every 50 commits instead of every 10
#: (each checkpoint is several Spark jobs, ~2 s in local mode; replaying up to 50 one-row commit
#: files costs less than writing it that often)
BOOKKEEPING_PROPERTIES = {"delta.checkpointInterval": "50"}

#: Delta's default ``delta.deletedFileRetentionDuration`` (7 days): VACUUM keeps what older
#: versions need this long, and Delta refuses a shorter retention unless its check is off
DELTA_RETENTION_HOURS = 168


def vacuum(spark: SparkSession, cfg: Config, table: str, retention_hours: float, logged: bool = True) -> None:
    """VACUUM ``table``, keeping the files table versions of the last ``retention_hours`` need.

    The session keeps Delta's retention check on; only this call switches it off, when the
    caller chose a retention below :data:`DELTA_RETENTION_HOURS` (callers decide when that is
    safe: maintain's ``--allow-short-retention``, erase under an exclusive lease). VACUUM lists
    files with ``spark.sql.sources.parallelPartitionDiscovery.parallelism`` tasks (default 10000,
    far too many for our tables): bounded by the shuffle setting. ``logged=False``: no VACUUM
    START/END commits (erase records its VACUUMs in its ledger). Every setting is restored."""
    from delta.tables import DeltaTable

    hours = float(retention_hours)
    if hours < 0:
        raise ValueError(f"VACUUM retention must be >= 0 hours, got {retention_hours!r}")
    try:
        tasks = max(2, int(spark.conf.get("spark.sql.shuffle.partitions")))
    except (TypeError, ValueError):  # "auto" on Databricks
        tasks = 200
    settings = {"spark.sql.sources.parallelPartitionDiscovery.parallelism": str(tasks),
                **({"spark.databricks.delta.retentionDurationCheck.enabled": "false"} if hours < DELTA_RETENTION_HOURS else {}),
                **({} if logged else {"spark.databricks.delta.vacuum.logging.enabled": "false"})}
    with session_settings(spark, settings):
        DeltaTable.forPath(spark, cfg.table_path(table)).vacuum(hours)


@contextlib.contextmanager
def tagged_commits(spark: SparkSession, tags: dict) -> Iterator[None]:
    """Every Delta commit made inside the block carries ``tags`` (JSON) as its userMetadata, so a
    later run can tell which run made a table's latest write (:func:`recorded_metadata`). The
    commit of a write that changes nothing is still recorded, so the tag is always there."""
    import json
    with session_settings(spark, {"spark.databricks.delta.commitInfo.userMetadata": json.dumps(tags),
                               "spark.databricks.delta.skipRecordingEmptyCommits": "false"}):
        yield
