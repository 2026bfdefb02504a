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

import json
import shutil
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from conftest import E2E_PROPENSITY, make_cfg
from seglake import registry
from seglake.core import pii, tables
from seglake.core.context import JobContext
from seglake.core.runner import run_job

pytestmark = pytest.mark.slow

#: the ledger's data files hold the person's hashes by design (never a value in clear)
LEDGER_DATA = ("ops", "erasure_requests")


def _chosen_person(spark, cfg, gen_dir: Path):
    """The first person (by id) with >= 2 emails and >= 2 devices, all of whose identifiers the
    identity map links to one customer; (person_id, [(type, raw identifier)], customer_id)."""
    key = pii.salt(cfg)
    ids = (spark.read.parquet(str(gen_dir / "ground_truth" / "identifiers.parquet"))
           .where(F.col("person_id").isNotNull()))
    in_map = (F.when(F.col("identifier_type").isin("user_id", "anonymous_id"), F.col("identifier"))
              .otherwise(pii.hash_identifier(F.col("identifier"), key)))
    idmap = tables.read(spark, cfg, "silver.identity_map").select(
        "identifier_type", F.col("identifier").alias("_m"), "customer_id")
    joined = ids.withColumn("_m", in_map).join(idmap, ["identifier_type", "_m"], "left")
    per = joined.groupBy("person_id").agg(
        F.countDistinct(F.when(F.col("identifier_type") == "email", F.col("identifier"))).alias("emails"),
        F.countDistinct(F.when(F.col("identifier_type") == "device_id", F.col("identifier"))).alias("devices"),
        F.sum(F.col("customer_id").isNull().cast("int")).alias("unlinked"),
        F.countDistinct("customer_id").alias("customers"))
    chosen = (per.where("emails >= 2 AND devices >= 2 AND unlinked = 0 AND customers = 1")
              .orderBy("person_id").first())
    assert chosen is not None, "the generated data has no multi-device person with 2 emails linked to one customer"
    rows = joined.where(F.col("person_id") == chosen["person_id"]).collect()  # one person: small
    identifiers = sorted({(r["identifier_type"], r["identifier"]) for r in rows})
    (customer_id,) = {r["customer_id"] for r in rows}
    return chosen["person_id"], identifiers, customer_id


def _hash_all(spark, cfg, values: list[str]) -> list[str]:
    df = spark.createDataFrame([(v,) for v in values], "v STRING")
    return [r[0] for r in df.select(pii.hash_identifier(F.col("v"), pii.salt(cfg))).collect()]


def _file_text(path: Path) -> str:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        t = pq.read_table(path)
        return json.dumps({c: t.column(c).to_pylist() for c in t.column_names}, default=str)
    return path.read_bytes().decode("utf-8", "replace")


def _traces(root: Path, raw_values: list[str], hashed: list[str]) -> list[tuple[str, str]]:
    hits = []
    for f in sorted(root.rglob("*")):
        if not f.is_file():
            continue
        rel = f.relative_to(root)
        text = _file_text(f).lower()
        ledger_data = rel.parts[:2] == LEDGER_DATA and "_delta_log" not in rel.parts
        for value in raw_values + ([] if ledger_data else hashed):
            if value.lower() in text:
                hits.append((str(rel), value))
    return hits


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

    person_id, identifiers, customer_id = _chosen_person(spark, cfg, gen_dir)
    emails = [v for t, v in identifiers if t == "email"]
    raw_values = [v for _, v in identifiers]
    hashed = _hash_all(spark, cfg, raw_values)
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
    for job in chain[chain.index("identity") + 1:]:
        run_job(JobContext(spark, cfg), job)
    build_report(spark, cfg)
    idmap = tables.read(spark, cfg, "silver.identity_map")
    assert idmap.where(F.col("customer_id") == customer_id).count() == 0
    assert idmap.where(F.col("identifier").isin(raw_values + hashed)).count() == 0

    hits = _traces(lake, raw_values + [customer_id], hashed)
    assert hits == [], f"person {person_id} ({len(raw_values)} identifiers) still found: {hits[:20]}"

    # the search can see values: another customer's hashed email and id are found
    other = (idmap.where((F.col("identifier_type") == "email") & (F.col("customer_id") != customer_id))
             .orderBy("identifier").first())
    assert _traces(lake, [other["customer_id"]], [other["identifier"]]) != []
