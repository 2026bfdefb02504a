"""``seglake run sessions``: silver.enriched_events, the one sessionized, consented events table
every later stage reads, and silver.sessions derived from it.

One row per consented silver event whose anchor identifier has a customer: ``customer_id``,
the session (``session_key``, ``session_seq``, ``event_seq``), the journey state of its
event type and the event columns the stages use. It is built once (by ``seglake run
sessions``, or on demand by :func:`read` when it is behind its inputs) instead of every
stage re-reading silver.events, joining the identity map and sessionizing again. Customers who
withdrew consent (``ops.consent``) keep their rows here; :func:`read`, the stages' one way in,
leaves them out at the reader's as-of (a withdrawal or a later grant needs no rewrite).

Kept up to date incrementally (:func:`refresh`). Each write records, in its Delta commit's
``userMetadata``, the state it reflects: the versions of silver.events and the identity map, a hash of
the excluded identifiers, the last clean batch seen and a fingerprint of the settings that
shape it. A refresh then rewrites only the *affected* customers:

* customers of the events of the batches ``ops.clean_batches`` gained since (a diff of two
  versions of that small ledger), and
* customers whose identity changed: every identifier whose customer_id differs between the
  recorded identity-map version and the current one gives its old and its new customer; the
  same for identifiers that entered or left the guard's exclusion list.

Their rows are deleted (one MERGE: deletion vectors, files are not rewritten; the commit is
marked *pending*) and their events recomputed from silver and appended with the new state —
two commits. A run killed between them leaves the pending mark newer than the last state, and
the next refresh rebuilds everything (it cannot know that its own diff covers what was
deleted). A full rebuild also follows a new table, no recorded state, other settings or
enrichment logic, an input older than the state, a silver.events commit that removed or
changed rows (erase, DELETE, RESTORE, overwrite: such a commit can touch any customer), or an
input version that time travel can no longer read; the reason is logged. With nothing to
rewrite, an empty append (committed anyway) records the new state. silver.sessions is derived
the same way: its commits record the enriched version they reflect, and it is updated for the
affected customers only when it reflects the version the refresh started from.

Not safe for two refreshes at once (two appends of the same customers): run the sessions job
from one scheduler, as every job.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime, timedelta
from typing import Sequence

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from seglake.core import counts, tables
from seglake.core.config import Config
from seglake.core.contracts import (CLEAN_BATCHES, CONSENT_RULE, ENRICHED_EVENTS, IDENTITY_EXCLUDED, IDENTITY_MAP,
                                    SESSIONS, SILVER_EVENTS, customer_events, exclude_withdrawn)
from seglake.stages import sessions as S

log = logging.getLogger(__name__)
#: one refresh at a time in this process (two would append the same customers twice)
_REFRESHING = threading.RLock()

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
_OPTIONAL_TYPES = {"session_id": "string", "source": "string", "channel": "string", "device_type": "string",
                   "page_url": "string", "product_id": "string", "revenue_usd": "double",
                   "scroll_depth": "double", "duration_s": "double", "properties": "map<string,string>"}
_PENDING = "seglake.enriched.pending"
#: bump when sessionize / attach_customer_id / the consent rule change meaning: forces a rebuild
LOGIC_VERSION = 1
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
    ledger_version: int  # ops.clean_batches version (-1: none): new batches = ledger now - ledger then
    fingerprint: str


def _settings(cfg: Config) -> dict:
    scfg = cfg["sessions"]
    return {"inactivity_minutes": int(scfg["inactivity_minutes"]),
            "split_on_session_id": bool(scfg["split_on_session_id"]),
            "states": S.states_for(cfg), "page_event_types": list(scfg["page_event_types"]),
            "columns": list(COLUMNS), "logic": LOGIC_VERSION}


def fingerprint(cfg: Config) -> str:
    """A short hash of the settings that shape the table (a change forces a full rebuild)."""
    return hashlib.sha256(json.dumps(_settings(cfg), sort_keys=True).encode()).hexdigest()[:16]


def current_state(spark: SparkSession, cfg: Config) -> State:
    """The state the table would reflect if it were built now."""
    versions = [tables.version(spark, cfg, t) for t in (SILVER_EVENTS, IDENTITY_MAP, IDENTITY_EXCLUDED, CLEAN_BATCHES)]
    silver_v, identity_v, excluded_v, ledger_v = [-1 if v is None else v for v in versions]
    return State(silver_v, identity_v, _excluded_hash(spark, cfg), excluded_v, ledger_v, fingerprint(cfg))


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


def _state_of(meta: dict | None) -> State | None:
    if meta is None:
        return None
    try:
        return State(**{k: meta[k] for k in State.__dataclass_fields__})
    except KeyError:  # written by an older version of this module
        return None


def recorded_state(spark: SparkSession, cfg: Config) -> State | None:
    """The state the table's latest state-carrying commit recorded, or None."""
    return _state_of(_recorded(spark, cfg, ENRICHED_EVENTS))


