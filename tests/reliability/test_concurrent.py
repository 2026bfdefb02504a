"""Concurrent runs: a real ``seglake run clean`` process holds its lease while a second clean and
an erase start. Nothing is lost or written twice: the tables end as if the runs had been made one
after the other (compared row for row with in-process runs in that order).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from conftest import c1_only, make_cfg
from killing import changed_tables, conf_dir, copy_lake, rows_side_by_side
from seglake.cli import main
from seglake.core import tables
from seglake.core.context import JobContext
from seglake.core.runner import run_job

pytestmark = pytest.mark.slow
SKIP_TABLES = {"ops.run_log", "ops.job_leases", "ops.identity_runs", "ops.erasure_requests"}


@pytest.fixture(scope="module")
def ingested(spark, chain_lakes, tmp_path_factory):
    """The configuration folder, the chain's lakehouse after ingest and after clean, and a
    person's email."""
    lake = chain_lakes["ingest"]
    email = (tables.read(spark, make_cfg(lake), "bronze.events_raw").where(F.col("email").isNotNull())
             .agg(F.min("email")).first()[0])
    return conf_dir(tmp_path_factory.mktemp("concurrent")), lake, chain_lakes["clean"], email


def _start(lake: Path, conf: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if k not in ("SEGLAKE_FAULT", "SEGLAKE_PAUSE")}
    full.update(env or {})
    c1_only(full)
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
    for table, (got_rows, want_rows) in zip(compared, rows_side_by_side(spark, compared, got, want)):
        assert got_rows == want_rows, table


def test_a_second_clean_and_an_erase_meet_a_running_clean_and_every_record_ends_once(spark, tmp_path, ingested,
                                                                                    capsys, caplog):
    """One real ``seglake run clean`` process holds its lease, paused after its first commit; a
    second clean is refused (exit 6, naming it); an erase started meanwhile waits for it, naming
    it, and runs once it ended. Tables: as an in-process clean, then erase, one after the other.
    (Two runs racing for a free lease, and the CLI's exit 6, are in tests/test_leases.py; two
    ingests at once in tests/test_ingest.py.)"""
    conf, before, cleaned, email = ingested
    lake, reference = tmp_path / "lake", tmp_path / "reference"
    shutil.copytree(before, lake)

    # clean stops after its first commit (holding its lease) until the erase says that it waits;
    # started first, so that its JVM starts while this process builds the reference in a
    # lakehouse of its own (the process waits at its point, however long that takes)
    go = tmp_path / "go"
    clean = _start(lake, conf, "clean", "--skip-docs",
                   env={"SEGLAKE_PAUSE": f"after_commit:silver.events_quarantine={go}"})
    outcome: dict = {}
    try:
        # the reference: the chain's clean of the same lakehouse with the same settings (an
        # in-process clean of a copy equals it table for table: test_kill_stages.py), then erase
        copy_lake(cleaned, reference)
        run_job(JobContext(spark, make_cfg(reference), args={"identifier": [email]}), "erase")
        clean_out = _read_until(clean, "pausing until")
        # a second clean meanwhile: refused before doing anything, naming the running one
        capsys.readouterr()
        assert main(["run", "clean", "--skip-docs", "--lakehouse", str(lake), "--conf-dir", str(conf)]) == 6
        refused = capsys.readouterr().err
        assert "job 'clean' is already running as run" in refused and "Traceback" not in refused

        def erase_now() -> None:
            try:
                outcome["summary"] = run_job(JobContext(spark, make_cfg(lake), args={"identifier": [email]}),
                                             "erase").summary
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                outcome["error"] = exc

        with caplog.at_level(logging.INFO, logger="seglake.core.leases"):
            erase = threading.Thread(target=erase_now, daemon=True)
            erase.start()
            waiting = _wait_for_log(caplog, "waits for exclusive access", erase)
            assert "clean (run" in waiting and f"pid {clean.pid}," in waiting   # names the run it waits for
            assert "summary" not in outcome                   # and did not erase under a writer
            go.touch()
            clean_out += clean.communicate(timeout=900)[0]
            erase.join(timeout=900)
    finally:
        go.touch()
        if clean.poll() is None:
            clean.kill()
            clean.wait()
    assert clean.returncode == 0, clean_out[-3000:]
    assert "error" not in outcome, outcome.get("error")
    assert outcome["summary"]["rows_removed"] > 0 and outcome["summary"]["lease_wait_s"] > 0
    _assert_same(spark, before, lake, reference)
    cfg = make_cfg(lake)
    assert tables.read(spark, cfg, "bronze.events_raw").where(F.col("email") == email).count() == 0


def _wait_for_log(caplog, text: str, thread: threading.Thread, timeout: float = 300) -> str:
    """The first log message holding ``text`` (fails if ``thread`` ends first or time runs out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in caplog.records:
            if text in record.getMessage():
                return record.getMessage()
        assert thread.is_alive(), f"the thread ended before logging {text!r}"
        time.sleep(0.2)
    raise AssertionError(f"nothing logged {text!r} within {timeout:g} s")
