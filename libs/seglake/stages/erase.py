"""Erasure on request: remove a person from every Delta table, then VACUUM.

``seglake run erase --identifier X [--identifier Y] [--file F]``

1. The identifiers given (email, phone, user_id, anonymous_id, device_id; raw as the person
   gave them) are expanded to the person's other identifiers through ``silver.identity_map``
   (when it exists): every customer_id holding one of them, and every identifier of those
   customers.
2. Every Delta table under the lakehouse (bronze, silver, gold, ops) is scanned for columns
   that identify a person: raw columns in bronze/quarantine (matched raw or after salted
   hashing), hashed columns in silver (matched against the salted hashes), ``customer_id`` in
   silver/gold, ``identifier`` in the identity map, and the raw line ``_raw`` (searched for
   the raw identifiers given). Matching rows are deleted.
3. Deletion vectors, if a table uses them, are purged (REORG ... APPLY (PURGE)) and every
   touched table is VACUUMed with ``erase.retention_hours``: with 0, the files of older
   versions are gone at once, so time travel cannot bring the person back.

The summary reports rows removed per table; identifiers are never logged or reported.
"""
from __future__ import annotations

import logging

from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from seglake.core import pii, tables
from seglake.core.contracts import HASHED_IN_SILVER, IDENTIFIER_COLUMNS, IDENTITY_MAP, KNOWN_TABLES, LAYERS
from seglake.core.config import Config
from seglake.core.context import JobContext

log = logging.getLogger(__name__)

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

def match_condition(columns: list[str], values: list[str], hashed: list[str], customer_ids: list[str],
                    raw_values: list[str], salt: str) -> Column | None:
    """Column predicate true for rows of the person; None when the table has no identifying column.

    Args:
        columns: the table's columns.
        values: identifiers as they may appear in any column (raw and hashed forms).
        hashed: salted hashes (a raw column matches when its hash is one of these).
        customer_ids: the person's customer ids.
        raw_values: raw identifiers searched inside ``_raw`` lines.
        salt: PII salt.
    """
    conds: list[Column] = []
    for c in columns:
        if c in IDENTIFIER_COLUMNS:
            cond = F.col(c).isin(values)
            if c in HASHED_IN_SILVER and hashed:
                cond = cond | pii.hash_identifier(F.col(c), salt).isin(hashed)
            conds.append(F.coalesce(cond, F.lit(False)))
        elif c == "customer_id" and customer_ids:
            conds.append(F.coalesce(F.col(c).isin(customer_ids), F.lit(False)))
        elif c == "_raw" and raw_values:
            conds.append(F.coalesce(F.exists(F.array(*[F.lit(v) for v in raw_values]),
                                             lambda v: F.instr(F.col("_raw"), v) > 0), F.lit(False)))
    if not conds:
        return None
    out = conds[0]
    for cond in conds[1:]:
        out = out | cond
    return out

def _hashes(spark: SparkSession, values: list[str], salt: str) -> list[str]:
    # the identifiers of one request: small
    df = spark.createDataFrame([(v,) for v in values], "v STRING")
    return [r["h"] for r in df.select(pii.hash_identifier(F.col("v"), salt).alias("h")).collect() if r["h"]]

def expand_person(identity_map: DataFrame, values: list[str]) -> tuple[list[str], list[str]]:
    """(customer_ids, identifiers) of the customers holding any of ``values`` in the identity map."""
    # one person's rows: small
    cids = sorted({r["customer_id"] for r in identity_map.where(F.col("identifier").isin(values))
                   .select("customer_id").distinct().collect() if r["customer_id"] is not None})
    if not cids:
        return [], []
    idents = sorted({r["identifier"] for r in identity_map.where(F.col("customer_id").isin(cids))
                     .select("identifier").distinct().collect() if r["identifier"] is not None})
    return cids, idents

def _delete(spark: SparkSession, cfg: Config, table: str, cond: Column, retention_hours: float) -> int:
    from delta.tables import DeltaTable

    path = cfg.table_path(table)
    dt = DeltaTable.forPath(spark, path)
    matched = dt.toDF().where(cond)
    deleted = matched.count()  # one person's rows: a count, not a collect
    if deleted:
        # A DELETE would write its predicate — the identifiers, and the salt inside the hash
        # expression — into the commit's commitInfo, which VACUUM never removes. Instead the
        # person's rows are materialized (a handful) and removed by a MERGE whose condition
        # names only columns, so the transaction log keeps no trace of whom was erased.
        keys = [f.name for f in matched.schema.fields
                if not f.dataType.simpleString().startswith(("map", "array", "struct"))]
        # fresh column names: the source must not share attributes with the target it came from
        source = matched.select(*[F.col(c).alias(f"_k{i}") for i, c in enumerate(keys)]).distinct()
        on = " AND ".join(f"t.`{c}` <=> s._k{i}" for i, c in enumerate(keys))
        dt.alias("t").merge(source.alias("s"), on).whenMatchedDelete().execute()
    props = dt.detail().first()["properties"] or {}
    if str(props.get("delta.enableDeletionVectors", "false")).lower() == "true":
        # deleted rows may still sit in files only masked by a deletion vector: rewrite them
        spark.sql(f"REORG TABLE delta.`{path}` APPLY (PURGE)")
    # VACUUM lists files with spark.sql.sources.parallelPartitionDiscovery.parallelism tasks
    # (default 10000): far too many for a table of a few files; bound it by the shuffle setting
    key = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
    previous = spark.conf.get(key, None)
    spark.conf.set(key, str(max(2, int(spark.conf.get("spark.sql.shuffle.partitions")))))
    try:
        dt.vacuum(float(retention_hours))
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)
    return deleted

def run(ctx: JobContext) -> dict:
    """Erase the person(s) named by ``--identifier`` / ``--file`` from every table; VACUUM."""
    spark, cfg = ctx.spark, ctx.cfg
    given = identifiers_from_args(ctx.args)
    salt = pii.salt(cfg)
    hashed = _hashes(spark, given, salt)
    customer_ids: list[str] = []
    expanded: list[str] = []
    if tables.exists(spark, cfg, IDENTITY_MAP):
        customer_ids, expanded = expand_person(tables.read(spark, cfg, IDENTITY_MAP),
                                               sorted(set(given) | set(hashed)))
    values = sorted(set(given) | set(hashed) | set(expanded))
    # raw identifiers of the person that silver keeps unhashed (user_id, anonymous_id) are in
    # ``expanded`` as they are; search them in raw lines too (hashes cannot occur there).
    raw_values = sorted(set(given) | {v for v in expanded if len(v) != 64})
    retention = float(cfg.get("erase.retention_hours"))

    removed: dict[str, int] = {}
    for table in discover_tables(spark, cfg):
        cols = tables.read(spark, cfg, table).columns
        cond = match_condition(cols, values, sorted(set(hashed) | set(expanded)), customer_ids,
                               raw_values, salt)
        if cond is None:
            continue
        removed[table] = _delete(spark, cfg, table, cond, retention)
        log.info("erase: %s rows removed from %s", removed[table], table)

    summary = {"identifiers_given": len(given), "customers_matched": len(customer_ids),
               "identifiers_matched": len(values), "rows_removed": sum(removed.values()),
               "removed_by_table": removed, "vacuum_retention_hours": retention}
    return summary
