"""``seglake run sessions``: silver.enriched_events, the one sessionized, consented events table
every later stage reads, and silver.sessions derived from it.

One row per consented silver event whose anchor identifier has a customer: ``customer_id``,
the session (``session_key``, ``session_seq``, ``event_seq``), the journey state of its
event type and the event columns the stages use. It is built once (by ``seglake run
sessions``, or on demand by :func:`read` when it is behind its inputs) instead of every
stage re-reading silver.events, joining the identity map and sessionizing again.

Kept up to date incrementally (:func:`refresh`). Each write records, in its Delta commit's
``userMetadata``, the state it reflects: the versions of silver.events and the identity map, a hash of
the excluded identifiers, the last clean batch seen and a fingerprint of the settings that
shape it. A refresh then rewrites only the *affected* customers:

* customers of the events of batches cleaned since (``ops.clean_batches.cleaned_at``), and
* customers whose identity changed: every identifier whose customer_id differs between the
  recorded identity-map version and the current one gives its old and its new customer.

Their rows are deleted (one MERGE: deletion vectors, files are not rewritten) and their
events recomputed from silver and appended with the new state — two commits; the state is
only in the second, so a run killed between them recomputes the same customers on rerun
and converges. Anything it cannot reason about incrementally (no table yet, no recorded
state, other settings, a changed exclusion list, an identity-map version that time travel
can no longer read) is a full rebuild, logged with its reason. silver.sessions is derived
from it the same way (its commits record the enriched version they reflect).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, replace
from datetime import date
from typing import Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.config import Config
from seglake.core.contracts import (CLEAN_BATCHES, CONSENT_RULE, ENRICHED_EVENTS, IDENTITY_EXCLUDED, IDENTITY_MAP,
                                    SESSIONS, SILVER_EVENTS, customer_events)
from seglake.stages import sessions as S

log = logging.getLogger(__name__)

#: silver.events columns carried into the enriched table (besides customer_id and sessions).
EVENT_COLUMNS: tuple[str, ...] = (
    "event_key", "event_ts", "event_date", "event_type", "session_id", "source", "channel", "device_type",
    "page_url", "product_id", "revenue_usd", "scroll_depth", "duration_s", "properties")
#: The table's columns, in order.
COLUMNS: tuple[str, ...] = (
    "customer_id", "event_key", "event_ts", "event_date", "event_type", "journey_state", "session_key",
    "session_seq", "event_seq", "session_id", "source", "channel", "device_type", "page_url", "product_id",
    "revenue_usd", "scroll_depth", "duration_s", "properties")
_TAG = "seglake.enriched"
#: deletion vectors: removing a customer's rows marks them deleted instead of rewriting every
#: file that holds one (OPTIMIZE, ``seglake run maintain``, purges them later)
_PROPERTIES = {"delta.enableDeletionVectors": "true"}


@dataclass(frozen=True)
class State:
    """What a version of the enriched table reflects (stored in its commit's userMetadata)."""

    silver_version: int
    identity_version: int
    excluded: str  # hash of the excluded identifiers ("" when there is no exclusion table)
    excluded_version: int  # its Delta version (-1: none), to diff against when the hash changes
    cleaned_through: int | None  # max ops.clean_batches.cleaned_at seen (epoch micros), None: no ledger
    fingerprint: str


def _settings(cfg: Config) -> dict:
    scfg = cfg["sessions"]
    return {"inactivity_minutes": int(scfg["inactivity_minutes"]),
            "split_on_session_id": bool(scfg["split_on_session_id"]),
            "states": S.states_for(cfg), "page_event_types": list(scfg["page_event_types"]),
            "columns": list(COLUMNS)}


def fingerprint(cfg: Config) -> str:
    """A short hash of the settings that shape the table (a change forces a full rebuild)."""
    return hashlib.sha256(json.dumps(_settings(cfg), sort_keys=True).encode()).hexdigest()[:16]


def current_state(spark: SparkSession, cfg: Config) -> State:
    """The state the table would reflect if it were built now."""
    cleaned = None
    if tables.exists(spark, cfg, CLEAN_BATCHES):
        # epoch micros: no time-zone conversion between Spark and Python on the way
        cleaned = tables.read(spark, cfg, CLEAN_BATCHES).agg(F.max(F.unix_micros("cleaned_at"))).first()[0]
    excluded_v = tables.version(spark, cfg, IDENTITY_EXCLUDED)
    return State(tables.version(spark, cfg, SILVER_EVENTS), tables.version(spark, cfg, IDENTITY_MAP),
                 _excluded_hash(spark, cfg), -1 if excluded_v is None else excluded_v, cleaned, fingerprint(cfg))


def _same(a: State | None, b: State | None) -> bool:
    """Equal states, ignoring the exclusion table's version (its content hash counts)."""
    if a is None or b is None:
        return False
    return replace(a, excluded_version=0) == replace(b, excluded_version=0)


def _excluded_hash(spark: SparkSession, cfg: Config) -> str:
    """A hash of the guard's excluded identifiers (identity rewrites that small table on every
    run, so its content, not its version, tells whether it changed)."""
    if not tables.exists(spark, cfg, IDENTITY_EXCLUDED):
        return ""
    ids = F.concat_ws(":", "identifier_type", "identifier")
    return tables.read(spark, cfg, IDENTITY_EXCLUDED).agg(
        F.sha2(F.concat_ws(",", F.sort_array(F.collect_set(ids))), 256)).first()[0]  # one scalar


def _recorded(spark: SparkSession, cfg: Config, table: str) -> dict | None:
    return tables.recorded_metadata(spark, cfg, table, _TAG)


def recorded_state(spark: SparkSession, cfg: Config) -> State | None:
    meta = _recorded(spark, cfg, ENRICHED_EVENTS)
    if meta is None:
        return None
    try:
        return State(**{k: meta[k] for k in State.__dataclass_fields__})
    except KeyError:
        return None


def build(events_with_customer: DataFrame, cfg: Config) -> DataFrame:
    """Sessionize consented events that carry a customer_id; the table's columns (no I/O)."""
    scfg = cfg["sessions"]
    sev = S.sessionize(events_with_customer, int(scfg["inactivity_minutes"]), bool(scfg["split_on_session_id"]))
    return sev.withColumn("journey_state", S.state_col(F.col("event_type"), S.states_for(cfg))).select(*COLUMNS)


def _source_events(spark: SparkSession, cfg: Config) -> DataFrame:
    return customer_events(spark, cfg, columns=EVENT_COLUMNS)


def _write(df: DataFrame, cfg: Config, table: str, partition_by: str, meta: dict, full: bool) -> None:
    """Append (or overwrite when ``full``) with ``meta`` in the commit's userMetadata."""
    write = tables.overwrite if full else tables.append
    write(df, cfg, table, partition_by=[partition_by], user_metadata=json.dumps({_TAG: meta}, sort_keys=True),
          properties=_PROPERTIES)


def _identity_changes(spark: SparkSession, cfg: Config, old_version: int) -> DataFrame:
    """customer_id of every identifier whose customer differs between ``old_version`` and now
    (old and new ids both: the old one's rows go, the new one is recomputed)."""
    cols = ["identifier_type", "identifier", "customer_id"]
    new = tables.read(spark, cfg, IDENTITY_MAP).select(*cols).withColumnRenamed("customer_id", "new_id")
    old = tables.read(spark, cfg, IDENTITY_MAP, version=old_version).select(*cols) \
        .withColumnRenamed("customer_id", "old_id")
    diff = (old.join(new, ["identifier_type", "identifier"], "full_outer")
            .where(~F.col("old_id").eqNullSafe(F.col("new_id"))))
    return (diff.select(F.col("old_id").alias("customer_id"))
            .unionByName(diff.select(F.col("new_id").alias("customer_id"))))


def _exclusion_changes(spark: SparkSession, cfg: Config, old: State) -> DataFrame:
    """customer_id, in the old and the current map, of every identifier that entered or left
    the guard's exclusion list (events anchored on it change customer)."""
    key = ["identifier_type", "identifier"]
    none = spark.createDataFrame([], "identifier_type string, identifier string")
    new_ex = (tables.read(spark, cfg, IDENTITY_EXCLUDED).select(*key)
              if tables.exists(spark, cfg, IDENTITY_EXCLUDED) else none)
    old_ex = (tables.read(spark, cfg, IDENTITY_EXCLUDED, version=old.excluded_version).select(*key)
              if old.excluded_version >= 0 else none)
    changed = new_ex.exceptAll(old_ex).unionByName(old_ex.exceptAll(new_ex)).distinct()
    maps = (tables.read(spark, cfg, IDENTITY_MAP).select(*key, "customer_id")
            .unionByName(tables.read(spark, cfg, IDENTITY_MAP, version=old.identity_version)
                         .select(*key, "customer_id")))
    return maps.join(changed, key, "left_semi").select("customer_id")


def _new_batch_customers(spark: SparkSession, cfg: Config, since: int | None) -> DataFrame:
    """customer_id (current map) of silver events of the batches cleaned after ``since``."""
    batches = tables.read(spark, cfg, CLEAN_BATCHES)
    if since is not None:
        batches = batches.where(F.unix_micros("cleaned_at") > F.lit(since))
    batch_ids = [r[0] for r in batches.select("_batch_id").distinct().collect()]  # one per ingest batch
    if not batch_ids:
        return spark.createDataFrame([], "customer_id string")
    return customer_events(spark, cfg, columns=("event_key",),
                           where=F.col("_batch_id").isin(batch_ids)).select("customer_id")


def _why_full(spark: SparkSession, cfg: Config, old: State | None, now: State) -> str | None:
    """The reason a refresh must rebuild everything, or None when an incremental one will do."""
    if not tables.exists(spark, cfg, ENRICHED_EVENTS):
        return "the table does not exist yet"
    if old is None:
        return "the table records no state"
    if old.fingerprint != now.fingerprint:
        return "the sessions/states settings changed"
    if now.cleaned_through is None or not tables.exists(spark, cfg, CLEAN_BATCHES):
        return "ops.clean_batches is missing"
    if old.identity_version > now.identity_version or old.silver_version > now.silver_version:
        return "an input table is older than the recorded state (restored?)"
    return None


def _full_rebuild(spark: SparkSession, cfg: Config, meta: dict, why: str, run_id: str) -> dict:
    log.info("enriched events: full rebuild (%s)", why)
    _write(build(_source_events(spark, cfg), cfg), cfg, ENRICHED_EVENTS, "event_date", meta, full=True)
    _sync_sessions(spark, cfg, None, 0, run_id)
    return {"mode": "full", "reason": why, "customers_rewritten": None}


def refresh(spark: SparkSession, cfg: Config, run_id: str = "") -> dict:
    """Bring silver.enriched_events and silver.sessions up to date; what was done.

    Returns:
        ``{"mode": "full"|"incremental"|"noop", "reason": str, "customers_rewritten": int|None}``.
    """
    now = current_state(spark, cfg)
    old = recorded_state(spark, cfg)
    exists = tables.exists(spark, cfg, ENRICHED_EVENTS)
    if exists and _same(now, old):
        _sync_sessions(spark, cfg, None, 0, run_id)
        return {"mode": "noop", "reason": "up to date", "customers_rewritten": 0}
    why = _why_full(spark, cfg, old, now)
    meta = asdict(now)
    if why is not None:
        return _full_rebuild(spark, cfg, meta, why, run_id)
    affected = _new_batch_customers(spark, cfg, old.cleaned_through)
    try:
        if old.identity_version != now.identity_version:
            affected = affected.unionByName(_identity_changes(spark, cfg, old.identity_version))
        if old.excluded != now.excluded:
            affected = affected.unionByName(_exclusion_changes(spark, cfg, old))
        affected = affected.where(F.col("customer_id").isNotNull()).distinct().localCheckpoint()
    except Exception as exc:  # noqa: BLE001 - the old identity-map version was vacuumed: rebuild
        why = f"identity map version {old.identity_version} is no longer readable ({type(exc).__name__}: {exc})"
        return _full_rebuild(spark, cfg, meta, why, run_id)
    n = affected.count()  # the rewrite's size: one number, logged and returned
    log.info("enriched events: incremental refresh of %d customer(s) (silver v%s -> v%s, identity v%s -> v%s)",
             n, old.silver_version, now.silver_version, old.identity_version, now.identity_version)
    rows = build(_source_events(spark, cfg).join(F.broadcast(affected) if n <= 200_000 else affected,
                                                 "customer_id", "left_semi"), cfg)
    if n:
        tables.delete_matching(spark, cfg, ENRICHED_EVENTS, affected, "customer_id")
    _write(rows, cfg, ENRICHED_EVENTS, "event_date", meta, full=False)
    _sync_sessions(spark, cfg, affected, 2 if n else 1, run_id)
    return {"mode": "incremental", "reason": "new batches or identity changes", "customers_rewritten": n}


def _sync_sessions(spark: SparkSession, cfg: Config, affected: DataFrame | None, commits: int,
                   run_id: str) -> None:
    """Derive silver.sessions from the enriched table.

    Only the ``affected`` customers' sessions are rewritten when silver.sessions reflects the
    enriched version just before this refresh's ``commits``; otherwise (first build, a run
    killed between the two tables' writes, a full rebuild) all of them.
    """
    enriched_v = tables.version(spark, cfg, ENRICHED_EVENTS)
    rec = _recorded(spark, cfg, SESSIONS)
    if rec is not None and rec.get("enriched_version") == enriched_v:
        return  # already derived from this version
    meta = {"enriched_version": enriched_v}
    scfg = cfg["sessions"]
    src = tables.read(spark, cfg, ENRICHED_EVENTS)
    incremental = (affected is not None and rec is not None
                   and rec.get("enriched_version") == enriched_v - commits)
    if incremental:
        src = src.join(affected, "customer_id", "left_semi")
        if commits == 2:
            tables.delete_matching(spark, cfg, SESSIONS, affected, "customer_id")
    sess = S.session_table(src, S.states_for(cfg), scfg["page_event_types"]).withColumn("_run_id", F.lit(run_id))
    _write(sess, cfg, SESSIONS, "session_date", meta, full=not incremental)


def is_fresh(spark: SparkSession, cfg: Config) -> bool:
    """True when the table reflects the current silver events, identity map and settings."""
    return tables.exists(spark, cfg, ENRICHED_EVENTS) and _same(recorded_state(spark, cfg), current_state(spark, cfg))


def read(spark: SparkSession, cfg: Config, *, start: date | None = None, end: date | None = None,
         end_inclusive: bool = False, event_types: Sequence[str] | None = None,
         columns: Sequence[str] | None = None) -> DataFrame:
    """The enriched events (refreshed first when behind its inputs), filtered like
    :func:`seglake.core.contracts.customer_events`: ``event_date`` window, event types, columns
    (``customer_id`` is always kept)."""
    if not is_fresh(spark, cfg):
        log.info("enriched events: %s is behind its inputs; bringing it up to date first", ENRICHED_EVENTS)
        refresh(spark, cfg)
    df = tables.read(spark, cfg, ENRICHED_EVENTS)
    if start is not None:
        df = df.where(F.col("event_date") >= F.lit(start))
    if end is not None:
        df = df.where((F.col("event_date") <= F.lit(end)) if end_inclusive else (F.col("event_date") < F.lit(end)))
    if event_types is not None:
        df = df.where(F.col("event_type").isin(*event_types))
    if columns is not None:
        df = df.select("customer_id", *[c for c in columns if c != "customer_id"])
    return df


def run(ctx) -> dict:
    """``seglake run sessions``: bring silver.enriched_events and silver.sessions up to date
    (incrementally: only customers with new events or changed identities are rewritten)."""
    spark, cfg = ctx.spark, ctx.cfg
    done = refresh(spark, cfg, ctx.run_id)
    out = tables.read(spark, cfg, SESSIONS).agg(
        F.count(F.lit(1)).alias("sessions"), F.countDistinct("customer_id").alias("customers"),
        F.avg("n_events").alias("events_per_session"), F.avg(F.col("converted").cast("int")).alias("conv")).first()
    events = tables.row_count(spark, cfg, ENRICHED_EVENTS, tables.version(spark, cfg, ENRICHED_EVENTS))
    summary = {"sessions": int(out["sessions"]), "customers": int(out["customers"]),
               "events_per_session": round(float(out["events_per_session"] or 0), 2),
               "conversion_rate": round(float(out["conv"] or 0), 4),
               "events": int(events), "refresh": done["mode"], "consent": CONSENT_RULE}
    if done["customers_rewritten"] is not None:
        summary["customers_rewritten"] = done["customers_rewritten"]
    return summary
