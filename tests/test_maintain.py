"""seglake run maintain: compaction, checkpoint, VACUUM, and the retention safety rule."""
from __future__ import annotations

import logging
from datetime import date
from pathlib import Path
from urllib.parse import urlparse

import pytest

from conftest import make_cfg
from seglake import registry
from seglake.core import tables
from seglake.core.context import JobContext
from seglake.core.contracts import KNOWN_TABLES
from seglake.core.runner import JobFailed, run_job
from seglake.stages import maintain

TABLE = "silver.events"
OTHER = "ops.clean_batches"
DDL = "event_key STRING, event_type STRING, n INT, event_date DATE"
DATES = (date(2026, 10, 1), date(2026, 10, 2), date(2026, 10, 3))
#: appends of 10 rows over the 3 dates: versions 0..23, so OPTIMIZE commits version 24, which
#: is not one Delta checkpoints by itself (every 10th): the checkpoint found is maintain's
APPENDS = 24


def _build(spark, cfg, appends: int = APPENDS, table: str = TABLE) -> None:
    for a in range(appends):
        rows = [(f"e{a}-{i}", ("view", "cart", "purchase")[i % 3], a * 10 + i, DATES[i % 3]) for i in range(10)]
        tables.append(spark.createDataFrame(rows, DDL), cfg, table, partition_by=["event_date"])


def _rows(spark, cfg, table: str = TABLE) -> list[tuple]:
    return sorted(tuple(r) for r in tables.read(spark, cfg, table).collect())  # 10 rows per append: small


def _data_files(cfg, table: str = TABLE) -> set[str]:
    """Data files on disk (the log's checkpoint Parquet files excluded)."""
    root = Path(cfg.table_path(table))
    return {p.name for p in root.rglob("*.parquet") if "_delta_log" not in p.relative_to(root).parts}


def _referenced(spark, cfg, table: str = TABLE) -> set[str]:
    files = spark.read.format("delta").load(cfg.table_path(table)).inputFiles()
    return {Path(urlparse(f).path).name for f in files}


def _run(spark, cfg, **args):
    return run_job(JobContext(spark, cfg, args={"table": [], "allow_short_retention": False, **args}), "maintain")


def test_maintain_is_a_job_but_not_part_of_the_chain():
    assert registry.JOBS["maintain"] == "seglake.stages.maintain" and "maintain" not in registry.PIPELINE
    assert registry.load("maintain") is maintain


@pytest.mark.slow
def test_default_run_compacts_checkpoints_and_keeps_recent_files(spark, cfg, caplog):
    _build(spark, cfg)
    _build(spark, cfg, appends=2, table=OTHER)
    rows_before = _rows(spark, cfg)
    files_before = _data_files(cfg)
    assert len(files_before) >= APPENDS * len(DATES)
    assert tables.version(spark, cfg, TABLE) == APPENDS - 1

    with caplog.at_level(logging.INFO, logger="seglake.stages.maintain"):
        result = _run(spark, cfg)
    s = result.summary

    assert _rows(spark, cfg) == rows_before                     # same rows, other files
    assert maintain.detail(spark, cfg.table_path(TABLE))["files"] == len(DATES)
    assert s["tables"] == 2 and set(s["by_table"]) == {TABLE, OTHER}
    assert s["files_before"] > len(files_before) and s["files_after"] == 2 * len(DATES)  # both by event_date
    assert s["bytes_before"] > 0 and s["bytes_after"] > 0
    assert s["by_table"][TABLE].startswith(f"{len(files_before)} -> {len(DATES)} files, ")
    assert s["vacuum_retention_hours"] == 168
    # the default retention deletes nothing: every file is younger than 168 h
    on_disk = _data_files(cfg)
    assert files_before <= on_disk and len(on_disk) == len(files_before) + len(DATES)
    # a checkpoint of the OPTIMIZE commit, written by maintain (Delta's own are at 10 and 20)
    assert s["checkpoints"] == {TABLE: APPENDS, OTHER: 2}
    assert (Path(cfg.table_path(TABLE)) / "_delta_log" / f"{APPENDS:020d}.checkpoint.parquet").exists()
    assert (Path(cfg.table_path(OTHER)) / "_delta_log" / f"{2:020d}.checkpoint.parquet").exists()
    # one progress line per table, in the contract's order
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("maintain: [")]
    assert len(lines) == 2
    assert lines[0].startswith(f"maintain: [1/2] {TABLE}: {len(files_before)} files (")
    assert f" -> {len(DATES)} files (" in lines[0] and lines[0].endswith(")")
    assert lines[1].startswith(f"maintain: [2/2] {OTHER}: ")
    # the run log stays honest: maintenance reads no input rows and writes no rows
    row = tables.read(spark, cfg, "ops.run_log").where("job = 'maintain'").first()
    assert (row["status"], row["rows_in"], row["rows_out"]) == ("success", {}, {})
    assert row["metrics"]["files_after"] == str(2 * len(DATES))


