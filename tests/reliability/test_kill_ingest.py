"""kill -9 at ingest's commit boundaries, then rerun: bronze and the ledger end exactly as an
uninterrupted run leaves them (every raw record once, every file listed once).

Each case runs ``seglake run ingest`` in its own process with ``SEGLAKE_FAULT`` naming the
point where it kills itself (SIGKILL, see ``seglake.core.faults``), then reruns it normally.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from conftest import REPO, make_cfg
from seglake.core import tables

pytestmark = pytest.mark.slow

POINTS = ("before_commit:bronze.events_raw", "after_commit:bronze.events_raw",
          "before_commit:ops.ingested_files", "after_commit:ops.ingested_files")


@pytest.fixture(scope="module")
def landing(spark, tmp_path_factory):
    from seglake.devtools.generate import generate

    out = tmp_path_factory.mktemp("kill_ingest_gen")
    counts = generate(spark, out, 800, 20, seed=5, start_date=date(2026, 9, 1), end_date=date(2026, 9, 7))
    return out / "landing", counts


def _ingest(lake: Path, fault: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SEGLAKE_FAULT"}
    if fault:
        env["SEGLAKE_FAULT"] = fault
    exe = Path(sys.executable).with_name("seglake")
    return subprocess.run([str(exe), "run", "ingest", "--lakehouse", str(lake), "--conf-dir", str(REPO / "conf")],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("point", POINTS)
def test_kill_then_rerun_converges(spark, tmp_path, landing, point):
    landing_dir, counts = landing
    lake = tmp_path / "lake"
    shutil.copytree(landing_dir, lake / "_input" / "landing")
    killed = _ingest(lake, point)
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
    rerun = _ingest(lake, None)
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    cfg = make_cfg(lake)
    bronze = tables.read(spark, cfg, "bronze.events_raw")
    ledger = tables.read(spark, cfg, "ops.ingested_files")
    files = sum(counts["files_by_format"].values())
    assert bronze.count() == counts["raw_records"]                        # lost 0, duplicated 0
    assert ledger.count() == ledger.select("path").distinct().count() == files
    assert ledger.agg(F.sum("records")).first()[0] == counts["raw_records"]
    # one batch in bronze, and the ledger names that batch for every file
    batches = {r["_batch_id"] for r in bronze.select("_batch_id").distinct().collect()}
    assert len(batches) == 1
    assert {r["batch_id"] for r in ledger.select("batch_id").distinct().collect()} == batches
    # and a third run has nothing to do
    again = _ingest(lake, None)
    assert again.returncode == 0
    assert tables.read(spark, cfg, "bronze.events_raw").count() == counts["raw_records"]
