"""The Databricks notebooks in notebooks/: source format, glue only, and a local run of each."""
from __future__ import annotations

import ast
import re
import runpy
from pathlib import Path

import pytest

from seglake.core import tables

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = {
    "segment_overview.py": ("gold.segment_membership", "gold.segment_changes", "gold.segment_health"),
    "cluster_profiles.py": ("gold.clusters", "gold.cluster_profiles"),
    "journeys.py": ("gold.transition_matrix", "gold.journey_metrics", "gold.journey_paths"),
    "experiments.py": ("gold.experiment_assignments", "gold.ab_results"),
    "customer_value.py": ("gold.customer_value", "gold.segment_membership"),
}
#: the pipeline stage a notebook's tables need (default: journeys)
STAGES = {"experiments.py": "experiments", "customer_value.py": "segments"}


def test_every_notebook_is_listed():
    assert sorted(p.name for p in (REPO / "notebooks").glob("*.py")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_is_databricks_source_and_glue_only(name):
    text = (REPO / "notebooks" / name).read_text()
    assert text.splitlines()[0] == "# Databricks notebook source"
    assert text.count("\n# COMMAND ----------\n") >= 2
    tree = ast.parse(text)
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert imports and all(isinstance(n, ast.ImportFrom) and n.module == "seglake" for n in imports), \
        "notebooks import the library only"
    logic = [type(n).__name__ for n in ast.walk(tree)
             if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.For, ast.While, ast.If, ast.Lambda))]
    assert logic == [], f"notebooks hold no logic, found {logic}"
    assert "%run" not in text and "sys.path" not in text


class Capture:
    """Stands in for Databricks' display(): keeps what each cell displayed, collected (small)."""

    def __init__(self):
        self.frames = []

    def __call__(self, df):
        self.frames.append((df.columns, [r.asDict() for r in df.collect()]))


@pytest.fixture
def run_notebook(spark, monkeypatch):
    """Run a notebook file like Databricks would, against ``lakehouse``; restore the session conf."""
    before = spark.conf.get("spark.sql.shuffle.partitions")

    def run(name: str, lakehouse: str, display=None, **databricks) -> None:
        """``databricks``: more Databricks globals for the notebook (e.g. ``displayHTML``)."""
        monkeypatch.setenv("SEGLAKE_LAKEHOUSE", lakehouse)
        monkeypatch.setenv("SEGLAKE_ENV", "local")
        monkeypatch.delenv("SEGLAKE_AS_OF", raising=False)
        init = {**({"display": display} if display is not None else {}), **databricks}
        runpy.run_path(str(REPO / "notebooks" / name), init_globals=init, run_name="__main__")

    yield run
    spark.conf.set("spark.sql.shuffle.partitions", before)


def test_segment_overview_displays_sizes_and_changes(spark, cfg, run_notebook):
    from test_report import _write_small_lakehouse

    _write_small_lakehouse(spark, cfg)
    if not tables.exists(spark, cfg, "gold.segment_health"):
        tables.overwrite(spark.createDataFrame([("2026-11-01", "vip", 4)], "as_of_date string, segment string, size long")
                         .selectExpr("cast(as_of_date as date) as_of_date", "segment", "size"), cfg, "gold.segment_health")
    shown = Capture()
    run_notebook("segment_overview.py", cfg.lakehouse, shown)
    sizes, changes, health = shown.frames
    assert {(str(r["as_of_date"]), r["segment"], r["customers"]) for r in sizes[1]} == {
        ("2026-10-01", "vip", 3), ("2026-10-01", "casual", 5), ("2026-11-01", "vip", 4), ("2026-11-01", "casual", 3)}
    assert {(r["segment"], r["entered"], r["exited"]) for r in changes[1]} == {("vip", 1, 0), ("casual", 0, 2)}
    assert [r["segment"] for r in health[1]] == ["vip"]


