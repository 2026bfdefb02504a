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
    "ingest": "seglake.stages.ingest",
    "clean": "seglake.stages.clean",
    "identity": "seglake.stages.identity",
    "consent": "seglake.stages.consent",     # ops.consent: consent events, --withdraw/--grant
    "sessions": "seglake.stages.enriched",  # silver.enriched_events + silver.sessions
    "features": "seglake.stages.features",
    "segments": "seglake.stages.segments",
    "cluster": "seglake.stages.cluster",
    "propensity": "seglake.stages.propensity",
    "journeys": "seglake.stages.journeys",
    "experiments": "seglake.stages.experiments",
    "clv": "seglake.stages.clv",             # customer lifetime value (BG/NBD, Gamma-Gamma)
    "stream": "seglake.stages.stream",
    "export": "seglake.stages.export",
    "erase": "seglake.stages.erase",
    "maintain": "seglake.stages.maintain",   # table upkeep, run by a scheduler: not in PIPELINE
}

#: the jobs `seglake run all` and `seglake demo` chain, in order.
PIPELINE: tuple[str, ...] = (
    "ingest", "clean", "identity", "consent", "sessions", "features", "clv", "segments", "cluster",
    "propensity", "journeys", "experiments",
)

#: the pipeline jobs whose tables each pipeline job reads (its inputs' writers; see DESIGN.md's flow
#: of tables). A chain (`seglake run all`, `seglake demo`) starts a job once these have finished,
#: so jobs that read nothing of each other run side by side (``runner.parallel_stages``).
AFTER: dict[str, tuple[str, ...]] = {
    "ingest": (),
    "clean": ("ingest",),                                       # bronze.events_raw
    "identity": ("clean",),                                     # silver.events
    "consent": ("clean", "identity"),                           # silver.events, silver.identity_map
    "sessions": ("clean", "identity"),                          # silver.events, the identity map and exclusions
    "features": ("clean", "consent", "sessions"),               # silver.events, ops.consent, enriched events
    "clv": ("consent", "sessions"),                             # ops.consent, silver.enriched_events
    "segments": ("clean", "consent", "sessions", "features", "clv"),   # + gold.customer_features, customer_value
    "cluster": ("consent", "features"),                         # gold.customer_features
    "propensity": ("clean", "identity", "consent", "sessions"),  # its own point-in-time features
    "journeys": ("consent", "sessions", "segments"),            # gold.segment_membership
    "experiments": ("consent", "sessions", "clv", "segments"),  # gold.customer_value, gold.segment_membership
}

#: pipeline jobs that never run side by side with each other: they log to the one MLflow store
#: (a local SQLite file allows one writer at a time) through MLflow's process-wide active experiment
ONE_AT_A_TIME: tuple[frozenset[str], ...] = (frozenset({"clv", "cluster", "propensity"}),)


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
