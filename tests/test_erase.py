"""Erasure: a person disappears from every table and from every remaining file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from seglake.stages import clean, erase
from seglake.core import pii, tables
from seglake.core.context import JobContext
from test_clean import SALT, bronze_df, raw

EMAIL = "erase.me@example.org"
PHONE = "+44 20 7946 0999"


def _files_containing(root: Path, needles: list[str]) -> list[str]:
    hits = []
    for f in root.rglob("*"):
        if f.is_file():  # data files and the transaction log (_delta_log) alike
            data = f.read_bytes()
            if any(n.encode() in data for n in needles):
                hits.append(str(f.relative_to(root)))
    return hits


def _parquet_values(root: Path) -> str:
    """Every value of every remaining Parquet file under ``root``, decoded (compression-proof)."""
    import pyarrow.parquet as pq
    parts = []
    for f in root.rglob("*.parquet"):
        parts.append(json.dumps(pq.read_table(f).to_pylist(), default=str))
    return "\n".join(parts)


@pytest.fixture
def lake(spark, cfg):
    """bronze + silver (via clean) + a quarantine row + identity map + a gold table, 2 persons."""
    person = [raw(event_id="p1", user_id="u-p", email=EMAIL, anonymous_id="anon-p"),
              raw(event_id="p2", user_id=None, anonymous_id="anon-p", device_id="dev-p",
                  event_ts="2026-08-02T10:00:00Z"),
              raw(event_id="p3", user_id="u-p", phone=PHONE, event_ts="2026-08-03T10:00:00Z"),
              {**raw(event_id=None, user_id=None), "_malformed": True,
               "_raw": '{"email": "' + EMAIL + '", "event_ty'}]
    other = [raw(event_id="o1", user_id="u-o", email="keep@example.org"),
             raw(event_id="o2", user_id="u-o", device_id="dev-o", event_ts="2026-08-02T11:00:00Z")]
    tables.append(bronze_df(spark, person + other, batch="b1"), cfg, "bronze.events_raw")
    clean.run(JobContext(spark, cfg, run_id="c1", args={"skip_docs": True}))
    h = lambda v: spark.createDataFrame([(v,)], "v STRING").select(  # noqa: E731
        pii.hash_identifier(F.col("v"), SALT)).first()[0]
    idmap = spark.createDataFrame(
        [("user_id", "u-p", "C1"), ("anonymous_id", "anon-p", "C1"), ("device_id", h("dev-p"), "C1"),
         ("email", h(EMAIL), "C1"), ("phone", h(PHONE), "C1"),
         ("user_id", "u-o", "C2"), ("email", h("keep@example.org"), "C2"), ("device_id", h("dev-o"), "C2")],
        "identifier_type STRING, identifier STRING, customer_id STRING")
    tables.overwrite(idmap, cfg, "silver.identity_map")
    tables.overwrite(spark.createDataFrame([("C1", 3), ("C2", 2)], "customer_id STRING, n INT"),
                     cfg, "gold.customer_features")
    return cfg, h


def test_erase_by_email_removes_person_everywhere_and_history(spark, lake):
    cfg, h = lake
    old_silver = tables.version(spark, cfg, "silver.events")
    summary = erase.run(JobContext(spark, cfg, run_id="e1", args={"identifier": [EMAIL]}))
    by_table = summary["removed_by_table"]
    # email given; the phone-only event p3 and the device-only event p2 are found through the identity map
    assert by_table["bronze.events_raw"] == 4          # incl. the broken line (raw text)
    assert by_table["silver.events"] == 3
    assert by_table["silver.events_quarantine"] == 1          # broken line found by its raw text
    assert by_table["silver.identity_map"] == 5
    assert by_table["gold.customer_features"] == 1
    assert summary["customers_matched"] == 1

    # the other person is untouched
    assert [r["event_id"] for r in tables.read(spark, cfg, "silver.events").orderBy("event_id").collect()] \
        == ["o1", "o2"]
    assert tables.read(spark, cfg, "bronze.events_raw").count() == 2
    assert [r["customer_id"] for r in tables.read(spark, cfg, "gold.customer_features").collect()] == ["C2"]

    # older versions: reading them fails (files vacuumed) or holds nothing of the person
    for version in range(0, old_silver + 1):
        try:
            rows = tables.read(spark, cfg, "silver.events", version=version).collect()
        except Exception:  # noqa: BLE001 - time travel to vacuumed files must fail
            continue
        assert not [r for r in rows if r["event_id"] in ("p1", "p2", "p3")]

    lake_dir = Path(cfg.lakehouse)
    needles = [EMAIL, PHONE, "u-p", "anon-p", "dev-p", h(EMAIL), h(PHONE), h("dev-p")]
    assert _files_containing(lake_dir, needles) == []
    decoded = _parquet_values(lake_dir)
    assert "keep@example.org" in decoded or h("keep@example.org") in decoded  # the check can see values
    assert not [n for n in needles if n in decoded]


def test_erase_needs_identifiers_and_reads_a_file(tmp_path):
    with pytest.raises(ValueError, match="at least one identifier"):
        erase.identifiers_from_args({"identifier": [], "file": None})
    f = tmp_path / "ids.txt"
    f.write_text("a@b.c\n\n  +1 555  \na@b.c\n")
    assert erase.identifiers_from_args({"identifier": ["x"], "file": str(f)}) == ["+1 555", "a@b.c", "x"]
    with pytest.raises(FileNotFoundError, match="identifier file not found"):
        erase.identifiers_from_args({"file": str(tmp_path / "nope.txt")})
