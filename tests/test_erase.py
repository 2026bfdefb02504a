"""Erasure: a person disappears from every table (found by schema) and from every remaining
file, the ledger keeps no identifier in clear, and re-ingested records of the person are suppressed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from conftest import REPO, make_cfg
from seglake.core import erasure, pii, tables
from seglake.core.context import JobContext
from seglake.stages import clean, erase, maintain
from test_clean import NOW, SALT, bronze_df, raw
from traces import traces

EMAIL = "erase.me@example.org"
SECOND = "Second.Mail@example.org"      # the person's second email: linked only in silver.identity_edges
PHONE = "+44 20 7946 0999"
USER_P, ANON_P, ANON_Q, DEV_P = "user-p-0001", "anon-p-0001", "anon-q-0001", "dev-p-0001"
CID_P, CID_O = "c_person0000000000001", "c_other00000000000002"
USER_O, KEEP, DEV_O, KIOSK = "user-o-0001", "keep@example.org", "dev-o-0001", "kiosk-0001"
#: every value of the person in clear (SECOND lower-cased too: normalization)
RAW = [EMAIL, SECOND, SECOND.lower(), PHONE, USER_P, ANON_P, ANON_Q, DEV_P]


def _hasher(spark):
    def h(value: str) -> str:
        return spark.createDataFrame([(value,)], "v STRING").select(pii.hash_identifier(F.col("v"), SALT)).first()[0]
    return h


def _broken(line: str) -> dict:
    return {**raw(event_id=None, user_id=None), "_malformed": True, "_raw": line}


def _build_lake(spark, lakehouse: Path):
    """bronze + silver (via clean) + quarantine + identity map, edges, excluded + a gold table.

    The person: events p1..p5 (p4 consent=false, p5 anonymous only: both linked to the person
    only through p4's email, not through identity), two broken lines (one with the email, one
    with a second email the identity map does not know: only an edge links its hash). The
    other person: o1..o3 (o3 on a shared kiosk device the guard excluded) and a broken line.
    """
    cfg = make_cfg(lakehouse, clean={"max_reject_share": 0.5})
    h = _hasher(spark)
    person = [raw(event_id="p1", user_id=USER_P, email=EMAIL, anonymous_id=ANON_P),
              raw(event_id="p2", user_id=None, anonymous_id=ANON_P, device_id=DEV_P, event_ts="2026-08-02T10:00:00Z"),
              raw(event_id="p3", user_id=USER_P, phone=PHONE, event_ts="2026-08-03T10:00:00Z"),
              raw(event_id="p4", user_id=None, anonymous_id=ANON_Q, email=EMAIL, consent="false",
                  event_ts="2026-08-04T10:00:00Z"),
              raw(event_id="p5", user_id=None, anonymous_id=ANON_Q, event_ts="2026-08-05T10:00:00Z"),
              _broken('{"email": "' + EMAIL + '", "event_ty'),
              _broken('{"email": "' + SECOND + '", "event_ty')]
    other = [raw(event_id="o1", user_id=USER_O, email=KEEP),
             raw(event_id="o2", user_id=USER_O, device_id=DEV_O, event_ts="2026-08-02T11:00:00Z"),
             raw(event_id="o3", user_id=USER_O, device_id=KIOSK, event_ts="2026-08-03T11:00:00Z"),
             _broken('{"email": "' + KEEP + '", "event_ty')]
    tables.append(bronze_df(spark, person + other, batch="b1"), cfg, "bronze.events_raw")
    clean.run(JobContext(spark, cfg, run_id="c1", args={"skip_docs": True}))
    idmap = spark.createDataFrame(
        [("user_id", USER_P, CID_P), ("anonymous_id", ANON_P, CID_P), ("device_id", h(DEV_P), CID_P),
         ("email", h(EMAIL), CID_P), ("phone", h(PHONE), CID_P),
         ("user_id", USER_O, CID_O), ("email", h(KEEP), CID_O), ("device_id", h(DEV_O), CID_O)],
        "identifier_type STRING, identifier STRING, customer_id STRING")
    tables.overwrite(idmap, cfg, "silver.identity_map")
    edges = spark.createDataFrame(
        [("user_id", USER_P, "anonymous_id", ANON_P), ("user_id", USER_P, "email", h(EMAIL)),
         ("user_id", USER_P, "email", h(SECOND)), ("user_id", USER_P, "phone", h(PHONE)),
         ("anonymous_id", ANON_P, "device_id", h(DEV_P)), ("user_id", USER_P, "device_id", h(KIOSK)),
         ("user_id", USER_O, "email", h(KEEP)), ("user_id", USER_O, "device_id", h(DEV_O)),
         ("user_id", USER_O, "device_id", h(KIOSK))],
        "src_type STRING, src STRING, dst_type STRING, dst STRING")
    tables.overwrite(edges, cfg, "silver.identity_edges")
    tables.overwrite(spark.createDataFrame([("device_id", h(KIOSK), 2)],
                                           "identifier_type STRING, identifier STRING, n_user_ids BIGINT"),
                     cfg, "silver.identity_excluded")
    tables.overwrite(spark.createDataFrame([(CID_P, 3), (CID_O, 2)], "customer_id STRING, n INT"),
                     cfg, "gold.customer_features")
    return cfg, h


@pytest.fixture
def lake(spark, lakehouse):
    """A fresh lake of :func:`_build_lake` for one test."""
    return _build_lake(spark, lakehouse)


@pytest.fixture(scope="module")
def erased(spark, tmp_path_factory):
    """One lake of :func:`_build_lake` with a checkpoint of silver.events, erased by the email
    once (request e1): ``cfg, h, summary, silver version before``. Shared by the tests that
    check that one erasure; a test that erases again may only add what a rerun adds (nothing)."""
    lakehouse = tmp_path_factory.mktemp("erased") / "lakehouse"
    lakehouse.mkdir()
    cfg, h = _build_lake(spark, lakehouse)
    old_silver = tables.version(spark, cfg, "silver.events")
    assert maintain.checkpoint(spark, cfg.table_path("silver.events")) is not None   # a checkpoint to search too
    summary = erase.run(JobContext(spark, cfg, run_id="e1", args={"identifier": [EMAIL]}))
    return cfg, h, summary, old_silver


def _hashes_of_person(h) -> list[str]:
    return [h(v) for v in (EMAIL, SECOND, PHONE, DEV_P, USER_P, ANON_P, ANON_Q)]


@pytest.mark.slow
def test_erase_by_email_removes_person_everywhere_and_history(spark, erased):
    cfg, h, summary, old_silver = erased
    # the email was given; the rest is found through the identity map (p2, p3), the edges (the
    # second email: the broken line holding it), and one hop over events (p4's anonymous id: p5)
    assert summary["removed_by_table"] == {
        "bronze.events_raw": 7,            # p1..p5 and both broken lines (raw text; tokens hashed)
        "silver.events": 5,
        "silver.events_quarantine": 2,
        "silver.identity_map": 5,
        "silver.identity_edges": 6,        # every link of the person, the kiosk link included
        "gold.customer_features": 1,
    }
    assert summary["customers_matched"] == 1 and summary["rows_removed"] == 26
    assert "log_statistics" not in summary   # contract tables keep no statistics of identifying columns

    # the other person is untouched, the shared kiosk device did not pull them in
    assert [r["event_id"] for r in tables.read(spark, cfg, "silver.events").orderBy("event_id").collect()] \
        == ["o1", "o2", "o3"]
    assert tables.read(spark, cfg, "bronze.events_raw").count() == 4
    assert [r["_raw"] for r in tables.read(spark, cfg, "silver.events_quarantine").collect()] \
        == ['{"email": "' + KEEP + '", "event_ty']
    assert sorted((r["src"], r["dst"]) for r in tables.read(spark, cfg, "silver.identity_edges").collect()) \
        == sorted([(USER_O, h(KEEP)), (USER_O, h(DEV_O)), (USER_O, h(KIOSK))])
    assert {r["customer_id"] for r in tables.read(spark, cfg, "silver.identity_map").collect()} == {CID_O}
    assert tables.read(spark, cfg, "silver.identity_excluded").count() == 1
    assert [r["customer_id"] for r in tables.read(spark, cfg, "gold.customer_features").collect()] == [CID_O]

    # older versions: reading them fails (files vacuumed) or holds nothing of the person
    for version in range(0, old_silver + 1):
        try:
            rows = tables.read(spark, cfg, "silver.events", version=version).collect()
        except Exception:  # noqa: BLE001 - time travel to vacuumed files must fail
            continue
        assert not [r for r in rows if r["event_id"] in ("p1", "p2", "p3", "p4", "p5")]

    # every file on disk: Parquet of every version decoded, _delta_log JSON and checkpoints, .crc
    lake_dir = Path(cfg.lakehouse)
    hashed = _hashes_of_person(h)
    assert traces(lake_dir, RAW + [CID_P], hashed) == []
    assert list(lake_dir.glob("silver/events/_delta_log/*.checkpoint*.parquet"))    # it was searched
    # the search can see values: the other person's raw and hashed email are found
    assert traces(lake_dir, [KEEP], [h(KEEP)]) != []


@pytest.mark.slow
def test_ledger_has_no_identifier_in_clear_and_a_rerun_is_idempotent(spark, erased):
    cfg, h, first, _ = erased
    rows = tables.read(spark, cfg, "ops.erasure_requests").collect()
    assert len(rows) == 1
    row = rows[0].asDict()
    assert row["request_id"] == first["request_id"] and row["status"] == "done"
    assert row["customer_ids_count"] == 1 and row["rows_removed"] == first["rows_removed"] == 26
    assert row["tables_touched"] == sorted(first["removed_by_table"])
    assert row["vacuum_retention_hours"] == 0.0 and row["requested_at"] <= row["completed_at"]
    # every identifier of the person, hashed (user_id and anonymous_id too); nobody else's
    assert set(_hashes_of_person(h)) <= set(row["identifiers_hashed"])
    assert h(KEEP) not in row["identifiers_hashed"] and h(KIOSK) not in row["identifiers_hashed"]
    flat = json.dumps(row, default=str).lower()
    assert [v for v in RAW + [CID_P] if v.lower() in flat] == []

    again = erase.run(JobContext(spark, cfg, run_id="e2", args={"identifier": [EMAIL]}))
    assert again["rows_removed"] == 0 and again["removed_by_table"] == {}
    assert again["request_id"] == first["request_id"]
    rows2 = tables.read(spark, cfg, "ops.erasure_requests").collect()
    assert len(rows2) == 1 and rows2[0].asDict() == row       # same request: same row, unchanged


@pytest.mark.slow
def test_erased_filter_suppresses_reingested_records_of_the_person(spark, lake, tmp_path):
    cfg, h = lake
    again = bronze_df(spark, [
        raw(event_id="p1", user_id=USER_P, email=EMAIL, anonymous_id=ANON_P),      # an old file ingested again
        raw(event_id="p6", user_id=None, device_id=" DEV-P-0001 "),                # another spelling of the device
        raw(event_id="p7", user_id=None, email="ERASE.ME@example.org"),
        raw(event_id="p8", user_id=None, anonymous_id=ANON_Q),                     # found by the hop, in the ledger
        raw(event_id="p9", user_id=None, phone=PHONE),
        _broken('{"email": "' + SECOND + '", "event_ty'),                         # known to the ledger as a hash
        raw(event_id="o1", user_id=USER_O, email=KEEP),
        raw(event_id="o4", user_id="user-new-0001", email="new@example.org"),
        _broken('{"email": "' + KEEP + '", "event_ty'),
    ], batch="b2")
    assert tables.exists(spark, cfg, "ops.erasure_requests") is False
    assert erasure.erased_filter(spark, cfg, again, erasure.BRONZE_COLUMNS) is again   # no ledger yet
    erase.run(JobContext(spark, cfg, run_id="e1", args={"identifier": [EMAIL]}))

    kept = erasure.erased_filter(spark, cfg, again, erasure.BRONZE_COLUMNS).collect()
    assert sorted((r["event_id"] or "", r["_malformed"]) for r in kept) == [("", True), ("o1", False), ("o4", False)]
    assert KEEP in [r["_raw"] for r in kept if r["_malformed"]][0]

    # clean's batch (what the lead wires into clean before silver and quarantine)
    std = clean.standardize(again, clean.load_standards(REPO / "conf" / "standardize.yaml"), SALT, NOW)
    kept = erasure.erased_filter(spark, cfg, std, erasure.STANDARDIZED_COLUMNS)
    assert kept.columns == std.columns
    rows = kept.collect()
    assert sorted(r["event_id"] or "" for r in rows) == ["", "o1", "o4"]
    assert [r["_reason"] for r in rows if r["event_id"] is None] == ["broken_json"]
    assert std.count() == 9                                        # the filter made the difference

    with pytest.raises(ValueError, match="unknown column kind"):
        erasure.erased_filter(spark, cfg, again, {"raw": ["email"], "emails": ["email"]})
    with pytest.raises(ValueError, match="missing required column"):
        erasure.erased_filter(spark, cfg, again, {"hashed": ["email_hash"]})
    other = make_cfg(tmp_path / "other")
    assert erasure.erased_filter(spark, other, again, erasure.BRONZE_COLUMNS) is again


def test_schema_finds_the_person_in_any_string_column(spark, cfg):
    """A table no list names, identifiers in a free-text column, JSON text, an array, a map, a
    struct; a weak (numeric) user id is matched only in an identifier column."""
    h = _hasher(spark)
    tables.overwrite(spark.createDataFrame(
        [("email", h(EMAIL), CID_P), ("user_id", USER_P, CID_P), ("user_id", "1000", CID_P),
         ("user_id", USER_O, CID_O)], "identifier_type STRING, identifier STRING, customer_id STRING"),
        cfg, "silver.identity_map")
    tables.overwrite(spark.createDataFrame(
        [("user_id", USER_P, "email", h(SECOND)), ("user_id", USER_O, "email", h(KEEP))],
        "src_type STRING, src STRING, dst_type STRING, dst STRING"), cfg, "silver.identity_edges")
    ddl = ("id STRING, note STRING, payload STRING, tags ARRAY<STRING>, props MAP<STRING,STRING>, "
           "who STRUCT<ref: STRING, n: INT>, user_id STRING, amount STRING")
    rows = [
        ("n1", EMAIL, None, None, None, None, None, None),                        # a column no list names
        ("n2", "call back", '{"contact": {"user": "' + USER_P + '"}}', None, None, None, None, None),   # JSON text
        ("n3", None, None, ["vip", CID_P], None, None, None, None),                 # an array element
        ("n4", None, None, None, {"ref": USER_P}, None, None, None),                # a map value
        ("n5", None, None, None, None, (h(SECOND), 1), None, None),               # a struct field: a hash from the edges
        ("n6", f"customer wrote from {EMAIL.upper()}.", None, None, None, None, None, None),   # free text, any case
        ("n7", None, None, None, None, None, "1000", None),                        # a weak id in an identifier column
        ("k1", KEEP, '{"contact": "' + USER_O + '", "x": "' + USER_P + '1"}', ["vip", CID_O], {"ref": USER_O},
         ("x", 1), USER_O, "12.50"),
        ("k2", USER_P + "x", None, None, None, None, None, None),                  # not the whole word
        ("k3", None, None, None, None, None, None, "1000"),                        # a weak id elsewhere: a price
    ]
    tables.overwrite(spark.createDataFrame(rows, ddl), cfg, "ops.something")
    summary = erase.run(JobContext(spark, cfg, run_id="e1", args={"identifier": [EMAIL]}))
    assert summary["removed_by_table"] == {"ops.something": 7, "silver.identity_map": 3, "silver.identity_edges": 1}
    assert sorted(r["id"] for r in tables.read(spark, cfg, "ops.something").collect()) == ["k1", "k2", "k3"]
    # note and payload keep min/max statistics in the Delta log (not identifying names): reported
    assert summary["log_statistics"] == {"ops.something": ["note", "payload"]}


def test_strong_and_weak_identifiers():
    assert erase.distinctive("erase.me@example.org") and erase.distinctive("+12000000123")
    assert not erase.distinctive("1000") and not erase.distinctive("u-p") and not erase.distinctive("123456789")
    assert erase.distinctive("1234567890") and erase.distinctive("anon-p-0001")
    pattern = erase.search_pattern(["a@b.org", "x\\Ey"])
    assert pattern.startswith("(?i)") and "\\Qa@b.org\\E" in pattern and "\\Qx\\E\\\\E\\Qy\\E" in pattern
    assert erase.search_pattern([]) is None


def test_erasure_order_puts_identity_last_and_skips_the_ledger():
    found = ["bronze.events_raw", "ops.erasure_requests", "ops.job_leases", "silver.identity_edges",
             "silver.identity_map", "gold.x", "silver.events"]
    assert erase.erasure_order(found) == ["bronze.events_raw", "gold.x", "silver.events",
                                          "silver.identity_edges", "silver.identity_map"]


def test_erase_needs_identifiers_and_reads_a_file(tmp_path):
    with pytest.raises(ValueError, match="at least one identifier"):
        erase.identifiers_from_args({"identifier": [], "file": None})
    f = tmp_path / "ids.txt"
    f.write_text("a@b.c\n\n  +1 555  \na@b.c\n")
    assert erase.identifiers_from_args({"identifier": ["x"], "file": str(f)}) == ["+1 555", "a@b.c", "x"]
    with pytest.raises(FileNotFoundError, match="identifier file not found"):
        erase.identifiers_from_args({"file": str(tmp_path / "nope.txt")})


def test_erase_vacuums_a_table_only_when_it_holds_a_file_its_current_version_does_not_reference(spark, cfg):
    """The check erase runs before each VACUUM: every case a file is left behind says yes (an old
    version's file, a killed writer's orphan in a partition folder), a table holding only the
    files of its current version says no; Delta's own folder is not a data file."""
    from seglake.stages.erase.vacuuming import has_unreferenced_files, vacuum_if_needed

    table = "gold.t_vacuum_check"
    rows = spark.createDataFrame([(1, "2026-09-01"), (2, "2026-09-02")], "n INT, d STRING")
    tables.overwrite(rows, cfg, table, partition_by=["d"])
    assert has_unreferenced_files(spark, cfg, table) is False
    tables.overwrite(rows.where("n = 1"), cfg, table, partition_by=["d"])       # 2026-09-02's file: old
    assert has_unreferenced_files(spark, cfg, table) is True
    assert vacuum_if_needed(spark, cfg, table, 0) is True
    assert has_unreferenced_files(spark, cfg, table) is False
    assert vacuum_if_needed(spark, cfg, table, 0) is False
    # no VACUUM START / END commits: the erasure ledger records erase's VACUUMs
    assert not [c for c in tables.commits(spark, cfg, table) if "VACUUM" in str(c.get("operation"))]
    folder = Path(cfg.table_path(table)) / "d=2026-09-01"
    (folder / "part-99999-orphan.c000.snappy.parquet").write_bytes(b"PAR1 a killed writer's file")
    assert has_unreferenced_files(spark, cfg, table) is True
    assert vacuum_if_needed(spark, cfg, table, 0) is True
    assert not (folder / "part-99999-orphan.c000.snappy.parquet").exists()
    assert sorted(r.n for r in tables.read(spark, cfg, table).collect()) == [1]
