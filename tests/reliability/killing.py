"""Shared by the kill tests: run a seglake verb in a process of its own that kills itself at a
named fault point (SIGKILL, :mod:`seglake.core.faults`), and compare lakehouses table by table.

The killed run is a real ``seglake run <verb>`` process (its own JVM, its own lease, killed with
no cleanup). The rerun after it runs in the test's own SparkSession: it is an ordinary run of the
job, and a second JVM start per case would double the suite's time for nothing it checks.
A crash can also be simulated in the test's own process (:func:`abort_in_process`): the point
raises :class:`seglake.core.faults.Aborted`, which no seglake code catches, so the lakehouse is
left as a kill there leaves it (points sit between commits); only the job lease is released on
the way out (a killed run's lease is left for the dead-process rule). It costs no JVM start:
CI crashes every commit boundary that way and kills real processes at a few of them; ``make
soak`` (``SEGLAKE_KILL_PROCESSES=1``) kills a real process at every one.
The killed process's JVM runs with ``-XX:TieredStopAtLevel=1`` (the C1 compiler only): a
short-lived JVM starts about a quarter faster that way and its results are the same.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

import pytest

from conftest import REPO, c1_only, make_cfg
from seglake.core import faults, parallel, tables
from seglake.core.context import JobContext
from seglake.core.runner import run_job

#: columns that name the run or its clock: left out of every comparison
RUN_COLUMNS = ("_run_id", "run_id")
#: columns that name an ingest batch: two lakehouses that ingest the same files in runs of their
#: own differ there by construction (left out when comparing such lakehouses)
BATCH_COLUMNS = ("_batch_id", "batch_id", "_ingested_at", "ingested_at")


def conf_dir(root: Path, **overrides: dict) -> Path:
    """A copy of the repository's ``conf/`` whose ``local.yaml`` carries the tests' settings
    (``local[2]``, 2 shuffle partitions, plus ``overrides`` by section), so the killed process
    runs with the configuration of the in-process runs it is compared with."""
    out = root / "conf"
    if not out.exists():
        shutil.copytree(REPO / "conf", out)
        local = yaml.safe_load((out / "local.yaml").read_text())
        local["spark"].update({"master": "local[2]", "shuffle_partitions": 2, "driver_memory": "3g",
                               "codegen": False})
        # the suites live next to the repository's conf/, not next to this copy
        local.setdefault("clean", {})["expectations_dir"] = str(REPO / "expectations")
        for section, values in overrides.items():
            local.setdefault(section, {}).update(values)
        (out / "local.yaml").write_text(yaml.safe_dump(local, sort_keys=False))
    return out


def run_killed(lake: Path, verb: str, point: str, conf: Path, *extra: str,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """``seglake run <verb>`` with ``SEGLAKE_FAULT=<point>``; asserts it was killed there."""
    full = {k: v for k, v in os.environ.items() if k != "SEGLAKE_FAULT"}
    full.update(env or {})
    full["SEGLAKE_FAULT"] = point
    c1_only(full)
    exe = Path(sys.executable).with_name("seglake")
    args = [str(exe), "run", verb, "--lakehouse", str(lake), "--conf-dir", str(conf), *extra]
    done = subprocess.run(args, capture_output=True, text=True, env=full, timeout=900)
    assert done.returncode == -9, (f"{verb} was not killed at {point}", done.returncode, done.stderr[-3000:])
    return done


def abort_in_process(spark, lake: Path, verb: str, point: str, args: dict | None = None,
                     overrides: dict | None = None, as_of=None) -> None:
    """Run ``verb`` in the test session with ``point`` armed; asserts the run stopped there.
    ``overrides``: config sections for :func:`conftest.make_cfg`; ``as_of``: its ``--as-of``."""
    with faults.abort_at(point), pytest.raises(faults.Aborted):
        run_job(JobContext(spark, make_cfg(lake, **(overrides or {})), as_of=as_of, args=args or {}), verb)


def copy_lake(src: Path, dst: Path) -> Path:
    """Copy a lakehouse folder; its own MLflow store (``_mlflow/*.db``) is rewritten to name the
    copy, not ``src``, as the artifact location of its experiments, runs and model versions (a
    copy whose runs wrote into the original's artifacts would change what the original holds)."""
    import sqlite3

    shutil.copytree(src, dst)
    old, new = str(Path(src).resolve()), str(Path(dst).resolve())
    for db in sorted((dst / "_mlflow").glob("*.db")) if (dst / "_mlflow").is_dir() else []:
        con = sqlite3.connect(db)
        try:
            for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                for col in con.execute(f'PRAGMA table_info("{table}")').fetchall():
                    if "CHAR" in col[2].upper() or "TEXT" in col[2].upper():
                        con.execute(f'UPDATE "{table}" SET "{col[1]}" = replace("{col[1]}", ?, ?) '
                                    f'WHERE instr("{col[1]}", ?) > 0', (old, new, old))
            con.commit()
        finally:
            con.close()
    return dst


def kill_processes_everywhere() -> bool:
    """``make soak`` sets ``SEGLAKE_KILL_PROCESSES=1``: every crash case kills a real process."""
    return os.environ.get("SEGLAKE_KILL_PROCESSES") == "1"


def delta_tables(lake: Path) -> list[str]:
    return sorted(f"{layer.name}.{t.name}" for layer in lake.iterdir() if layer.is_dir()
                  for t in layer.iterdir() if (t / "_delta_log").is_dir())


def _log_files(lake: Path, table: str) -> set[str]:
    layer, name = table.split(".", 1)
    log = lake / layer / name / "_delta_log"
    return {p.name for p in log.iterdir()} if log.is_dir() else set()


def changed_tables(before: Path, *lakes: Path) -> list[str]:
    """Tables of any of ``lakes`` whose Delta log differs from ``before``'s (a table no run
    touched is byte for byte the copy of ``before``: comparing it proves nothing)."""
    names = sorted(set().union(*(delta_tables(lake) for lake in lakes)))
    return [t for t in names if any(_log_files(lake, t) != _log_files(before, t) for lake in lakes)]


def rows(spark, lake: Path, table: str, ignore: tuple[str, ...] = (), root_as_text: bool | Path = False) -> list[tuple]:
    """Every row of ``table`` as sorted text tuples, without run ids and clocks (``*_at`` but
    ``_ingested_at``, which bronze keeps from its one commit) and the columns in ``ignore``;
    with ``root_as_text``, the lakehouse's root folder (or the folder given: the lakehouse this
    one was copied from) written ``<lake>`` in the values."""
    df = tables.read(spark, make_cfg(lake), table)
    keep = sorted(c for c in df.columns
                  if c not in RUN_COLUMNS and c not in ignore and (not c.endswith("_at") or c == "_ingested_at"))
    root = root_as_text if isinstance(root_as_text, Path) else lake
    roots = sorted({str(root), str(root.resolve())}, key=len, reverse=True) if root_as_text else []

    def text(v) -> str:
        out = str(v)
        for root in roots:
            out = out.replace(root, "<lake>")
        return out
    return sorted(tuple(text(v) for v in r) for r in df.select(*keep).collect())


def rows_side_by_side(spark, names: list[str], *lakes: Path, ignore: tuple[str, ...] = ()) -> list[tuple[list, ...]]:
    """``[(rows(lake, table, ignore) for lake in lakes) for table in names]``, read up to 4 at a
    time in threads of the test's driver: a read is a few small Spark jobs, mostly waits (Delta
    log, scheduling) that overlap (:mod:`seglake.core.parallel`); results in the order given."""
    reads = [(lake, table) for table in names for lake in lakes]
    got = parallel.map_in_threads(reads, lambda read: rows(spark, *read, ignore=ignore), 4, "compare")
    return [tuple(got[i:i + len(lakes)]) for i in range(0, len(got), len(lakes))]


#: per-run logs: a crashed run that got as far as its own log row keeps it, and its rerun adds one
SKIP_TABLES = frozenset({"ops.run_log", "ops.job_leases", "ops.identity_runs"})


def assert_stage_equal(spark, before: Path, lake: Path, reference: Path, ignore: tuple[str, ...] = ()) -> list[str]:
    """Every table a stage changed in ``lake`` or ``reference`` (both copies of ``before``) equals,
    row for row (nothing lost, nothing twice), but the per-run logs and the columns in ``ignore``;
    the tables compared."""
    assert delta_tables(lake) == delta_tables(reference)
    compared = [t for t in changed_tables(before, lake, reference) if t not in SKIP_TABLES]
    assert compared, "the stage changed no table"
    for table, (got, want) in zip(compared, rows_side_by_side(spark, compared, lake, reference, ignore=ignore)):
        assert len(got) == len(want), (table, len(got), len(want))
        assert got == want, table
    return compared
