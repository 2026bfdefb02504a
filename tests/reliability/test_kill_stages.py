"""kill -9 at every commit boundary of the writing stages after ingest, then rerun: every table
of the lakehouse equals, row for row, the tables of an uninterrupted run of the same stage.

For each stage, the lakehouse as the previous stages left it is copied; ``seglake run <stage>``
runs in its own process with ``SEGLAKE_FAULT=after_commit:<table>`` (or ``before_commit``) and
kills itself there (SIGKILL, :mod:`seglake.core.faults`); then the stage runs again, normally.
Columns that name the run or its clock (``_run_id``, ``run_id``, ``*_at`` but ``_ingested_at``)
are left out of the comparison, and so are the per-run logs (run log, lease table, identity runs).

Not covered here: cluster and propensity (each one partition overwrite, plus MLflow runs and
registry versions that a rerun numbers anew), and erase (its own tests).
"""
from __future__ import annotations

import shutil
from datetime import date

import pytest

from conftest import make_cfg
from killing import changed_tables, conf_dir, delta_tables, rows, run_killed
from seglake.core.context import JobContext
from seglake.core.runner import run_job

pytestmark = pytest.mark.slow

#: the commits each stage makes, in order (a kill after each, and one before the first)
POINTS = {
    "clean": ("before_commit:silver.events_quarantine", "after_commit:silver.events_quarantine",
              "after_commit:silver.events", "after_commit:ops.clean_batches"),
    "identity": ("after_commit:silver.identity_map", "after_commit:silver.identity_edges",
                 "after_commit:silver.identity_excluded", "after_commit:ops.identity_runs"),
    "consent": ("after_commit:ops.consent",),
    "sessions": ("after_commit:silver.enriched_events", "after_commit:silver.sessions"),
    "features": ("after_commit:gold.customer_features", "after_commit:gold.feature_scaling"),
    "segments": ("after_commit:gold.segment_membership", "after_commit:gold.segment_changes",
                 "after_commit:gold.segment_overlap", "after_commit:gold.segment_health"),
    "journeys": ("after_commit:gold.transition_matrix", "after_commit:gold.journey_paths",
                 "after_commit:gold.journey_metrics"),
}
ORDER = ("ingest", "clean", "identity", "consent", "sessions", "features", "segments", "journeys")
#: per-run logs: a killed run that got as far as its own log row keeps it, and its rerun adds one
SKIP_TABLES = {"ops.run_log", "ops.job_leases", "ops.identity_runs"}
ARGS = {"clean": {"skip_docs": True}}


@pytest.fixture(scope="module")
def stages(spark, tmp_path_factory):
    """Lakehouses after each stage of an uninterrupted in-process run: {stage: folder}, and the
    configuration folder the killed processes use."""
    from seglake.devtools.generate import generate

    root = tmp_path_factory.mktemp("kill_stages")
    lake = root / "run"
    generate(spark, lake / "_input", 1500, 40, seed=11, start_date=date(2026, 9, 1), end_date=date(2026, 9, 10))
    cfg = make_cfg(lake)
    out = {}
    for stage in ORDER:
        run_job(JobContext(spark, cfg, args=ARGS.get(stage, {})), stage)
        out[stage] = root / f"after-{stage}"
        shutil.copytree(lake, out[stage])
    return out, conf_dir(root)


CASES = [(stage, point) for stage, points in POINTS.items() for point in points]


@pytest.mark.parametrize("stage,point", CASES, ids=[f"{s}-{p}" for s, p in CASES])
def test_kill_at_a_commit_then_rerun_equals_an_uninterrupted_run(spark, tmp_path, stages, stage, point):
    lakes, conf = stages
    before = lakes[ORDER[ORDER.index(stage) - 1]]
    reference = lakes[stage]
    lake = tmp_path / "lake"
    shutil.copytree(before, lake)
    run_killed(lake, stage, point, conf, *(["--skip-docs"] if stage == "clean" else []))
    run_job(JobContext(spark, make_cfg(lake), args=ARGS.get(stage, {})), stage)

    assert delta_tables(lake) == delta_tables(reference)
    compared = [t for t in changed_tables(before, lake, reference) if t not in SKIP_TABLES]
    assert compared, "the stage changed no table"
    for table in compared:
        got, want = rows(spark, lake, table), rows(spark, reference, table)
        assert len(got) == len(want), (table, len(got), len(want))      # nothing lost, nothing twice
        assert got == want, table
