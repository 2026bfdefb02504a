"""Erasure on a full pipeline run (slow): a person erased by one email leaves no trace.

On a copy of the shared end-to-end lakehouse (every stage run on generated data, MLflow store
and Data Docs included) the HTML report is built, a multi-device person with two or more
emails (from the generator's ground truth) is erased by ONE email through the stage runner,
identity is rebuilt (``--full``), every later stage of the chain is rerun and the report built
again. Then every file under the lakehouse is searched for each of the person's raw
identifiers, their keyed hashes (the same function the pipeline uses) and the old customer_id:
every Parquet file decoded with pyarrow (old table versions, ``_delta_log`` checkpoints, MLflow
Spark-model data), every other file read as text (``_delta_log`` JSON, .crc, Great Expectations
results and Data Docs, the report, MLflow's SQLite store and artifacts).

What it cannot cover:
- landing files and the generator's ground truth (``_input/``): outside erasure by design (not
  copied here);
- ingest and clean are not rerun: the copy's ``ops.ingested_files`` names the original landing
  files, so an ingest here would re-read every file; suppression of re-ingested records is
  covered by ``tests/test_erase.py`` (``erased_filter``) and needs clean's wiring;
- streaming checkpoints and state stores (no stream runs in the chain), Spark event logs and
  driver logs, a remote MLflow server or object store;
- the Data Docs are not rebuilt (clean is not rerun): erase deletes the files that held the
  person, the test checks what remains.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from conftest import E2E_PROPENSITY, make_cfg
from seglake import registry
from seglake.core import pii, tables
from seglake.core.context import JobContext
from seglake.core.runner import run_chain, run_job
from traces import chosen_person, hash_all, traces

pytestmark = pytest.mark.slow



def test_erasure_leaves_no_trace_after_a_full_pipeline_and_reruns(spark, pipeline_through, tmp_path, monkeypatch):
    from seglake.report import build_report

    original, gen_dir = pipeline_through(registry.PIPELINE[-1])
    lake = tmp_path / "lakehouse"
    # a copy: the shared lakehouse stays as other tests expect it (no landing input: not erased)
    shutil.copytree(original.lakehouse, lake, ignore=shutil.ignore_patterns("_input"))
    cfg = make_cfg(lake, propensity=E2E_PROPENSITY)
    # the reruns log to a fresh MLflow store inside the copy (the copied one records the
    # original lakehouse as its artifact location)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{lake / '_mlflow' / 'after_erase.db'}")

    person_id, identifiers, customer_id = chosen_person(spark, cfg, gen_dir)
    emails = [v for t, v in identifiers if t == "email"]
    raw_values = [v for _, v in identifiers]
    hashed = hash_all(spark, pii.salt(cfg), raw_values)
    build_report(spark, cfg)                       # a report from before the erasure, to be cleaned

    customers_before = tables.read(spark, cfg, "silver.identity_map").select("customer_id").distinct().count()
    summary = run_job(JobContext(spark, cfg, args={"identifier": [emails[0]]}), "erase").summary
    assert summary["customers_matched"] == 1 and summary["rows_removed"] > 0
    assert summary["removed_by_table"].get("silver.identity_edges", 0) > 0
    assert summary["removed_by_table"].get("bronze.events_raw", 0) > 0
    # exactly one customer went: nobody else was pulled in (shared devices are not followed)
    assert tables.read(spark, cfg, "silver.identity_map").select("customer_id").distinct().count() \
        == customers_before - 1
    assert tables.read(spark, cfg, "ops.erasure_requests").count() == 1

    # rebuild identity from what is left, rerun every later stage, build the report again
    chain = list(registry.PIPELINE)
    run_job(JobContext(spark, cfg, args={"full": True}), "identity")
    run_chain(JobContext(spark, cfg), chain[chain.index("identity") + 1:], echo=lambda _: None)   # as `run all`
    build_report(spark, cfg)
    idmap = tables.read(spark, cfg, "silver.identity_map")
    assert idmap.where(F.col("customer_id") == customer_id).count() == 0
    assert idmap.where(F.col("identifier").isin(raw_values + hashed)).count() == 0

    # the search can see values: another customer's hashed email and id, searched for in the same
    # pass over the files (one read of the whole lakehouse), are found
    other = (idmap.where((F.col("identifier_type") == "email") & (F.col("customer_id") != customer_id))
             .orderBy("identifier").first())
    others = {other["customer_id"], other["identifier"]}
    found = traces(lake, raw_values + [customer_id, other["customer_id"]], hashed + [other["identifier"]])
    hits = [(f, v) for f, v in found if v not in others]
    assert hits == [], f"person {person_id} ({len(raw_values)} identifiers) still found: {hits[:20]}"
    assert {v for _f, v in found if v in others} == others
