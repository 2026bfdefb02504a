"""Searching a lakehouse's files for a person (the erasure tests).

:func:`traces` reads every file under a folder as its bytes could be read by anyone with access
to the storage: every Parquet file decoded with pyarrow (old table versions and ``_delta_log``
checkpoints included), every other file (``_delta_log`` JSON, .crc, Great Expectations results,
Data Docs, the report, MLflow's SQLite store and artifacts) as text.
"""
from __future__ import annotations

import json
from pathlib import Path

from pyspark.sql import functions as F

from seglake.core import pii, tables

#: the erasure ledger's data files hold the person's hashes by design (never a value in clear)
LEDGER_DATA = ("ops", "erasure_requests")


def file_text(path: Path) -> str:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        t = pq.read_table(path)
        return json.dumps({c: t.column(c).to_pylist() for c in t.column_names}, default=str)
    return path.read_bytes().decode("utf-8", "replace")


def traces(root: Path, raw_values: list[str], hashed: list[str], skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(file, value) for every value found (case-insensitively) in a file under ``root``, but in
    the top-level folders ``skip``. The ledger's data files may hold the hashes, never a value
    in clear."""
    hits = []
    for f in sorted(root.rglob("*")):
        if not f.is_file():
            continue
        rel = f.relative_to(root)
        if rel.parts[0] in skip:
            continue
        text = file_text(f).lower()
        ledger_data = rel.parts[:2] == LEDGER_DATA and "_delta_log" not in rel.parts
        for value in raw_values + ([] if ledger_data else hashed):
            if value.lower() in text:
                hits.append((str(rel), value))
    return hits


def hash_all(spark, key: str, values: list[str]) -> list[str]:
    """The keyed hashes of ``values``, as the pipeline makes them (:func:`pii.hash_identifier`)."""
    df = spark.createDataFrame([(v,) for v in values], "v STRING")
    return [r[0] for r in df.select(pii.hash_identifier(F.col("v"), key)).collect()]


def chosen_person(spark, cfg, gen_dir: Path, min_emails: int = 2, min_devices: int = 2):
    """The first person (by id) with >= ``min_emails`` emails and >= ``min_devices`` devices, all
    of whose identifiers the identity map links to one customer; (person_id, [(type, raw
    identifier)], customer_id)."""
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
    chosen = (per.where(f"emails >= {min_emails} AND devices >= {min_devices} AND unlinked = 0 AND customers = 1")
              .orderBy("person_id").first())
    assert chosen is not None, (f"the generated data has no person with {min_emails}+ emails and {min_devices}+ "
                                "devices linked to one customer")
    rows = joined.where(F.col("person_id") == chosen["person_id"]).collect()  # one person: small
    identifiers = sorted({(r["identifier_type"], r["identifier"]) for r in rows})
    (customer_id,) = {r["customer_id"] for r in rows}
    return chosen["person_id"], identifiers, customer_id
