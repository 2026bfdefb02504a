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

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable

from seglake import registry
from seglake.core import leases, ops, parallel, tables, timezones
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
    counts = parallel.map_in_threads(reads, lambda tv: tables.row_count(ctx.spark, ctx.cfg, *tv), 4, "rows-in")
    rows_in = {t: n for (t, _), n in zip(reads, counts)}
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
              echo: Callable[[str], None] = print, skip_unavailable: bool = True) -> list[StageResult]:
    """Run ``jobs`` in order. Unavailable jobs are skipped (and said so) when allowed."""
    jobs = list(jobs)
    results: list[StageResult] = []
    for index, job in enumerate(jobs, start=1):
        if skip_unavailable and not registry.available(job):
            echo(f"[{index}/{len(jobs)}] {job:<11} not available yet in this version - skipped")
            results.append(StageResult(job, 0.0, skipped="not available yet"))
            continue
        echo(f"[{index}/{len(jobs)}] {job:<11} running ...")
        result = run_job(ctx, job)
        echo(f"[{index}/{len(jobs)}] {job:<11} done in {result.seconds:6.1f} s  {format_summary(result.summary)}")
        results.append(result)
    return results


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
