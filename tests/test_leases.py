"""Job leases (ops.job_leases): one run per job at a time, exclusive access for erase's VACUUM,
the CLI's exit code 6, and VACUUM with Delta's retention check left on in the session."""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlparse

import pytest

from conftest import make_cfg
from seglake.cli import EXIT_BUSY, main
from seglake.core import leases, tables
from seglake.core.config import ConfigError
from seglake.core.context import JobContext
from seglake.core.contracts import JOB_LEASES, KNOWN_TABLES
from seglake.core.runner import run_stage

RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"
LISTING = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
OTHER_HOST = "other-host.invalid"


def _runs(spark, cfg) -> list[tuple[str, str, str]]:
    return sorted((lease["job"], lease["run_id"], lease["kind"]) for lease in leases.live(spark, cfg))


def _planted(spark, cfg, job: str, run_id: str, *, kind: str = "write", host: str | None = None,
             pid: int | None = None, age_minutes: float = 1, ttl_minutes: float = 720) -> None:
    """A lease row as another process would have written it."""
    acquired = datetime.now(timezone.utc) - timedelta(minutes=age_minutes)
    leases._append(spark, cfg, leases._row(uuid.uuid4().hex, job, run_id, kind, host or socket.gethostname(),
                                           pid or os.getpid(), acquired, acquired + timedelta(minutes=ttl_minutes)),
                   acquisition=True)


def _in_thread(fn):
    """Run ``fn`` in a thread; its exceptions are kept in the returned list."""
    errors: list[BaseException] = []

    def body():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - asserted by the test
            errors.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, errors


def test_the_lease_table_is_an_ops_table_of_the_contract():
    assert JOB_LEASES == "ops.job_leases" and JOB_LEASES in KNOWN_TABLES


def test_a_second_run_of_the_same_job_is_refused_naming_the_holder(spark, cfg):
    with leases.hold(spark, cfg, "ingest", "r1"):
        with pytest.raises(leases.LeaseBusy) as info:
            with leases.hold(spark, cfg, "ingest", "r2"):
                pytest.fail("a second run of ingest must not get the lease")
        message = str(info.value)
        assert "job 'ingest' is already running as run r1" in message
        assert socket.gethostname() in message and f"(pid {os.getpid()})" in message and " UTC" in message
        assert "this run (r2) stopped before changing anything" in message and "\n" not in message
        assert info.value.job == "ingest" and [h["run_id"] for h in info.value.holders] == ["r1"]
        # another job runs beside it; the refused run left nothing live behind
        with leases.hold(spark, cfg, "clean", "r3"):
            assert _runs(spark, cfg) == [("clean", "r3", "write"), ("ingest", "r1", "write")]
        assert _runs(spark, cfg) == [("ingest", "r1", "write")]
    assert leases.live(spark, cfg) == []
    with leases.hold(spark, cfg, "ingest", "r2"):   # free again once r1 released it
        assert _runs(spark, cfg) == [("ingest", "r2", "write")]


def test_two_runs_of_one_job_started_together_exactly_one_holds(spark, cfg):
    # also the first write of the lease table by two writers at once (one retries its append)
    start = threading.Barrier(2)
    decided = threading.Event()
    outcome: dict[str, object] = {}

    def attempt(run_id: str):
        start.wait(60)
        try:
            with leases.hold(spark, cfg, "ingest", run_id):
                outcome[run_id] = "held"
                decided.wait(120)   # keep it until the other run has decided
        except leases.LeaseBusy as exc:
            outcome[run_id] = exc
            decided.set()

    threads = [_in_thread(lambda r=r: attempt(r)) for r in ("a", "b")]
    for thread, errors in threads:
        thread.join(240)
        assert not thread.is_alive() and errors == []
    held = [r for r, o in outcome.items() if o == "held"]
    busy = [o for o in outcome.values() if isinstance(o, leases.LeaseBusy)]
    assert len(held) == 1 and len(busy) == 1
    assert f"already running as run {held[0]}" in str(busy[0])
    assert leases.live(spark, cfg) == []


