"""Concurrent runs as real processes: two ``seglake run clean`` started together, and ``erase``
started while ``clean`` runs. Neither loses nor duplicates a record: the tables end as if the runs
had been made one after the other (compared row for row with in-process runs in that order).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from conftest import make_cfg
from killing import changed_tables, conf_dir, rows
from seglake.core import tables
from seglake.core.context import JobContext
from seglake.core.runner import run_job

pytestmark = pytest.mark.slow
SKIP_TABLES = {"ops.run_log", "ops.job_leases", "ops.identity_runs", "ops.erasure_requests"}


@pytest.fixture(scope="module")
def ingested(spark, chain_lakes, tmp_path_factory):
    """The chain's lakehouse after ingest, the configuration folder, and a person's email."""
    lake = chain_lakes["ingest"]
    email = (tables.read(spark, make_cfg(lake), "bronze.events_raw").where(F.col("email").isNotNull())
             .agg(F.min("email")).first()[0])
    return conf_dir(tmp_path_factory.mktemp("concurrent")), lake, email


def _start(lake: Path, conf: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if k not in ("SEGLAKE_FAULT", "SEGLAKE_PAUSE")}
    full.update(env or {})
    full["JDK_JAVA_OPTIONS"] = (full.get("JDK_JAVA_OPTIONS", "") + " -XX:TieredStopAtLevel=1").strip()
    exe = Path(sys.executable).with_name("seglake")
    return subprocess.Popen([str(exe), "run", *args, "--lakehouse", str(lake), "--conf-dir", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full)


def _read_until(proc: subprocess.Popen, text: str) -> str:
    """The process's output up to the first line holding ``text`` (fails if it ends first)."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"the process ended (code {proc.wait()}) before logging {text!r}:\n"
                         + "".join(seen)[-3000:])


def _assert_same(spark, before: Path, got: Path, want: Path) -> None:
    compared = [t for t in changed_tables(before, got, want) if t not in SKIP_TABLES]
    assert compared
    for table in compared:
        assert rows(spark, got, table) == rows(spark, want, table), table


def test_two_cleans_started_together_clean_every_record_once(spark, tmp_path, ingested):
    conf, before, _ = ingested
    lake, reference = tmp_path / "lake", tmp_path / "reference"
    shutil.copytree(before, lake)
    shutil.copytree(before, reference)
    run_job(JobContext(spark, make_cfg(reference), args={"skip_docs": True}), "clean")

    procs = [_start(lake, conf, "clean", "--skip-docs") for _ in range(2)]
    try:
        outs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    codes = sorted(p.returncode for p in procs)
    # one holds the lease and cleans; the other is refused (exit 6, naming the holder) or, if it
    # started after the first had finished, finds nothing to do
    assert codes in ([0, 6], [0, 0]), (codes, [o[-2000:] for o in outs])
    if codes == [0, 6]:
        refused = outs[[p.returncode for p in procs].index(6)]
        assert "already running as run" in refused
    else:
        assert sum("(noop)" in o for o in outs) == 1
    _assert_same(spark, before, lake, reference)


def test_erase_started_while_clean_runs_waits_for_it_and_both_finish(spark, tmp_path, ingested):
    conf, before, email = ingested
    lake, reference = tmp_path / "lake", tmp_path / "reference"
    shutil.copytree(before, lake)
    shutil.copytree(before, reference)
    cfg_ref = make_cfg(reference)
    run_job(JobContext(spark, cfg_ref, args={"skip_docs": True}), "clean")
    run_job(JobContext(spark, cfg_ref, args={"identifier": [email]}), "erase")

    # clean stops after its first commit (holding its lease) until erase says that it waits
    go = tmp_path / "go"
    clean = _start(lake, conf, "clean", "--skip-docs",
                   env={"SEGLAKE_PAUSE": f"after_commit:silver.events_quarantine={go}"})
    erase = None
    try:
        clean_out = _read_until(clean, "pausing until")
        erase = _start(lake, conf, "erase", "--identifier", email)
        erase_out = _read_until(erase, "waits for exclusive access")
        assert "clean" in erase_out.splitlines()[-1]             # it names the run it waits for
        go.touch()
        clean_out += clean.communicate(timeout=900)[0]
        erase_out += erase.communicate(timeout=900)[0]
    finally:
        go.touch()
        for proc in (clean, erase):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert clean.returncode == 0, clean_out[-3000:]
    assert erase.returncode == 0, erase_out[-3000:]
    _assert_same(spark, before, lake, reference)
    cfg = make_cfg(lake)
    assert tables.read(spark, cfg, "bronze.events_raw").where(F.col("email") == email).count() == 0
