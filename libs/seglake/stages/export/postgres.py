"""The PostgreSQL destination: segment tags and trigger firings kept in CRM-like tables over JDBC.

One entry of conf/destinations.yaml::

    crm:
      type: postgres
      channel: crm                                   # default crm
      jdbc_url: jdbc:postgresql://127.0.0.1:5432/seglake
      user: postgres                                 # default postgres
      password_env: SEGLAKE_CRM_PASSWORD             # the variable holding the password (never the password)
      table: crm_segment_tags                        # default
      trigger_table: crm_triggers                    # default
      batch_size: 5000                               # rows per JDBC batch of the staging write
      max_attempts: 5                                # over all runs, then dead

The tables (created when missing)::

    <table>(customer_id TEXT, segment TEXT, as_of_date DATE, idempotency_key TEXT, updated_at TIMESTAMPTZ,
            PRIMARY KEY (customer_id, segment))          -- a customer's current segments
    <trigger_table>(idempotency_key TEXT PRIMARY KEY, customer_id TEXT, trigger TEXT, event_key TEXT,
                    scheduled_at TIMESTAMPTZ, delivered_at TIMESTAMPTZ)   -- one row per firing

One :meth:`PostgresDestination.deliver` call is atomic. Spark's JDBC writer copies the messages
(from the executors, ``batch_size`` rows per batch) into an UNLOGGED staging table
``<table>__stage_<run id>``; then one transaction on the driver applies, per (customer, segment),
only the newest segment message of the call (the newest as-of date; at the same date ``entered``
wins): ``entered`` upserts the tag unless the table already holds a newer as-of date, ``exited``
deletes it unless the table's as-of date is newer; trigger firings are inserted once per
idempotency key. The staging table is dropped in the same transaction, which then commits. Any
failure rolls everything back and every message of the call is ``retry`` (``dead`` once its
attempts reach ``max_attempts``): a rerun applies the same messages again with the same result.

The driver-side transaction goes through the JVM gateway (py4j: ``org.postgresql.Driver().connect``),
so it needs a classic Spark driver (not Spark Connect). The JDBC driver (:data:`seglake.core.jvm.POSTGRES_JDBC`) is
on every local session's classpath; on a cluster pass it with ``--packages``.
"""
from __future__ import annotations

import logging
import os
import re

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from seglake.core import faults
from seglake.stages.export.base import DestinationConfigError
from seglake.stages.export.settings import COMMON_KEYS, unknown_key

log = logging.getLogger(__name__)

URL_PREFIX = "jdbc:postgresql://"
DRIVER_CLASS = "org.postgresql.Driver"
#: settings of a postgres entry and their defaults (None: optional without default)
DEFAULTS: dict[str, object] = {
    "jdbc_url": None,
    "user": "postgres",
    "password_env": None,
    "table": "crm_segment_tags",
    "trigger_table": "crm_triggers",
    "batch_size": 5000,
    "max_attempts": 5,
    "channel": "crm",
}
#: keys of a destination entry that the export job reads (accepted here, not used)
JOB_KEYS = tuple(dict.fromkeys(COMMON_KEYS + ("source", "priority")))
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
#: the message columns copied to the staging table (the payload is not needed)
STAGE_COLUMNS = ("idempotency_key", "customer_id", "kind", "name", "change", "version", "scheduled_at")
#: at most this many concurrent JDBC connections for the staging write (Spark coalesces to it)
WRITE_PARTITIONS = 8


def _fail(name: str, text: str) -> DestinationConfigError:
    return DestinationConfigError(f"destination '{name}': {text}")


