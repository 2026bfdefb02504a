"""The stage runner: every job, alone (`seglake run <job>`) or chained (`seglake run all`,
`seglake demo`), runs through :func:`run_job`.

For each job it resolves the as-of date (stages with ``USES_AS_OF = True``), times the run,
records what the job read and wrote (:func:`seglake.core.tables.recording`) and writes one
``ops.run_log`` row: status (``success``, ``noop`` when the stage says there was nothing to
do, ``failed``), duration, the stage's summary, ``rows_in`` per input table and ``rows_out``
per written table, and the error message of a failed run. Row counts come from the Delta
log, never from extra passes over the data: ``rows_out`` from the operation metrics of the
job's own commits, ``rows_in`` from the log statistics of the table version it read.
An exception becomes :class:`JobFailed` naming the job, which the CLI turns into exit code 1.
Jobs are idempotent, so rerunning a job or the chain rebuilds the same tables.

Each run holds the job's lease (:func:`seglake.core.leases.hold`) from before it starts until
its ``ops.run_log`` row is written, released in every case: a second run of the same job at
the same time stops with :class:`~seglake.core.leases.LeaseBusy` before doing anything (no run
log row: it did not run; the CLI exits 6), and no job writes while erase VACUUMs. Each run
also runs in the calendar zone ``time.zone`` (:func:`seglake.core.timezones.job_zone`); the
caller's session time zone comes back afterwards.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable

from seglake import registry
from seglake.core import counts, leases, ops, parallel, tables, timezones
from seglake.core.context import JobContext

log = logging.getLogger(__name__)


class JobFailed(RuntimeError):
    def __init__(self, job: str, cause: BaseException):
        super().__init__(f"job '{job}' failed: {type(cause).__name__}: {cause}")
        self.job = job
        self.cause = cause


@dataclass
class StageResult:
    job: str
    seconds: float
    summary: dict = field(default_factory=dict)
    skipped: str | None = None
    status: str = "success"
    rows_in: dict[str, int] = field(default_factory=dict)
    rows_out: dict[str, int] = field(default_factory=dict)


def run_job(ctx: JobContext, job: str) -> StageResult:
    """Run one job by verb; JobNotAvailable propagates, anything else becomes JobFailed."""
    module = registry.load(job)
    return run_stage(ctx, job, module.run, uses_as_of=bool(getattr(module, "USES_AS_OF", False)))


def run_stage(ctx: JobContext, job: str, run: Callable[[JobContext], dict | None],
              uses_as_of: bool = False) -> StageResult:
    """Run ``run(ctx)`` as job ``job`` under the job's lease and record its ``ops.run_log`` row
    (see the module doc). LeaseBusy (another run holds the lease) propagates as it is."""
    with leases.hold(ctx.spark, ctx.cfg, job, ctx.run_id), timezones.job_zone(ctx.spark, ctx.cfg):
        return _run_stage(ctx, job, run, uses_as_of)


def _run_stage(ctx: JobContext, job: str, run: Callable[[JobContext], dict | None],
               uses_as_of: bool) -> StageResult:
    started_at = datetime.now(timezone.utc)
    started = time.perf_counter()
    ctx.status = "success"
    with tables.recording() as journal:
        try:
            if uses_as_of:
                ctx.resolve_as_of()
            summary = dict(run(ctx) or {})
        except Exception as exc:  # noqa: BLE001 - recorded, then re-raised with the job's name
            error = f"{type(exc).__name__}: {exc}"[:2000]  # names tables and counts, never identifiers
            _record(ctx, job, journal, {"error": error}, started_at, "failed", error)
            raise JobFailed(job, exc) from exc
    result = StageResult(job, time.perf_counter() - started, summary, status=ctx.status)
    result.rows_in, result.rows_out = _record(ctx, job, journal, summary, started_at, ctx.status)
    return result


def _counts(ctx: JobContext, journal: tables.Journal) -> tuple[dict[str, int], dict[str, int]]:
    rows_out = {t: sum(tables.rows_written(c) for c in commits) for t, commits in sorted(journal.commits.items())}
    reads = sorted(journal.reads.items())   # each a read of one table's log: side by side in threads
    found = parallel.map_in_threads(reads, lambda tv: counts.row_count(ctx.spark, ctx.cfg, *tv), 4, "rows-in")
    rows_in = {t: n for (t, _), n in zip(reads, found)}
    return rows_in, rows_out


def _record(ctx: JobContext, job: str, journal: tables.Journal, metrics: dict, started_at: datetime,
            status: str, error: str | None = None) -> tuple[dict[str, int], dict[str, int]]:
    """Write the run's ``ops.run_log`` row; a failure to record is logged, never raised over
    the job's own outcome."""
    rows_in: dict[str, int] = {}
    rows_out: dict[str, int] = {}
    try:
        rows_in, rows_out = _counts(ctx, journal)
        for attempt in range(3):  # two processes creating the table at once, or a MERGE beside another commit
            try:
                ops.record_run(ctx.spark, ctx.cfg, job, ctx.run_id, metrics, started_at, status=status,
                               as_of=ctx.as_of, rows_in=rows_in, rows_out=rows_out, error=error,
                               replace=job in ctx.recorded_jobs)
                ctx.recorded_jobs.add(job)
                break
            except Exception as exc:  # noqa: BLE001 - only commit conflicts are retried
                if attempt == 2 or not leases.is_conflict(exc):
                    raise
                log.info("ops.run_log: a concurrent commit conflicted with the %s row; writing it again", job)
    except Exception as exc:  # noqa: BLE001 - the job's result matters more than its log row
        log.warning("could not record the %s run %s in %s: %s: %s", job, ctx.run_id, ops.RUN_LOG,
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    return rows_in, rows_out


def run_chain(ctx: JobContext, jobs: Iterable[str] = registry.PIPELINE,
              echo: Callable[[str], None] = print, skip_unavailable: bool = True,
              workers: int | None = None) -> list[StageResult]:
    """Run ``jobs`` (unavailable ones are skipped, and said so, when allowed); results in ``jobs`` order.

    With ``workers`` (default ``runner.parallel_stages``) above 1, a job starts as soon as the jobs
    it reads from (:data:`seglake.registry.AFTER`, those of them in this chain) have finished, up to
    ``workers`` at once and never two of one :data:`seglake.registry.ONE_AT_A_TIME` group: each
    in a thread of this driver with its own context and session (:func:`_stage_context`). The
    first failure stops new jobs from starting; the running ones end, then it is raised (JobFailed,
    or LeaseBusy as it is). With 1, the jobs run one by one in the order given.
    """
    jobs = list(jobs)
    workers = parallel_stages(ctx.cfg) if workers is None else int(workers)
    if workers > 1 and not _classic(ctx.spark):
        log.info("chain: a Spark Connect session has no per-thread sessions; running the jobs one by one")
        workers = 1
    results: dict[str, StageResult] = {}
    tag = {job: f"[{i}/{len(jobs)}] {job:<11}" for i, job in enumerate(jobs, start=1)}

    def skipped(job: str) -> bool:
        if skip_unavailable and not registry.available(job):
            echo(f"{tag[job]} not available yet in this version - skipped")
            results[job] = StageResult(job, 0.0, skipped="not available yet")
            return True
        return False

    if workers <= 1:
        for job in jobs:
            if not skipped(job):
                echo(f"{tag[job]} running ...")
                results[job] = run_job(ctx, job)
                echo(f"{tag[job]} done in {results[job].seconds:6.1f} s  {format_summary(results[job].summary)}")
    else:
        todo = [job for job in jobs if not skipped(job)]
        _run_side_by_side(ctx, todo, jobs, workers, results, echo, tag)
    return [results[j] for j in jobs]


def parallel_stages(cfg) -> int:
    """``runner.parallel_stages`` (a whole number >= 1; anything else is a ConfigError)."""
    from seglake.core.config import ConfigError

    value = cfg.get("runner.parallel_stages", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"runner.parallel_stages must be a whole number >= 1, got {value!r}.")
    return value


def ready(job: str, chain: list[str], finished: set[str], running: Iterable[str]) -> bool:
    """Whether ``job`` may start: every job it reads from that is in ``chain`` has finished, and no
    running job is in one of its :data:`seglake.registry.ONE_AT_A_TIME` groups. A job that
    :data:`seglake.registry.AFTER` does not list waits for every job before it, runs alone, and
    every later job waits for it."""
    running = list(running)
    earlier = chain[: chain.index(job)]
    deps = (registry.AFTER[job] + tuple(j for j in earlier if j not in registry.AFTER)   # its outputs unknown
            if job in registry.AFTER else earlier)
    if any(dep in chain and dep not in finished for dep in deps):
        return False
    if job not in registry.AFTER and running:
        return False                                    # nor beside anything
    return not any(job in group and other in group for group in registry.ONE_AT_A_TIME for other in running)


def _classic(spark) -> bool:
    """Whether ``spark`` is a classic (py4j) session, which has per-thread sessions; not Spark Connect."""
    try:
        from pyspark.sql.utils import is_remote
        if is_remote():
            return False
    except ImportError:   # an older PySpark: classic only
        pass
    return hasattr(spark, "newSession") and getattr(spark, "_jsparkSession", None) is not None


def _stage_context(ctx: JobContext) -> JobContext:
    """A copy of the chain's context for one job in its own thread: its own session (SQL settings
    such as the job's time zone stay its own), status and as-of; the same run id, arguments and
    record of written run-log rows."""
    sub = dataclasses.replace(ctx, spark=parallel.isolated_session(ctx.spark))
    sub.as_of_given = ctx.as_of_given      # replace() would take a resolved as-of for a given one
    return sub


def _resolve_as_of(ctx: JobContext) -> None:
    """The chain's as-of, once, before its first as-of job starts (as that job would resolve it one
    by one), so that jobs side by side share it; when it cannot be resolved (no events yet) the
    job itself fails on it, recorded in ``ops.run_log``."""
    try:
        ctx.resolve_as_of()
    except Exception as exc:  # noqa: BLE001 - the job reports it in its own run
        log.debug("chain: as-of not resolved before the jobs start: %s", exc)


def _run_side_by_side(ctx: JobContext, todo: list[str], chain: list[str], workers: int,
                      results: dict[str, StageResult], echo: Callable[[str], None], tag: dict[str, str]) -> None:
    import queue

    from pyspark import InheritableThread

    finished = set(chain) - set(todo)                   # skipped as unavailable
    running: list[str] = []                             # in start order, for the console
    done: "queue.Queue[tuple]" = queue.Queue()
    failure: BaseException | None = None

    def work(job: str) -> None:
        sub = None
        try:
            sub = _stage_context(ctx)
            done.put((job, sub, run_job(sub, job), None))
        except BaseException as exc:  # noqa: BLE001 - raised in the chain's thread
            done.put((job, sub, None, exc))

    while True:
        try:
            for job in list(todo) if failure is None else []:
                if len(running) >= workers:
                    break
                if ready(job, chain, finished, running):
                    if ctx.as_of is None and getattr(registry.load(job), "USES_AS_OF", False):
                        _resolve_as_of(ctx)
                    todo.remove(job)
                    beside = f" (beside {', '.join(running)})" if running else ""
                    echo(f"{tag[job]} running ...{beside}")
                    running.append(job)
                    # a daemon: Ctrl-C ends the process at once, as it would one job (every write is atomic)
                    InheritableThread(target=work, args=(job,), name=f"stage-{job}", daemon=True).start()
        except BaseException as exc:  # noqa: BLE001 - starting failed: wait for the running jobs first
            failure = failure or exc
        if not running:
            break
        job, sub, result, exc = done.get()
        running.remove(job)
        if exc is not None:
            if failure is None:
                failure = exc
            elif failure is not exc:
                failure.add_note(f"while the chain waited, {job} failed too: {type(exc).__name__}: {exc}")
            waits = f"; no further job starts, waiting for {', '.join(running)} to end" if running else ""
            echo(f"{tag[job]} failed ({type(exc).__name__}){waits}")
            continue
        results[job] = result
        finished.add(job)
        if ctx.as_of is None and sub.as_of is not None:
            ctx.as_of = sub.as_of                       # later jobs start from it, as one by one
        echo(f"{tag[job]} done in {result.seconds:6.1f} s  {format_summary(result.summary)}")
    if failure is not None:
        raise failure
    if todo:    # cannot happen with registry.AFTER naming earlier jobs only; never loop or drop a job
        raise RuntimeError(f"chain: no job could start of {', '.join(todo)} (registry.AFTER has a cycle?)")


def format_summary(summary: dict, limit: int = 6) -> str:
    parts = []
    for key, value in list(summary.items())[:limit]:
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        parts.append(f"{key}={value}")
    return "  ".join(parts)


def summary_table(results: list[StageResult]) -> str:
    lines = [f"{'job':<12}{'seconds':>9}  produced"]
    for r in results:
        what = r.skipped or format_summary(r.summary, limit=20)
        lines.append(f"{r.job:<12}{r.seconds:>9.1f}  {what}")
    return "\n".join(lines)