def build(events_with_customer: DataFrame, cfg: Config) -> DataFrame:
    """Sessionize consented events that carry a customer_id; the table's columns (no I/O)."""
    scfg = cfg["sessions"]
    sev = S.sessionize(events_with_customer, int(scfg["inactivity_minutes"]), bool(scfg["split_on_session_id"]))
    sev = sev.withColumn("journey_state", S.state_col(F.col("event_type"), S.states_for(cfg)))
    # optional silver columns a table may lack (older or hand-built ones): null, or derived
    defaults = {"event_date": F.to_date("event_ts"), "event_key": F.lit(None).cast("string")}
    for c, t in _OPTIONAL_TYPES.items():
        defaults.setdefault(c, F.lit(None).cast(t))
    return sev.select(*[F.col(c) if c in sev.columns else defaults[c].alias(c) for c in COLUMNS])


def _source_events(spark: SparkSession, cfg: Config) -> DataFrame:
    # withdrawn customers stay in the table (withdrawal is not erasure, and a later grant needs no
    # rebuild): :func:`read` leaves them out at each reader's own as-of
    return customer_events(spark, cfg, columns=EVENT_COLUMNS, withdrawals=False)


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


def _new_batch_customers(spark: SparkSession, cfg: Config, old_ledger_version: int) -> DataFrame:
    """customer_id (current map) of silver events of the batches the clean ledger gained, or
    cleaned again (``clean --as-of D``: a new run id), since ``old_ledger_version`` (a diff of two
    small table versions: no clock is involved)."""
    ledger = tables.read(spark, cfg, CLEAN_BATCHES).select("_batch_id", "run_id")
    if old_ledger_version >= 0:
        ledger = ledger.join(tables.read(spark, cfg, CLEAN_BATCHES, version=old_ledger_version)
                             .select("_batch_id", "run_id"), ["_batch_id", "run_id"], "left_anti")
    # per ingest batch: small
    return batch_customers(spark, cfg, [r[0] for r in ledger.select("_batch_id").distinct().collect()])


def batch_customers(spark: SparkSession, cfg: Config, batch_ids: list[str]) -> DataFrame:
    """customer_id (current map) of the silver events of ``batch_ids``."""
    if not batch_ids:
        return spark.createDataFrame([], "customer_id string")
    return customer_events(spark, cfg, columns=("event_key",), withdrawals=False,
                           where=F.col("_batch_id").isin(list(batch_ids))).select("customer_id")


