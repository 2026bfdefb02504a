"""The local PostgreSQL server (seglake.devtools.postgres) and the PostgreSQL destination
(seglake.stages.export.postgres), against a real PostgreSQL 15 server.

The destination's effects are read back with ``psql`` (a separate client), never through the
destination's own code.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path

import pytest

from seglake.core import faults
from seglake.devtools import postgres
from seglake.devtools.procs import is_ours
from seglake.stages.export.base import MESSAGE_DDL, OUTCOME_DDL, DestinationConfigError
from seglake.stages.export.postgres import PostgresDestination, staging_table

INITDB = Path("/usr/lib/postgresql/15/bin/initdb")
PSQL = "/usr/lib/postgresql/15/bin/psql"
PASSWORD_ENV = "SEGLAKE_TEST_PG_PASSWORD"

pytestmark = pytest.mark.skipif(not INITDB.exists(), reason=f"PostgreSQL 15 is not installed ({INITDB} is missing): "
                                                            "apt-get install postgresql-15")


@pytest.fixture(scope="module")
def pg_root():
    """A folder the server's account can reach. As root the server runs as ``postgres``, which cannot
    enter pytest's own temp root (mode 700), so the folder is made under the system temp dir."""
    root = Path(tempfile.mkdtemp(prefix="seglake-pg-test-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def server(pg_root):
    """One real server for the module, stopped by its pid at the end."""
    srv = postgres.start(pg_root / "shared")
    yield srv
    pid = postgres.stop(pg_root / "shared")
    assert pid == srv.pid and not is_ours(pid, str(srv.data_dir))


@pytest.fixture
def pw_env(server, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, server.password)
    return PASSWORD_ENV


def psql(srv: postgres.Server, sql: str) -> list[tuple[str, ...]]:
    """Rows of ``sql`` read with the psql client (fields as text, '|' separated)."""
    proc = subprocess.run([PSQL, "-h", "127.0.0.1", "-p", str(srv.port), "-U", "postgres", "-d", "seglake",
                           "-v", "ON_ERROR_STOP=1", "-X", "-tA", "-F", "|", "-c", sql],
                          capture_output=True, text=True, env={**os.environ, "PGPASSWORD": srv.password}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [tuple(line.split("|")) for line in proc.stdout.splitlines() if line]


def tags(srv, table: str) -> list[tuple[str, ...]]:
    return psql(srv, f"SELECT customer_id, segment, as_of_date, idempotency_key, updated_at FROM {table} ORDER BY 1, 2")


def triggers(srv, table: str) -> list[tuple[str, ...]]:
    return psql(srv, f'SELECT idempotency_key, customer_id, "trigger", event_key, scheduled_at, delivered_at '
                     f"FROM {table} ORDER BY 1")


def staging_tables(srv) -> list[tuple[str, ...]]:
    return psql(srv, r"SELECT tablename FROM pg_tables WHERE tablename LIKE '%\_\_stage\_%' ORDER BY 1")


def key(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def seg(customer: str, segment: str, change: str, version: str, attempts: int = 0) -> tuple:
    return (key("crm", customer, "segment", segment, change, version), "crm", customer, "segment", segment, change,
            version, "crm", datetime(2026, 9, 1, 10), "{}", attempts)


def trig(customer: str, name: str, event_key: str, attempts: int = 0) -> tuple:
    return (key("crm", customer, "trigger", name, "fired", event_key), "crm", customer, "trigger", name, "fired",
            event_key, "crm", datetime(2026, 9, 1, 12, 30), '{"x": 1}', attempts)


def dest(srv, env: str | None = PASSWORD_ENV, **settings) -> PostgresDestination:
    base = {"type": "postgres", "enabled": True, "channel": "crm", "segments": "all", "triggers": "all",
            "send_time": "immediate", "jdbc_url": srv.jdbc_url, "user": "postgres", "password_env": env}
    return PostgresDestination("crm", {**base, **settings})


def outcomes(df) -> dict[str, tuple]:
    rows = df.collect()
    assert len(rows) == len({r["idempotency_key"] for r in rows})
    return {r["idempotency_key"]: (r["status"], r["attempts"], r["response"], r["error"]) for r in rows}


# --- the server ------------------------------------------------------------------------------

def test_server_starts_answers_restarts_with_its_tables_and_stops_by_pid(pg_root, capsys):
    from seglake import cli

    folder = pg_root / "lifecycle"
    srv = postgres.start(folder)
    try:
        assert postgres.start(folder).pid == srv.pid                  # a second start finds the running one
        recorded = json.loads((folder / postgres.STATE_FILE).read_text())
        assert recorded["pid"] == srv.pid and recorded["port"] == srv.port
        assert recorded["jdbc_url"] == f"jdbc:postgresql://127.0.0.1:{srv.port}/seglake"
        assert (folder / postgres.STATE_FILE).stat().st_mode & 0o077 == 0
        assert (folder / postgres.PASSWORD_FILE).stat().st_mode & 0o777 == 0o600
        assert (folder / postgres.PASSWORD_FILE).read_text().strip() == srv.password == recorded["password"]
        st = postgres.status(folder)
        assert st["running"] and st["answers"] and st["pid"] == srv.pid and st["jdbc_url"] == srv.jdbc_url
        assert psql(srv, "SELECT current_database(), current_user") == [("seglake", "postgres")]
        psql(srv, "CREATE TABLE kept (n INT); INSERT INTO kept VALUES (1), (2)")
        # the seglake CLI is wired to it, and never prints the password
        assert cli.main(["postgres", "status", "--dir", str(folder)]) == 0
        out = capsys.readouterr().out
        assert json.loads(out)["jdbc_url"] == srv.jdbc_url and srv.password not in out

        assert postgres.stop(folder) == srv.pid
        assert not is_ours(srv.pid, str(srv.data_dir))
        assert postgres.status(folder)["running"] is False
        assert postgres.stop(folder) is None                           # nothing left to stop

        again = postgres.start(folder)                                 # no second initdb: same password, same data
        assert again.pid != srv.pid and again.password == srv.password and again.port == srv.port
        assert psql(again, "SELECT n FROM kept ORDER BY n") == [("1",), ("2",)]
    finally:
        pid = postgres.stop(folder)
    assert pid is not None and not is_ours(pid, str(folder / "data"))


def test_missing_binaries_are_one_clear_sentence(monkeypatch, tmp_path):
    monkeypatch.setenv("SEGLAKE_POSTGRES_BIN", str(tmp_path / "nowhere"))
    with pytest.raises(postgres.PostgresError, match="apt-get install postgresql-15"):
        postgres.start(tmp_path / "pg")
    assert not (tmp_path / "pg").exists()


# --- the destination -------------------------------------------------------------------------

def test_deliver_upserts_deletes_and_inserts_triggers_idempotently(spark, server, pw_env):
    d = dest(server, table="up_tags", trigger_table="up_trig")
    first = [seg(c, s, "entered", "2026-09-01") for c in ("c1", "c2", "c3") for s in ("a", "b")]
    first += [seg("c3", "b", "exited", "2026-09-02"),            # newer than its entry in the same call: wins
              seg("c4", "a", "entered", "2026-09-01"), seg("c4", "a", "exited", "2026-09-01"),  # a tie: entered
              trig("c1", "abandoned_cart", "e-1", attempts=2), trig("c2", "re_engaged", "e-2")]
    got = outcomes(d.deliver(spark, spark.createDataFrame(first, MESSAGE_DDL), "20260901T100000-aaaaaa"))
    assert {k: v[:2] for k, v in got.items()} == {m[0]: ("delivered", m[-1] + 1) for m in first}
    assert {v[2] for v in got.values()} == {"upserted 6, deleted 0, triggers 2"} and {v[3] for v in got.values()} == {None}

    expected = sorted((c, s, "2026-09-01", key("crm", c, "segment", s, "entered", "2026-09-01"))
                      for c, s in [("c1", "a"), ("c1", "b"), ("c2", "a"), ("c2", "b"), ("c3", "a"), ("c4", "a")])
    rows = tags(server, "up_tags")
    assert [r[:4] for r in rows] == expected
    trig_rows = triggers(server, "up_trig")
    assert [r[:4] for r in trig_rows] == sorted([(key("crm", "c1", "trigger", "abandoned_cart", "fired", "e-1"), "c1",
                                                  "abandoned_cart", "e-1"),
                                                 (key("crm", "c2", "trigger", "re_engaged", "fired", "e-2"), "c2",
                                                  "re_engaged", "e-2")])
    assert all(r[4].startswith("2026-09-01 12:30:00") and r[5] for r in trig_rows)
    assert staging_tables(server) == []

    # the same messages again (a rerun after a crash before the outcomes were recorded): nothing changes
    again = outcomes(d.deliver(spark, spark.createDataFrame(first, MESSAGE_DDL), "20260901T110000-bbbbbb"))
    assert {v[0] for v in again.values()} == {"delivered"}
    assert {v[2] for v in again.values()} == {"upserted 0, deleted 0, triggers 0"}
    assert tags(server, "up_tags") == rows and triggers(server, "up_trig") == trig_rows

    # older messages never overwrite newer ones; newer ones apply
    later = [seg("c1", "a", "entered", "2026-08-25"),        # older than the row: ignored
             seg("c2", "a", "exited", "2026-08-30"),         # older than the row: ignored
             seg("c2", "b", "exited", "2026-09-03"),         # newer: deleted
             seg("c1", "b", "entered", "2026-09-05")]        # newer: moves the row forward
    got = outcomes(d.deliver(spark, spark.createDataFrame(later, MESSAGE_DDL), "20260905T100000-cccccc"))
    assert {v[2] for v in got.values()} == {"upserted 1, deleted 1, triggers 0"}
    now = {r[:2]: r for r in tags(server, "up_tags")}
    assert set(now) == {("c1", "a"), ("c1", "b"), ("c2", "a"), ("c3", "a"), ("c4", "a")}
    assert now[("c1", "a")] == {r[:2]: r for r in rows}[("c1", "a")]          # untouched, updated_at too
    assert now[("c2", "a")][2] == "2026-09-01"
    assert now[("c1", "b")][2:4] == ("2026-09-05", key("crm", "c1", "segment", "b", "entered", "2026-09-05"))


def test_a_large_call_goes_through_jdbc_batches(spark, server, pw_env):
    from pyspark.sql import functions as F

    d = dest(server, table="big_tags", trigger_table="big_trig", batch_size=2000)
    n = 12_000
    messages = spark.range(n).select(
        F.sha2(F.concat(F.lit("k"), F.col("id").cast("string")), 256).alias("idempotency_key"),
        F.lit("crm").alias("destination"), F.concat(F.lit("c"), F.col("id").cast("string")).alias("customer_id"),
        F.lit("segment").alias("kind"), F.lit("loyal").alias("name"), F.lit("entered").alias("change"),
        F.lit("2026-09-01").alias("version"), F.lit("crm").alias("channel"),
        F.lit(datetime(2026, 9, 1)).alias("scheduled_at"), F.lit("{}").alias("payload"),
        F.lit(0).cast("int").alias("attempts")).repartition(3)
    out = d.deliver(spark, messages, "20260901T120000-dddddd")
    assert out.schema.simpleString() == spark.createDataFrame([], OUTCOME_DDL).schema.simpleString()
    counts = {r["status"]: r["n"] for r in out.groupBy("status").agg(F.count(F.lit(1)).alias("n")).collect()}
    assert counts == {"delivered": n}
    assert psql(server, "SELECT count(*), count(DISTINCT customer_id), min(as_of_date) FROM big_tags") == \
        [(str(n), str(n), "2026-09-01")]


def test_an_abort_before_commit_changes_nothing_and_leaves_no_staging_table(spark, server, pw_env):
    d = dest(server, table="ab_tags", trigger_table="ab_trig")
    base = [seg("c1", "a", "entered", "2026-09-01"), seg("c2", "a", "entered", "2026-09-01"),
            trig("c1", "abandoned_cart", "e-1")]
    d.deliver(spark, spark.createDataFrame(base, MESSAGE_DDL), "20260901T100000-aaaaaa")
    before = (tags(server, "ab_tags"), triggers(server, "ab_trig"))
    assert len(before[0]) == 2 and len(before[1]) == 1

    batch = [seg("c1", "a", "exited", "2026-09-02"), seg("c3", "a", "entered", "2026-09-02"),
             trig("c3", "re_engaged", "e-9")]
    run_id = "20260902T100000-eeeeee"
    with faults.abort_at("postgres.before_commit"):
        with pytest.raises(faults.Aborted):
            d.deliver(spark, spark.createDataFrame(batch, MESSAGE_DDL), run_id)
    assert (tags(server, "ab_tags"), triggers(server, "ab_trig")) == before
    assert staging_tables(server) == []

    # a call killed outright leaves its staging table (with whatever it held): the rerun replaces it
    stage = staging_table("ab_tags", run_id)
    psql(server, f"CREATE TABLE {stage} (idempotency_key TEXT, customer_id TEXT, kind TEXT, name TEXT, change TEXT, "
                 f"version TEXT, scheduled_at TIMESTAMPTZ); INSERT INTO {stage} VALUES "
                 "('junk', 'c9', 'segment', 'a', 'entered', '2026-09-09', now())")
    got = outcomes(d.deliver(spark, spark.createDataFrame(batch, MESSAGE_DDL), run_id))
    assert {v[0] for v in got.values()} == {"delivered"}
    assert {v[2] for v in got.values()} == {"upserted 1, deleted 1, triggers 1"}
    assert [r[:3] for r in tags(server, "ab_tags")] == [("c2", "a", "2026-09-01"), ("c3", "a", "2026-09-02")]
    assert [r[1] for r in triggers(server, "ab_trig")] == ["c1", "c3"]
    assert staging_tables(server) == []


def test_a_bad_password_retries_every_message_without_revealing_it(spark, server, monkeypatch, caplog):
    wrong = "Wr0ng-pa55word-xyz"
    monkeypatch.setenv(PASSWORD_ENV, wrong)
    d = dest(server, table="bad_tags", trigger_table="bad_trig", max_attempts=5)
    batch = [seg("c1", "a", "entered", "2026-09-01"), seg("c2", "a", "entered", "2026-09-01", attempts=4),
             trig("c1", "abandoned_cart", "e-1", attempts=1)]
    with caplog.at_level(logging.WARNING, logger="seglake.stages.export.postgres"):
        got = outcomes(d.deliver(spark, spark.createDataFrame(batch, MESSAGE_DDL), "20260901T100000-ffffff"))
    assert {k: v[:2] for k, v in got.items()} == {batch[0][0]: ("retry", 1), batch[1][0]: ("dead", 5),
                                                  batch[2][0]: ("retry", 2)}
    errors = {v[3] for v in got.values()}
    assert len(errors) == 1
    error = errors.pop()
    assert "password authentication failed" in error and wrong not in error and "\n" not in error
    assert any("password authentication failed" in r.getMessage() for r in caplog.records)
    assert wrong not in caplog.text and wrong not in repr(d)
    assert psql(server, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'bad\\_%'") == [("0",)]


@pytest.mark.parametrize("settings, env, match", [
    ({"jdbc_url": "jdbc:mysql://127.0.0.1:3306/crm"}, PASSWORD_ENV, "'jdbc_url' must start with jdbc:postgresql://"),
    ({"jdbc_url": None}, PASSWORD_ENV, "required key 'jdbc_url'"),
    ({"jdbc_url": "jdbc:postgresql://h/db?password=s3cret"}, PASSWORD_ENV, "'jdbc_url' must not hold the password"),
    ({"tabel": "x"}, PASSWORD_ENV, "unknown key 'tabel' \\(did you mean 'table'\\?\\)"),
    ({"table": "CRM-Tags"}, PASSWORD_ENV, "'table' must be a lowercase table name"),
    ({"trigger_table": "x; drop table y"}, PASSWORD_ENV, "'trigger_table' must be a lowercase table name"),
    ({"batch_size": 0}, PASSWORD_ENV, "'batch_size' must be a whole number"),
    ({"max_attempts": True}, PASSWORD_ENV, "'max_attempts' must be a whole number"),
    ({}, "SEGLAKE_TEST_PG_NOT_SET", "SEGLAKE_TEST_PG_NOT_SET named by 'password_env' is not set or empty"),
])
def test_config_errors_name_the_destination_and_key(server, pw_env, monkeypatch, settings, env, match):
    monkeypatch.delenv("SEGLAKE_TEST_PG_NOT_SET", raising=False)
    with pytest.raises(DestinationConfigError, match=match) as info:
        dest(server, env=env, **settings)
    assert str(info.value).startswith("destination 'crm': ") and "s3cret" not in str(info.value)


def test_defaults_and_accepted_job_keys(server, pw_env):
    d = dest(server, since="2026-09-01", priority=1, source="x")
    assert (d.name, d.kind, d.channel, d.table, d.trigger_table, d.max_attempts, d.settings["batch_size"]) == \
        ("crm", "postgres", "crm", "crm_segment_tags", "crm_triggers", 5, 5000)
    assert PostgresDestination("x", {"jdbc_url": server.jdbc_url}).channel == "crm"
    assert len(staging_table("a" * 40, "20261205T045900-abcdef" * 3)) <= 63


def test_erase_deletes_only_those_customers(spark, server, pw_env):
    d = dest(server, table="er_tags", trigger_table="er_trig")
    batch = [seg(c, s, "entered", "2026-09-01") for c in ("c1", "c2", "c3") for s in ("a", "b")]
    batch += [trig(c, "abandoned_cart", f"e-{c}") for c in ("c1", "c2", "c3")]
    d.deliver(spark, spark.createDataFrame(batch, MESSAGE_DDL), "20260901T100000-aaaaaa")
    assert d.erase(spark, ["c1", "c3", "c1", "nobody"], "20260902T100000-gggggg") == {"crm_rows_deleted": 6}
    assert psql(server, "SELECT customer_id, segment FROM er_tags ORDER BY 1, 2") == [("c2", "a"), ("c2", "b")]
    assert psql(server, "SELECT customer_id FROM er_trig") == [("c2",)]
    assert d.erase(spark, [], "20260902T100000-gggggg") == {"crm_rows_deleted": 0}