def test_the_lease_is_released_when_the_job_fails(spark, cfg):
    with pytest.raises(RuntimeError, match="boom"):
        with leases.hold(spark, cfg, "ingest", "r1"):
            raise RuntimeError("boom")
    assert leases.live(spark, cfg) == []
    with leases.hold(spark, cfg, "ingest", "r2"):
        pass


def test_a_leases_version_is_the_first_table_version_that_holds_its_row(spark, cfg):
    # three acquisitions and a release in between; each version checked against time travel
    _planted(spark, cfg, "ingest", "r1")
    with leases.hold(spark, cfg, "clean", "r2"):
        _planted(spark, cfg, "erase", "r3", kind="exclusive")
        held = leases.live(spark, cfg)
    assert sorted(d["run_id"] for d in held) == ["r1", "r2", "r3"]
    path = cfg.table_path(JOB_LEASES)
    for lease in held:
        first = next(v for v in range(tables.version(spark, cfg, JOB_LEASES) + 1)
                     if spark.read.format("delta").option("versionAsOf", v).load(path)
                     .where(f"lease_id = '{lease['lease_id']}'").count() > 0)
        assert lease["version"] == first, lease


def test_a_lease_of_a_dead_process_on_this_host_is_not_live(spark, cfg):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    _planted(spark, cfg, "ingest", "killed", pid=proc.pid)          # a run killed with kill -9 here
    assert leases.live(spark, cfg) == []
    with leases.hold(spark, cfg, "ingest", "rerun"):               # its rerun is not blocked
        assert _runs(spark, cfg) == [("ingest", "rerun", "write")]
    # a process of another host cannot be checked: its lease stays live until it expires
    _planted(spark, cfg, "ingest", "elsewhere", host=OTHER_HOST, pid=proc.pid)
    with pytest.raises(leases.LeaseBusy, match=f"run elsewhere on host {OTHER_HOST}"):
        with leases.hold(spark, cfg, "ingest", "rerun2"):
            pass


def test_expired_leases_are_not_live_and_maintain_removes_them(spark, cfg):
    _planted(spark, cfg, "ingest", "old", host=OTHER_HOST, age_minutes=3 * 24 * 60, ttl_minutes=60)
    _planted(spark, cfg, "erase", "old-erase", kind="exclusive", host=OTHER_HOST, age_minutes=3 * 24 * 60,
             ttl_minutes=60)
    assert leases.live(spark, cfg) == []
    with leases.hold(spark, cfg, "ingest", "new"):                 # neither blocks a new run
        assert _runs(spark, cfg) == [("ingest", "new", "write")]
    rows = tables.read(spark, cfg, JOB_LEASES).count()
    assert leases.compact(spark, cfg) == {"rows_removed": 2, "rows_kept": rows - 2}
    assert tables.read(spark, cfg, JOB_LEASES).where("run_id LIKE 'old%'").count() == 0


def test_exclusive_waits_for_a_running_writer_and_gives_up_naming_it(spark, cfg, caplog):
    with leases.hold(spark, cfg, "ingest", "w1"):
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="seglake.core.leases"):
            with pytest.raises(leases.LeaseBusy) as info:
                with leases.exclusive(spark, cfg, "e1", wait_seconds=1):
                    pytest.fail("exclusive access must not be granted while ingest runs")
        assert time.monotonic() - started >= 1
        message = str(info.value)
        assert "exclusive lease (run e1) waited 1 s for exclusive access and gave up" in message
        assert f"still running: ingest (run w1, host {socket.gethostname()}, pid {os.getpid()}, since " in message
        assert "leases.wait_seconds" in message
        assert any("waits for exclusive access until these end: ingest (run w1" in r.getMessage()
                   for r in caplog.records)
        assert _runs(spark, cfg) == [("ingest", "w1", "write")]    # the failed exclusive lease is gone


