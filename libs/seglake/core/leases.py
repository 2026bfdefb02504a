"""Job leases in ``ops.job_leases``: two runs of the same job never run at once, and erase's
VACUUM never runs while a job writes.

Every job run holds a ``write`` lease (:func:`hold`, taken by the stage runner); a second run of
the same job fails fast with :class:`LeaseBusy` naming the run that holds it. A step that must
be alone in the lakehouse (erase's VACUUM with a short retention) takes an ``exclusive`` lease
(:func:`exclusive`): new writers wait for it, and it waits for the writers already running.

**The table.** One row per event, only ever appended (blind appends never conflict in Delta,
so no lock, DELETE or MERGE is on this path, and it works wherever Delta does, object stores
included): an acquisition (``released`` false) and, later, a release of the same ``lease_id``
(``released`` true, the other columns copied). A lease is *live* when it has no release row,
``expires_at`` (acquisition + ``leases.ttl_minutes``) is in the future, and it is not a lease of
this host whose process is gone (``kill -9`` and a rerun on the same machine is not blocked).
A lease of another host outlives its crashed process until it expires. The commit of each
acquisition carries its ``lease_id`` in its ``userMetadata`` (``{"lease": id}``), so the Delta version
that added a lease can be read from the log: it is looked up only when it decides something
(another run's lease of the same job, or an exclusive lease, is live), newest commit first,
so the common case (nobody else there) costs no log read at all. (Row tracking's
``_metadata.row_commit_version`` would give the same version for every row, but on this append-only
table it made Delta reconstruct the snapshot before each one-row append: three Spark jobs, about
half a second, per append.)

**Why it is race-free (Dekker's rule).** Both sides register before they look: an acquirer
appends its row, *then* reads the table. Of two acquirers whose rows committed at versions
v1 < v2, the second reads a snapshot that already holds the first row, so at least the second
sees the first.

* Two writers of the same job: the one whose row committed later backs off (LeaseBusy, after
  withdrawing its row); the earlier one never yields to a later one. The later one always sees
  the earlier, so at most one run of a job holds its lease (two racing runs may both back off
  only when each saw an even earlier run still holding it).
* A writer that sees any exclusive lease of another run withdraws its row and waits until no
  exclusive lease is live (then registers again); an exclusive lease waits until no lease of
  another run committed *before* its own is live. A writer that committed after it sees it and
  never proceeds, so the exclusive holder is alone once that wait ends. Of two exclusive leases
  the later waits for the earlier.

Where the version of a lease cannot be found (its commit carries no lease id: a row written by an
older seglake; or the commit is gone) it counts as earlier: still safe, but two racing runs of one
job may then both back off.

Delta must make commits mutually exclusive for this (local disks, HDFS, ADLS, GCS do; on S3 with
several clusters that needs Delta's DynamoDB log store), and machines that run jobs must have
distinct host names (the dead-process rule trusts ``pid`` only on the host that wrote it). ``seglake run maintain`` removes rows of
leases expired a day ago and compacts the table (:func:`compact`); it is never VACUUMed with a
retention below Delta's default: a writer's uncommitted row file could be deleted.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import socket
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterator

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.tables import is_conflict  # noqa: F401 - used here and by callers as leases.is_conflict
from seglake.core.config import Config, ConfigError
from seglake.core.contracts import JOB_LEASES
from seglake.core.spark import literal_row

log = logging.getLogger(__name__)

LEASES_DDL = ("lease_id STRING, job STRING, run_id STRING, kind STRING, host STRING, pid BIGINT, "
              "acquired_at TIMESTAMP, expires_at TIMESTAMP, released BOOLEAN")
_PROPERTIES = dict(tables.BOOKKEEPING_PROPERTIES)
#: the userMetadata key naming the lease an acquisition commit added
_TAG = "lease"
#: lease_id -> Delta version of its acquisition commit (a fact that never changes, found once)
_versions_found: dict[str, int] = {}
LOG_EVERY_SECONDS = 15.0
_LAPSE = ("(A lease of a run killed on another host lapses leases.ttl_minutes after it was taken; "
          "one of this host lapses as soon as its process is gone.)")
#: run_id -> jobs of the write leases this process holds (names an exclusive lease's job; the jobs
#: of one chain may hold theirs side by side)
_held: dict[str, list[str]] = {}


class LeaseBusy(RuntimeError):
    """Another run holds the lease this run needs; the message names it and what to do.

    Attributes:
        job: the job (or exclusive step) that could not get its lease.
        holders: the live leases in the way (dicts as :func:`live` returns them).
    """

    def __init__(self, message: str, job: str, holders: list[dict]):
        super().__init__(message)
        self.job = job
        self.holders = holders


# --------------------------------------------------------------------------- settings, helpers

def settings(cfg: Config) -> tuple[bool, float, float]:
    """(enabled, wait_seconds, ttl_minutes) of the ``leases`` section; a bad value is a ConfigError."""
    enabled = cfg.get("leases.enabled", True)
    wait = cfg.get("leases.wait_seconds", 600)
    ttl = cfg.get("leases.ttl_minutes", 720)
    if not isinstance(enabled, bool):
        raise ConfigError(f"leases.enabled must be true or false, got {enabled!r}.")
    for key, value, low in (("wait_seconds", wait, 0), ("ttl_minutes", ttl, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
            raise ConfigError(f"leases.{key} must be a number >= {low}, got {value!r}.")
    return enabled, float(wait), float(ttl)


def _unjournaled(fn: Callable, *args, **kwargs):
    """Run ``fn`` outside the run journal (in a fresh context): lease bookkeeping is neither an
    input nor an output of the job, so it must not appear in its ``ops.run_log`` counts."""
    return contextvars.Context().run(fn, *args, **kwargs)


def _now_us() -> int:
    return time.time_ns() // 1000


def _utc_text(us: int | None) -> str:
    if us is None:
        return "?"
    return datetime.fromtimestamp(us / 1e6, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` of this host exists (unknown counts as alive)."""
    if pid is None or pid <= 0 or os.name == "nt":  # os.kill(pid, 0) would terminate it on Windows
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def _row(lease_id: str, job: str, run_id: str, kind: str, host: str, pid: int, acquired_at: datetime,
         expires_at: datetime, released: bool = False) -> tuple:
    return (lease_id, job, run_id, kind, host, int(pid), acquired_at, expires_at, released)


