"""The ``seglake run erase`` job: expand, delete under the exclusive lease, VACUUM, record.

See the package docstring (:mod:`seglake.stages.erase`) for what is erased where.
"""
from __future__ import annotations

import logging
import threading
import time
from functools import reduce
from pathlib import Path

from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from seglake.core import erasure, faults, leases, parallel, pii, tables
from seglake.core.config import Config
from seglake.core.context import JobContext
from seglake.core.contracts import (ERASURE_REQUESTS, IDENTITY_EDGES, IDENTITY_MAP, JOB_LEASES, KNOWN_TABLES, LAYERS,
                                    RUN_LOG)
from seglake.stages.erase import artifacts, vacuuming
from seglake.stages.erase.match import Person, column_conditions, quoted
from seglake.stages.erase.person import expand_person

log = logging.getLogger(__name__)

#: never searched nor VACUUMed: the ledger holds the person's hashes by design (that is how
#: erasure sticks); the lease table is written by the jobs waiting for erase's lease
SKIPPED: tuple[str, ...] = (ERASURE_REQUESTS, JOB_LEASES)
#: written outside the lease (a job that gives up waiting records its failure): VACUUMed only
#: when the person was found in it
WRITTEN_OUTSIDE_LEASE: tuple[str, ...] = (RUN_LOG,)
#: erased last, so that a run killed halfway still finds the person through them when rerun
IDENTITY_LAST: tuple[str, ...] = (IDENTITY_EDGES, IDENTITY_MAP)
#: userMetadata tag of erase's delete commits: {"request": request_key, "rows": n}. No identifier:
#: the request key is a keyed hash of the request's hashes. A rerun after a crash finds there
#: what the killed run already removed (the ledger is written only at the end)
COMMIT_TAG = "seglake_erase"
#: a resumed request searches the commits from this long before it was first recorded (clocks of
#: other drivers; no delete of the request can be older than the request itself)
RESUME_MARGIN_MS = 10 * 60 * 1000


def add_arguments(parser) -> None:
    """``--identifier`` (repeatable) and ``--file`` (one identifier per line)."""
    parser.add_argument("--identifier", action="append", default=[], metavar="X",
                        help="an identifier of the person to erase (email, phone, user id, ...); repeatable")
    parser.add_argument("--file", default=None, metavar="F",
                        help="a text file with one identifier per line")


def identifiers_from_args(args: dict) -> list[str]:
    """The distinct non-blank identifiers from ``--identifier`` and ``--file``."""
    values = list(args.get("identifier") or [])
    path = args.get("file")
    if path:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"identifier file not found: {p}")
        values += p.read_text(encoding="utf-8").splitlines()
    out = sorted({v.strip() for v in values if v and v.strip()})
    if not out:
        raise ValueError("erase needs at least one identifier: pass --identifier X or --file F")
    return out


def discover_tables(spark: SparkSession, cfg: Config) -> list[str]:
    """Every Delta table ``<layer>.<name>`` under the lakehouse (listing local folders, plus
    the known contract tables for remote lakehouses)."""
    found: set[str] = set()
    lake = cfg.lakehouse
    if "://" not in lake:
        for layer in LAYERS:
            base = Path(lake) / layer
            if base.is_dir():
                found.update(f"{layer}.{p.name}" for p in base.iterdir() if (p / "_delta_log").is_dir())
    found.update(t for t in KNOWN_TABLES if tables.exists(spark, cfg, t))
    return sorted(found)


def erasure_order(found: list[str]) -> list[str]:
    """The tables to search, in order: all but :data:`SKIPPED`, the identity tables last."""
    body = [t for t in sorted(found) if t not in SKIPPED and t not in IDENTITY_LAST]
    return body + [t for t in IDENTITY_LAST if t in found]


def _is_complex(dtype: T.DataType) -> bool:
    return isinstance(dtype, (T.ArrayType, T.MapType, T.StructType))


