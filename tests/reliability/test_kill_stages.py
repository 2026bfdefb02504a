"""A crash at every commit boundary of the writing stages after ingest, then a rerun: every table
of the lakehouse equals, row for row, the tables of an uninterrupted run of the same stage.

Two kinds of crash (see ``killing.py``):

* **in the test process, at every boundary of a stage in turn**: the run is stopped at the
  stage's first commit boundary; the rerun (a recovery) is stopped at the second; its rerun at
  the third, and so on; then one run goes to the end. So every boundary is crashed once, and
  every crash but the first hits a run that was itself recovering from one.
* **kill -9 of a real ``seglake run <stage>`` process** (its own JVM and lease, no cleanup) at
  one boundary, then a normal rerun: under ``make soak`` (``SEGLAKE_KILL_PROCESSES=1``), at every
  one. Not in CI: every boundary here is crashed in process above, and what only a real kill
  shows (a dead process's lease left behind, no ``finally`` run) CI checks at the real kills of
  ingest, propensity (two targets registering in threads) and the stream.

Columns that name the run or its clock (``_run_id``, ``run_id``, ``*_at`` but ``_ingested_at``)
are left out of the comparison, and so are the per-run logs (run log, lease table, identity runs).

The model stages (cluster, propensity, experiments) and erase: ``test_kill_models.py``.
"""
from __future__ import annotations

import shutil

import pytest

from conftest import CHAIN, CHAIN_ARGS, make_cfg
from killing import abort_in_process, assert_stage_equal, conf_dir, kill_processes_everywhere, run_killed
from seglake.core.context import JobContext
from seglake.core.runner import run_job

pytestmark = pytest.mark.slow

#: the commits each stage makes, in order (a crash after each, and one before clean's first)
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
#: a real process killed at every boundary, under make soak only: CI crashes each in process
#: (its one real kill here, identity's, ~1 min for a JVM, repeated a boundary crashed in process)
KILL_CASES = [(stage, point) for stage, points in POINTS.items() for point in points]


def _lakes(chain_lakes, stage: str, tmp_path):
    before = chain_lakes[CHAIN[CHAIN.index(stage) - 1]]
    lake = tmp_path / "lake"
    shutil.copytree(before, lake)
    return before, lake, chain_lakes[stage]


@pytest.mark.parametrize("stage", POINTS)
def test_a_crash_at_each_commit_in_turn_then_a_rerun_equals_an_uninterrupted_run(spark, tmp_path, chain_lakes,
                                                                                  stage):
    before, lake, reference = _lakes(chain_lakes, stage, tmp_path)
    for point in POINTS[stage]:          # each run recovers from the crash before it, then crashes
        abort_in_process(spark, lake, stage, point, CHAIN_ARGS.get(stage))
    run_job(JobContext(spark, make_cfg(lake), args=CHAIN_ARGS.get(stage, {})), stage)
    assert_stage_equal(spark, before, lake, reference)


@pytest.mark.skipif(not kill_processes_everywhere(), reason="on demand: make soak (SEGLAKE_KILL_PROCESSES=1)")
@pytest.mark.parametrize("stage,point", KILL_CASES, ids=[f"{s}-{p}" for s, p in KILL_CASES])
def test_kill_9_of_the_process_at_a_commit_then_rerun_equals_an_uninterrupted_run(spark, tmp_path, chain_lakes,
                                                                                   stage, point):
    before, lake, reference = _lakes(chain_lakes, stage, tmp_path)
    run_killed(lake, stage, point, conf_dir(tmp_path), *(["--skip-docs"] if stage == "clean" else []))
    # the rerun is not blocked by the dead process's lease
    run_job(JobContext(spark, make_cfg(lake), args=CHAIN_ARGS.get(stage, {})), stage)
    assert_stage_equal(spark, before, lake, reference)