def _append(spark: SparkSession, cfg: Config, row: tuple, acquisition: bool = False) -> None:
    """Blind-append one lease row (an acquisition's commit names its lease in ``userMetadata``).
    Two processes creating the table with their first append at the same time make one of them
    fail with a commit conflict: that one retries once (the table exists then, and appends to an
    existing table never conflict)."""
    tables.conflict_types()     # imports delta.exceptions: PySpark then converts the JVM conflicts
    df = literal_row(spark, row, LEASES_DDL)
    meta = json.dumps({_TAG: row[0]}) if acquisition else None
    for attempt in (1, 2):
        try:
            _unjournaled(tables.append, df, cfg, JOB_LEASES, properties=_PROPERTIES, user_metadata=meta)
            return
        except Exception as exc:  # noqa: BLE001 - only a commit conflict is retried
            if attempt == 2 or not is_conflict(exc):
                raise
            log.info("leases: another process created %s at the same time; appending again", JOB_LEASES)


def _register(spark: SparkSession, cfg: Config, job: str, run_id: str, kind: str) -> tuple:
    _, _, ttl = settings(cfg)
    now = datetime.now(timezone.utc)
    row = _row(uuid.uuid4().hex, job, run_id, kind, socket.gethostname(), os.getpid(), now,
               now + timedelta(minutes=ttl))
    _append(spark, cfg, row, acquisition=True)
    return row


def _release(spark: SparkSession, cfg: Config, row: tuple) -> None:
    """Append the release row of a lease; a failure is logged (the lease then lapses at expiry,
    or at once for runs on this host once the process is gone), never raised over the job's outcome."""
    try:
        _append(spark, cfg, row[:-1] + (True,))
    except Exception as exc:  # noqa: BLE001 - the job's own result matters more
        log.warning("leases: could not release the %s lease of run %s (%s: %s); it lapses at %s", row[1], row[2],
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "", row[7])