def test_short_retention_with_the_flag_removes_unreferenced_files(spark, lakehouse):
    cfg = make_cfg(lakehouse, maintain={"vacuum_retention_hours": 0, "zorder": {TABLE: ["n"]}})
    _build(spark, cfg, appends=6)
    rows_before = _rows(spark, cfg)
    assert len(_data_files(cfg)) >= 6 * len(DATES)
    check_before = spark.conf.get(maintain._RETENTION_CHECK, None)

    s = _run(spark, cfg, table=[TABLE], allow_short_retention=True).summary

    assert s["tables"] == 1 and s["zorder"] == {TABLE: "n"} and s["vacuum_retention_hours"] == 0
    on_disk = _data_files(cfg)
    assert len(on_disk) == len(DATES) and on_disk == _referenced(spark, cfg)   # old files gone
    assert _rows(spark, cfg) == rows_before                                    # and the table reads
    from delta.tables import DeltaTable
    history = DeltaTable.forPath(spark, cfg.table_path(TABLE)).history().collect()  # a few commits
    optimize = [r for r in history if r["operation"] == "OPTIMIZE"]
    assert len(optimize) == 1 and "n" in optimize[0]["operationParameters"]["zOrderBy"]
    # silver.events keeps statistics only of its filter columns: Z-ordering by n added n to them first
    props = DeltaTable.forPath(spark, cfg.table_path(TABLE)).detail().first()["properties"]
    assert "`n`" in props["delta.dataSkippingStatsColumns"]
    # the session's own retention check is left as it was
    assert spark.conf.get(maintain._RETENTION_CHECK, None) == check_before


def test_short_retention_without_the_flag_is_refused_before_any_change(spark, lakehouse):
    cfg = make_cfg(lakehouse, maintain={"vacuum_retention_hours": 24})
    _build(spark, cfg, appends=2)
    version = tables.version(spark, cfg, TABLE)
    with pytest.raises(JobFailed) as info:
        _run(spark, cfg)
    cause = info.value.cause
    assert isinstance(cause, ValueError)
    assert "24 h, below Delta's safety retention of 168 h" in str(cause)
    assert "--allow-short-retention" in str(cause) and "lose data" in str(cause)
    assert tables.version(spark, cfg, TABLE) == version   # nothing was optimized or vacuumed
    with pytest.raises(JobFailed) as info:
        _run(spark, cfg, table=["silver.nope"], allow_short_retention=True)
    assert isinstance(info.value.cause, ValueError)
    assert "silver.nope" in str(info.value.cause)
    assert "choose from bronze.events_raw, silver.events" in str(info.value.cause)
    assert tables.version(spark, cfg, TABLE) == version


def test_unknown_table_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown table.*silver.nope.*choose from.*silver.events"):
        maintain.selected_tables(["silver.events", "silver.nope"])
    # the contract's order, whatever the order of the flags
    assert maintain.selected_tables(["silver.sessions", "bronze.events_raw"]) == \
        ["bronze.events_raw", "silver.sessions"]
    assert maintain.selected_tables([]) == list(KNOWN_TABLES)


def test_zorder_settings_are_validated(lakehouse):
    def zorder(value):
        return maintain.zorder_columns(make_cfg(lakehouse, maintain={"zorder": value}))

    assert zorder({}) == {} and zorder({TABLE: ["event_type"]}) == {TABLE: ["event_type"]}
    with pytest.raises(ValueError, match="unknown table 'silver.nope'"):
        zorder({"silver.nope": ["x"]})
    with pytest.raises(ValueError, match="non-empty list"):
        zorder({TABLE: []})
    with pytest.raises(ValueError, match="customer_id identifies a person"):
        zorder({TABLE: ["customer_id"]})
    with pytest.raises(ValueError, match="partition"):
        maintain.check_zorder(TABLE, ["event_date"], ["n", "event_date"], ["event_date"])
    with pytest.raises(ValueError, match="no column nope"):
        maintain.check_zorder(TABLE, ["nope"], ["n"], [])


def test_checkpoint_without_a_jvm_warns_and_goes_on(caplog):
    with caplog.at_level(logging.WARNING, logger="seglake.stages.maintain"):
        assert maintain.checkpoint(object(), "/nowhere/silver/events") is None
    assert "no checkpoint written for /nowhere/silver/events" in caplog.text


def test_human_bytes():
    assert [maintain.human_bytes(n) for n in (0, 999, 38_200_000, 2_500_000_000)] == \
        ["0 B", "999 B", "38.2 MB", "2.5 GB"]
