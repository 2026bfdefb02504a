"""The job verbs of the CLI and where each one is implemented.

A job module exposes ``run(ctx: JobContext) -> dict`` (a summary: label -> value, printed
by the CLI and the demo) and, optionally, ``add_arguments(parser)`` for its own flags.
A verb whose module is absent or has no ``run`` is reported as not available yet.
"""
from __future__ import annotations

import importlib
from types import ModuleType

#: verb -> module, in the order of the flow (DESIGN.md).
JOBS: dict[str, str] = {
    "ingest": "seglake.ingest",
    "clean": "seglake.clean",
    "identity": "seglake.identity",
    "sessions": "seglake.sessions",
    "features": "seglake.features",
    "segments": "seglake.segments",
    "cluster": "seglake.cluster",
    "propensity": "seglake.propensity",
    "journeys": "seglake.journeys",
    "experiments": "seglake.experiments",
    "stream": "seglake.stream",
    "export": "seglake.export",
    "erase": "seglake.erase",
}

#: the jobs `seglake run all` and `seglake demo` chain, in order.
PIPELINE: tuple[str, ...] = (
    "ingest", "clean", "identity", "sessions", "features", "segments", "cluster",
    "propensity", "journeys",
)


class JobNotAvailable(LookupError):
    pass


def load(job: str) -> ModuleType:
    """The module implementing ``job``; JobNotAvailable when it is not built yet."""
    if job not in JOBS:
        raise KeyError(f"unknown job '{job}': choose one of {', '.join(JOBS)}")
    try:
        module = importlib.import_module(JOBS[job])
    except ModuleNotFoundError as exc:
        if exc.name == JOBS[job]:
            raise JobNotAvailable(f"job '{job}' is not available yet in this version of seglake") from None
        raise
    if not callable(getattr(module, "run", None)):
        raise JobNotAvailable(f"job '{job}' is not available yet in this version of seglake")
    return module


def available(job: str) -> bool:
    try:
        load(job)
        return True
    except JobNotAvailable:
        return False
