"""The erasure ledger ``ops.erasure_requests`` and the suppression of erased persons.

``seglake run erase`` (:mod:`seglake.stages.erase`) records one ledger row per request:
``request_id`` (uuid), ``request_key`` (the keyed hash of the request's sorted hashed
identifiers: the same request always has the same key, so a rerun updates its row instead of
adding one), ``requested_at``, ``completed_at``, ``status`` (``pending`` while the erasure
runs, ``done`` after it), ``identifiers_hashed`` (the keyed hash, :func:`seglake.core.pii.hash_identifier`,
of every identifier of the person — user_id and anonymous_id included; never a value in
clear), ``customer_ids_count``, ``tables_touched``, ``rows_removed`` and
``vacuum_retention_hours``.

The ledger is what makes an erasure stick: :func:`erased_filter` drops rows of an erased
person from a DataFrame (clean's batch, before it reaches silver), so that re-ingesting old
landing files or rebuilding from bronze cannot bring the person back. The hashed set is
bounded by the number of erasure requests, not by events.
"""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from functools import reduce
from typing import Iterable, Mapping, Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from seglake.core import pii, tables
from seglake.core.config import Config
from seglake.core.contracts import ERASURE_REQUESTS, IDENTIFIER_FIELDS, require_columns

log = logging.getLogger(__name__)

LEDGER_SCHEMA = ("request_id STRING, request_key STRING, requested_at TIMESTAMP, completed_at TIMESTAMP, "
                 "status STRING, identifiers_hashed ARRAY<STRING>, customer_ids_count INT, "
                 "tables_touched ARRAY<STRING>, rows_removed BIGINT, vacuum_retention_hours DOUBLE")

#: The kinds of columns :func:`erased_filter` compares (see there).
KINDS: tuple[str, ...] = ("raw", "hashed", "text", "text_if_set")

#: Token delimiters of a raw line (JSON line or CSV record), a Java regex: quotes, braces,
#: brackets, commas, semicolons, tabs and line ends. Not spaces (phone numbers hold them) and
#: not colons (timestamps): a JSON or CSV value comes out as one token, as it was written.
TOKEN_DELIMITERS = r'["{}\[\],;\t\r\n]+'

#: clean's standardized batch (:func:`seglake.stages.clean_rules.standardize`): user_id and
#: anonymous_id as given, device_id/email_hash/phone_hash already hashed, and the raw line,
#: searched on rejected rows (``_reason`` set) and on rows without any identifier.
STANDARDIZED_COLUMNS: dict[str, tuple[str, ...]] = {
    "raw": ("user_id", "anonymous_id"),
    "hashed": ("device_id", "email_hash", "phone_hash"),
    "text": ("_raw_line",),
    "text_if_set": ("_reason",),
}
#: bronze.events_raw rows: every raw identifier field, and the raw line of malformed records.
BRONZE_COLUMNS: dict[str, tuple[str, ...]] = {
    "raw": tuple(IDENTIFIER_FIELDS),
    "text": ("_raw",),
    "text_if_set": ("_malformed",),
}


# --------------------------------------------------------------------------- hashing

def hash_values(spark: SparkSession, values: Iterable[str], key: str) -> dict[str, str]:
    """``value -> pii.hash_identifier(value)`` for one request's identifiers (small); values
    that normalize to nothing (blank) are left out."""
    values = sorted({v for v in values if v is not None})
    if not values:
        return {}
    df = spark.createDataFrame([(v,) for v in values], "v STRING")
    rows = df.select("v", pii.hash_identifier(F.col("v"), key).alias("h")).collect()  # one request: small
    return {r["v"]: r["h"] for r in rows if r["h"]}


def request_key(spark: SparkSession, hashed_given: Iterable[str], key: str) -> str:
    """The deterministic key of a request: the keyed hash of its sorted, distinct hashed identifiers."""
    joined = "\n".join(sorted(set(hashed_given)))
    if not joined:
        raise ValueError("request_key needs at least one hashed identifier")
    return hash_values(spark, [joined], key)[joined]


# --------------------------------------------------------------------------- the ledger

