"""Rows of a table version, from the Delta log (the stage runner's ``rows_in``): Delta's
metadata-only COUNT(*), remembered per process for each version (a version's rows never change)."""
from __future__ import annotations

from pyspark.sql import SparkSession

from seglake.core import tables
from seglake.core.config import Config

#: (table path, version, the version's commit file's modification time) -> rows: a table version
#: never changes, and a table deleted and made again at the same path has other commit files
_counted: dict[tuple[str, int, int], int] = {}
_COUNTED_MAX = 4096


def _commit_mtime(spark: SparkSession, path: str, version: int) -> int | None:
    """Modification time (ms) of ``_delta_log/<version>.json``: one metadata call, no read; None
    when it cannot be had (no py4j gateway, a file system without it, the file gone)."""
    try:
        file, fs = tables.commit_file(spark, path, version)
        return int(fs.getFileStatus(file).getModificationTime())
    except Exception:  # noqa: BLE001 - Spark Connect, a missing file: count without the memo
        return None


def row_count(spark: SparkSession, cfg: Config, table: str, at_version: int) -> int:
    """Rows of a table version, answered from the per-file statistics of the Delta log
    (Delta's metadata-only COUNT(*): the plan is a local scan of the log, no data file is read).
    Remembered per process for (path, version, commit file's time): the jobs of a chain read the
    same versions (seven of them the enriched events), and a version's rows never change."""
    path = cfg.table_path(table)
    mtime = _commit_mtime(spark, path, at_version)
    key = (path, int(at_version), mtime) if mtime is not None else None
    if key is not None and key in _counted:
        return _counted[key]
    n = spark.read.format("delta").option("versionAsOf", at_version).load(path).count()
    if key is not None:
        if len(_counted) >= _COUNTED_MAX:
            _counted.clear()
        _counted[key] = n
    return n