def test_journeys_notebook_prints_without_display(spark, cfg, run_notebook, capsys):
    from test_report import _write_small_lakehouse

    _write_small_lakehouse(spark, cfg)
    tables.overwrite(spark.createDataFrame([("full", None, "start>browse>exit", 6, 0.6, 1)],
                                           "path_kind string, k int, path string, journeys long, share double, rank int")
                     .selectExpr("*", "cast('2026-11-01' as date) as_of_date"), cfg, "gold.journey_paths")
    run_notebook("journeys.py", cfg.lakehouse)
    out = capsys.readouterr().out
    # transition matrix, wide: browse -> cart 0.4, browse -> exit 0.6
    assert re.search(r"\|browse\s*\|NULL\s*\|0\.4\s*\|NULL\s*\|0\.6\s*\|", out), out
    # funnel: start 200 -> product_view 120 (rate 0.6) -> cart 30 (rate 0.25, drop-off 0.75)
    assert re.search(r"\|0\s*\|start\s*\|200\s*\|", out)
    assert re.search(r"\|2\s*\|cart\s*\|30\s*\|0\.25\s*\|0\.75\s*\|", out)
    assert "start>browse>exit" in out


def test_experiments_notebook_shows_assignments_srm_results_and_chart(spark, cfg, run_notebook, capsys):
    from test_report import _write_ab_results

    _write_ab_results(spark, cfg)
    assigned = [("exp_checkout_v2", f"c{i}", "A" if i < 3 else "B", i, [], "logged") for i in range(5)] \
        + [("free_shipping_loyal", f"c{i}", "control" if i % 2 else "treatment", i, ["vip"], "hash") for i in range(4)]
    tables.overwrite(spark.createDataFrame(assigned, "experiment string, customer_id string, variant string, "
                                                     "bucket int, segments array<string>, assignment string")
                     .selectExpr("*", "cast('2026-10-01' as date) assigned_on", "'run-ab' run_id"),
                     cfg, "gold.experiment_assignments")
    shown, html = Capture(), []
    run_notebook("experiments.py", cfg.lakehouse, shown, displayHTML=html.append)
    counts, srm, primary = shown.frames
    assert [(r["experiment"], r["variant"], r["customers"], r["share"]) for r in counts[1]] == [
        ("exp_checkout_v2", "A", 3, 0.6), ("exp_checkout_v2", "B", 2, 0.4),
        ("free_shipping_loyal", "control", 2, 0.5), ("free_shipping_loyal", "treatment", 2, 0.5)]
    assert [(r["experiment"], r["segment"], r["check"]) for r in srm[1]] == [
        ("exp_checkout_v2", "(all)", "SAMPLE RATIO MISMATCH: results not trustworthy"),
        ("free_shipping_loyal", "(all)", "ok"), ("free_shipping_loyal", "repeat_buyers", "ok"),
        ("free_shipping_loyal", "vip", "ok")]
    assert {r["metric"] for r in primary[1]} == {"conversion_rate"}
    assert [(r["experiment"], r["segment"], r["rel_uplift"], r["rel_ci_low"], r["rel_ci_high"]) for r in primary[1]] == [
        ("exp_checkout_v2", "(all)", 0.25, 0.05, 0.45), ("free_shipping_loyal", "(all)", 0.0123, -0.0456, 0.0789),
        ("free_shipping_loyal", "repeat_buyers", -0.02, -0.13, 0.09), ("free_shipping_loyal", "vip", 0.2, 0.1, 0.3)]
    # the chart cell: the report's uplift charts through displayHTML, one inline PNG per experiment
    assert len(html) == 1 and html[0].count("<img class='chart'") == 2 and "data:image/png;base64," in html[0]
    # without Databricks (no displayHTML) the chart cell prints a note instead
    run_notebook("experiments.py", cfg.lakehouse)
    assert "uplift charts of 2 experiment(s) rendered" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_on_the_pipeline_lakehouse(name, spark, pipeline_through, run_notebook):
    cfg, _ = pipeline_through(STAGES.get(name, "journeys"))
    absent = [t for t in NOTEBOOKS[name] if not tables.exists(spark, cfg, t)]
    if absent:
        pytest.skip(f"{name} reads {', '.join(absent)}, which the pipeline has not built (stage not available yet)")
    shown = Capture()
    run_notebook(name, cfg.lakehouse, shown)
    assert len(shown.frames) >= 2
    for columns, rows in shown.frames:
        assert columns and rows, f"{name} displayed an empty result"
