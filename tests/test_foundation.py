"""The JVM side works: cached Delta jars, Delta writes/updates/history/time travel, the CLI."""
import subprocess
import sys

import pytest
from pyspark.sql import functions as F

from seglake.core import jvm, tables
from seglake.cli import EXIT_UNAVAILABLE, EXIT_USAGE, main


def test_jars_are_cached_and_used_by_the_session(spark):
    jars = jvm.cached_jars()
    assert jars, "ensure_jars() should have filled the cache when the session started"
    names = {j.name for j in jars}
    assert f"delta-spark_4.1_2.13-{jvm.DELTA_VERSION}.jar" in names
    assert f"delta-storage-{jvm.DELTA_VERSION}.jar" in names
    used = spark.sparkContext.getConf().get("spark.jars")
    assert str(jvm.jar_dir()) in used
    assert jvm.packages_arg() == f"io.delta:delta-spark_4.1_2.13:{jvm.DELTA_VERSION}"


def test_extra_packages_join_the_coordinates_and_bad_ones_are_named():
    aws = "org.apache.hadoop:hadoop-aws:3.4.2"
    assert jvm.coordinates([aws, aws]) == jvm.COORDINATES + (aws,)
    assert jvm.coordinates(None) == jvm.coordinates([]) == jvm.COORDINATES
    assert jvm.jar_dir(jvm.coordinates([aws])) != jvm.jar_dir()   # its own cache folder
    with pytest.raises(ValueError, match=r"spark.extra_packages: .hadoop-aws. is not a Maven coordinate"):
        jvm.coordinates(["hadoop-aws"])


def test_python_delta_matches_jar_version():
    from importlib.metadata import version
    assert version("delta-spark") == jvm.DELTA_VERSION


def test_delta_write_update_history_and_time_travel(spark, cfg):
    from delta.tables import DeltaTable
    df = spark.createDataFrame([(i, f"v{i}") for i in range(5)], "id INT, value STRING")
    tables.overwrite(df, cfg, "silver.demo")
    DeltaTable.forPath(spark, cfg.table_path("silver.demo")).update("id < 2", {"value": F.lit("changed")})
    history = DeltaTable.forPath(spark, cfg.table_path("silver.demo")).history().orderBy("version").collect()
    assert [h["operation"] for h in history] == ["WRITE", "UPDATE"]
    assert tables.version(spark, cfg, "silver.demo") == 1
    now = {r["id"]: r["value"] for r in tables.read(spark, cfg, "silver.demo").collect()}
    old = {r["id"]: r["value"] for r in tables.read(spark, cfg, "silver.demo", version=0).collect()}
    assert now[0] == "changed" and now[4] == "v4"
    assert old == {i: f"v{i}" for i in range(5)}


def test_commits_read_from_the_log_equal_delta_history(spark, cfg):
    """tables.commits reads the commit files itself; it must say what DESCRIBE HISTORY says."""
    import json

    from delta.tables import DeltaTable
    df = spark.createDataFrame([(i, f"v{i}") for i in range(5)], "id INT, value STRING")
    tables.append(df, cfg, "silver.log", partition_by=("id",))
    tables.append(df.limit(0), cfg, "silver.log", user_metadata=json.dumps({"tag": {"n": 1}}))
    tables.merge(spark, spark.createDataFrame([(9, "new"), (1, "dup")], "id INT, value STRING"),
                 cfg, "silver.log", keys=["id"])
    tables.overwrite(df.where("id > 2"), cfg, "silver.log", replace_where="id > 2")
    DeltaTable.forPath(spark, cfg.table_path("silver.log")).delete("id = 0")
    history = {r["version"]: r for r in DeltaTable.forPath(spark, cfg.table_path("silver.log")).history().collect()}
    ours = list(tables.commits(spark, cfg, "silver.log"))
    assert [c["version"] for c in ours] == sorted(history, reverse=True) == [4, 3, 2, 1, 0]
    for c in ours:
        h = history[c["version"]]
        assert (c["operation"], c["operationParameters"], c["operationMetrics"], c["userMetadata"]) == \
            (h["operation"], dict(h["operationParameters"]), dict(h["operationMetrics"] or {}), h["userMetadata"])
    assert [c["version"] for c in tables.commits(spark, cfg, "silver.log", since=1, until=3, newest_first=False)] == [2, 3]
    assert tables.last_commit(spark, cfg, "silver.log")["operation"] == "DELETE"
    assert tables.recorded_metadata(spark, cfg, "silver.log", "tag") == {"n": 1, "_version": 1}
    assert tables.commit_info(spark, cfg, "silver.log", 2)["operationMetrics"]["numTargetRowsInserted"] == "1"