def request_state(spark: SparkSession, cfg: Config, key_of_request: str) -> dict | None:
    """The ledger row of a request (``status``: ``pending`` when a run of it did not finish,
    else ``done``; ``requested_at``, ``completed_at``), or None when it was never recorded."""
    if not tables.exists(spark, cfg, ERASURE_REQUESTS):
        return None
    row = (tables.read(spark, cfg, ERASURE_REQUESTS).where(F.col("request_key") == F.lit(key_of_request))
           .select("status", "requested_at", "completed_at").first())
    return None if row is None else row.asDict()


def request_hashes(spark: SparkSession, cfg: Config, key_of_request: str) -> list[str]:
    """The hashes already recorded for a request (a crashed earlier run of it wrote them
    before deleting anything), or []."""
    if not tables.exists(spark, cfg, ERASURE_REQUESTS):
        return []
    rows = (tables.read(spark, cfg, ERASURE_REQUESTS).where(F.col("request_key") == F.lit(key_of_request))
            .select(F.explode("identifiers_hashed").alias("h")).distinct().collect())  # one request: small
    return sorted(r["h"] for r in rows if r["h"])


def record_request(spark: SparkSession, cfg: Config, *, key_of_request: str, identifiers_hashed: Iterable[str],
                   done: bool, customer_ids_count: int = 0, tables_touched: Sequence[str] = (),
                   rows_removed: int = 0, retention_hours: float | None = None) -> str:
    """Insert or update the request's ledger row (MERGE on ``request_key``); its request_id.

    ``done=False`` (before any delete) records the hashes only, as ``pending``: a run killed
    halfway leaves the person suppressed and lets the rerun find what the first run found.
    ``done=True`` (after the deletes) adds the counts and sets ``done``. A rerun of the same
    request adds its (usually zero) rows to ``rows_removed`` and unions the arrays, so the
    ledger keeps one row per request and a rerun that finds nothing leaves it unchanged.
    """
    hashed = sorted({h for h in identifiers_hashed if h})
    if not hashed:
        raise ValueError("record_request needs at least one hashed identifier")
    now = datetime.now(timezone.utc)
    row = spark.createDataFrame(
        [(str(uuid.uuid4()), key_of_request, now, now if done else None, "done" if done else "pending", hashed,
          int(customer_ids_count), sorted(set(tables_touched)), int(rows_removed),
          None if retention_hours is None else float(retention_hours))], LEDGER_SCHEMA)
    if not tables.exists(spark, cfg, ERASURE_REQUESTS):
        tables.append(row, cfg, ERASURE_REQUESTS)
    else:
        from delta.tables import DeltaTable

        def union(c: str) -> Column:
            return F.array_sort(F.array_union(F.coalesce(F.col(f"t.{c}"), F.array().cast("array<string>")),
                                              F.col(f"s.{c}")))

        # a new run of a request is pending until it ends (also a repeat of a finished one)
        updates = {"identifiers_hashed": union("identifiers_hashed"), "status": F.lit("pending"),
                   "customer_ids_count": F.greatest(F.coalesce(F.col("t.customer_ids_count"), F.lit(0)),
                                                    F.col("s.customer_ids_count"))}
        if done:
            updates.update({
                "status": F.lit("done"),
                "completed_at": F.coalesce(F.col("t.completed_at"), F.col("s.completed_at")),
                "tables_touched": union("tables_touched"),
                "rows_removed": F.coalesce(F.col("t.rows_removed"), F.lit(0)) + F.col("s.rows_removed"),
                "vacuum_retention_hours": F.col("s.vacuum_retention_hours"),
            })
        # the condition and the updates name columns only: the commitInfo holds no value
        (DeltaTable.forPath(spark, cfg.table_path(ERASURE_REQUESTS)).alias("t")
         .merge(row.alias("s"), "t.request_key = s.request_key")
         .whenMatchedUpdate(set=updates).whenNotMatchedInsertAll().execute())
    found = (tables.read(spark, cfg, ERASURE_REQUESTS).where(F.col("request_key") == F.lit(key_of_request))
             .select("request_id").first())
    return found["request_id"]


