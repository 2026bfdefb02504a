"""kill -9 at every commit boundary of clean, identity and sessions, then rerun: every table of the
lakehouse equals, row for row, the tables of an uninterrupted run of the same stage.

For each stage, the lakehouse as the previous stages left it is copied; ``seglake run <stage>``
runs in its own process with ``SEGLAKE_FAULT=after_commit:<table>`` (or ``before_commit``) and
kills itself there (SIGKILL, :mod:`seglake.core.faults`); then the stage runs again normally.
Columns that name the run or its clock (``_run_id``, ``run_id``, ``*_at`` but ``_ingested_at``)
are left out of the comparison, and so are the per-run logs (run log, lease table, identity runs).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from conftest import REPO, make_cfg
from seglake.core import tables
from seglake.core.context import JobContext
from seglake.core.runner import run_job

pytestmark = pytest.mark.slow

#: the commits each stage makes, in order (a kill after each, and one before the first)
POINTS = {
    "clean": ("before_commit:silver.events_quarantine", "after_commit:silver.events_quarantine",
              "after_commit:silver.events", "after_commit:ops.clean_batches"),
    "identity": ("after_commit:silver.identity_map", "after_commit:silver.identity_edges",
                 "after_commit:silver.identity_excluded", "after_commit:ops.identity_runs"),
    "sessions": ("after_commit:silver.enriched_events", "after_commit:silver.sessions"),
}
ORDER = ("ingest", "clean", "identity", "sessions")
#: per-run logs: a killed run that got as far as its own log row keeps it, and its rerun adds one
SKIP_TABLES = {"ops.run_log", "ops.job_leases", "ops.identity_runs"}


@pytest.fixture(scope="module")
def stages(spark, tmp_path_factory):
    """Lakehouses after each stage of an uninterrupted in-process run: {stage: folder}."""
    from seglake.devtools.generate import generate

    root = tmp_path_factory.mktemp("kill_stages")
    lake = root / "run"
    generate(spark, lake / "_input", 1500, 40, seed=11, start_date=date(2026, 9, 1), end_date=date(2026, 9, 10))
    cfg = make_cfg(lake)
    out = {}
    for stage in ORDER:
        run_job(JobContext(spark, cfg, args={"skip_docs": True}), stage)
        out[stage] = root / f"after-{stage}"
        shutil.copytree(lake, out[stage])
    return out


def _seglake(lake: Path, stage: str, fault: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SEGLAKE_FAULT"}
    if fault:
        env["SEGLAKE_FAULT"] = fault
    exe = Path(sys.executable).with_name("seglake")
    args = [str(exe), "run", stage, "--lakehouse", str(lake), "--conf-dir", str(REPO / "conf")]
    if stage == "clean":
        args.append("--skip-docs")
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)


def _tables(lake: Path) -> list[str]:
    return sorted(f"{layer.name}.{t.name}" for layer in lake.iterdir() if layer.is_dir()
                  for t in layer.iterdir() if (t / "_delta_log").is_dir())


def _rows(spark, lake: Path, table: str) -> list[tuple]:
    df = tables.read(spark, make_cfg(lake), table)
    keep = sorted(c for c in df.columns
                  if c not in ("_run_id", "run_id") and (not c.endswith("_at") or c == "_ingested_at"))
    return sorted((tuple(str(v) for v in r) for r in df.select(*keep).collect()))


CASES = [(stage, point) for stage, points in POINTS.items() for point in points]


@pytest.mark.parametrize("stage,point", CASES, ids=[f"{s}-{p}" for s, p in CASES])
def test_kill_at_a_commit_then_rerun_equals_an_uninterrupted_run(spark, tmp_path, stages, stage, point):
    before = stages[ORDER[ORDER.index(stage) - 1]]
    reference = stages[stage]
    lake = tmp_path / "lake"
    shutil.copytree(before, lake)
    killed = _seglake(lake, stage, point)
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
    rerun = _seglake(lake, stage, None)
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    assert _tables(lake) == _tables(reference)
    for table in _tables(reference):
        if table in SKIP_TABLES:
            continue
        got, want = _rows(spark, lake, table), _rows(spark, reference, table)
        assert len(got) == len(want), (table, len(got), len(want))      # nothing lost, nothing twice
        assert got == want, table
