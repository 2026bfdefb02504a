"""kill -9 at ingest's commit boundaries, then rerun: bronze and the ledger end exactly as an
uninterrupted run leaves them (every raw record once, every file listed once).

Each case crashes ingest at one point, then reruns it normally (in the test's session). The crash
is a real ``seglake run ingest`` process killing itself there (SIGKILL, ``SEGLAKE_FAULT``) at the
points in ``KILLED`` (at all four under ``make soak``), and is simulated in the test process at
the others (see ``killing.py``).
"""
from __future__ import annotations

import shutil
from datetime import date

import pytest
from pyspark.sql import functions as F

from conftest import make_cfg
from killing import abort_in_process, conf_dir, kill_processes_everywhere, run_killed
from seglake.core import tables
from seglake.core.context import JobContext
from seglake.core.runner import run_job

pytestmark = pytest.mark.slow

#: fault point -> what the rerun must find: (files still to ingest, batches whose ledger it repairs)
POINTS = {"before_commit:bronze.events_raw": ("all", 0), "after_commit:bronze.events_raw": (0, 1),
          "before_commit:ops.ingested_files": (0, 1), "after_commit:ops.ingested_files": (0, 0)}

#: where CI kills a real process: between the bronze commit and the ledger's
KILLED = ("after_commit:bronze.events_raw",)


@pytest.fixture(scope="module")
def landing(spark, tmp_path_factory):
    from seglake.devtools.generate import generate

    out = tmp_path_factory.mktemp("kill_ingest_gen")
    counts = generate(spark, out, 800, 20, seed=5, start_date=date(2026, 9, 1), end_date=date(2026, 9, 7))
    return out / "landing", counts


@pytest.mark.parametrize("point", POINTS)
def test_kill_then_rerun_converges(spark, tmp_path, landing, point):
    landing_dir, counts = landing
    lake = tmp_path / "lake"
    shutil.copytree(landing_dir, lake / "_input" / "landing")
    if point in KILLED or kill_processes_everywhere():
        run_killed(lake, "ingest", point, conf_dir(tmp_path))
    else:
        abort_in_process(spark, lake, "ingest", point)
    cfg = make_cfg(lake)
    files = sum(counts["files_by_format"].values())
    # the rerun is not blocked by the dead run's lease, and finds exactly the work left
    rerun = run_job(JobContext(spark, cfg), "ingest").summary
    left, repaired = POINTS[point]
    assert (rerun["files"], rerun["ledger_repaired"]) == (files if left == "all" else left, repaired)
    bronze = tables.read(spark, cfg, "bronze.events_raw")
    ledger = tables.read(spark, cfg, "ops.ingested_files")
    assert bronze.count() == counts["raw_records"]                        # lost 0, duplicated 0
    assert ledger.count() == ledger.select("path").distinct().count() == files
    assert ledger.agg(F.sum("records")).first()[0] == counts["raw_records"]
    # one batch in bronze, and the ledger names that batch for every file
    batches = {r["_batch_id"] for r in bronze.select("_batch_id").distinct().collect()}
    assert len(batches) == 1
    assert {r["batch_id"] for r in ledger.select("batch_id").distinct().collect()} == batches
    # and a third run has nothing to do
    again = run_job(JobContext(spark, cfg), "ingest").summary
    assert again["files"] == 0 and again["ledger_repaired"] == 0
    assert tables.read(spark, cfg, "bronze.events_raw").count() == counts["raw_records"]
