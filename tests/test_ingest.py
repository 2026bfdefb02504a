"""Bronze ingestion: pure parsers on inline data, and incremental runs on generated files."""
from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from seglake.core import contracts
from seglake.stages import ingest
from seglake.core import tables
from seglake.core.context import JobContext
from conftest import make_cfg

LINES = "value STRING, _source_file STRING"


def _rows(df, *cols):
    return [tuple(r) for r in df.select(*cols).collect()]


def test_parse_json_lines(spark):
    lines = spark.createDataFrame([
        ('{"event_id":"e1","event_ts":1790611234000,"consent":true,"price":12.5,'
         '"properties":{"feature":"dark_mode"}}', "f1"),
        ('{"event_id":"e2","event_type":"search"', "f1"),          # truncated
        ("   ", "f1"),                                             # blank: not a record
        ("[1, 2]", "f1"),                                          # JSON, but not an object
    ], LINES)
    out = ingest.parse_json_lines(lines)
    got = {r["_raw"]: r for r in out.collect()}
    assert len(got) == 3
    ok = got[lines.first()["value"]]
    assert (ok["event_id"], ok["event_ts"], ok["consent"], ok["price"], ok["_malformed"]) == (
        "e1", "1790611234000", "true", "12.5", False)
    assert json.loads(ok["properties"]) == {"feature": "dark_mode"}
    assert got['{"event_id":"e2","event_type":"search"']["_malformed"] is True
    assert got["[1, 2]"]["_malformed"] is True
    assert set(out.columns) >= set(contracts.RAW_FIELDS) | {"_raw", "_malformed", "_source_file"}


def test_parse_csv_lines(spark):
    fields = list(contracts.RAW_FIELDS)
    row = ["e1", "u1"] + [""] * (len(fields) - 2)
    row[fields.index("properties")] = '"{""feature"": ""a,b""}"'
    row[fields.index("event_ts")] = "2026-08-01 12:34:56"
    good = ",".join(row)
    lines = spark.createDataFrame([(ingest.CSV_HEADER, "f"), (good, "f"), ("e9,u9,too,few", "f")], LINES)
    out = {r["_raw"]: r for r in ingest.parse_csv_lines(lines).collect()}
    assert set(out) == {good, "e9,u9,too,few"}                      # header skipped
    r = out[good]
    assert (r["event_id"], r["user_id"], r["email"], r["event_ts"], r["_malformed"]) == (
        "e1", "u1", None, "2026-08-01 12:34:56", False)
    assert json.loads(r["properties"]) == {"feature": "a,b"}
    assert out["e9,u9,too,few"]["_malformed"] is True


def test_parquet_to_bronze_casts_and_keeps_raw(spark):
    rows = spark.createDataFrame([("e1", 12.5, 2, True, "f")],
                                 "event_id STRING, price DOUBLE, quantity INT, consent BOOLEAN, _source_file STRING")
    r = ingest.parquet_to_bronze(rows).first()
    assert (r["event_id"], r["price"], r["quantity"], r["consent"], r["user_id"], r["_malformed"]) == (
        "e1", "12.5", "2", "true", None, False)
    assert json.loads(r["_raw"]) == {"event_id": "e1", "price": 12.5, "quantity": 2, "consent": True}


def test_add_metadata_gives_bronze_schema(spark):
    lines = spark.createDataFrame([('{"event_id":"e1"}', "f1")], LINES)
    out = ingest.add_metadata(ingest.parse_json_lines(lines), "json", "landing", "b1", F.current_timestamp())
    assert [f.name for f in out.schema] == [f.name for f in ingest.BRONZE_SCHEMA]
    assert _rows(out, "_format", "_source", "_batch_id", "_source_file") == [("json", "landing", "b1", "f1")]


# ------------------------------------------------------------------ end to end on generated data
@pytest.fixture(scope="module")
def landing(spark, tmp_path_factory):
    from seglake.devtools.generate import generate

    out = tmp_path_factory.mktemp("ingest_gen")
    counts = generate(spark, out, 1500, 30, seed=3, start_date=date(2026, 9, 1), end_date=date(2026, 9, 14))
    return out / "landing", counts