def delete_rows(spark: SparkSession, cfg: Config, table: str, conds: dict[str, Column],
                request: str | None = None, purge: bool = False) -> tuple[int, list[str]]:
    """Delete the rows where any of ``conds`` (column -> predicate) holds; the commit carries
    ``{COMMIT_TAG: {"request": request, "rows": n}}`` as its userMetadata. ``purge``: an earlier,
    killed run of the request deleted from this table (its deletion vectors are purged too).

    Returns:
        (rows deleted, string columns that held the person and of which the table keeps
        min/max statistics in its transaction log: VACUUM does not remove those).
    """
    from delta.tables import DeltaTable

    path = cfg.table_path(table)
    dt = DeltaTable.forPath(spark, path)
    frame = dt.toDF()
    fields = frame.schema.fields
    atomic = [f.name for f in fields if not _is_complex(f.dataType)]
    nested = [f.name for f in fields if _is_complex(f.dataType)]
    cond = reduce(lambda a, b: a | b, conds.values())
    # one person's rows, read once, in one Spark job: the row's values in fresh column names (the
    # MERGE source must not share attributes with its target; complex columns through to_json;
    # timestamps as epoch microseconds: a local-time round trip through Python could shift one)
    # and which of the conditions it met
    kinds = {f.name: f.dataType for f in fields}
    instant = {c for c in atomic if isinstance(kinds[c], T.TimestampType)}

    def key(c: str, t: str = "") -> str:
        return f"unix_micros({t}{quoted(c)})" if c in instant else f"{t}{quoted(c)}"
    found = frame.where(cond).select(
        *[F.expr(key(c)).alias(f"_k{i}") for i, c in enumerate(atomic)],
        *[F.to_json(F.col(quoted(c))).alias(f"_j{i}") for i, c in enumerate(nested)],
        *[F.coalesce(c, F.lit(False)).alias(f"_m{i}") for i, c in enumerate(conds.values())]
    ).collect()   # bounded by one erased person's rows, never by the table's events or customers
    deleted = len(found)
    leaked: list[str] = []
    props = (dt.detail().first()["properties"] or {}) if deleted or purge else {}
    if deleted:
        held = [name for i, name in enumerate(conds) if any(r[f"_m{i}"] for r in found)]
        strings = {f.name for f in fields if isinstance(f.dataType, T.StringType)}
        leaked = sorted(c for c in held if c in strings and c in tables.kept_stats_columns(props, fields))
        # A DELETE would write its predicate -- the identifiers, and the key inside the hash
        # expression -- into the commit's commitInfo, which VACUUM never removes. Instead the
        # person's rows are removed by a MERGE whose condition names only columns (complex
        # ones through to_json), so the transaction log keeps no trace of whom was erased.
        width = len(atomic) + len(nested)
        distinct = {repr(tuple(r)[:width]): tuple(r)[:width] for r in found}   # a MERGE source row
        source = spark.createDataFrame(list(distinct.values()),          # matches one target row at most
                                       T.StructType([T.StructField(f"_k{i}", T.LongType() if c in instant else kinds[c])
                                                     for i, c in enumerate(atomic)]
                                                    + [T.StructField(f"_j{i}", T.StringType()) for i in range(len(nested))]))
        on = " AND ".join([f"{key(c, 't.')} <=> s._k{i}" for i, c in enumerate(atomic)]
                          + [f"to_json(t.{quoted(c)}) <=> s._j{i}" for i, c in enumerate(nested)])
        with tables.tagged_commits(spark, {COMMIT_TAG: {"request": request, "rows": deleted}}):
            dt.alias("t").merge(source.alias("s"), on).whenMatchedDelete().execute()
    if str(props.get("delta.enableDeletionVectors", "false")).lower() == "true":
        # deleted rows may still sit in files only masked by a deletion vector: rewrite them
        spark.sql(f"REORG TABLE delta.{quoted(path)} APPLY (PURGE)")
    return deleted, leaked