def _silver_lost_rows(spark: SparkSession, cfg: Config, since: int, until: int) -> str | None:
    """The first commit of silver.events in ``(since, until]`` that removed or changed rows (erase,
    a DELETE/UPDATE/RESTORE, an overwrite, a MERGE that deleted or updated), or None.

    Clean only inserts; such a commit can touch any customer (erase deletes events that carry
    the person's identifiers whichever customer they belong to), so it forces a full rebuild."""
    if until <= since:
        return None
    seen = set()
    for r in tables.commits(spark, cfg, SILVER_EVENTS, since=since, until=until, newest_first=False):
        seen.add(r["version"])
        op, params, metrics = r["operation"], r["operationParameters"], r["operationMetrics"]
        changed = int(metrics.get("numTargetRowsDeleted") or 0) + int(metrics.get("numTargetRowsUpdated") or 0)
        if (op in ("DELETE", "UPDATE", "RESTORE", "TRUNCATE", "REPLACE TABLE", "CREATE OR REPLACE TABLE")
                or (op in ("WRITE", "CREATE TABLE AS SELECT") and params.get("mode") == "Overwrite")
                or (op == "MERGE" and changed)):
            return f"silver.events v{r['version']} ({op}) removed or changed rows"
    missing = sorted(set(range(since + 1, until + 1)) - seen)
    if missing:   # commits gone from the log (retention): what they did is unknown
        return f"silver.events commits {missing[0]}..{missing[-1]} are no longer in the Delta log"
    return None


def _pending_delete(spark: SparkSession, cfg: Config, state_version: int) -> bool:
    """True when a refresh deleted customers after the recorded state and did not finish."""
    pending = tables.recorded_metadata(spark, cfg, ENRICHED_EVENTS, _PENDING, since=state_version)
    return pending is not None and pending["_version"] > state_version


def _why_full(spark: SparkSession, cfg: Config, old: State | None, old_version: int, now: State) -> str | None:
    """The reason a refresh must rebuild everything, or None when an incremental one will do."""
    if not tables.exists(spark, cfg, ENRICHED_EVENTS):
        return "the table does not exist yet"
    if old is None:
        return "the table records no state"
    if old.fingerprint != now.fingerprint:
        return "the sessions/states settings or the enrichment logic changed"
    if now.ledger_version < 0 or old.ledger_version < 0:
        return "ops.clean_batches is missing"
    if (old.identity_version > now.identity_version or old.silver_version > now.silver_version
            or old.ledger_version > now.ledger_version):
        return "an input table is older than the recorded state (restored?)"
    if _pending_delete(spark, cfg, old_version):
        return "an earlier refresh deleted customers and was interrupted before it recorded its state"
    return _silver_lost_rows(spark, cfg, old.silver_version, now.silver_version)


def _full_rebuild(spark: SparkSession, cfg: Config, meta: dict, why: str, run_id: str) -> dict:
    log.info("enriched events: full rebuild (%s)", why)
    _write(build(_source_events(spark, cfg), cfg), cfg, ENRICHED_EVENTS, "event_date", meta, full=True)
    _sync_sessions(spark, cfg, None, None, run_id)
    return {"mode": "full", "reason": why, "customers_rewritten": None}


def refresh(spark: SparkSession, cfg: Config, run_id: str = "", rebuild_batches: Sequence[str] = ()) -> dict:
    """Bring silver.enriched_events and silver.sessions up to date; what was done.

    ``rebuild_batches``: the customers with events of these bronze batches are rewritten even
    when nothing changed (``seglake run sessions --as-of D``: the day's batches). Jobs of one
    chain running side by side (:func:`seglake.core.runner.run_chain`) refresh one at a time:
    the second finds the table up to date.

    Returns:
        ``{"mode": "full"|"incremental"|"noop", "reason": str, "customers_rewritten": int|None}``.
    """
    with _REFRESHING:
        return _refresh(spark, cfg, run_id, rebuild_batches)