def test_exclusive_proceeds_once_the_writer_released(spark, cfg):
    holding = threading.Event()
    releasing: list[float] = []

    def writer():
        with leases.hold(spark, cfg, "clean", "w2"):
            holding.set()
            time.sleep(1.0)
            releasing.append(time.monotonic())

    thread, errors = _in_thread(writer)
    assert holding.wait(120)
    with leases.exclusive(spark, cfg, "e2", wait_seconds=120):
        entered = time.monotonic()
        others = [lease for lease in leases.live(spark, cfg) if lease["run_id"] != "e2"]
    thread.join(120)
    assert errors == [] and releasing and entered >= releasing[0]
    assert others == []
    assert leases.live(spark, cfg) == []


def test_a_writer_waits_while_an_exclusive_lease_is_held_then_proceeds(spark, lakehouse, caplog):
    cfg = make_cfg(lakehouse, leases={"wait_seconds": 120})
    inside = threading.Event()
    leaving: list[float] = []

    def vacuum_step():
        with leases.exclusive(spark, cfg, "e3", wait_seconds=60):
            inside.set()
            time.sleep(1.5)
            leaving.append(time.monotonic())

    thread, errors = _in_thread(vacuum_step)
    assert inside.wait(120)
    with caplog.at_level(logging.INFO, logger="seglake.core.leases"):
        with leases.hold(spark, cfg, "ingest", "w3"):
            entered = time.monotonic()
            assert _runs(spark, cfg) == [("ingest", "w3", "write")]
    thread.join(120)
    assert errors == [] and leaving and entered >= leaving[0]
    assert any("ingest (run w3) waits for exclusive lease (run e3" in r.getMessage() for r in caplog.records)


def test_a_writer_gives_up_after_wait_seconds_naming_the_exclusive_holder(spark, lakehouse):
    cfg = make_cfg(lakehouse, leases={"wait_seconds": 1})
    _planted(spark, cfg, "erase", "e4", kind="exclusive", host=OTHER_HOST)
    started = time.monotonic()
    with pytest.raises(leases.LeaseBusy) as info:
        with leases.hold(spark, cfg, "clean", "w4"):
            pytest.fail("no job may write while an exclusive lease is held")
    assert time.monotonic() - started >= 1
    assert "job 'clean' (run w4) waited 1 s for erase exclusive lease (run e4, host " + OTHER_HOST in str(info.value)
    assert _runs(spark, cfg) == [("erase", "e4", "exclusive")]     # the writer withdrew its row


def test_the_runner_holds_the_jobs_lease_and_keeps_it_out_of_the_run_log(spark, cfg):
    seen = {}

    def job(ctx):
        seen["during"] = _runs(ctx.spark, ctx.cfg)
        with leases.exclusive(ctx.spark, ctx.cfg, ctx.run_id, wait_seconds=5):   # as erase does
            seen["exclusive"] = _runs(ctx.spark, ctx.cfg)
        return {"n": 1}

    run_stage(JobContext(spark, cfg, run_id="r1"), "demo", job)
    assert seen["during"] == [("demo", "r1", "write")]
    assert seen["exclusive"] == [("demo", "r1", "exclusive"), ("demo", "r1", "write")]
    assert leases.live(spark, cfg) == []
    row = tables.read(spark, cfg, "ops.run_log").where("job = 'demo'").first()
    assert (row["status"], row["rows_in"], row["rows_out"]) == ("success", {}, {})
    # a second run while the first holds the lease: LeaseBusy as it is, the job never ran, no row
    ran = []
    with leases.hold(spark, cfg, "demo", "r2"):
        with pytest.raises(leases.LeaseBusy, match="job 'demo' is already running as run r2"):
            run_stage(JobContext(spark, cfg, run_id="r3"), "demo", lambda c: ran.append(1))
    assert ran == []
    assert tables.read(spark, cfg, "ops.run_log").where("run_id = 'r3'").count() == 0