def _landing_note(cfg: Config) -> str:
    days = int(cfg.get("ingest.landing_retention_days") or 0)
    kept = (f"kept {days} days by the storage retention you configured (ingest.landing_retention_days)"
            if days else "no retention declared (ingest.landing_retention_days: 0)")
    return (f"landing files are not erased ({kept}); records of an erased person in them are "
            f"suppressed on re-ingest through {ERASURE_REQUESTS}")


def earlier_deletes(spark: SparkSession, cfg: Config, order: list[str], request: str,
                    since_ms: int) -> dict[str, int]:
    """``table -> rows`` that earlier, unfinished runs of ``request`` removed: read from the tables'
    own delete commits (:data:`COMMIT_TAG`, each committed atomically with its delete) newer than
    ``since_ms`` (epoch milliseconds), newest first."""
    out: dict[str, int] = {}
    for table in order:   # discovered tables: each exists
        for c in tables.commits(spark, cfg, table):
            if c.get("timestamp") is not None and int(c["timestamp"]) < since_ms:
                break
            tag = tables.commit_tag(c, COMMIT_TAG)
            if tag and tag.get("request") == request:
                out[table] = out.get(table, 0) + int(tag.get("rows") or 0)
    return out


def _erase(spark: SparkSession, cfg: Config, given: list[str], key: str, retention: float) -> dict:
    hashed_given = sorted(erasure.hash_values(spark, given, key).values())
    request = erasure.request_key(spark, hashed_given, key)
    state = erasure.request_state(spark, cfg, request)
    resumed = state is not None and state["status"] == "pending"   # an earlier run of it was killed
    # its deletes are newer than its start (a first request) or than the last completion (a repeat)
    since_ms = (0 if not resumed else int(state["completed_at"].timestamp() * 1000) if state["completed_at"]
                else int(state["requested_at"].timestamp() * 1000) - RESUME_MARGIN_MS)
    person: Person = expand_person(
        spark, cfg, given, key, max_identifiers=int(cfg.get("erase.max_identifiers") or 0),
        history_versions=int(cfg.get("erase.map_history_versions") or 0),
        extra_hashes=erasure.request_hashes(spark, cfg, request))
    # the hashes first: a run killed halfway leaves the person suppressed, and its rerun finds them
    # (and the count of customer ids, which a rerun after the map's delete can no longer count)
    erasure.record_request(spark, cfg, key_of_request=request, identifiers_hashed=person.hashes, done=False,
                           customer_ids_count=len(person.customer_ids))
    faults.point("erase.after_request")

    found = discover_tables(spark, cfg)
    order = erasure_order(found)
    # a killed run's deletes count too (the ledger and the VACUUM must cover them)
    removed: dict[str, int] = earlier_deletes(spark, cfg, order, request, since_ms) if resumed else {}
    earlier = set(removed)
    if resumed:
        log.warning("erase: resuming a request an earlier run did not finish: it had removed %d rows from %d "
                    "table(s)", sum(removed.values()), len(removed))
    leaked: dict[str, list[str]] = {}

    # tables side by side in threads (each delete is one table's own atomic commit; a crash leaves
    # some deleted and some not, as a one-by-one run killed at that moment would): each thread has
    # its own session, so every delete commit carries its own request tag
    workers = max(1, int(cfg.get("erase.parallel_tables") or 1))
    lock = threading.Lock()

    def session() -> SparkSession:
        return parallel.isolated_session(spark) if workers > 1 else spark

    def delete_from(table: str) -> None:
        own = session()
        conds = column_conditions(tables.read(own, cfg, table).schema, person, key)
        if not conds:
            return
        n, stats = delete_rows(own, cfg, table, conds, request, purge=table in earlier)
        log.info("erase: [%d/%d] %s: %d rows removed", order.index(table) + 1, len(order), table, n)
        with lock:
            if n:
                removed[table] = removed.get(table, 0) + n
            if stats:
                leaked[table] = stats
        if n:
            faults.point(f"erase.after_delete:{table}")
        if stats:
            log.warning("erase: %s keeps min/max statistics of column(s) %s in its transaction log; they may "
                        "still show the person until Delta's log retention removes old commits",
                        table, ", ".join(stats))

    parallel.map_in_threads([t for t in order if t not in IDENTITY_LAST], delete_from, workers, "erase-delete")
    # files and activation while the identity map still names the person's customer ids: a rerun
    # after a crash past this point no longer finds them (the map and its old versions are gone)
    files = artifacts.clean_files(cfg, person.searchable)
    # activation: CRM rows, audience extracts, destinations' deletion calls (a failure stops here:
    # the request stays not done and the rerun tries again)
    from seglake.stages.export import erase_customers
    activation = erase_customers(spark, cfg, list(person.customer_ids), f"erase-{request[:12]}")
    faults.point("erase.after_activation")
    for table in order:   # the edges, then the map: one by one (a crash between them is repaired)
        if table in IDENTITY_LAST:
            delete_from(table)

    targets = ([t for t in order if t not in WRITTEN_OUTSIDE_LEASE or t in removed]
               if cfg.get("erase.vacuum_all_tables") else [t for t in order if t in removed])
    # only tables that hold a file no current version references (an old version's, an orphan's)
    done = parallel.map_in_threads(targets, lambda t: vacuuming.vacuum_if_needed(session(), cfg, t, retention),
                                   workers, "erase-vacuum")
    log.info("erase: VACUUMed %d of %d table(s) (the others hold no file an older version or a failed "
             "write left)", sum(done), len(targets))
    faults.point("erase.after_vacuum")
    request_id = erasure.record_request(
        spark, cfg, key_of_request=request, identifiers_hashed=person.hashes, done=True,
        customer_ids_count=len(person.customer_ids), tables_touched=sorted(removed),
        rows_removed=sum(removed.values()), retention_hours=retention)

    summary = {"request_id": request_id, "identifiers_given": len(given),
               "customers_matched": len(person.customer_ids),
               "identifiers_matched": len(set(person.raw) | set(person.hashes)),
               "rows_removed": sum(removed.values()), "removed_by_table": removed, "resumed": resumed,
               "tables_vacuumed": sum(done), "tables_checked_for_vacuum": len(targets),
               "vacuum_retention_hours": retention,
               "files_removed": files["removed"], "files_flagged": files["flagged"],
               "mlflow_runs": files["mlflow_runs"], "landing": _landing_note(cfg)}
    if activation:
        summary["activation"] = activation
    if files.get("note"):
        summary["note"] = files["note"]
    if files["not_searched"]:
        summary["not_searched"] = files["not_searched"]
    if leaked:
        summary["log_statistics"] = leaked
    return summary


def run(ctx: JobContext) -> dict:
    """Erase the person(s) named by ``--identifier`` / ``--file`` from every table and file."""
    spark, cfg = ctx.spark, ctx.cfg
    given = identifiers_from_args(ctx.args)
    key = pii.salt(cfg)
    retention = float(cfg.get("erase.retention_hours"))
    if retention < 0:
        raise ValueError(f"erase.retention_hours must be >= 0, got {retention:g}")
    wait = float(cfg.get("erase.lease_wait_seconds") or 0)
    log.info("erase: taking the exclusive lease: running writer jobs finish first and new ones wait (%s)",
             f"waiting at most {wait:g} s" if wait > 0 else "the lease's default wait")
    started = time.monotonic()
    with leases.exclusive(spark, cfg, ctx.run_id, wait_seconds=wait if wait > 0 else None):
        waited = time.monotonic() - started
        if waited >= 10.0:   # taking the lease itself costs a few seconds (two small Delta commits)
            log.warning("erase: waited %.0f s for running writer jobs before erasing", waited)
        summary = _erase(spark, cfg, given, key, retention)
    summary["lease_wait_s"] = round(waited, 1)
    return summary