def _refresh(spark: SparkSession, cfg: Config, run_id: str, rebuild_batches: Sequence[str]) -> dict:
    now = current_state(spark, cfg)
    recorded = _recorded(spark, cfg, ENRICHED_EVENTS)
    old = _state_of(recorded)
    if not rebuild_batches and _up_to_date(spark, cfg, now, recorded):
        _sync_sessions(spark, cfg, None, None, run_id)
        return {"mode": "noop", "reason": "up to date", "customers_rewritten": 0}
    meta = asdict(now)
    why = _why_full(spark, cfg, old, recorded["_version"] if recorded else -1, now)
    if why is not None:
        return _full_rebuild(spark, cfg, meta, why, run_id)
    base = tables.version(spark, cfg, ENRICHED_EVENTS)
    affected = _new_batch_customers(spark, cfg, old.ledger_version)
    if rebuild_batches:
        affected = affected.unionByName(batch_customers(spark, cfg, list(rebuild_batches)))
    try:
        if old.identity_version != now.identity_version:
            affected = affected.unionByName(_identity_changes(spark, cfg, old.identity_version))
        if old.excluded != now.excluded:
            affected = affected.unionByName(_exclusion_changes(spark, cfg, old))
        affected = affected.where(F.col("customer_id").isNotNull()).distinct().localCheckpoint()
    except AnalysisException as exc:  # an old input version is no longer readable (vacuumed): rebuild
        return _full_rebuild(spark, cfg, meta, f"an older input version is no longer readable ({exc})", run_id)
    n = affected.count()  # the rewrite's size: one number, logged and returned
    log.info("enriched events: incremental refresh of %d customer(s) (silver v%s -> v%s, identity v%s -> v%s)",
             n, old.silver_version, now.silver_version, old.identity_version, now.identity_version)
    if n:
        rows = build(_source_events(spark, cfg).join(F.broadcast(affected) if n <= 200_000 else affected,
                                                     "customer_id", "left_semi"), cfg)
        # the delete is marked pending until the append records the new state: a rerun that
        # finds the mark rebuilds everything instead of trusting its own (maybe other) diff
        tables.delete_matching(spark, cfg, ENRICHED_EVENTS, affected, "customer_id",
                               user_metadata=json.dumps({_PENDING: {"state": meta}}, sort_keys=True))
        _write(rows, cfg, ENRICHED_EVENTS, "event_date", meta, full=False)
    else:
        # nothing to rewrite (e.g. identity re-ran with the same result, or OPTIMIZE moved a
        # version): an empty append, committed anyway, records the new state
        _write(build(_source_events(spark, cfg).limit(0), cfg), cfg, ENRICHED_EVENTS, "event_date", meta,
               full=False)
    _sync_sessions(spark, cfg, affected if n else None, base, run_id)
    reason = "new batches or identity changes" + (f"; {len(rebuild_batches)} batch(es) of the day rebuilt"
                                                   if rebuild_batches else "")
    return {"mode": "incremental", "reason": reason, "customers_rewritten": n}


def _sync_sessions(spark: SparkSession, cfg: Config, affected: DataFrame | None, base: int | None,
                   run_id: str) -> None:
    """Derive silver.sessions from the enriched table.

    Only the ``affected`` customers' sessions are rewritten when silver.sessions reflects
    ``base``, the enriched version this refresh started from; with nothing affected only the
    recorded version moves; otherwise (first build, a run killed between the two tables'
    writes, a full rebuild) all of them are.
    """
    enriched_v = tables.version(spark, cfg, ENRICHED_EVENTS)
    rec = _recorded(spark, cfg, SESSIONS)
    if rec is not None and rec.get("enriched_version") == enriched_v:
        return  # already derived from this version
    meta = {"enriched_version": enriched_v}
    scfg = cfg["sessions"]
    follows = base is not None and rec is not None and rec.get("enriched_version") == base
    src = tables.read(spark, cfg, ENRICHED_EVENTS)
    if follows and affected is None:
        src = src.limit(0)  # nothing changed: record the new enriched version only
    elif follows:
        src = src.join(affected, "customer_id", "left_semi")
        tables.delete_matching(spark, cfg, SESSIONS, affected, "customer_id")
    sess = S.session_table(src, S.states_for(cfg), scfg["page_event_types"]).withColumn("_run_id", F.lit(run_id))
    _write(sess, cfg, SESSIONS, "session_date", meta, full=not follows)