def _count_lines(landing: Path) -> dict[str, int]:
    """Records per file, counted with plain Python / pyarrow."""
    import pyarrow.parquet as pq

    out = {}
    for p in landing.rglob("*"):
        if p.suffix == ".jsonl":
            out[p.resolve()] = sum(1 for line in p.read_text().splitlines() if line.strip())
        elif p.suffix == ".csv":
            out[p.resolve()] = len(p.read_text().splitlines()) - 1
        elif p.suffix == ".parquet":
            out[p.resolve()] = pq.read_metadata(p).num_rows
    return out


def test_ingest_incremental(spark, tmp_path, landing):
    landing_dir, counts = landing
    cfg = make_cfg(tmp_path / "lake", paths={"landing": str(landing_dir)})
    first_ctx = JobContext(spark, cfg)
    first = ingest.run(first_ctx)
    bronze = tables.read(spark, cfg, "bronze.events_raw")
    expected_files = _count_lines(landing_dir)
    assert first["files"] == len(expected_files) == sum(counts["files_by_format"].values())
    assert first["records"] == bronze.count() == counts["raw_records"] == sum(expected_files.values())
    assert first["malformed"] == counts["malformed_by_kind"]["broken_json"]
    # per file, bronze holds exactly the records of the file
    per_file = {Path(r["_source_file"].removeprefix("file:")).resolve(): r["count"]
                for r in bronze.groupBy("_source_file").count().collect()}
    assert per_file == expected_files
    # malformed rows keep their raw text: exactly the lines that are not JSON
    broken = set()
    for p in landing_dir.rglob("*.jsonl"):
        for line in p.read_text().splitlines():
            try:
                json.loads(line)
            except json.JSONDecodeError:
                broken.add(line)
    assert {r["_raw"] for r in bronze.where("_malformed").select("_raw").collect()} == broken
    assert bronze.where("_malformed AND _format <> 'json'").count() == 0
    assert bronze.select("_batch_id").distinct().count() == 1
    assert bronze.where(F.col("_ingested_at").isNull() | F.col("_source_file").isNull()).count() == 0
    for fmt in ("json", "csv", "parquet"):
        assert first[f"{fmt} records"] == counts["records_by_format"][fmt]

    # a rerun finds nothing new and does not touch bronze
    v = tables.version(spark, cfg, "bronze.events_raw")
    second_ctx = JobContext(spark, cfg)
    second = ingest.run(second_ctx)
    assert (second["files"], second["records"], second_ctx.status) == (0, 0, "noop")
    assert first_ctx.status == "success"
    assert tables.version(spark, cfg, "bronze.events_raw") == v
    assert tables.read(spark, cfg, "bronze.events_raw").count() == counts["raw_records"]

    # a file added later is picked up alone
    extra = landing_dir / "json" / "2026-09-30" / "late.jsonl"
    extra.parent.mkdir()
    extra.write_text('{"event_id":"late1","event_type":"search"}\n{"event_id":"late2"\n'
                     '{"event_id":"late3","event_ts":"2026-09-30T10:00:00Z"}\n')
    try:
        third = ingest.run(JobContext(spark, cfg))
    finally:
        extra.unlink()
        extra.parent.rmdir()
    assert (third["files"], third["records"], third["malformed"]) == (1, 3, 1)
    bronze = tables.read(spark, cfg, "bronze.events_raw")
    assert bronze.count() == counts["raw_records"] + 3
    late = bronze.where(F.col("_batch_id") == third["batch_id"])
    assert sorted(r["event_id"] for r in late.where("NOT _malformed").collect()) == ["late1", "late3"]
    assert [r["_raw"] for r in late.where("_malformed").collect()] == ['{"event_id":"late2"']
    ledger = tables.read(spark, cfg, "ops.ingested_files")
    assert ledger.count() == len(expected_files) + 1
    assert ledger.groupBy("path").count().where("count > 1").count() == 0
    assert ledger.agg(F.sum("records")).first()[0] == counts["raw_records"] + 3


def test_missing_landing_is_a_clear_error(spark, tmp_path):
    cfg = make_cfg(tmp_path / "lake", paths={"landing": str(tmp_path / "nowhere")})
    with pytest.raises(ValueError, match="landing folder .* does not exist"):
        ingest.run(JobContext(spark, cfg))