def _read(spark: SparkSession, cfg: Config) -> list[dict]:
    """Every lease with a row not yet expired, with its state: one small scan, no shuffle (rows of
    the last ``ttl_minutes`` only; a release row carries its lease's ``expires_at``); ``version``
    as far as already known (:func:`_with_versions` finds the others)."""
    now = datetime.fromtimestamp(_now_us() / 1e6, timezone.utc)
    cols = [F.col(c) for c in ("lease_id", "job", "run_id", "kind", "host", "pid", "released")] + [
        F.unix_micros("acquired_at").alias("acquired_us"), F.unix_micros("expires_at").alias("expires_us")]
    try:   # tables.read looks for the table first (one log listing: not a second one here)
        table = _unjournaled(tables.read, spark, cfg, JOB_LEASES)
    except FileNotFoundError:
        return []
    # a literal bound on the column itself: Delta skips the files of expired leases by their statistics
    # (one row per file), so the scan stays small however long the table grows between compactions
    df = table.where(F.col("expires_at") > F.lit(now))
    # bounded by job runs of the last ttl_minutes (two rows each), never by events or customers
    got = df.select(*cols).collect()
    released = {r["lease_id"] for r in got if r["released"]}
    out: dict[str, dict] = {}
    for r in got:
        if not r["released"] and r["lease_id"] not in released:
            out[r["lease_id"]] = {**r.asDict(), "version": _versions_found.get(r["lease_id"])}
    return sorted(out.values(), key=lambda d: (d["acquired_us"], d["lease_id"]))


def _with_versions(spark: SparkSession, cfg: Config, leases: list[dict]) -> list[dict]:
    """Fill in ``version`` (the Delta version of the acquisition commit) of ``leases`` from the
    ``userMetadata`` of the table's commits, read newest first and only as far back as the oldest
    of them was taken (its commit is later than its ``acquired_at``: both are read from the clock
    of the host that took it; a minute of slack). A lease whose commit is not found keeps None."""
    missing = {d["lease_id"] for d in leases if d["version"] is None}
    if missing:
        oldest_ms = min(d["acquired_us"] for d in leases if d["lease_id"] in missing) // 1000 - 60_000
        _versions_found.update(_commits_back_to(spark, cfg, oldest_ms, missing))   # commit files: not journaled
        for d in leases:
            d["version"] = _versions_found.get(d["lease_id"])
    return leases


def _commits_back_to(spark: SparkSession, cfg: Config, oldest_ms: int, wanted: set[str]) -> Iterator[tuple[str, int]]:
    """(lease_id, version) of the acquisition commits of the ``wanted`` leases, newest first, until
    all are found or the commits are older than ``oldest_ms`` (epoch milliseconds)."""
    wanted = set(wanted)
    for c in tables.commits(spark, cfg, JOB_LEASES):
        lease_id = tables.commit_tag(c, _TAG)
        if lease_id in wanted:
            wanted.discard(lease_id)
            yield lease_id, c["version"]
        if not wanted or (c.get("timestamp") is not None and int(c["timestamp"]) < oldest_ms):
            return


def _alive(lease: dict, host: str) -> bool:
    return not (lease["host"] == host and not _pid_alive(lease["pid"]))


def _live(spark: SparkSession, cfg: Config) -> list[dict]:
    host = socket.gethostname()
    return [d for d in _read(spark, cfg) if _alive(d, host)]


def _public(leases: list[dict]) -> list[dict]:
    return [{**{k: v for k, v in d.items() if k not in ("acquired_us", "expires_us", "released")},
             "acquired_at": _utc_text(d["acquired_us"]), "expires_at": _utc_text(d["expires_us"])}
            for d in leases]


def live(spark: SparkSession, cfg: Config) -> list[dict]:
    """The live leases (for logs and tests), oldest first: ``lease_id``, ``job``, ``run_id``,
    ``kind`` (write | exclusive), ``host``, ``pid``, ``acquired_at`` and ``expires_at`` (UTC text)
    and ``version`` (Delta version of the acquisition, None when unknown)."""
    return _public(_with_versions(spark, cfg, _live(spark, cfg)))


