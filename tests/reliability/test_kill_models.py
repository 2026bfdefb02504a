"""A crash at every boundary of the model stages (cluster, propensity, experiments) and of erase,
then a rerun: the tables equal an uninterrupted run's row for row, the model registry holds the
versions an uninterrupted run registers (none twice), and an erased person leaves no trace.

The chain of ``test_kill_stages.py`` goes on here: on its lakehouse after journeys, cluster,
propensity and experiments run once, uninterrupted (:func:`model_lakes`), with settings its
10 days of data can carry (a 2-day propensity horizon; an A/B test of 5-10 September,
``chain_experiments.yaml``). Every lakehouse keeps its own MLflow store (``_mlflow/``), copied
with it (:func:`killing.copy_lake`), so a rerun sees the registry the killed run left.

Left out of the comparison: MLflow run ids (``model_run_id``, new per run by design) and the
erasure ledger's ``request_id`` (a uuid drawn when the request is first recorded), besides the
columns and logs ``test_kill_stages.py`` leaves out. The MLflow runs of a killed run stay (as
FAILED or, after a kill -9, RUNNING): they are its history, not results.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import make_cfg
from killing import (abort_in_process, assert_stage_equal, conf_dir, copy_lake, kill_processes_everywhere,
                     run_killed)
from seglake.core import pii, tables
from seglake.core.context import JobContext
from seglake.core.runner import run_job
from traces import chosen_person, hash_all, traces

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
MODEL_CHAIN = ("cluster", "propensity", "experiments")
#: what 40 persons over 10 days can carry: evaluation at as_of - 2 days, training 1 and 2 days before;
#: a k sweep of 3..4 (not 3..8): a crash and its rerun are compared with the uninterrupted run, with
#: the same sweep, and two fits per cluster run say that as well as six
OVERRIDES = {"propensity": {"horizon_days": 2, "min_history_days": 2, "train_snapshots": 2, "train_step_days": 1},
             "experiments": {"config_file": str(HERE / "chain_experiments.yaml")},
             "cluster": {"k_min": 3, "k_max": 4}}
POINTS = {
    "cluster": ("after_commit:gold.clusters", "after_commit:gold.cluster_profiles"),
    # the first target's model registered, its alias not moved yet (the other target may be anywhere)
    "propensity": ("propensity.after_register", "after_commit:gold.propensity_scores"),
    "experiments": ("after_commit:gold.experiment_assignments", "after_commit:gold.ab_results"),
}
#: erase: the request recorded; after its first delete (bronze); after the files and the
#: activation, before the identity tables; after the identity edges went but not the map (the
#: person is found again through the map and the ledger's hashes); after the VACUUM, before the
#: ledger says done (the map and its old versions are gone: the count of customer ids comes from
#: the pending ledger row)
ERASE_POINTS = ("erase.after_request", "erase.after_delete:bronze.events_raw", "erase.after_activation",
                "erase.after_delete:silver.identity_edges", "erase.after_vacuum")
IGNORE = ("model_run_id", "request_id")
#: where CI kills a real process: propensity with one model registered and no alias yet, as the
#: first crash of propensity's crash-in-turn test (its in-process abort there would crash the same
#: lakehouse at the same point); ``make soak`` kills a real process at every point as well
KILLED = ("propensity", "propensity.after_register")
KILL_CASES = [(s, p) for s, ps in POINTS.items() for p in ps] if kill_processes_everywhere() else []


@pytest.fixture(scope="module")
def model_lakes(spark, chain_lakes, tmp_path_factory):
    """``{stage: lakehouse after it}`` for journeys (the chain's) and the model stages, run
    uninterrupted in one lakehouse whose MLflow store is its own."""
    root = tmp_path_factory.mktemp("models")
    lake = copy_lake(chain_lakes["journeys"], root / "run")
    out = {"journeys": chain_lakes["journeys"]}
    with _own_mlflow_store():
        for stage in MODEL_CHAIN:
            run_job(JobContext(spark, make_cfg(lake, **OVERRIDES)), stage)
            out[stage] = copy_lake(lake, root / f"after-{stage}")
    return out


class _own_mlflow_store:
    """No ``MLFLOW_TRACKING_URI`` in the block: each job logs to its lakehouse's own store."""

    def __enter__(self):
        self.previous = os.environ.pop("MLFLOW_TRACKING_URI", None)

    def __exit__(self, *exc):
        if self.previous is not None:
            os.environ["MLFLOW_TRACKING_URI"] = self.previous


def _registry(lake: Path) -> dict[str, tuple[list[tuple[int, dict]], int | None]]:
    """``model -> ([(version, its tags)], the champion alias's version)`` in the lakehouse's own
    store (the tags: model kind, target, as-of, candidate key, held-out metrics)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{lake / '_mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    out = {}
    for model in client.search_registered_models():
        found = client.search_model_versions(f"name = '{model.name}'")
        versions = sorted(((int(v.version), dict(v.tags)) for v in found), key=lambda vt: vt[0])
        out[model.name] = (versions, int(model.aliases["champion"]) if "champion" in model.aliases else None)
    return out


def _assert_equal(spark, before: Path, lake: Path, reference: Path) -> list[str]:
    compared = assert_stage_equal(spark, before, lake, reference, ignore=IGNORE)
    assert _registry(lake) == _registry(reference)
    return compared


def _before(model_lakes, stage: str) -> Path:
    order = ("journeys",) + MODEL_CHAIN
    return model_lakes[order[order.index(stage) - 1]]


@pytest.mark.parametrize("stage", MODEL_CHAIN)
def test_a_model_stage_crashed_at_each_boundary_in_turn_then_rerun_equals_an_uninterrupted_run(
        spark, tmp_path, model_lakes, monkeypatch, stage):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = _before(model_lakes, stage)
    lake = copy_lake(before, tmp_path / "lake")
    for point in POINTS[stage]:          # each run recovers from the crash before it, then crashes
        if (stage, point) == KILLED and not kill_processes_everywhere():
            run_killed(lake, stage, point, conf_dir(tmp_path, **OVERRIDES))   # a real process, kill -9
        else:
            abort_in_process(spark, lake, stage, point, overrides=OVERRIDES)
    run_job(JobContext(spark, make_cfg(lake, **OVERRIDES)), stage)
    _assert_equal(spark, before, lake, model_lakes[stage])
    if stage == "propensity":   # the registries were equal: one version per target, the champion
        assert {m: ([v for v, _ in vs], c) for m, (vs, c) in _registry(lake).items()} == {
            "seglake-churn": ([1], 1), "seglake-purchase": ([1], 1)}


@pytest.mark.parametrize("stage,point", KILL_CASES, ids=[f"{s}-{p}" for s, p in KILL_CASES])
def test_kill_9_of_a_model_stage_then_rerun_equals_an_uninterrupted_run(spark, tmp_path, model_lakes, monkeypatch,
                                                                         stage, point):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = _before(model_lakes, stage)
    lake = copy_lake(before, tmp_path / "lake")
    run_killed(lake, stage, point, conf_dir(tmp_path, **OVERRIDES))
    run_job(JobContext(spark, make_cfg(lake, **OVERRIDES)), stage)
    _assert_equal(spark, before, lake, model_lakes[stage])


@pytest.fixture(scope="module")
def erased(spark, chain_lakes, model_lakes, tmp_path_factory):
    """The person erased (by one email) and the lakehouse after an uninterrupted erase of them."""
    before = model_lakes["experiments"]
    cfg = make_cfg(before)
    _, identifiers, customer_id = chosen_person(spark, cfg, chain_lakes["generated"] / "_input",
                                                min_emails=1, min_devices=2)
    email = next(v for t, v in identifiers if t == "email")
    reference = copy_lake(before, tmp_path_factory.mktemp("erased") / "lake")
    with _own_mlflow_store():
        summary = run_job(JobContext(spark, make_cfg(reference), args={"identifier": [email]}), "erase").summary
    assert summary["customers_matched"] == 1 and summary["rows_removed"] > 0
    return {"email": email, "identifiers": identifiers, "customer_id": customer_id, "reference": reference,
            "summary": summary}


def test_erase_crashed_at_each_step_in_turn_then_rerun_equals_an_uninterrupted_erase_and_leaves_no_trace(
        spark, tmp_path, model_lakes, erased, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = model_lakes["experiments"]
    lake = copy_lake(before, tmp_path / "lake")
    args = {"identifier": [erased["email"]]}
    for point in ERASE_POINTS:      # each run recovers from the crash before it, then crashes
        abort_in_process(spark, lake, "erase", point, args)
    summary = run_job(JobContext(spark, make_cfg(lake), args=args), "erase").summary
    assert summary["resumed"] is True
    # the ledger counts what every run removed: the same rows and tables as one uninterrupted run
    assert summary["rows_removed"] == erased["summary"]["rows_removed"]
    assert summary["removed_by_table"] == erased["summary"]["removed_by_table"]
    compared = _assert_equal(spark, before, lake, erased["reference"])
    assert "ops.erasure_requests" in compared and "silver.identity_map" in compared

    raw_values = [v for _, v in erased["identifiers"]]
    hashed = hash_all(spark, pii.salt(make_cfg(lake)), raw_values)
    # the search sees values: another customer's id, searched for in the same pass over the files
    other = (tables.read(spark, make_cfg(lake), "silver.identity_map")
             .where(f"customer_id != '{erased['customer_id']}'").select("customer_id").first()[0])
    # landing files and the generator's truth (_input) are outside erasure by design
    found = traces(lake, raw_values + [erased["customer_id"], other], hashed, skip=("_input",))
    hits = [(f, v) for f, v in found if v != other]
    assert hits == [], hits[:20]
    assert [(f, v) for f, v in found if v == other] != []