def _ledger_and_bronze(spark, cfg):
    bronze = tables.read(spark, cfg, "bronze.events_raw")
    ledger = tables.read(spark, cfg, "ops.ingested_files")
    return bronze, ledger


def test_a_run_stopped_between_bronze_and_ledger_is_repaired_not_reingested(spark, tmp_path, landing, monkeypatch):
    landing_dir, counts = landing
    cfg = make_cfg(tmp_path / "lake", paths={"landing": str(landing_dir)})
    files = len(_count_lines(landing_dir))

    def crash(*_a, **_k):
        raise KeyboardInterrupt("stopped after the bronze commit")   # not a Delta conflict: not retried

    with monkeypatch.context() as m:
        m.setattr(ingest, "_write_ledger", crash)
        first = JobContext(spark, cfg)
        with pytest.raises(KeyboardInterrupt):
            ingest.run(first)
    assert tables.read(spark, cfg, "bronze.events_raw").count() == counts["raw_records"]
    assert not tables.exists(spark, cfg, "ops.ingested_files")

    again_ctx = JobContext(spark, cfg)
    again = ingest.run(again_ctx)
    assert (again["files"], again["records"], again["ledger_repaired"]) == (0, 0, 1)
    assert again_ctx.status == "success"                             # it wrote the ledger rows
    bronze, ledger = _ledger_and_bronze(spark, cfg)
    assert bronze.count() == counts["raw_records"]                   # nothing read twice
    assert ledger.count() == files
    assert {r["batch_id"] for r in ledger.select("batch_id").distinct().collect()} == {first.run_id}
    assert ledger.agg(F.sum("records")).first()[0] == counts["raw_records"]
    assert ledger.agg(F.sum("malformed")).first()[0] == counts["malformed_by_kind"]["broken_json"]
    # the ledger's size/modification time are the listing's, as an uninterrupted run writes them
    listed = {r["path"]: (r["size"], r["modification_time"])
              for r in ingest.list_landing(spark, str(landing_dir), ["json", "csv", "parquet"]).collect()}
    assert {r["path"]: (r["size"], r["modification_time"]) for r in ledger.collect()} == listed