def erased_hashes(spark: SparkSession, cfg: Config) -> DataFrame | None:
    """Every hashed identifier of every erasure request (column ``h``), or None without a ledger."""
    if not tables.exists(spark, cfg, ERASURE_REQUESTS):
        return None
    return (tables.read(spark, cfg, ERASURE_REQUESTS).select(F.explode("identifiers_hashed").alias("h"))
            .where(F.col("h").isNotNull()).distinct())


# --------------------------------------------------------------------------- suppression

def erased_filter(spark: SparkSession, cfg: Config, df: DataFrame,
                  columns_by_kind: Mapping[str, Sequence[str]]) -> DataFrame:
    """``df`` without the rows of erased persons (``ops.erasure_requests``).

    Args:
        spark: the session.
        cfg: the configuration (ledger path, PII key).
        df: any DataFrame holding identifiers.
        columns_by_kind: which columns to compare, by kind:
            ``raw`` -- identifiers as given (email, phone, device_id, user_id, anonymous_id):
            hashed with :func:`seglake.core.pii.hash_identifier` and compared with the ledger;
            ``hashed`` -- columns already holding that hash (silver's device_id, email_hash, ...);
            ``text`` -- raw lines: split into tokens (:data:`TOKEN_DELIMITERS`), each token
            hashed and compared; only on rows where every ``raw``/``hashed`` column is null or
            a ``text_if_set`` column is set (true, or non-null for other types), because
            hashing every token of every line would cost more than the rest of clean;
            ``text_if_set`` -- the flags that mark a row's text for searching (``_malformed``,
            ``_reason``).
            :data:`STANDARDIZED_COLUMNS` and :data:`BRONZE_COLUMNS` fit clean's batch and bronze.

    Returns:
        ``df`` with the same columns, minus the erased persons' rows. Without a ledger (or an
        empty one) ``df`` itself. Structured columns are compared by broadcast anti joins with
        the ledger's hashes; the text check uses the collected hash set (bounded by erasure
        requests, not by events). Identifiers are compared after normalization (trim,
        lower case), as everywhere in seglake.
    """
    if not isinstance(df, DataFrame):
        raise TypeError(f"erased_filter needs a DataFrame, got {type(df).__name__}")
    unknown = sorted(set(columns_by_kind) - set(KINDS))
    if unknown:
        raise ValueError(f"erased_filter: unknown column kind(s) {', '.join(unknown)}; use {', '.join(KINDS)}")
    cols = {k: [str(c) for c in (columns_by_kind.get(k) or ())] for k in KINDS}
    if not any(cols[k] for k in ("raw", "hashed", "text")):
        raise ValueError("erased_filter needs at least one 'raw', 'hashed' or 'text' column")
    require_columns(df, [c for k in KINDS for c in cols[k]], "erased_filter input")
    erased = erased_hashes(spark, cfg)
    if erased is None:
        return df
    hashes = sorted(r["h"] for r in erased.collect())  # bounded by erasure requests: small
    if not hashes:
        return df
    key = pii.salt(cfg)
    out = df
    compared = [(c, pii.hash_identifier(F.col(c), key)) for c in cols["raw"]] + [(c, F.col(c)) for c in cols["hashed"]]
    for i, (_, value) in enumerate(compared):
        name = f"_erased_h{i}"
        # a null value matches nothing, so rows without that identifier stay
        out = out.join(F.broadcast(erased.select(F.col("h").alias(name))), value == F.col(name), "left_anti")
    if cols["text"]:
        nulls = [F.col(c).isNull() for c in cols["raw"] + cols["hashed"]]
        guard = reduce(lambda a, b: a & b, nulls) if nulls else F.lit(True)
        dtypes = dict(df.dtypes)
        for c in cols["text_if_set"]:
            guard = guard | (F.coalesce(F.col(c), F.lit(False)) if dtypes[c] == "boolean" else F.col(c).isNotNull())
        hit = reduce(lambda a, b: a | b, [
            F.exists(F.split(F.col(c), TOKEN_DELIMITERS), lambda t: pii.hash_identifier(t, key).isin(hashes))
            for c in cols["text"]])
        out = out.where(~F.coalesce(F.when(guard, hit), F.lit(False)))
    return out