def test_commits_fall_back_to_history_without_duplicates_or_gaps(spark, cfg, monkeypatch):
    """Where a commit file cannot be read (Spark Connect has no JVM gateway; log retention
    removed old files) the rest comes from DESCRIBE HISTORY, by version: nothing twice."""
    df = spark.createDataFrame([(1, "a")], "id INT, value STRING")
    for _ in range(4):
        tables.append(df, cfg, "silver.fb")
    real = tables._read_commit_file

    def no_file_below_2(spark_, path, version):   # versions 0 and 1 are "gone" from the log
        return real(spark_, path, version) if version >= 2 else None
    monkeypatch.setattr(tables, "_read_commit_file", no_file_below_2)
    assert [c["version"] for c in tables.commits(spark, cfg, "silver.fb")] == [3, 2, 1, 0]
    assert [c["version"] for c in tables.commits(spark, cfg, "silver.fb", newest_first=False)] == [0, 1, 2, 3]

    def connect(*_):
        raise AttributeError("'SparkSession' object has no attribute '_jvm'")
    monkeypatch.setattr(tables, "_read_commit_file", connect)
    got = list(tables.commits(spark, cfg, "silver.fb", since=0))
    assert [(c["version"], c["operation"], c["operationMetrics"]["numOutputRows"]) for c in got] == \
        [(3, "WRITE", "1"), (2, "WRITE", "1"), (1, "WRITE", "1")]


def test_merge_inserts_only_new_keys_and_is_idempotent(spark, cfg):
    first = spark.createDataFrame([("a", 1), ("b", 2)], "k STRING, v INT")
    tables.merge(spark, first, cfg, "silver.m", keys=["k"])
    batch = spark.createDataFrame([("b", 99), ("c", 3)], "k STRING, v INT")
    tables.merge(spark, batch, cfg, "silver.m", keys=["k"])
    tables.merge(spark, batch, cfg, "silver.m", keys=["k"])
    got = sorted((r["k"], r["v"]) for r in tables.read(spark, cfg, "silver.m").collect())
    assert got == [("a", 1), ("b", 2), ("c", 3)]


def _logged_stats_columns(cfg, table: str) -> set[str]:
    """Columns of which the table's first commit keeps min/max statistics, read from the JSON log."""
    import json
    from pathlib import Path

    first = Path(cfg.table_path(table)) / "_delta_log" / f"{0:020d}.json"
    found: set[str] = set()
    for line in first.read_text().splitlines():
        add = json.loads(line).get("add")
        if add and add.get("stats"):
            found |= set(json.loads(add["stats"]).get("minValues", {}))
    return found


def test_event_tables_keep_statistics_only_of_their_filter_columns(spark, cfg):
    """silver.events keeps min/max of its time, batch and run columns only; a table not listed
    keeps them of every non-identifying atomic column, as before; identifiers never."""
    from datetime import date, datetime

    row = ("k1", "u1", datetime(2026, 8, 1, 12), "page_view", "/p", 1.5, datetime(2026, 9, 1), "b1", "r1",
           date(2026, 8, 1))
    ddl = ("event_key STRING, user_id STRING, event_ts TIMESTAMP, event_type STRING, page_url STRING, "
           "price DOUBLE, _ingested_at TIMESTAMP, _batch_id STRING, _run_id STRING, event_date DATE")
    df = spark.createDataFrame([row], ddl)
    tables.merge(spark, df, cfg, "silver.events", keys=["event_key"], partition_by=["event_date"])
    assert _logged_stats_columns(cfg, "silver.events") == {"event_ts", "_ingested_at", "_batch_id", "_run_id"}
    tables.append(df, cfg, "gold.other", partition_by=["event_date"])
    assert _logged_stats_columns(cfg, "gold.other") == {
        "event_ts", "event_type", "page_url", "price", "_ingested_at", "_batch_id", "_run_id"}
    # reads that filter on a kept column still skip files: two batches, one file each
    tables.merge(spark, spark.createDataFrame([("k2",) + row[1:7] + ("b2", "r2", row[9])], ddl), cfg,
                 "silver.events", keys=["event_key"], partition_by=["event_date"])
    plan = tables.read(spark, cfg, "silver.events").where(F.col("_batch_id") == "b2")
    assert [r["event_key"] for r in plan.collect()] == ["k2"]
    files = plan.inputFiles()
    assert len(files) == 1 and len(tables.read(spark, cfg, "silver.events").inputFiles()) == 2