@pytest.mark.parametrize("pre_existing", [False, True], ids=["empty-lakehouse", "bronze-exists"])
def test_two_ingests_at_once_append_every_record_once(spark, tmp_path, landing, pre_existing):
    import shutil
    import threading

    landing_dir, counts = landing
    # pre_existing: bronze already holds the first days, both runs race over the rest
    own = tmp_path / "landing"
    shutil.copytree(landing_dir, own)
    later = sorted({p.parent.name for p in own.rglob("*.*")})[len({p.parent.name for p in own.rglob("*.*")}) // 2:]
    held = tmp_path / "held"
    if pre_existing:
        for p in list(own.rglob("*.*")):
            if p.parent.name in later:
                dest = held / p.relative_to(own)
                dest.parent.mkdir(parents=True, exist_ok=True)
                p.rename(dest)
    cfg = make_cfg(tmp_path / "lake", paths={"landing": str(own)})
    if pre_existing:
        ingest.run(JobContext(spark, cfg))
        for p in list(held.rglob("*.*")):
            dest = own / p.relative_to(held)
            dest.parent.mkdir(parents=True, exist_ok=True)
            p.rename(dest)

    results, errors = [], []

    def one():
        try:
            results.append(ingest.run(JobContext(spark, cfg)))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # at most one gives up (with the clear message), and never with a half-done ingest
    assert all(isinstance(e, ingest.ConcurrentIngest) for e in errors), errors
    assert len(results) >= 1
    bronze, ledger = _ledger_and_bronze(spark, cfg)
    assert bronze.count() == counts["raw_records"]
    assert ledger.count() == len(_count_lines(own))
    assert ledger.groupBy("path").count().where("count > 1").count() == 0
    assert bronze.groupBy("_source_file").count().join(
        ledger.select(F.col("path").alias("_source_file"), "records"), "_source_file"
    ).where("count <> records").count() == 0
    # a third run finds nothing
    assert ingest.run(JobContext(spark, cfg))["files"] == 0


def test_unreadable_parquet_files_are_listed_with_reasons_and_do_not_stop_the_run(spark, tmp_path, landing):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    landing_dir, counts = landing
    own = tmp_path / "landing"
    shutil.copytree(landing_dir, own)
    bad = own / "parquet" / "2026-09-02"
    bad.mkdir(parents=True, exist_ok=True)
    whole = next(own.rglob("*.parquet")).read_bytes()
    (bad / "empty.parquet").write_bytes(b"")
    (bad / "truncated.parquet").write_bytes(whole[: len(whole) // 2])
    (bad / "text.parquet").write_text('{"event_id": "not parquet at all"}\n')
    cfg = make_cfg(tmp_path / "lake", paths={"landing": str(own)})

    first = ingest.run(JobContext(spark, cfg))
    # a zero-byte file holds no record: Spark's file listing leaves it out, so it is neither read nor listed
    assert first["unreadable_files"] == 2
    assert first["records"] == counts["raw_records"]                # every readable record is in
    listed = {Path(r["path"].removeprefix("file:")).name: r["reason"]
              for r in tables.read(spark, cfg, "ops.unreadable_files").collect()}
    assert set(listed) == {"truncated.parquet", "text.parquet"}
    assert "truncated" in listed["truncated.parquet"] and "truncated" in listed["text.parquet"]

    # checked again on the next run, not listed twice while unchanged
    again = ingest.run(JobContext(spark, cfg))
    assert (again["files"], again["unreadable_files"]) == (0, 2)
    assert tables.read(spark, cfg, "ops.unreadable_files").count() == 2

    # once the upload is whole, the file is ingested
    pq.write_table(pa.table({"event_id": ["fixed-1"], "event_type": ["search"]}), bad / "truncated.parquet")
    third = ingest.run(JobContext(spark, cfg))
    assert (third["files"], third["records"], third["unreadable_files"]) == (1, 1, 1)
    assert tables.read(spark, cfg, "bronze.events_raw").where(F.col("event_id") == "fixed-1").count() == 1


def test_as_of_ingests_the_files_of_earlier_days_only(spark, tmp_path):
    """``--as-of D`` (a scheduler's run for the interval ending at D): files of days before D, by
    their date folder (or, without one, their modification day); later days wait; reruns add nothing."""
    import os
    from datetime import datetime, timezone

    from seglake.core.runner import run_job

    land = tmp_path / "landing"

    def put(rel: str, event_id: str, mtime: datetime | None = None) -> None:
        f = land / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps({"event_id": event_id, "user_id": "u", "event_type": "search",
                                 "event_ts": "2026-09-01T10:00:00Z"}) + "\n")
        if mtime is not None:
            os.utime(f, (mtime.timestamp(), mtime.timestamp()))

    put("json/2026-09-01/a.jsonl", "a")
    put("json/dt=2026-09-02/b.jsonl", "b")
    put("json/2026-09-03/c.jsonl", "c")
    put("json/undated/d.jsonl", "d", datetime(2026, 9, 1, 23, 0, tzinfo=timezone.utc))
    put("json/undated/e.jsonl", "e", datetime(2026, 9, 2, 0, 30, tzinfo=timezone.utc))
    cfg = make_cfg(tmp_path / "lake", paths={"landing": str(land)})

    def ingested_as_of(day: date) -> tuple[dict, set]:
        summary = run_job(JobContext(spark, cfg, as_of=day), "ingest").summary
        ids = {r["event_id"] for r in tables.read(spark, cfg, "bronze.events_raw").select("event_id").collect()}
        return summary, ids

    s1, ids = ingested_as_of(date(2026, 9, 2))
    assert (s1["files"], s1["later_files"], ids) == (2, 3, {"a", "d"})
    s2, ids = ingested_as_of(date(2026, 9, 2))           # the rerun of that day: nothing new, nothing twice
    assert (s2["files"], s2["later_files"], ids) == (0, 3, {"a", "d"})
    s3, ids = ingested_as_of(date(2026, 9, 4))
    assert (s3["files"], s3["later_files"], ids) == (3, 0, {"a", "b", "c", "d", "e"})
    assert tables.read(spark, cfg, "bronze.events_raw").count() == 5