def _int(name: str, key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(name, f"'{key}' must be a whole number of at least 1, got {value!r}.")
    return value


def validate(name: str, settings: dict | None) -> dict:
    """The normalized settings of postgres destination ``name`` (defaults filled in); raises
    :class:`DestinationConfigError` naming the destination and the key."""
    if not isinstance(settings, dict):
        raise _fail(name, f"the entry must be a mapping of settings, got {type(settings).__name__}.")
    known = list(DEFAULTS) + list(JOB_KEYS)
    problem = unknown_key(settings, known, listed=DEFAULTS)
    if problem:
        raise _fail(name, problem)
    out = {key: settings.get(key, default) for key, default in DEFAULTS.items()}
    url = out["jdbc_url"]
    if url in (None, ""):
        raise _fail(name, "the required key 'jdbc_url' is missing (e.g. jdbc:postgresql://127.0.0.1:5432/seglake).")
    # the value is not echoed: a malformed URL may carry credentials
    if not isinstance(url, str) or not url.strip().startswith(URL_PREFIX) or len(url.strip()) == len(URL_PREFIX):
        raise _fail(name, f"'jdbc_url' must start with {URL_PREFIX} and name a host "
                          "(e.g. jdbc:postgresql://127.0.0.1:5432/seglake).")
    if re.search(r"[?&;]password=", url, re.I):
        raise _fail(name, "'jdbc_url' must not hold the password; name its environment variable in 'password_env'.")
    out["jdbc_url"] = url.strip()
    if not isinstance(out["user"], str) or not out["user"].strip():
        raise _fail(name, f"'user' must be a non-empty text, got {out['user']!r}.")
    env = out["password_env"]
    if env is not None and (not isinstance(env, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", env.strip())):
        raise _fail(name, f"'password_env' must be the name of an environment variable, got {env!r}.")
    for key in ("table", "trigger_table"):
        if not isinstance(out[key], str) or not _IDENT.match(out[key]) or len(out[key]) > 40:
            raise _fail(name, f"'{key}' must be a lowercase table name (letters, digits, '_', at most 40), "
                              f"got {out[key]!r}.")
    if out["table"] == out["trigger_table"]:
        raise _fail(name, f"'table' and 'trigger_table' must differ, both are {out['table']!r}.")
    out["batch_size"] = _int(name, "batch_size", out["batch_size"])
    out["max_attempts"] = _int(name, "max_attempts", out["max_attempts"])
    if not isinstance(out["channel"], str) or not out["channel"].strip():
        raise _fail(name, f"'channel' must be a non-empty text, got {out['channel']!r}.")
    return out


def _q(identifier: str) -> str:
    """A quoted identifier (names are checked against ``^[a-z_][a-z0-9_]*$`` first)."""
    if not _IDENT.match(identifier) or len(identifier) > 63:
        raise ValueError(f"not a safe PostgreSQL identifier: {identifier!r}")
    return f'"{identifier}"'


def staging_table(table: str, run_id: str) -> str:
    """``<table>__stage_<run id>``: lowercase, [a-z0-9_] only, at most 63 characters."""
    suffix = re.sub(r"[^a-z0-9_]", "_", str(run_id).lower())
    name = f"{table}__stage_{suffix}"
    if len(name) > 63:
        import hashlib
        name = f"{name[:54]}_{hashlib.sha256(str(run_id).encode()).hexdigest()[:8]}"
    return name


def _java_reason(exc: BaseException) -> str:
    """The most telling line of a (py4j-wrapped) JDBC failure: the deepest PostgreSQL exception's
    message, else the deepest cause's, else the Python exception's first line."""
    java = getattr(exc, "java_exception", None) or getattr(exc, "_origin", None)
    chosen = None
    try:
        seen = 0
        while java is not None and seen < 20:
            if chosen is None or java.getClass().getName().startswith("org.postgresql"):
                chosen = java
            java, seen = java.getCause(), seen + 1
        if chosen is not None:
            return f"{chosen.getClass().getSimpleName()}: {chosen.getMessage()}"
    except Exception:  # noqa: BLE001 - the gateway itself may be gone; fall back to Python's text
        pass
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class PostgresDestination:
    """A postgres entry of conf/destinations.yaml (see the module docstring for its settings)."""

    kind = "postgres"

    def __init__(self, name: str, settings: dict, cfg=None):
        self.name = name
        self.settings = validate(name, settings)
        self.channel = self.settings["channel"]
        self.cfg = cfg
        self.jdbc_url = self.settings["jdbc_url"]
        self.user = self.settings["user"]
        self.table = self.settings["table"]
        self.trigger_table = self.settings["trigger_table"]
        self.max_attempts = self.settings["max_attempts"]
        self._password = self._read_password()

    def __repr__(self) -> str:   # never the password
        return f"PostgresDestination(name={self.name!r}, jdbc_url={self.where!r}, table={self.table!r})"

    @property
    def where(self) -> str:
        """host:port/database of the URL (its query, which may carry options, left out)."""
        return self.jdbc_url[len(URL_PREFIX):].split("?")[0]

    def _read_password(self) -> str | None:
        var = self.settings["password_env"]
        if var is None:
            return None       # the server authenticates otherwise (trust, certificates)
        value = os.environ.get(var.strip(), "")
        if not value:
            raise _fail(self.name, f"the environment variable {var} named by 'password_env' is not set or empty; "
                                   "set it to the database password.")
        return value

    def _clean(self, text: str, limit: int = 300) -> str:
        text = " ".join(str(text).split())
        if self._password:
            text = text.replace(self._password, "***")
        return text if len(text) <= limit else text[: limit - 3] + "..."

    # --- JDBC on the driver ------------------------------------------------------------------

    def _connect(self, spark: SparkSession):
        jvm = spark.sparkContext._jvm
        props = jvm.java.util.Properties()
        props.setProperty("user", self.user)
        if self._password:
            props.setProperty("password", self._password)
        props.setProperty("ApplicationName", f"seglake export {self.name}")
        # the driver itself, not java.sql.DriverManager: DriverManager only hands out drivers visible to
        # its caller's class loader (py4j's), and spark.jars / --packages load them in Spark's own
        conn = jvm.org.postgresql.Driver().connect(self.jdbc_url, props)
        if conn is None:
            raise RuntimeError(f"the PostgreSQL JDBC driver does not accept the URL of destination '{self.name}'")
        return conn

    def _ensure_tables(self, conn) -> None:
        st = conn.createStatement()
        try:
            st.execute(f"CREATE TABLE IF NOT EXISTS {_q(self.table)} (customer_id TEXT, segment TEXT, "
                       "as_of_date DATE, idempotency_key TEXT, updated_at TIMESTAMPTZ, "
                       "PRIMARY KEY (customer_id, segment))")
            st.execute(f"CREATE TABLE IF NOT EXISTS {_q(self.trigger_table)} (idempotency_key TEXT PRIMARY KEY, "
                       'customer_id TEXT, "trigger" TEXT, event_key TEXT, scheduled_at TIMESTAMPTZ, '
                       "delivered_at TIMESTAMPTZ)")
        finally:
            st.close()

    def _apply(self, conn, stage: str) -> tuple[int, int, int]:
        """The staging table's messages -> the CRM tables, in the connection's open transaction."""
        t, trig, s = _q(self.table), _q(self.trigger_table), _q(stage)
        st = conn.createStatement()
        try:
            # per (customer, segment) only the newest message: the newest as-of; at the same one, entered
            st.execute(
                "CREATE TEMPORARY TABLE seglake_latest ON COMMIT DROP AS "
                "SELECT DISTINCT ON (customer_id, name) customer_id, name AS segment, change, "
                "version::date AS as_of_date, idempotency_key "
                f"FROM {s} WHERE kind = 'segment' AND change IN ('entered', 'exited') "
                "ORDER BY customer_id, name, version::date DESC, (change = 'entered') DESC, idempotency_key")
            upserted = st.executeUpdate(
                f"INSERT INTO {t} AS t (customer_id, segment, as_of_date, idempotency_key, updated_at) "
                "SELECT customer_id, segment, as_of_date, idempotency_key, now() FROM seglake_latest "
                "WHERE change = 'entered' "
                "ON CONFLICT (customer_id, segment) DO UPDATE SET as_of_date = EXCLUDED.as_of_date, "
                "idempotency_key = EXCLUDED.idempotency_key, updated_at = EXCLUDED.updated_at "
                # an older message never overwrites a newer one; the same one again changes nothing
                "WHERE t.as_of_date < EXCLUDED.as_of_date OR (t.as_of_date = EXCLUDED.as_of_date "
                "AND t.idempotency_key IS DISTINCT FROM EXCLUDED.idempotency_key)")
            deleted = st.executeUpdate(
                f"DELETE FROM {t} AS t USING seglake_latest AS l WHERE l.change = 'exited' "
                "AND t.customer_id = l.customer_id AND t.segment = l.segment AND t.as_of_date <= l.as_of_date")
            triggers = st.executeUpdate(
                f'INSERT INTO {trig} (idempotency_key, customer_id, "trigger", event_key, scheduled_at, delivered_at) '
                "SELECT DISTINCT ON (idempotency_key) idempotency_key, customer_id, name, version, scheduled_at, now() "
                f"FROM {s} WHERE kind = 'trigger' ORDER BY idempotency_key "
                "ON CONFLICT (idempotency_key) DO NOTHING")
            st.execute(f"DROP TABLE {s}")
        finally:
            st.close()
        return upserted, deleted, triggers

    def _stage(self, messages: DataFrame, stage: str) -> None:
        """Spark's JDBC writer: the messages -> the (empty, just created) staging table, from the executors."""
        props = {"user": self.user, "driver": DRIVER_CLASS, "batchsize": str(self.settings["batch_size"]),
                 "numPartitions": str(WRITE_PARTITIONS), "reWriteBatchedInserts": "true",
                 "ApplicationName": f"seglake export {self.name}"}
        if self._password:
            props["password"] = self._password
        (messages.select(*STAGE_COLUMNS).write.format("jdbc").options(url=self.jdbc_url, dbtable=_q(stage), **props)
         .mode("append").save())

    # --- the contract ------------------------------------------------------------------------

    def deliver(self, spark: SparkSession, messages: DataFrame, run_id: str) -> DataFrame:
        """Apply ``messages`` (:data:`~seglake.stages.export.base.MESSAGE_COLUMNS`) in one transaction;
        one :data:`~seglake.stages.export.base.OUTCOME_DDL` row per message (built from ``messages``)."""
        stage = staging_table(self.table, run_id)
        conn, committed = None, False
        try:
            conn = self._connect(spark)
            self._ensure_tables(conn)
            st = conn.createStatement()
            try:   # replaces what a killed call of the same run left
                st.execute(f"DROP TABLE IF EXISTS {_q(stage)}")
                st.execute(f"CREATE UNLOGGED TABLE {_q(stage)} (idempotency_key TEXT, customer_id TEXT, kind TEXT, "
                           "name TEXT, change TEXT, version TEXT, scheduled_at TIMESTAMPTZ)")
            finally:
                st.close()
            # overwrite semantics on a table made just now (mode overwrite would recreate it LOGGED)
            self._stage(messages, stage)
            conn.setAutoCommit(False)
            upserted, deleted, triggers = self._apply(conn, stage)
            faults.point("postgres.before_commit")
            conn.commit()
            committed = True
        except Exception as exc:  # noqa: BLE001 - any failure: nothing applied, every message retried
            error = self._clean(f"PostgreSQL {self.where} did not apply the batch ({_java_reason(exc)}); "
                                "nothing was applied.")
            log.warning("postgres destination %s: run %s: %s", self.name, run_id, error)
            return self._outcomes(messages, failed=True, response=None, error=error)
        finally:
            if conn is not None:
                self._close(conn, None if committed else stage)
        response = f"upserted {upserted}, deleted {deleted}, triggers {triggers}"
        log.info("postgres destination %s: run %s: %s", self.name, run_id, response)
        return self._outcomes(messages, failed=False, response=response, error=None)

    def _close(self, conn, stage: str | None) -> None:
        """Roll back what is open, drop the staging table of a call that did not commit, close."""
        for step in ("rollback", "drop", "close"):
            try:
                if step == "rollback" and not conn.getAutoCommit():
                    conn.rollback()       # after a commit: nothing to undo
                elif step == "drop" and stage is not None:
                    conn.setAutoCommit(True)
                    st = conn.createStatement()
                    st.execute(f"DROP TABLE IF EXISTS {_q(stage)}")
                    st.close()
                elif step == "close":
                    conn.close()
            except Exception as exc:  # noqa: BLE001 - a broken connection: the next call replaces the table
                log.debug("postgres destination %s: %s failed: %s", self.name, step, self._clean(_java_reason(exc)))

    def _outcomes(self, messages: DataFrame, *, failed: bool, response: str | None, error: str | None) -> DataFrame:
        attempts = (F.coalesce(F.col("attempts"), F.lit(0)) + 1).cast("int")
        status: Column = (F.when(attempts >= self.max_attempts, F.lit("dead")).otherwise(F.lit("retry"))
                          if failed else F.lit("delivered"))
        return messages.select(F.col("idempotency_key").cast("string").alias("idempotency_key"),
                               status.alias("status"), attempts.alias("attempts"),
                               F.lit(response).cast("string").alias("response"),
                               F.lit(error).cast("string").alias("error"))

    def erase(self, spark: SparkSession, customer_ids: list[str], run_id: str) -> dict:
        """Delete these customers' rows from both tables in one transaction; raises RuntimeError when
        that fails (nothing deleted then)."""
        ids = sorted({str(c) for c in customer_ids})
        if not ids:
            return {"crm_rows_deleted": 0}
        conn = None
        try:
            conn = self._connect(spark)
            self._ensure_tables(conn)
            conn.setAutoCommit(False)
            jvm = spark.sparkContext._jvm
            values = spark.sparkContext._gateway.new_array(jvm.java.lang.String, len(ids))
            for i, customer in enumerate(ids):
                values[i] = customer
            array = conn.createArrayOf("text", values)
            deleted = 0
            for table in (self.table, self.trigger_table):
                ps = conn.prepareStatement(f"DELETE FROM {_q(table)} WHERE customer_id = ANY(?)")
                ps.setArray(1, array)
                deleted += ps.executeUpdate()
                ps.close()
            conn.commit()
        except Exception as exc:  # noqa: BLE001
            raise RuntimeError(self._clean(f"postgres destination '{self.name}' could not erase {len(ids)} "
                                           f"customers in {self.where} ({_java_reason(exc)}).")) from None
        finally:
            if conn is not None:
                self._close(conn, None)
        log.info("postgres destination %s: run %s: erased %d customers (%d rows)", self.name, run_id, len(ids), deleted)
        return {"crm_rows_deleted": deleted}
