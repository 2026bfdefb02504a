"""The data contract of DESIGN.md, defined once: raw fields, identifier columns, table names,
the one reader of consented events with their customer_id, and the person-level consent state
(:func:`withdrawn_customers`, read from the ``ops.consent`` ledger that ``seglake run consent`` writes).

Every stage, the generator, erase and the report import these names instead of spelling
them again. Table names are ``<layer>.<table>`` (stored at ``<lakehouse>/<layer>/<table>/``).
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Iterable, Sequence
from zoneinfo import ZoneInfo

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.config import Config
from seglake.core.timezones import calendar_zone

# --------------------------------------------------------------------------- raw events

#: Fields of the raw event contract (landing files), in bronze column order; ``phone`` is an
#: identifier the generator writes beside the contract's email.
RAW_FIELDS: tuple[str, ...] = (
    "event_id", "user_id", "anonymous_id", "device_id", "email", "phone", "event_type",
    "event_ts", "source", "session_id", "page_url", "product_id", "category", "price",
    "quantity", "revenue", "currency", "device_type", "utm_source", "utm_medium",
    "utm_campaign", "channel", "duration_ms", "scroll_depth", "consent", "properties",
)
#: Technical bronze columns, after the raw fields.
BRONZE_META_FIELDS: tuple[str, ...] = (
    "_raw", "_malformed", "_format", "_source", "_source_file", "_batch_id", "_ingested_at")

# --------------------------------------------------------------------------- identifiers

#: Raw identifier fields; a record without any of them is quarantined (missing_identifiers).
IDENTIFIER_FIELDS: tuple[str, ...] = ("user_id", "anonymous_id", "device_id", "email", "phone")
#: (identifier_type in silver.identity_map, column in silver.events), in priority order: the
#: anchor of an event (:func:`attach_customer_id`) and the representative of a component.
IDENTIFIERS: tuple[tuple[str, str], ...] = (
    ("user_id", "user_id"),
    ("anonymous_id", "anonymous_id"),
    ("device_id", "device_id"),
    ("email", "email_hash"),
    ("phone", "phone_hash"),
)
#: Columns of any table that hold one identifier of a person (raw or salted hash).
IDENTIFIER_COLUMNS: tuple[str, ...] = ("user_id", "anonymous_id", "device_id", "email", "phone",
                                       "email_hash", "phone_hash", "identifier")
#: Columns of raw values that silver stores hashed (erase matches them after hashing too).
HASHED_IN_SILVER: tuple[str, ...] = ("device_id", "email", "phone", "identifier")

# --------------------------------------------------------------------------- tables

LAYERS: tuple[str, ...] = ("bronze", "silver", "gold", "ops")

BRONZE_EVENTS = "bronze.events_raw"
SILVER_EVENTS = "silver.events"
QUARANTINE = "silver.events_quarantine"
IDENTITY_MAP = "silver.identity_map"
IDENTITY_EDGES = "silver.identity_edges"
IDENTITY_EXCLUDED = "silver.identity_excluded"
SESSIONS = "silver.sessions"
ENRICHED_EVENTS = "silver.enriched_events"
CUSTOMER_FEATURES = "gold.customer_features"
FEATURE_SCALING = "gold.feature_scaling"
RETENTION_MATRIX = "gold.retention_matrix"
SEGMENT_MEMBERSHIP = "gold.segment_membership"
SEGMENT_CHANGES = "gold.segment_changes"
SEGMENT_HEALTH = "gold.segment_health"
SEGMENT_OVERLAP = "gold.segment_overlap"
CLUSTERS = "gold.clusters"
CLUSTER_PROFILES = "gold.cluster_profiles"
CLUSTER_SWEEP = "gold.cluster_sweep"
PROPENSITY_SCORES = "gold.propensity_scores"
TRANSITION_MATRIX = "gold.transition_matrix"
JOURNEY_METRICS = "gold.journey_metrics"
JOURNEY_PATHS = "gold.journey_paths"
RUN_LOG = "ops.run_log"
INGESTED_FILES = "ops.ingested_files"
CLEAN_BATCHES = "ops.clean_batches"
IDENTITY_RUNS = "ops.identity_runs"
JOB_LEASES = "ops.job_leases"   # seglake.core.leases: who runs which job now
CLEAN_SET_ASIDE = "ops.clean_set_aside"
CLEAN_REBUILDS = "ops.clean_rebuilds"   # bronze batches a `clean --as-of D` is re-cleaning (until it is done)
UNREADABLE_FILES = "ops.unreadable_files"
ERASURE_REQUESTS = "ops.erasure_requests"   # seglake.core.erasure: the erasure ledger (hashes only)
CONSENT_LEDGER = "ops.consent"   # seglake.stages.consent: grant/withdraw per identifier, with time
SEGMENT_TRIGGERS = "gold.segment_triggers"   # seglake.stages.stream: one row per trigger firing
STREAM_TIMERS = "ops.stream_timers"          # the stream's pending trigger timers (event keys, no identifiers)
STREAM_PROGRESS = "ops.stream_progress"      # one row per stream micro-batch: watermark, late events, firings
OUTBOX = "ops.outbox"                        # seglake.stages.export: one row per message to one destination
DEAD_LETTER = "ops.dead_letter"              # messages whose delivery failed for good, with the last error
EXPORT_REMOVALS = "ops.export_removals"      # customers removed from a destination (consent withdrawn)
EXPERIMENT_ASSIGNMENTS = "gold.experiment_assignments"  # seglake.stages.experiments: variant per customer, insert-only
AB_RESULTS = "gold.ab_results"               # one row per experiment x segment x metric x variant vs control
CUSTOMER_VALUE = "gold.customer_value"       # seglake.stages.clv: p_alive, expected purchases, CLV per (customer, as_of)

#: Every table of the contract, in the order of the flow (for object stores, where the
#: lakehouse cannot be listed, and for the report's table inventory).
KNOWN_TABLES: tuple[str, ...] = (
    BRONZE_EVENTS, SILVER_EVENTS, QUARANTINE, IDENTITY_MAP, IDENTITY_EDGES, IDENTITY_EXCLUDED, SESSIONS,
    ENRICHED_EVENTS, CUSTOMER_FEATURES, FEATURE_SCALING, RETENTION_MATRIX, SEGMENT_MEMBERSHIP, SEGMENT_CHANGES,
    SEGMENT_HEALTH, SEGMENT_OVERLAP, CLUSTERS, CLUSTER_PROFILES, CLUSTER_SWEEP, PROPENSITY_SCORES, CUSTOMER_VALUE,
    TRANSITION_MATRIX, JOURNEY_METRICS, JOURNEY_PATHS, RUN_LOG, INGESTED_FILES, CLEAN_BATCHES,
    IDENTITY_RUNS, CLEAN_SET_ASIDE, CLEAN_REBUILDS, UNREADABLE_FILES, JOB_LEASES,
    ERASURE_REQUESTS, CONSENT_LEDGER, SEGMENT_TRIGGERS, STREAM_TIMERS, STREAM_PROGRESS,
    OUTBOX, DEAD_LETTER, EXPORT_REMOVALS, EXPERIMENT_ASSIGNMENTS, AB_RESULTS,
)


def require_columns(df: DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise ``ValueError`` naming ``what`` and the missing columns unless ``df`` has them all."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} is missing required column(s) {', '.join(missing)}; "
                         f"it has {', '.join(df.columns)}")


# --------------------------------------------------------------------------- consented events

CONSENT_RULE = "consent = true"  # what profiling_events keeps (stage summaries report it)


def profiling_events(events: DataFrame) -> DataFrame:
    """The events downstream stages may use for profiling: consent = true only.

    Every stage that builds features, segments, models or journeys reads silver.events
    through this function; consent=false events stay in silver for audit and erasure only.
    """
    if "consent" not in events.columns:
        raise ValueError("profiling_events needs a 'consent' column (silver.events)")
    return events.where(F.col("consent") == F.lit(True))


def attach_customer_id(events: DataFrame, identity_map: DataFrame,
                       excluded: DataFrame | None = None) -> DataFrame:
    """Add ``customer_id`` to silver events.

    The event's anchor is its first non-null identifier in the order user_id, anonymous_id,
    device_id, email_hash, phone_hash, skipping identifiers in ``excluded`` (the guard's
    shared identifiers, which have no customer of their own); one join with the map.
    An event whose anchor is unknown to the map gets a null customer_id.

    Args:
        events: silver events (the identifier columns are required).
        identity_map: identifier_type, identifier, customer_id.
        excluded: optional identifier_type, identifier of excluded identifiers (small).

    Returns:
        ``events`` plus customer_id.
    """
    require_columns(events, [c for _, c in IDENTIFIERS], "events")
    require_columns(identity_map, ["identifier_type", "identifier", "customer_id"], "identity_map")
    if "customer_id" in events.columns:
        raise ValueError("events already has a customer_id column; drop it before attach_customer_id")
    df = events
    usable = {}
    for t, c in IDENTIFIERS:
        ok = F.col(c).isNotNull()
        if excluded is not None:
            flag = f"_ex_{t}"
            ex = F.broadcast(excluded.filter(F.col("identifier_type") == t)
                             .select(F.col("identifier").alias(c), F.lit(True).alias(flag)).distinct())
            df = df.join(ex, c, "left")
            ok = ok & F.col(flag).isNull()
        usable[t] = ok
    anchor_type = F.lit(None).cast("string")
    anchor = F.lit(None).cast("string")
    for t, c in reversed(IDENTIFIERS):
        anchor_type = F.when(usable[t], F.lit(t)).otherwise(anchor_type)
        anchor = F.when(usable[t], F.col(c)).otherwise(anchor)
    df = df.withColumn("_a_type", anchor_type).withColumn("_a_id", anchor)
    m = identity_map.select(F.col("identifier_type").alias("_a_type"), F.col("identifier").alias("_a_id"),
                            "customer_id")
    out = df.join(m, ["_a_type", "_a_id"], "left")
    return out.select(*events.columns, "customer_id")


# --------------------------------------------------------------------------- consent ledger

#: Canonical event types (conf/standardize.yaml) that carry a person's consent decision -> the
#: ledger action ``seglake run consent`` records for them. They are not behaviour: never profiled.
CONSENT_EVENT_TYPES: dict[str, str] = {"consent_withdrawn": "withdraw", "consent_granted": "grant"}
CONSENT_ACTIONS: tuple[str, ...] = ("withdraw", "grant")


def consent_instant(at: date | datetime | None = None, zone: str = "UTC") -> datetime:
    """The instant a consent state is judged at, as an aware UTC datetime.

    A date means its 00:00 in ``zone`` (seglake's calendar zone ``time.zone``: an as-of date is
    the moment its window closes), a naive datetime is a wall-clock time in ``zone``, None means now.
    """
    if at is None:
        return datetime.now(timezone.utc)
    if isinstance(at, datetime):
        return (at.replace(tzinfo=ZoneInfo(zone)) if at.tzinfo is None else at).astimezone(timezone.utc)
    if isinstance(at, date):
        return datetime(at.year, at.month, at.day, tzinfo=ZoneInfo(zone)).astimezone(timezone.utc)
    raise TypeError(f"consent_instant needs a date, a datetime or None, got {type(at).__name__}")


def _instant(cfg: Config, at: date | datetime | None) -> datetime:
    return consent_instant(at, calendar_zone(cfg))


def instant_col(at: date | datetime | None) -> Column:
    """``at`` (an instant; a date: its 00:00 UTC) as a TIMESTAMP literal, independent of the
    session time zone (epoch microseconds)."""
    micros = (consent_instant(at) - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)
    return F.timestamp_micros(F.lit(int(micros)))


def _effective_ledger(spark: SparkSession, cfg: Config, at: datetime) -> DataFrame:
    return (tables.read(spark, cfg, CONSENT_LEDGER).where(F.col("effective_at") <= instant_col(at))
            .select("identifier_type", "identifier", "action", "effective_at"))


def withdrawn_customers(spark: SparkSession, cfg: Config, at: date | datetime | None = None) -> DataFrame:
    """``customer_id`` of every customer whose consent is withdrawn at ``at``.

    The ledger (``ops.consent``) rows effective at or before ``at`` are joined to the *current*
    silver.identity_map on (identifier_type, identifier), so a withdrawal follows its identifier
    into whichever customer holds it now (two customers merged by identity: the merged one is
    withdrawn). Per customer, the latest action over all its identifiers decides (by
    ``effective_at``; at equal times a withdrawal wins over a grant): a grant given later through
    any of its identifiers re-includes the customer. Empty without a ledger.

    Args:
        spark: the session.
        cfg: the configuration (table paths).
        at: the instant (:func:`consent_instant`: a date is its 00:00 in ``time.zone``; None = now).
    """
    latest = (consent_actions(spark, cfg, at).groupBy("customer_id")
              .agg(F.max(F.struct(F.col("effective_at"), (F.col("action") == F.lit("withdraw")).alias("w")))
                   .alias("latest")))
    return latest.where(F.col("latest.w")).select("customer_id")


def consent_actions(spark: SparkSession, cfg: Config, at: date | datetime | None = None) -> DataFrame:
    """``customer_id, action, effective_at`` of every ledger row effective at or before ``at``,
    attached to customers through the current silver.identity_map (empty without a ledger or a map)."""
    if not (tables.exists(spark, cfg, CONSENT_LEDGER) and tables.exists(spark, cfg, IDENTITY_MAP)):
        return spark.createDataFrame([], "customer_id STRING, action STRING, effective_at TIMESTAMP")
    ledger = _effective_ledger(spark, cfg, _instant(cfg, at))
    idmap = tables.read(spark, cfg, IDENTITY_MAP).select("identifier_type", "identifier", "customer_id")
    return (idmap.join(F.broadcast(ledger), ["identifier_type", "identifier"])  # the ledger is small
            .select("customer_id", "action", "effective_at"))


def exclude_withdrawn(spark: SparkSession, cfg: Config, df: DataFrame,
                      at: date | datetime | None = None) -> DataFrame:
    """``df`` without the rows of customers withdrawn at ``at`` (:func:`withdrawn_customers`).

    A broadcast left anti join on ``customer_id`` (rows with a null customer_id stay). Without a
    ledger, or with no withdrawal effective by ``at`` (one look at the small ledger), ``df`` itself:
    no join at all.
    """
    require_columns(df, ["customer_id"], "exclude_withdrawn input")
    if not tables.exists(spark, cfg, CONSENT_LEDGER):
        return df
    instant = _instant(cfg, at)
    # at most one row: is any withdrawal in effect at all?
    if not _effective_ledger(spark, cfg, instant).where(F.col("action") == F.lit("withdraw")).limit(1).collect():
        return df
    # withdrawn customers are few (bounded by consent decisions, not by events): broadcast
    return df.join(F.broadcast(withdrawn_customers(spark, cfg, instant)), "customer_id", "left_anti")


def customer_events(spark: SparkSession, cfg: Config, *, start: date | None = None,
                    end: date | None = None, end_inclusive: bool = False,
                    event_types: Sequence[str] | None = None, columns: Sequence[str] | None = None,
                    drop_unattached: bool = True, where: Column | None = None,
                    consent_at: date | datetime | None = None, withdrawals: bool = True,
                    identity_version: int | None = None, excluded_version: int | None = None) -> DataFrame:
    """Consented silver.events with their ``customer_id`` (the one reader every later stage uses).

    Filters are applied to silver.events before the identity join (``event_date`` is its
    partition column, so a window prunes files); then :func:`profiling_events` and
    :func:`attach_customer_id` with the guard's excluded identifiers. Consent events
    (:data:`CONSENT_EVENT_TYPES`) are records of a decision, not behaviour: never returned.
    Customers whose consent is withdrawn (:func:`withdrawn_customers`) at ``consent_at`` are
    left out as a whole (:func:`exclude_withdrawn`).

    Args:
        spark: the session.
        cfg: the configuration (table paths).
        start: first ``event_date`` kept (inclusive), or None.
        end: last ``event_date`` bound, exclusive unless ``end_inclusive``, or None.
        end_inclusive: keep ``event_date == end`` too.
        event_types: keep only these event types, or None for all.
        columns: the silver columns to keep (identifier columns are added for the join and
            dropped again unless listed), or None for all.
        drop_unattached: drop events whose anchor identifier has no customer (default); with
            False they are kept with a null ``customer_id``.
        where: an extra filter on silver.events columns, applied before the join.
        consent_at: the instant consent is judged at; default ``end`` (its 00:00 UTC, whether
            ``end_inclusive`` or not: the as-of moment), or now without ``end``. A withdrawal
            effective before the as-of day starts excludes the customer from that as-of on;
            earlier as-of dates (backfills included) still include them.
        withdrawals: False keeps withdrawn customers (for silver.enriched_events, whose readers
            apply the withdrawals at their own as-of).
        identity_version, excluded_version: the Delta versions of silver.identity_map and
            silver.identity_excluded to resolve customers with (point-in-time snapshots: the
            map as it was then); None = the current ones.

    Returns:
        The selected silver columns plus ``customer_id``.
    """
    events = tables.read(spark, cfg, SILVER_EVENTS)
    if start is not None:
        events = events.where(F.col("event_date") >= F.lit(start))
    if end is not None:
        events = events.where((F.col("event_date") <= F.lit(end)) if end_inclusive
                              else (F.col("event_date") < F.lit(end)))
    if event_types is not None:
        events = events.where(F.col("event_type").isin(*event_types))
    if where is not None:
        events = events.where(where)
    events = profiling_events(events).where(~F.col("event_type").isin(*CONSENT_EVENT_TYPES))
    if columns is not None:
        id_cols = [c for _, c in IDENTIFIERS]
        keep = [c for c in columns if c in events.columns and c != "customer_id"]
        events = events.select(*dict.fromkeys([*keep, *id_cols]))
    idmap = tables.read(spark, cfg, IDENTITY_MAP, version=identity_version)
    excluded = (tables.read(spark, cfg, IDENTITY_EXCLUDED, version=excluded_version)
                .select("identifier_type", "identifier")
                if tables.exists(spark, cfg, IDENTITY_EXCLUDED) else None)
    out = attach_customer_id(events, idmap, excluded)
    if drop_unattached:
        out = out.where(F.col("customer_id").isNotNull())
    if withdrawals:
        out = exclude_withdrawn(spark, cfg, out, consent_at if consent_at is not None else end)
    if columns is not None:
        out = out.select(*[c for c in columns if c in out.columns and c != "customer_id"], "customer_id")
    return out
