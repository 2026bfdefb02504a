"""Facts of one table version remembered per process: its rows (the stage runner's ``rows_in``,
Delta's metadata-only COUNT(*)) and the last event day of ``silver.events`` (the default as-of).
A Delta version never changes, so what was computed for it once holds for the process's life."""
from __future__ import annotations

from typing import Any, Callable

from pyspark.sql import SparkSession

from seglake.core import tables
from seglake.core.config import Config

#: (what, table path, version, the version's commit file's modification time) -> value: a table
#: version never changes, and a table deleted and made again at the same path has other commit files
_known: dict[tuple[str, str, int, int], Any] = {}
_KNOWN_MAX = 4096


def _commit_mtime(spark: SparkSession, path: str, version: int) -> int | None:
    """Modification time (ms) of ``_delta_log/<version>.json``: one metadata call, no read; None
    when it cannot be had (no py4j gateway, a file system without it, the file gone)."""
    try:
        file, fs = tables.commit_file(spark, path, version)
        return int(fs.getFileStatus(file).getModificationTime())
    except Exception:  # noqa: BLE001 - Spark Connect, a missing file: compute without the memo
        return None


def of_version(spark: SparkSession, path: str, version: int, what: str, compute: Callable[[], Any]) -> Any:
    """``compute()`` for (``what``, table version), or what it gave before in this process."""
    mtime = _commit_mtime(spark, path, version)
    key = (what, path, int(version), mtime) if mtime is not None else None
    if key is not None and key in _known:
        return _known[key]
    value = compute()
    if key is not None:
        if len(_known) >= _KNOWN_MAX:
            _known.clear()
        _known[key] = value
    return value


def row_count(spark: SparkSession, cfg: Config, table: str, at_version: int) -> int:
    """Rows of a table version, answered from the per-file statistics of the Delta log
    (Delta's metadata-only COUNT(*): the plan is a local scan of the log, no data file is read).
    Remembered per process: the jobs of a chain read the same versions (seven of them the
    enriched events), and a version's rows never change."""
    path = cfg.table_path(table)
    return of_version(spark, path, at_version, "rows", lambda: spark.read.format("delta")
                      .option("versionAsOf", at_version).load(path).count())