def _before(other: dict, mine: dict | None) -> bool:
    """Whether ``other`` committed before ``mine`` (unknown versions: assume it did)."""
    if mine is None or other["version"] is None or mine["version"] is None:
        return True
    return other["version"] < mine["version"]


def _label(job: str, kind: str) -> str:
    if kind != "exclusive":
        return job
    return "exclusive lease" if job == "exclusive" else f"{job} exclusive lease"


def describe(lease: dict) -> str:
    """``ingest (run R, host H, pid P, since T)`` or ``erase exclusive lease (run ...)``, for messages."""
    return (f"{_label(lease['job'], lease['kind'])} (run {lease['run_id']}, host {lease['host']}, "
            f"pid {lease['pid']}, since {_utc_text(lease['acquired_us'])})")


def _poll(deadline: float, started: float, last_log: float, message: Callable[[float], str]) -> float:
    """Sleep before the next look (0.5 s growing to 5 s, never past the deadline); log
    ``message(waited)`` at once and then every 15 s. Returns the time of the last log line."""
    now = time.monotonic()
    if last_log < 0 or now - last_log >= LOG_EVERY_SECONDS:
        log.info(message(now - started))
        last_log = now
    time.sleep(max(0.0, min(0.5 + 0.25 * (now - started), 5.0, deadline - now)))
    return last_log


# --------------------------------------------------------------------------- the two leases

@contextlib.contextmanager
def hold(spark: SparkSession, cfg: Config, job: str, run_id: str) -> Iterator[None]:
    """A ``write`` lease for one run of ``job``, released when the block ends (also on failure).

    Fails fast with :class:`LeaseBusy` when a live lease of the same job is held by another run.
    While an exclusive lease of another run is live it waits (logging every 15 s what for) up to
    ``leases.wait_seconds``, then LeaseBusy. A no-op when ``leases.enabled`` is false.
    """
    if not job or not run_id:
        raise ValueError(f"leases.hold needs a job name and a run id, got job={job!r}, run_id={run_id!r}")
    enabled, wait, _ = settings(cfg)
    if not enabled:
        yield
        return
    started = time.monotonic()
    deadline = started + wait
    while True:
        mine = _register(spark, cfg, job, run_id, "write")
        try:
            leases = _live(spark, cfg)
            me = next((d for d in leases if d["lease_id"] == mine[0]), None)
            others = [d for d in leases if d["run_id"] != run_id]
            same = [d for d in others if d["job"] == job and d["kind"] == "write"]
            if same:   # which was first decides: the commit versions (read only now)
                _with_versions(spark, cfg, same + ([me] if me else []))
                same = [d for d in same if _before(d, me)]
            if same:
                h = same[0]
                raise LeaseBusy(
                    f"job '{job}' is already running as run {h['run_id']} on host {h['host']} (pid {h['pid']}) "
                    f"since {_utc_text(h['acquired_us'])}. Two runs of one job at "
                    f"once could duplicate or lose data, so this run ({run_id}) stopped before changing "
                    f"anything. Start it again when that run has finished (if it was killed on host {h['host']}, "
                    f"its lease lapses at {_utc_text(h['expires_us'])}, leases.ttl_minutes).", job, _public(same))
            blocking = [d for d in others if d["kind"] == "exclusive"]
        except BaseException:
            _release(spark, cfg, mine)
            raise
        if not blocking:
            break
        _release(spark, cfg, mine)   # withdraw, so the exclusive holder does not wait for this run
        _wait_for_exclusive(spark, cfg, job, run_id, blocking, started, deadline, wait)
    _held.setdefault(run_id, []).append(job)
    try:
        yield
    finally:
        _held[run_id].remove(job)
        if not _held[run_id]:
            del _held[run_id]
        _release(spark, cfg, mine)


