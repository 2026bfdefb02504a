"""Erase's VACUUM: only the tables that keep a file no current version references.

A VACUUM costs about twenty small Spark jobs and, with Delta's VACUUM logging, two commits,
even when it removes nothing: most tables of a lakehouse hold no old file after a day's jobs,
and erase searched every one. So a table is VACUUMed when its storage holds a data file the
current version does not reference (an old version's file, a killed writer's orphan, a change
data file, a deletion vector): the check errs on the side of VACUUMing. Erase's VACUUMs are not
logged as VACUUM START / END commits: the erasure ledger (``ops.erasure_requests``) records
which tables were VACUUMed, with which retention, and when the request completed.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote

from pyspark.sql import SparkSession

from seglake.core import tables
from seglake.core.config import Config

#: a hidden folder that holds data (change data feed files): VACUUM removes its unreferenced files
_CHANGE_DATA = "_change_data"


def _norm(uri: str) -> str:
    """A file URI or path as a plain local path (``file:/x``, ``file:///x`` and ``/x`` alike)."""
    text = unquote(uri)
    if text.startswith("file:"):
        text = "/" + text.removeprefix("file:").lstrip("/")
    return os.path.normpath(text)


def _hidden(name: str) -> bool:
    """Delta's own folders and files, which VACUUM never touches (``_delta_log`` ...): names starting
    with ``_`` or ``.`` that are not partition folders (``name=value``)."""
    return (name.startswith("_") or name.startswith(".")) and "=" not in name


def has_unreferenced_files(spark: SparkSession, cfg: Config, table: str) -> bool:
    """Whether ``table``'s folder holds a data file its current version does not reference
    (True for a remote table or anything this check does not understand: VACUUM then decides)."""
    path = cfg.table_path(table)
    if "://" in path and not path.startswith("file:"):
        return True
    root = Path(_norm(path))
    referenced = {_norm(u) for u in spark.read.format("delta").load(path).inputFiles()}
    for folder, dirs, files in os.walk(root):
        at_root = Path(folder) == root
        if at_root and _CHANGE_DATA in dirs:
            return True
        dirs[:] = [d for d in dirs if not _hidden(d)]
        for name in files:
            # the local file system's checksums (.crc); Delta's own files at the table's root
            if name.startswith(".") or (at_root and _hidden(name)):
                continue
            if os.path.normpath(os.path.join(folder, name)) not in referenced:
                return True
    return False


def vacuum_if_needed(spark: SparkSession, cfg: Config, table: str, retention_hours: float) -> bool:
    """VACUUM ``table`` (not logged as commits) when it holds unreferenced files; whether it did."""
    if not has_unreferenced_files(spark, cfg, table):
        return False
    tables.vacuum(spark, cfg, table, retention_hours, logged=False)
    return True
