"""Files outside the Delta tables that may hold the person: report, Data Docs, MLflow, the rest.

Only a local lakehouse (and a local MLflow store) can be walked; on object storage the
summary says what was not searched. Every file under the lakehouse is searched except the
Delta tables (erased by the job and VACUUMed) and the input folder ``_input/`` / the landing
path (outside erasure by design, see the README). A file matches when it contains one of the
person's values (raw identifiers, keyed hashes, customer ids) as a whole word,
case-insensitively; Parquet files are decoded first (compressed pages hide their values).

- ``report/`` (the HTML report) and ``_quality/`` (Great Expectations results and Data Docs):
  a matching file is deleted; both are regenerated (``seglake report``, the next clean).
- MLflow artifacts (``<lakehouse>/_mlflow/artifacts`` or ``mlflow.artifact_location`` when it
  is a local folder): a matching file is deleted and its run reported.
- MLflow's SQLite store(s) (``*.db`` under ``_mlflow/``, and the configured local one): params,
  tags and the other text columns are searched and the runs holding a value are *reported*;
  MLflow params cannot be edited, so erase does not rewrite MLflow's database.
- Anything else (``_checkpoints/``: Spark and streaming checkpoints, state stores): reported,
  never deleted (deleting a running stream's checkpoint breaks it). Compressed state files are
  not readable this way: the summary says so.
"""
from __future__ import annotations

import logging
import os
import re
import sqlite3
from pathlib import Path

from seglake.core.config import Config

log = logging.getLogger(__name__)

_CHUNK = 4 << 20
_REGENERATED = ("report", "_quality")
_NOT_SEARCHED = ("_input",)


def file_pattern(values: list[str]) -> re.Pattern[bytes] | None:
    """A bytes regex finding any of ``values`` as a whole word (case-insensitive), or None."""
    vals = sorted({v.lower().encode("utf-8") for v in values if v}, key=lambda b: (-len(b), b))
    if not vals:
        return None
    return re.compile(rb"(?<![A-Za-z0-9_.@+\-])(?:" + b"|".join(re.escape(v) for v in vals)
                      + rb")(?![A-Za-z0-9_@+\-])", re.IGNORECASE)


def _local(uri: str | None) -> Path | None:
    """A local filesystem path from a path or ``file:`` URI, else None (object storage, servers)."""
    if not uri:
        return None
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if uri.startswith("file:"):
        return Path(uri[len("file:"):])
    if "://" in uri or uri.startswith("dbfs:") or uri.startswith("databricks"):
        return None
    return Path(uri)


def _parquet_text(path: Path) -> bytes | None:
    try:
        import pyarrow.parquet as pq
        table = pq.read_table(path)
    except Exception:  # noqa: BLE001 - no pyarrow or not readable as Parquet: searched as bytes
        return None
    return "\n".join(str(v) for col in table.columns for v in col.to_pylist()).encode("utf-8", "replace")


def file_matches(path: Path, pattern: re.Pattern[bytes], longest: int) -> bool:
    """Whether ``path`` holds a match of ``pattern`` (read in chunks that overlap by ``longest``)."""
    if path.suffix == ".parquet":
        text = _parquet_text(path)
        if text is not None:
            return pattern.search(text) is not None
    with open(path, "rb") as fh:
        tail = b""
        while chunk := fh.read(_CHUNK):
            buf = tail + chunk
            if pattern.search(buf):
                return True
            tail = buf[-(longest + 2):]
    return False


def _sqlite_runs(path: Path, pattern: re.Pattern[bytes]) -> list[str] | None:
    """Run ids (or ``<table>`` names without one) of the SQLite store rows holding a match;
    None when the file is not a readable SQLite database."""
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    hits: set[str] = set()
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for name in names:
            if "metric" in name:  # numbers only (and the biggest tables)
                continue
            cur = con.execute(f'SELECT * FROM "{name}"')  # a table name read from sqlite_master
            cols = [d[0] for d in cur.description]
            for row in cur:
                text = "\x1f".join(v if isinstance(v, str) else v.decode("utf-8", "replace")
                                   for v in row if isinstance(v, (str, bytes)))
                if pattern.search(text.encode("utf-8", "replace")):
                    run = row[cols.index("run_uuid")] if "run_uuid" in cols else None
                    hits.add(str(run) if run else f"<{name}>")
    except sqlite3.Error:
        return None
    finally:
        con.close()
    return sorted(hits)


