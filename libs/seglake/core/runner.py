"""Chaining jobs: `seglake run all` and `seglake demo`.

Each job runs with a progress line, its timing and its summary; a failing job stops the
chain with a clear message naming it (it can then be rerun alone with `seglake run <job>`).
Jobs are idempotent, so rerunning the chain rebuilds the same tables.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from seglake import registry
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


def run_job(ctx: JobContext, job: str) -> StageResult:
    """Run one job by verb; JobNotAvailable propagates, anything else becomes JobFailed."""
    module = registry.load(job)
    started = time.perf_counter()
    try:
        summary = module.run(ctx) or {}
    except Exception as exc:  # noqa: BLE001 - re-raised with the job's name
        raise JobFailed(job, exc) from exc
    return StageResult(job, time.perf_counter() - started, dict(summary))


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