def test_a_first_merge_racing_another_writer_inserts_nothing_twice(spark, cfg, monkeypatch):
    # the interleaving CI once hit with two ingests on an empty lakehouse: writer A finds the
    # table missing, writer B creates it with the same rows, then A writes. A's first write must
    # not append (which doubled every ledger row) but merge.
    rows = spark.createDataFrame([("a", 1), ("b", 2)], "k STRING, v INT")
    tables.merge(spark, rows, cfg, "silver.race", keys=["k"])                 # B
    monkeypatch.setattr(tables, "exists", lambda *a: False)                    # what A saw
    tables.merge(spark, rows.union(spark.createDataFrame([("c", 3)], "k STRING, v INT")),
                 cfg, "silver.race", keys=["k"])                               # A
    monkeypatch.undo()
    got = sorted((r["k"], r["v"]) for r in tables.read(spark, cfg, "silver.race").collect())
    assert got == [("a", 1), ("b", 2), ("c", 3)]


def test_reading_a_missing_table_says_which_job_to_run(spark, cfg):
    with pytest.raises(FileNotFoundError, match="table gold.nothing does not exist yet"):
        tables.read(spark, cfg, "gold.nothing")


def test_cli_help_and_exit_codes(capsys, monkeypatch):
    with pytest.raises(SystemExit) as help_exit:
        main(["--help"])
    assert help_exit.value.code == 0
    assert "demo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad:
        main(["run", "nonsense"])
    assert bad.value.code == 2
    with pytest.raises(SystemExit) as bad_through:
        main(["run", "all", "--through", "nonsense"])
    assert bad_through.value.code == 2
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err
    from seglake import registry
    # a verb whose module is not shipped (every verb of this version is built)
    monkeypatch.setitem(registry.JOBS, "clv", "seglake.stages.not_shipped_here")
    assert main(["run", "clv"]) == EXIT_UNAVAILABLE
    assert "not available yet" in capsys.readouterr().err


def test_cli_bad_config_exits_2_with_one_sentence(tmp_path, capsys):
    conf = tmp_path / "conf"
    conf.mkdir()
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    (conf / "base.yaml").write_text((repo / "conf" / "base.yaml").read_text())
    (conf / "local.yaml").write_text("spark:\n  shuffle_partitions: many\n")
    code = main(["run", "ingest", "--conf-dir", str(conf)])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("configuration error:") and "spark.shuffle_partitions" in err and "local.yaml" in err


def test_setup_with_a_bad_extra_package_exits_2_naming_it(tmp_path, capsys):
    from pathlib import Path
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "base.yaml").write_text((Path(__file__).resolve().parents[1] / "conf" / "base.yaml").read_text())
    (conf / "local.yaml").write_text("spark:\n  extra_packages: [hadoop-aws]\n")
    assert main(["setup", "--conf-dir", str(conf)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("configuration error: spark.extra_packages: 'hadoop-aws' is not a Maven coordinate")


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "seglake.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("seglake ")


def test_window_warning_is_quieted_only_for_window_exec(spark):
    """The small top-k / PageRank ranking windows must not flood users' logs with WARNs."""
    jvm_ = spark.sparkContext._jvm
    level = jvm_.org.apache.logging.log4j.LogManager.getLogger(
        "org.apache.spark.sql.execution.window.WindowExec").getLevel().toString()
    other = jvm_.org.apache.logging.log4j.LogManager.getLogger(
        "org.apache.spark.sql.execution.SparkPlan").getLevel().toString()
    assert level == "ERROR"
    assert other != "ERROR"


def test_literal_row_equals_the_same_row_made_by_create_dataframe(spark, cfg):
    from datetime import date, datetime, timezone

    from seglake.core.spark import literal_row
    ddl = ("s STRING, n BIGINT, x DOUBLE, t TIMESTAMP, d DATE, b BOOLEAN, m MAP<STRING,STRING>, "
           "c MAP<STRING,BIGINT>, e MAP<STRING,STRING>, z STRING")
    row = ("it's", 2 ** 40, 0.1, datetime(2026, 3, 29, 1, 30, 5, 123456, tzinfo=timezone.utc), date(2026, 2, 28),
           False, {"a": "1", "b.c": None}, {"silver.events": 7}, {}, None)
    got = literal_row(spark, row, ddl)
    want = spark.createDataFrame([row], ddl)
    assert [(f.name, f.dataType) for f in got.schema.fields] == [(f.name, f.dataType) for f in want.schema.fields]
    assert got.collect() == want.collect()
    # appended to a Delta table, a later row may hold nulls in every column (the schema is nullable)
    tables.append(got, cfg, "ops.literal_probe")
    tables.append(spark.createDataFrame([(None,) * 10], ddl), cfg, "ops.literal_probe")
    assert tables.read(spark, cfg, "ops.literal_probe").count() == 2
    with pytest.raises(ValueError, match="2 values for 10 columns"):
        literal_row(spark, ("a", 1), ddl)