def is_fresh(spark: SparkSession, cfg: Config) -> bool:
    """True when the table reflects the current silver events, identity map and settings."""
    return _up_to_date(spark, cfg, current_state(spark, cfg), _recorded(spark, cfg, ENRICHED_EVENTS))


def _up_to_date(spark: SparkSession, cfg: Config, now: State, recorded: dict | None) -> bool:
    return (tables.exists(spark, cfg, ENRICHED_EVENTS) and _same(now, _state_of(recorded))
            and not _pending_delete(spark, cfg, recorded["_version"]))


def read(spark: SparkSession, cfg: Config, *, start: date | None = None, end: date | None = None,
         end_inclusive: bool = False, event_types: Sequence[str] | None = None,
         columns: Sequence[str] | None = None, consent_at: date | datetime | None = None) -> DataFrame:
    """The enriched events (refreshed first when behind its inputs), filtered like
    :func:`seglake.core.contracts.customer_events`: ``event_date`` window, event types, columns
    (``customer_id`` is always kept), and without the customers whose consent is withdrawn at
    ``consent_at`` (default: 00:00 UTC of ``end``, the reader's as-of; now without ``end``).

    The table itself keeps withdrawn customers' events; every stage reads it through here, so
    the withdrawal applies at read time (:func:`seglake.core.contracts.exclude_withdrawn`)."""
    done = refresh(spark, cfg)  # a no-op (metadata reads only) when the table is up to date
    if done["mode"] != "noop":
        log.info("enriched events: %s was behind its inputs; brought it up to date first (%s)",
                 ENRICHED_EVENTS, done["mode"])
    df = tables.read(spark, cfg, ENRICHED_EVENTS)
    if start is not None:
        df = df.where(F.col("event_date") >= F.lit(start))
    if end is not None:
        df = df.where((F.col("event_date") <= F.lit(end)) if end_inclusive else (F.col("event_date") < F.lit(end)))
    if event_types is not None:
        df = df.where(F.col("event_type").isin(*event_types))
    df = exclude_withdrawn(spark, cfg, df, consent_at if consent_at is not None else end)
    if columns is not None:
        df = df.select("customer_id", *[c for c in columns if c != "customer_id"])
    return df


def run(ctx) -> dict:
    """``seglake run sessions``: bring silver.enriched_events and silver.sessions up to date
    (incrementally: only customers with new events or changed identities are rewritten)."""
    spark, cfg = ctx.spark, ctx.cfg
    day_batches: list[str] = []
    if ctx.as_of_given:   # a scheduler's run of day D: the day's customers are rewritten
        from seglake.stages.clean_batches import batches_of_day
        day_batches = batches_of_day(spark, cfg, ctx.as_of - timedelta(days=1))
        log.info("sessions: --as-of %s: rewriting the customers of %d batch(es) of files of %s", ctx.as_of,
                 len(day_batches), ctx.as_of - timedelta(days=1))
    done = refresh(spark, cfg, ctx.run_id, rebuild_batches=day_batches)
    out = tables.read(spark, cfg, SESSIONS).agg(
        F.count(F.lit(1)).alias("sessions"), F.countDistinct("customer_id").alias("customers"),
        F.avg("n_events").alias("events_per_session"), F.avg(F.col("converted").cast("int")).alias("conv")).first()
    events = counts.row_count(spark, cfg, ENRICHED_EVENTS, tables.version(spark, cfg, ENRICHED_EVENTS))
    summary = {"sessions": int(out["sessions"]), "customers": int(out["customers"]),
               "events_per_session": round(float(out["events_per_session"] or 0), 2),
               "conversion_rate": round(float(out["conv"] or 0), 4),
               "events": int(events), "refresh": done["mode"], "consent": CONSENT_RULE}
    if done["customers_rewritten"] is not None:
        summary["customers_rewritten"] = done["customers_rewritten"]
    return summary