def _wait_for_exclusive(spark: SparkSession, cfg: Config, job: str, run_id: str, blocking: list[dict],
                        started: float, deadline: float, wait: float) -> None:
    """Poll until no exclusive lease of another run is live; LeaseBusy at the deadline."""
    last_log = -1.0
    while blocking:
        last_log = _poll(deadline, started, last_log, lambda waited: (   # logs the first wait at once
            f"leases: {job} (run {run_id}) waits for {describe(blocking[0])} to end "
            f"({waited:.0f} s of at most {wait:g} s)"))
        if time.monotonic() >= deadline:
            raise LeaseBusy(
                f"job '{job}' (run {run_id}) waited {wait:g} s for {describe(blocking[0])} to end and gave up: "
                "while it runs (erase's VACUUM) no job may write. Start this job again when it has finished, "
                f"or raise leases.wait_seconds. {_LAPSE}", job, _public(blocking))
        blocking = [d for d in _live(spark, cfg) if d["run_id"] != run_id and d["kind"] == "exclusive"]


@contextlib.contextmanager
def exclusive(spark: SparkSession, cfg: Config, run_id: str, wait_seconds: float | None = None) -> Iterator[None]:
    """An ``exclusive`` lease: registered first (new writers see it and wait), then it waits until
    no live lease of another run committed before it remains (logging every 15 s which jobs and
    runs it waits for), then the block runs alone; LeaseBusy after ``wait_seconds`` (default
    ``leases.wait_seconds``). The run's own write lease does not count. A no-op when disabled.
    """
    if not run_id:
        raise ValueError(f"leases.exclusive needs a run id, got {run_id!r}")
    enabled, wait, _ = settings(cfg)
    if not enabled:
        yield
        return
    wait = wait if wait_seconds is None else float(wait_seconds)
    job = (_held.get(run_id) or ["exclusive"])[0]
    me_label = _label(job, "exclusive")
    started = time.monotonic()
    deadline = started + wait
    mine = _register(spark, cfg, job, run_id, "exclusive")
    try:
        last_log = -1.0
        while True:
            leases = _live(spark, cfg)
            me = next((d for d in leases if d["lease_id"] == mine[0]), None)
            others = [d for d in leases if d["run_id"] != run_id]
            if others:
                _with_versions(spark, cfg, others + ([me] if me else []))
            blocking = [d for d in others if _before(d, me)]
            if not blocking:
                break
            last_log = _poll(deadline, started, last_log, lambda waited: (   # logs the first wait at once
                f"leases: {me_label} (run {run_id}) waits for exclusive access until these end: "
                + "; ".join(describe(d) for d in blocking) + f" ({waited:.0f} s of at most {wait:g} s)"))
            if time.monotonic() >= deadline:
                raise LeaseBusy(
                    f"{me_label} (run {run_id}) waited {wait:g} s for exclusive access and gave up; still running: "
                    + "; ".join(describe(d) for d in blocking)
                    + f". Start it again when they have finished, or raise leases.wait_seconds. {_LAPSE}", job,
                    _public(blocking))
        yield
    finally:
        _release(spark, cfg, mine)


# --------------------------------------------------------------------------- upkeep

def compact(spark: SparkSession, cfg: Config, keep_hours: float = 24.0) -> dict:
    """Delete the rows of leases expired more than ``keep_hours`` ago, compact the table's files and
    VACUUM it with Delta's default retention (run by ``seglake run maintain``).

    Safe next to running jobs: expired leases are not live anyway, blind appends never conflict
    with a DELETE or OPTIMIZE, and readers of an older version keep their files for 7 days.
    Returns ``{"rows_removed": n, "rows_kept": m}``.
    """
    if not tables.exists(spark, cfg, JOB_LEASES):
        return {"rows_removed": 0, "rows_kept": 0}
    from delta.tables import DeltaTable

    old = F.col("expires_at") < F.lit(datetime.now(timezone.utc) - timedelta(hours=keep_hours))
    path = cfg.table_path(JOB_LEASES)
    removed = spark.read.format("delta").load(path).where(old).count()  # new rows never match: exact
    if removed:
        DeltaTable.forPath(spark, path).delete(old)
    DeltaTable.forPath(spark, path).optimize().executeCompaction()
    tables.vacuum(spark, cfg, JOB_LEASES, tables.DELTA_RETENTION_HOURS)
    kept = spark.read.format("delta").load(path).count()
    log.info("leases: %s: %d expired rows removed, %d kept", JOB_LEASES, removed, kept)
    return {"rows_removed": removed, "rows_kept": kept}
