"""A scheduler's rerun of day D (``--as-of D``) re-derives day D in clean, identity and sessions.

The reliability chain's landing files (40 persons, 1-10 September 2026) are ingested as a
scheduler does, one run per day (``ingest --as-of D``), and cleaned after each, with a
``standardize.yaml`` that lost its alias ``pageview: page_view``: the generator's ``pageview``
spelling (6 records in the files of 4 September) is quarantined as ``unknown_event_type``. Then
the alias is restored and only day 4 September is rerun: ``clean``, ``identity`` and
``sessions`` with ``--as-of 2026-09-05``.

The expectation is built independently: a second lakehouse runs the same days with the alias
present on 4 September only (each day's clean reads that day's configuration). Both lakehouses
must then hold the same silver events, quarantine, identity map and edges, enriched events and
sessions, row for row. A crash at every commit of the rebuild, each recovered by a plain
``clean`` (no ``--as-of``) and followed by plain ``identity`` and ``sessions`` runs, must end in
the same tables too.
"""
from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest
import yaml
from pyspark.sql import functions as F

from conftest import REPO, make_cfg
from killing import BATCH_COLUMNS, abort_in_process, rows
from seglake.core import tables
from seglake.core.context import JobContext
from seglake.core.runner import run_job

pytestmark = pytest.mark.slow

DAYS = (date(2026, 9, 4), date(2026, 9, 5), date(2026, 9, 6))   # --as-of of the three daily runs
REBUILT = date(2026, 9, 5)        # the rerun: day 4 September
COMPARED = ("silver.events", "silver.events_quarantine", "silver.identity_map", "silver.identity_edges",
            "silver.sessions", "silver.enriched_events")
#: the rebuild's commits: its request, then the writes of a clean
POINTS = ("after_commit:ops.clean_rebuilds", "after_commit:silver.events_quarantine", "after_commit:silver.events",
          "after_commit:ops.clean_batches")


@pytest.fixture(scope="module")
def confs(tmp_path_factory) -> dict[str, Path]:
    """standardize.yaml as shipped (``fixed``) and without its ``pageview`` alias (``broken``)."""
    root = tmp_path_factory.mktemp("std")
    text = (REPO / "conf" / "standardize.yaml").read_text()
    std = yaml.safe_load(text)
    assert std["event_types"]["aliases"].pop("pageview") == "page_view"
    (root / "fixed.yaml").write_text(text)
    (root / "broken.yaml").write_text(yaml.safe_dump(std, sort_keys=False))
    return {"broken": root / "broken.yaml", "fixed": root / "fixed.yaml"}


def _cfg(lake: Path, std: Path):
    return make_cfg(lake, clean={"standardize_file": str(std)})


def _run(spark, lake: Path, std: Path, job: str, as_of: date | None = None, **args):
    return run_job(JobContext(spark, _cfg(lake, std), as_of=as_of, args={"skip_docs": True, **args}), job).summary


def _daily(spark, chain_lakes, lake: Path, conf_of_day) -> None:
    """The three daily runs: ingest --as-of D and clean each day, then identity and sessions."""
    shutil.copytree(chain_lakes["generated"], lake)
    for day in DAYS:
        _run(spark, lake, conf_of_day(day), "ingest", as_of=day)
        _run(spark, lake, conf_of_day(day), "clean", as_of=day)
    _run(spark, lake, conf_of_day(DAYS[-1]), "identity")
    _run(spark, lake, conf_of_day(DAYS[-1]), "sessions")


@pytest.fixture(scope="module")
def lakes(spark, chain_lakes, confs, tmp_path_factory):
    root = tmp_path_factory.mktemp("rebuild")
    broken = root / "broken"
    _daily(spark, chain_lakes, broken, lambda day: confs["broken"])
    reference = root / "reference"
    _daily(spark, chain_lakes, reference, lambda day: confs["fixed" if day == REBUILT else "broken"])
    return {"broken": broken, "reference": reference}


def _assert_like_reference(spark, lake: Path, lakes: dict) -> None:
    for table in COMPARED:
        # the two lakehouses ingested the same files in runs of their own: batch ids and times,
        # and the landing files' paths (under the root that ingested them) differ
        got = rows(spark, lake, table, ignore=BATCH_COLUMNS, root_as_text=lakes["broken"])
        want = rows(spark, lakes["reference"], table, ignore=BATCH_COLUMNS, root_as_text=True)
        assert len(got) == len(want), (table, len(got), len(want))
        assert got == want, table
    assert tables.read(spark, make_cfg(lake), "ops.clean_rebuilds").count() == 0   # every rebuild finished


def test_the_daily_runs_quarantine_the_spelling_and_the_reference_not_on_its_day(spark, lakes):
    def unknown(lake) -> dict[str, int]:
        q = tables.read(spark, make_cfg(lake), "silver.events_quarantine").where(
            F.col("reason") == "unknown_event_type")
        day = F.regexp_extract("_source_file", r"(\d{4}-\d{2}-\d{2})", 1)
        return {r["day"]: r["n"] for r in q.groupBy(day.alias("day")).agg(F.count("*").alias("n")).collect()}
    broken, reference = unknown(lakes["broken"]), unknown(lakes["reference"])
    # the data is honest: the spelling is on every day, and the fix matters only on the rebuilt one
    assert broken.get("2026-09-04", 0) >= 5 and broken.get("2026-09-05", 0) >= 3
    assert "2026-09-04" not in reference
    assert {d: n for d, n in broken.items() if d != "2026-09-04"} == reference


def test_rerun_of_one_day_with_the_fix_equals_the_days_run_with_the_fix(spark, lakes, confs, tmp_path):
    lake = tmp_path / "lake"
    shutil.copytree(lakes["broken"], lake)
    summary = _run(spark, lake, confs["fixed"], "clean", as_of=REBUILT)
    assert summary["rebuilt_batches"] == 1 and summary["inserted"] > 0
    _run(spark, lake, confs["fixed"], "identity", as_of=REBUILT)
    _run(spark, lake, confs["fixed"], "sessions", as_of=REBUILT)
    _assert_like_reference(spark, lake, lakes)
    # a second rerun of the day changes no silver row (its MERGE commits, matching nothing to change)
    again = _run(spark, lake, confs["fixed"], "clean", as_of=REBUILT)
    assert (again["inserted"], again["rebuilt_rows_updated"], again["rebuilt_rows_deleted"]) == (0, 0, 0)
    _assert_like_reference(spark, lake, lakes)


def test_a_rebuild_crashed_at_each_commit_is_finished_by_the_next_plain_clean(spark, lakes, confs, tmp_path):
    lake = tmp_path / "lake"
    shutil.copytree(lakes["broken"], lake)
    fixed = {"clean": {"standardize_file": str(confs["fixed"])}}
    abort_in_process(spark, lake, "clean", POINTS[0], {"skip_docs": True}, overrides=fixed, as_of=REBUILT)
    for point in POINTS[1:]:     # each recovery is a plain clean (no --as-of): the listed batch is finished
        abort_in_process(spark, lake, "clean", point, {"skip_docs": True}, overrides=fixed)
    _run(spark, lake, confs["fixed"], "clean")
    # plain runs downstream too (as the next day's runs would be): they find the batch cleaned again
    _run(spark, lake, confs["fixed"], "identity")
    _run(spark, lake, confs["fixed"], "sessions")
    _assert_like_reference(spark, lake, lakes)