def _mlflow_stores(cfg: Config, lake: Path) -> tuple[list[Path], list[Path], list[str]]:
    """(local artifact roots, local SQLite stores, notes on what cannot be searched)."""
    roots, dbs, notes = [], [], []
    artifacts = cfg.get("mlflow.artifact_location")
    root = _local(str(artifacts)) if artifacts else lake / "_mlflow" / "artifacts"
    if root is None:
        notes.append(f"MLflow artifacts at {artifacts} (not a local folder): not searched")
    else:
        roots.append(root)
    for uri in {os.environ.get("MLFLOW_TRACKING_URI"), cfg.get("mlflow.tracking_uri")} - {None, ""}:
        if uri.startswith("sqlite:///"):
            dbs.append(Path(uri[len("sqlite:///"):]))
        elif _local(uri) is not None:
            roots.append(_local(uri))  # a file store: its run folders hold params and artifacts
        else:
            notes.append(f"MLflow tracking store {uri.split('@')[-1]}: not searched (a server)")
    return roots, dbs, notes


def _walk(root: Path, skip: set[Path]):
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if (here / n).resolve() not in skip
                             and not (here / n / "_delta_log").is_dir())
        for name in sorted(filenames):
            yield here / name


def clean_files(cfg: Config, values: list[str], remove: bool = True) -> dict:
    """Search (and clean) the files outside the Delta tables; a summary without any value.

    Returns:
        ``removed`` (paths relative to the lakehouse or absolute outside it), ``flagged``
        (found, not removed), ``mlflow_runs`` (runs whose artifacts were removed or whose
        params/tags hold a value), ``not_searched`` (notes) and ``note`` (what to regenerate).
    """
    out: dict = {"removed": [], "flagged": [], "mlflow_runs": [], "not_searched": []}
    pattern = file_pattern(values)
    lake = _local(cfg.lakehouse)
    if pattern is None:
        return out
    if lake is None:
        out["not_searched"].append(f"files under {cfg.lakehouse}: the lakehouse is not a local folder")
        return out
    longest = max(len(v.encode("utf-8")) for v in values if v)
    roots, dbs, notes = _mlflow_stores(cfg, lake)
    out["not_searched"] += notes
    landing = _local(cfg.path("landing"))
    skip = {(lake / n).resolve() for n in _NOT_SEARCHED} | ({landing.resolve()} if landing else set())
    artifact_roots = [r.resolve() for r in roots]
    db_paths = {d.resolve() for d in dbs}
    runs: set[str] = set()

    def shown(path: Path) -> str:
        try:
            return str(path.resolve().relative_to(lake.resolve()))
        except ValueError:
            return str(path)

    files = list(_walk(lake, skip)) if lake.is_dir() else []
    inside = {f.resolve() for f in files}
    lake_real = lake.resolve()
    for root in artifact_roots:  # a local store outside the lakehouse
        if root.is_dir() and root != lake_real and lake_real not in root.parents:
            files += [f for f in _walk(root, skip) if f.resolve() not in inside]
    for db in db_paths:
        if db.is_file() and db not in inside:
            files.append(db)
    for f in files:
        real = f.resolve()
        if f.suffix in (".db", ".sqlite") or real in db_paths:
            found = _sqlite_runs(f, pattern)
            if found is None:
                found = ["<file>"] if file_matches(f, pattern, longest) else []
            if found:
                out["flagged"].append(shown(f))
                runs.update(r for r in found if not r.startswith("<"))
            continue
        try:
            if not file_matches(f, pattern, longest):
                continue
        except OSError as exc:
            out["not_searched"].append(f"{shown(f)}: {type(exc).__name__}")
            continue
        top = Path(shown(f)).parts[0] if not Path(shown(f)).is_absolute() else ""
        under = next((r for r in artifact_roots if r in real.parents), None)
        if under is not None:
            parts = real.relative_to(under).parts  # <experiment>/<run or models/id>/...
            runs.add("/".join(parts[:2]) if parts[1:2] != ("models",) else "/".join(parts[:3]))
        if remove and (top in _REGENERATED or (under is not None and "artifacts" in real.relative_to(under).parts)):
            f.unlink()
            out["removed"].append(shown(f))
        else:
            out["flagged"].append(shown(f))
    out["mlflow_runs"] = sorted(runs)
    if any(Path(p).parts[:1] and Path(p).parts[0] in _REGENERATED for p in out["removed"]):
        out["note"] = "report/Data Docs removed, regenerate with `seglake report` / next clean"
    for p in out["removed"]:
        log.warning("erase: removed %s (it held the person)", p)
    for p in out["flagged"]:
        log.warning("erase: %s holds the person and was not removed (see the erase summary)", p)
    return out