def test_the_cli_exits_6_with_one_line_when_the_job_is_running(spark, lakehouse, capsys):
    cfg = make_cfg(lakehouse)
    with leases.hold(spark, cfg, "maintain", "other-run"):
        code = main(["run", "maintain", "--lakehouse", str(lakehouse)])
    err = capsys.readouterr().err
    assert code == EXIT_BUSY == 6
    lines = [line for line in err.splitlines() if line.startswith("busy: ")]
    assert len(lines) == 1 and "job 'maintain' is already running as run other-run" in lines[0]
    assert "Traceback" not in err
    assert not tables.exists(spark, cfg, "ops.run_log")   # it did not run: no run log row


def test_disabled_leases_write_nothing(spark, lakehouse):
    cfg = make_cfg(lakehouse, leases={"enabled": False})
    with leases.hold(spark, cfg, "ingest", "a"):
        with leases.hold(spark, cfg, "ingest", "b"):
            with leases.exclusive(spark, cfg, "c", wait_seconds=0):
                pass
    run_stage(JobContext(spark, cfg, run_id="r"), "demo", lambda c: {"n": 1})
    assert tables.exists(spark, cfg, "ops.run_log") and not tables.exists(spark, cfg, JOB_LEASES)


def test_lease_settings_are_checked(lakehouse):
    assert leases.settings(make_cfg(lakehouse)) == (True, 600.0, 720.0)
    with pytest.raises(ConfigError, match="leases.wait_seconds must be a number >= 0"):
        leases.settings(make_cfg(lakehouse, leases={"wait_seconds": -1}))
    with pytest.raises(ConfigError, match="leases.ttl_minutes must be a number >= 1"):
        leases.settings(make_cfg(lakehouse, leases={"ttl_minutes": 0}))


# --------------------------------------------------------------------------- VACUUM and the retention check

def test_sessions_keep_deltas_retention_check(spark, cfg):
    from seglake.core.spark import get_spark, session_conf

    assert RETENTION_CHECK not in session_conf(cfg)
    assert get_spark(cfg).conf.get(RETENTION_CHECK, "true") != "false"
    assert spark.conf.get(RETENTION_CHECK, "true") != "false"


def test_vacuum_with_zero_hours_keeps_only_current_files_and_restores_the_conf(spark, cfg):
    from delta.tables import DeltaTable

    table = "gold.t_vacuum"
    for start in (0, 5, 9):
        tables.overwrite(spark.range(start, start + 3), cfg, table)
    root = Path(cfg.table_path(table))

    def on_disk() -> set[str]:
        return {p.name for p in root.rglob("*.parquet") if "_delta_log" not in p.relative_to(root).parts}

    assert len(on_disk()) > len(spark.read.format("delta").load(str(root)).inputFiles())
    # the session itself refuses a short retention (the check is on) ...
    with pytest.raises(Exception, match="retentionDurationCheck|retention period"):
        DeltaTable.forPath(spark, str(root)).vacuum(0.0)
    check, listing = spark.conf.get(RETENTION_CHECK, None), spark.conf.get(LISTING, None)
    # ... and tables.vacuum switches it off for its one call
    tables.vacuum(spark, cfg, table, 0)
    current = {Path(urlparse(f).path).name for f in spark.read.format("delta").load(str(root)).inputFiles()}
    assert on_disk() == current and current
    assert sorted(r["id"] for r in tables.read(spark, cfg, table).collect()) == [9, 10, 11]
    assert (spark.conf.get(RETENTION_CHECK, None), spark.conf.get(LISTING, None)) == (check, listing)
    with pytest.raises(ValueError, match=">= 0 hours"):
        tables.vacuum(spark, cfg, table, -1)
