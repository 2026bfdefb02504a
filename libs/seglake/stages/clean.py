"""Clean stage: bronze.events_raw -> silver.events (+ silver.events_quarantine).

``seglake run clean`` reads the bronze batches not cleaned yet, and

1. standardizes every record (timestamps in any contract format -> UTC ``event_ts``;
   event types, devices, sources, channels and currencies from ``conf/standardize.yaml``;
   numeric casts; durations in seconds; scroll depth 0..1; properties as a map);
2. hashes PII (``device_id``, email, phone) with the salted SHA-256 of :mod:`seglake.core.pii`;
3. routes each bad record to quarantine with one reason code (:data:`REASONS`);
4. deduplicates exactly once: ``event_key`` = event_id, else a hash of identifiers + UTC
   epoch millis + canonical type; duplicates inside the batch are dropped here, duplicates of
   rows already in silver by the MERGE on ``event_key`` (pruned to the batch's dates);
5. imputes missing durations with the median per event type x device (fallback
   per event type, then global), flagging ``duration_imputed``;
6. validates the result with the Great Expectations suite ``expectations/silver_events.json``
   (:mod:`seglake.core.quality`); when a critical expectation fails, each pending batch is
   validated alone and those that fail alone are set aside (the others are cleaned); a
   failure only of the batches together stops the job before silver is written; a batch whose reject share is above ``clean.max_reject_share`` is set aside
   (:mod:`seglake.stages.clean_batches`) and the other batches are cleaned;
7. (the stage runner writes its ``ops.run_log`` row; a run with no new batch is a ``noop``).

Consent: consent=false events stay in silver.events (audit, erasure, exact counts) but every
downstream stage reads events through :func:`seglake.core.contracts.profiling_events`, which keeps consent=true only.

Transformations are pure ``DataFrame -> DataFrame`` functions; :func:`run` does the I/O.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Mapping

import yaml
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from seglake.core import erasure, pii, quality, tables, timezones
from seglake.core.contracts import (BRONZE_EVENTS, BRONZE_META_FIELDS, CLEAN_BATCHES, IDENTIFIER_FIELDS,
                                    QUARANTINE, RAW_FIELDS, SILVER_EVENTS)
from seglake.core.context import JobContext
from seglake.core.spark import persist_events
from seglake.stages import clean_batches
from seglake.stages.impute import duration_medians, impute_duration  # noqa: F401 - part of clean's API

log = logging.getLogger(__name__)

BRONZE = BRONZE_EVENTS
SILVER = SILVER_EVENTS
CLEANED_BATCHES = CLEAN_BATCHES

META_FIELDS = BRONZE_META_FIELDS

#: Quarantine reason codes, in the order they are checked (a record gets the first that applies).
REASONS = (
    "broken_json",          # the line could not be parsed at all (JSON lines)
    "unparseable_record",   # the record could not be parsed at all (CSV / Parquet)
    "missing_identifiers",  # user_id, anonymous_id, device_id, email and phone all empty
    "unparseable_ts",       # event_ts empty or in no known format
    "future_ts",            # event_ts later than run time + clean.max_future_skew_minutes
    "unknown_event_type",   # event_type neither canonical nor a known alias
    "negative_price",       # price < 0
    "invalid_number",       # price/quantity/revenue/duration_ms/scroll_depth present but not a number
    "out_of_range",         # quantity/revenue/duration_ms < 0 or scroll_depth outside 0..100
)

#: silver.events columns, in order (CONTRACTS.md).
SILVER_COLUMNS = (
    "event_key", "event_id", "user_id", "anonymous_id", "device_id", "email_hash", "phone_hash",
    "event_type", "event_ts", "event_date", "source", "session_id", "page_url", "product_id",
    "category", "price", "quantity", "revenue", "currency", "revenue_usd", "device_type",
    "utm_source", "utm_medium", "utm_campaign", "channel", "duration_s", "duration_imputed",
    "scroll_depth", "consent", "properties", "_ingested_at", "_batch_id", "_run_id",
)

_TRUE = ("true", "1", "yes", "y", "t")
_FALSE = ("false", "0", "no", "n", "f")


# --------------------------------------------------------------------------- standards

@dataclass(frozen=True)
class Standards:
    """Canonical mappings from ``conf/standardize.yaml`` (keys lower-cased)."""

    event_types: tuple[str, ...]
    event_aliases: Mapping[str, str]
    device_types: Mapping[str, str]
    sources: Mapping[str, str]
    channels: Mapping[str, str]
    fx_to_usd: Mapping[str, float]

    @property
    def event_type_map(self) -> dict[str, str]:
        """raw (lower) -> canonical, canonical names included."""
        out = {t: t for t in self.event_types}
        out.update(self.event_aliases)
        return out


def load_standards(path: str | Path) -> Standards:
    """Read and check ``standardize.yaml``; one ValueError sentence on a bad file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"standardization file not found: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    try:
        ev = data["event_types"]
        canonical = tuple(str(t) for t in ev["canonical"])
        aliases = {str(k).lower(): str(v) for k, v in (ev.get("aliases") or {}).items()}
        devices = {str(k).lower(): str(v) for k, v in data["device_types"].items()}
        sources = {str(k).lower(): str(v) for k, v in data["sources"].items()}
        channels = {str(k).lower(): str(v) for k, v in (data.get("channels") or {}).items()}
        fx = {str(k).upper(): float(v) for k, v in data["currencies"]["fx_to_usd"].items()}
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: missing or malformed section {exc}") from None
    bad = sorted(v for v in aliases.values() if v not in canonical)
    if bad:
        raise ValueError(f"{path}: event type aliases point to unknown canonical types {bad}")
    return Standards(canonical, aliases, devices, sources, channels, fx)


def _lit_map(mapping: Mapping[str, object]) -> Column:
    pairs = []
    for key, value in sorted(mapping.items()):
        pairs += [F.lit(key), F.lit(value)]
    return F.create_map(*pairs)


def _blank_to_null(col: Column) -> Column:
    trimmed = F.trim(col)
    return F.when(trimmed == "", F.lit(None).cast("string")).otherwise(trimmed)


# --------------------------------------------------------------------------- column helpers

def parse_event_ts(raw: Column, naive_zone: Column | None = None) -> Column:
    """Parse a contract timestamp string to a UTC TIMESTAMP; null when unparseable.

    Accepted: ``2026-08-01T12:34:56Z``, ``...T14:34:56.123+02:00`` (any offset, fraction
    optional), ``2026-08-01 12:34:56`` (naive: a wall-clock time in ``naive_zone``, a zone name
    per row; None = UTC), ``...+0530`` (offset without colon), epoch milliseconds (digits, also
    ``1.754E12`` as written by a float conversion). No result depends on the session time zone.
    A naive time that does not exist in its zone (the hour skipped when clocks go forward) is
    moved forward by the gap; one that exists twice (clocks go back) is the earlier instant.
    """
    s = F.regexp_replace(F.trim(raw), r"^(\d{4}-\d{2}-\d{2}) ", "$1T")
    numeric = s.rlike(r"^\d+(\.\d+)?([eE]\+?\d+)?$")
    millis = s.try_cast("double")
    from_millis = F.when(numeric & (millis >= F.lit(1e11)) & (millis < F.lit(1e14)),
                         F.timestamp_millis(millis.cast("long")))
    has_offset = s.rlike(r"(Z|[+-]\d{2}:?\d{2})$")
    zoned = F.when(has_offset, s).otherwise(F.concat(s, F.lit("Z")))
    iso = F.coalesce(
        F.try_to_timestamp(zoned, F.lit("yyyy-MM-dd'T'HH:mm:ss[.SSSSSS]XXX")),
        F.try_to_timestamp(zoned, F.lit("yyyy-MM-dd'T'HH:mm:ss[.SSSSSS]XX")),
        F.try_to_timestamp(zoned, F.lit("yyyy-MM-dd'T'HH:mm:ss[.SSS]XXX")),
        F.try_to_timestamp(zoned, F.lit("yyyy-MM-dd'T'HH:mm:ss[.SSS]XX")),
    )
    if naive_zone is not None:   # parsed as UTC wall clock above: read that wall clock in its zone
        iso = F.when(has_offset, iso).otherwise(F.to_utc_timestamp(iso, naive_zone))
    return F.when(numeric, from_millis).otherwise(iso)


def naive_zone_column(source: Column, zones: Mapping[str, str]) -> Column | None:
    """The zone of a naive timestamp per row, from its canonical ``source`` and ``zones``
    (:func:`seglake.core.timezones.naive_zones`); None when every source is UTC."""
    if not zones:
        return None
    default = F.lit(zones.get("default", "UTC"))
    per_source = {k: v for k, v in zones.items() if k != "default"}
    return F.coalesce(F.try_element_at(_lit_map(per_source), source), default) if per_source else default


def _number(col: Column) -> tuple[Column, Column]:
    """(value as double, flag 'present but not a number'). NaN and ±Infinity (which the cast
    accepts as text, and typed Parquet doubles carry) are not numbers here: one would poison every
    sum and average it reaches."""
    s = _blank_to_null(col)
    cast = s.try_cast("double")
    d = F.when(~F.isnan(cast) & (F.abs(cast) != F.lit(float("inf"))), cast)
    return d, s.isNotNull() & d.isNull()


def parse_consent(raw: Column, default: bool) -> Column:
    """true/false/1/0/yes/no (any case) -> BOOLEAN; anything else -> ``default``."""
    s = F.lower(F.trim(raw))
    return (F.when(s.isin(*_TRUE), F.lit(True)).when(s.isin(*_FALSE), F.lit(False))
            .otherwise(F.lit(default)))


def derived_event_key(user_id: Column, anonymous_id: Column, device_hash: Column, email_hash: Column,
                      phone_hash: Column, event_ts: Column, event_type: Column, key: str) -> Column:
    """HMAC (the PII key) of identifiers (hashed where silver hashes) + UTC epoch millis + canonical
    type: keyed, because user_id and anonymous_id enter it as they are (an unkeyed hash could be
    recomputed from a user id and linked to the event's customer)."""
    parts = [F.coalesce(c, F.lit("")) for c in (user_id, anonymous_id, device_hash, email_hash, phone_hash)]
    return pii.hmac_sha256(F.concat_ws("|", *parts, F.unix_millis(event_ts).cast("string"), event_type), key)


# --------------------------------------------------------------------------- transformations

def check_bronze_schema(bronze: DataFrame) -> None:
    """Raise ValueError naming the missing columns when bronze does not follow the contract."""
    missing = [c for c in RAW_FIELDS + META_FIELDS if c not in bronze.columns]
    if missing:
        raise ValueError(f"{BRONZE} does not follow the raw contract: missing columns {missing}; "
                         "silver was not written")


def standardize(bronze: DataFrame, std: Standards, salt: str, max_ts: datetime,
                consent_default: bool = False, properties_as_text: bool = False,
                naive_zones: Mapping[str, str] | None = None) -> DataFrame:
    """Typed, canonical, PII-hashed records with a quarantine ``_reason`` (null = valid).

    Requires the bronze contract columns. Returns the silver columns (without
    ``duration_imputed`` and ``_run_id``; ``duration_s`` not imputed yet) plus ``_reason``
    and ``_bronze`` (a struct of the original bronze row for a rejected row, for quarantine;
    null for a valid one).

    Args:
        bronze: bronze.events_raw rows.
        std: canonical mappings.
        salt: PII salt.
        max_ts: latest acceptable event_ts (naive UTC or aware), later is ``future_ts``.
        consent_default: consent value when the raw field is missing or unreadable.
        properties_as_text: leave ``properties`` as JSON text for :func:`to_silver` to parse:
            ``from_json`` has no generated code, and here it switched whole-stage code
            generation off for this whole projection (about half of clean's CPU time).
        naive_zones: zone of naive timestamps by canonical source (and ``default``); None or
            empty: UTC (``time.naive_zones``, checked by :func:`seglake.core.timezones.naive_zones`).
    """
    check_bronze_schema(bronze)
    # Each raw field is parsed once into a column of its own (step 1); the reason (2) and the silver
    # values, quarantine struct and event key (3) reuse those columns instead of re-evaluating them.
    c = {name: _blank_to_null(F.col(name)) for name in RAW_FIELDS}
    price, bad_price = _number(F.col("price"))
    quantity_d, bad_qty = _number(F.col("quantity"))
    revenue, bad_rev = _number(F.col("revenue"))
    duration_ms, bad_dur = _number(F.col("duration_ms"))
    scroll, bad_scroll = _number(F.col("scroll_depth"))
    source_key = F.lower(c["source"])
    source = F.when(source_key.isNotNull(),
                    F.coalesce(F.try_element_at(_lit_map(std.sources), source_key), F.lit("other")))
    parsed = bronze.select(
        *[F.col(n) for n in bronze.columns],
        *[c[n].alias(f"_c_{n}") for n in RAW_FIELDS],
        source.alias("_p_source"),
        parse_event_ts(F.col("event_ts"), naive_zone_column(source, dict(naive_zones or {}))).alias("_p_ts"),
        F.try_element_at(_lit_map(std.event_type_map), F.lower(c["event_type"])).alias("_p_type"),
        price.alias("_p_price"), quantity_d.alias("_p_qty"), revenue.alias("_p_rev"),
        duration_ms.alias("_p_dur"), scroll.alias("_p_scroll"),
        (bad_price | bad_qty | bad_rev | bad_dur | bad_scroll).alias("_p_bad_number"),
        F.coalesce(*[c[n] for n in IDENTIFIER_FIELDS]).isNull().alias("_p_no_ids"),
    )
    p = {name: F.col(f"_c_{name}") for name in RAW_FIELDS}
    ts, event_type = F.col("_p_ts"), F.col("_p_type")
    price, quantity_d, revenue = F.col("_p_price"), F.col("_p_qty"), F.col("_p_rev")
    duration_ms, scroll = F.col("_p_dur"), F.col("_p_scroll")
    # aware: PySpark turns a naive datetime into an instant with the OS time zone of the driver
    max_ts_lit = F.lit(max_ts if max_ts.tzinfo else max_ts.replace(tzinfo=timezone.utc)).cast("timestamp")

    reason = (
        F.when(F.col("_malformed") & (F.col("_format") == "json"), F.lit("broken_json"))
        .when(F.col("_malformed"), F.lit("unparseable_record"))
        .when(F.col("_p_no_ids"), F.lit("missing_identifiers"))
        .when(ts.isNull(), F.lit("unparseable_ts"))
        .when(ts > max_ts_lit, F.lit("future_ts"))
        .when(event_type.isNull(), F.lit("unknown_event_type"))
        .when(price < 0, F.lit("negative_price"))
        .when(F.col("_p_bad_number"), F.lit("invalid_number"))
        .when((quantity_d < 0) | (revenue < 0) | (duration_ms < 0) | (scroll < 0) | (scroll > 100)
              | (F.abs(quantity_d) > 2e9), F.lit("out_of_range"))
    )
    parsed = parsed.withColumn("_reason", reason)

    device_key = F.lower(p["device_type"])
    device = (F.when(device_key.isNull(), F.lit("unknown"))
              .otherwise(F.coalesce(F.try_element_at(_lit_map(std.device_types), device_key), F.lit("other"))))
    source = F.col("_p_source")
    channel_key = F.lower(p["channel"])
    channel = F.coalesce(F.try_element_at(_lit_map(std.channels), channel_key), channel_key)
    currency = F.upper(p["currency"])
    fx = F.try_element_at(_lit_map(std.fx_to_usd), currency)

    device_hash = pii.hash_identifier(F.col("device_id"), salt)
    email_hash = pii.hash_identifier(F.col("email"), salt)
    phone_hash = pii.hash_identifier(F.col("phone"), salt)

    typed = parsed.select(
        p["event_id"].alias("event_id"), p["user_id"].alias("user_id"),
        p["anonymous_id"].alias("anonymous_id"), device_hash.alias("device_id"),
        email_hash.alias("email_hash"), phone_hash.alias("phone_hash"),
        event_type.alias("event_type"), ts.alias("event_ts"),
        source.alias("source"), p["session_id"].alias("session_id"), p["page_url"].alias("page_url"),
        p["product_id"].alias("product_id"), p["category"].alias("category"),
        price.alias("price"),
        F.when(F.abs(quantity_d) <= 2e9, quantity_d.cast("int")).alias("quantity"),
        revenue.alias("revenue"), currency.alias("currency"),
        (revenue * fx).alias("revenue_usd"), device.alias("device_type"),
        p["utm_source"].alias("utm_source"), p["utm_medium"].alias("utm_medium"),
        p["utm_campaign"].alias("utm_campaign"), channel.alias("channel"),
        (duration_ms / 1000.0).alias("duration_s"), (scroll / 100.0).alias("scroll_depth"),
        parse_consent(F.col("consent"), consent_default).alias("consent"),
        (p["properties"] if properties_as_text else parse_properties(p["properties"])).alias("properties"),
        F.col("_ingested_at"), F.col("_batch_id"), F.col("_source_file"), F.col("_raw").alias("_raw_line"),
        F.col("_reason"),
        # the original row only where it is rejected: valid rows (nearly all) do not carry a
        # second copy of every raw column through the persisted batch
        F.when(F.col("_reason").isNotNull(), F.struct(*[F.col(n) for n in bronze.columns])).alias("_bronze"),
    )
    key = F.coalesce(F.col("event_id"), derived_event_key(
        F.col("user_id"), F.col("anonymous_id"), F.col("device_id"), F.col("email_hash"),
        F.col("phone_hash"), F.col("event_ts"), F.col("event_type"), salt))
    return (typed.withColumn("event_key", F.when(F.col("_reason").isNull(), key))
            .withColumn("event_date", F.to_date("event_ts")))


def quarantine_rows(standardized: DataFrame, run_id: str, quarantined_at: datetime) -> DataFrame:
    """Rejected records: all bronze columns + ``reason``, ``_run_id``, ``_quarantined_at``."""
    # aware: PySpark turns a naive datetime into an instant with the OS time zone of the driver
    at = quarantined_at if quarantined_at.tzinfo else quarantined_at.replace(tzinfo=timezone.utc)
    return (standardized.where(F.col("_reason").isNotNull())
            .select("_bronze.*", F.col("_reason").alias("reason"), F.lit(run_id).alias("_run_id"),
                    F.lit(at).cast("timestamp").alias("_quarantined_at")))


def dedupe_batch(valid: DataFrame) -> DataFrame:
    """One row per ``event_key``: the first ingested copy (ties: source file, raw line).

    Deterministic, so a rerun keeps the same copy.
    """
    order = Window.partitionBy("event_key").orderBy(
        F.col("_ingested_at").asc_nulls_last(), F.col("_source_file").asc_nulls_last(),
        F.col("_raw_line").asc_nulls_last())
    return (valid.withColumn("_rn", F.row_number().over(order))
            .where(F.col("_rn") == 1).drop("_rn"))


def parse_properties(text: Column) -> Column:
    """The properties JSON object as ``map<string,string>`` (null when it is not one)."""
    return F.from_json(text, "map<string,string>")


def to_silver(events: DataFrame, run_id: str) -> DataFrame:
    """Select the silver.events columns in contract order, adding ``_run_id`` (and parsing
    ``properties`` when :func:`standardize` left it as text)."""
    if dict(events.dtypes)["properties"] == "string":
        events = events.withColumn("properties", parse_properties(F.col("properties")))
    return events.withColumn("_run_id", F.lit(run_id)).select(*SILVER_COLUMNS)


# --------------------------------------------------------------------------- job

def _sql_quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def add_arguments(parser) -> None:  # noqa: D103 - argparse hook
    parser.add_argument("--skip-docs", action="store_true",
                        help="do not refresh the Great Expectations Data Docs HTML")
    clean_batches.add_arguments(parser)


def run(ctx: JobContext) -> dict:
    """Clean the pending bronze batches into silver.events; see the module docstring."""
    return _run(ctx, datetime.now(timezone.utc))


def _impute_decimals(cfg) -> int:
    decimals = cfg.get("clean.impute_decimals")     # an int: the config layer checks the type
    if not 0 <= decimals <= 9:
        raise ValueError(f"clean.impute_decimals must be a whole number from 0 to 9, got {decimals!r}")
    return decimals


def _run(ctx: JobContext, started: datetime) -> dict:
    spark, cfg = ctx.spark, ctx.cfg
    decimals = _impute_decimals(cfg)                  # a config error fails before any work
    std = load_standards(cfg.conf_file(cfg.get("clean.standardize_file") or "standardize.yaml"))
    salt = pii.salt(cfg)
    bronze = tables.read(spark, cfg, BRONZE)
    check_bronze_schema(bronze)

    batch_ids, skipped = clean_batches.pending(spark, cfg, bronze, bool(ctx.args.get("retry_set_aside")))
    if skipped:
        log.warning("clean: %d set-aside batch(es) skipped (see %s; --retry-set-aside after a fix)",
                    len(skipped), clean_batches.CLEAN_SET_ASIDE)
    if not batch_ids:
        summary = {"batches": 0, "records_in": 0, "note": "no new bronze batches: nothing to clean"}
        if skipped:
            summary["set_aside_skipped"] = len(skipped)
        ctx.status = "noop"
        return summary

    max_ts = started + timedelta(minutes=float(cfg.get("clean.max_future_skew_minutes")))
    standardized = standardize(bronze.where(F.col("_batch_id").isin(batch_ids)), std, salt, max_ts,
                               bool(cfg.get("clean.consent_default", False)), properties_as_text=True,
                               naive_zones=timezones.naive_zones(cfg, std.sources.values()))
    # records of persons erased earlier (ops.erasure_requests) never reach silver or quarantine again
    standardized = persist_events(erasure.erased_filter(spark, cfg, standardized, erasure.STANDARDIZED_COLUMNS))
    try:
        return _write(ctx, started, standardized, batch_ids, max_ts, decimals)
    finally:
        standardized.unpersist()


def _failing_alone(ctx: JobContext, silver: DataFrame, batch_ids: list[str], max_ts: datetime) -> list[str]:
    """The batches that fail the quality suite's critical expectations when validated alone.
    A batch with no row left in ``silver`` (all duplicates of another pending batch, or all of
    erased persons) is not validated: an empty frame fails max/min checks for no fault of its own."""
    log.warning("clean: the quality suite failed on %d batches together; validating each alone", len(batch_ids))
    # one row per pending batch: small
    present = {r["_batch_id"] for r in silver.groupBy("_batch_id").count().collect()}
    out = []
    for b in batch_ids:
        if b not in present:
            continue
        alone = quality.validate(
            silver.where(F.col("_batch_id") == b), ctx.cfg.get("clean.suite") or "silver_events", ctx.cfg,
            f"{ctx.run_id}-{b}", parameters={"max_event_ts": max_ts.astimezone(timezone.utc).replace(tzinfo=None)},
            build_docs=False)
        if not alone.success:
            out.append(b)
    return out


def _culprits(ctx: JobContext, result, silver: DataFrame, batch_ids: list[str], candidates: set[str],
              max_ts: datetime) -> list[str]:
    """Batches to set aside after the suite failed on ``batch_ids`` together; raises
    :class:`~seglake.core.quality.QualityError` (the job stops, exit 1) when the failure is not
    one of data in some batches: a table-level expectation failed (the columns: a code or
    contract fault, not a batch's), or no batch fails alone (they fail only together)."""
    if any(not item.get("column") for item in result.failed):
        quality.require(result, SILVER)
    culprits = _failing_alone(ctx, silver, batch_ids, max_ts) if len(batch_ids) > 1 else list(batch_ids)
    culprits = [b for b in culprits if b in candidates]
    if not culprits:
        quality.require(result, SILVER)
    return culprits


def _write(ctx: JobContext, started: datetime, standardized: DataFrame, batch_ids: list[str],
           max_ts: datetime, impute_decimals: int, attempt: int = 0) -> dict:
    spark, cfg = ctx.spark, ctx.cfg
    # one row per batch and reason code (<= batches x (len(REASONS) + 1)): small
    max_share = float(cfg.get("clean.max_reject_share"))
    good, bad = clean_batches.judge(standardized.groupBy("_batch_id", "_reason").count().collect(), max_share)
    set_aside = clean_batches.set_aside(spark, cfg, bad, max_share, ctx.run_id) if bad else {}
    if not good:
        ctx.status = "set_aside"
        return {"batches": 0, "records_in": 0, "set_aside": set_aside,
                "note": f"every pending batch was set aside (see {clean_batches.CLEAN_SET_ASIDE})"}
    if bad:
        batch_ids = sorted(good)
        standardized = standardized.where(F.col("_batch_id").isin(batch_ids))
    records_in = sum(s["records"] for s in good.values())
    by_reason: dict[str, int] = {}
    for s in good.values():
        for reason, n in s["by_reason"].items():
            by_reason[reason] = by_reason.get(reason, 0) + n
    quarantined = sum(by_reason.values())
    valid = records_in - quarantined

    unique = dedupe_batch(standardized.where(F.col("_reason").isNull()).drop("_bronze", "_reason"))
    unique = persist_events(unique)
    medians = duration_medians(unique, impute_decimals).cache()
    silver = persist_events(to_silver(impute_duration(unique, medians), ctx.run_id))
    culprits: list[str] = []
    try:
        # a handful of numbers: small
        stats = silver.agg(
            F.count(F.lit(1)).alias("n"), F.sum(F.col("duration_imputed").cast("int")).alias("imputed"),
            F.sum((~F.col("consent")).cast("int")).alias("consent_false"),
            F.min("event_date").alias("lo"), F.max("event_date").alias("hi")).first()
        n_unique = int(stats["n"])

        result = quality.validate(
            silver, cfg.get("clean.suite") or "silver_events", cfg, ctx.run_id + (f"-{attempt}" if attempt else ""),
            parameters={"max_event_ts": max_ts.astimezone(timezone.utc).replace(tzinfo=None)},
            build_docs=bool(cfg.get("clean.build_data_docs")) and not ctx.args.get("skip_docs"))
        if not result.success:
            culprits = _culprits(ctx, result, silver, batch_ids, set(good), max_ts)
    except BaseException:
        for df in (silver, medians, unique):
            df.unpersist()
        raise
    if culprits:          # nothing written yet: free the caches, then clean the others
        for df in (silver, medians, unique):
            df.unpersist()
        return _set_aside_and_clean_the_rest(ctx, started, standardized, batch_ids, max_ts, impute_decimals,
                                             attempt, result, culprits, good, set_aside)
    try:
        q = quarantine_rows(standardized, ctx.run_id, started)
        tables.overwrite(q, cfg, QUARANTINE, replace_where="_batch_id IN ("
                         + ", ".join(_sql_quote(b) for b in batch_ids) + ")")
        inserted = 0
        if n_unique:
            before = tables.version(spark, cfg, SILVER)
            tables.merge(spark, silver, cfg, SILVER, keys=["event_key"], partition_by=["event_date"],
                         extra_condition=(f"t.event_date >= DATE'{stats['lo'].isoformat()}' AND "
                                          f"t.event_date <= DATE'{stats['hi'].isoformat()}'"))
            commit = tables.last_commit(spark, cfg, SILVER)
            # a MERGE that inserts nothing (every row already in silver) makes no commit
            inserted = (n_unique if before is None else
                        tables.rows_written(commit) if commit["version"] > before else 0)
    finally:
        for df in (silver, medians, unique):
            df.unpersist()

    now = datetime.now(timezone.utc)
    done = spark.createDataFrame([(b, ctx.run_id, now) for b in batch_ids],
                                 "_batch_id STRING, run_id STRING, cleaned_at TIMESTAMP")
    tables.merge(spark, done, cfg, CLEANED_BATCHES, keys=["_batch_id"])
    clean_batches.release(spark, cfg, batch_ids)

    summary = {
        "batches": len(batch_ids),
        "records_in": records_in,
        "valid": valid,
        "duplicates_in_batch": valid - n_unique,
        "duplicates_vs_silver": n_unique - inserted,
        "deduplicated": valid - inserted,
        "inserted": inserted,
        "quarantined": quarantined,
        "quarantined_by_reason": dict(sorted(by_reason.items())),
        "imputed_durations": int(stats["imputed"] or 0),
        "consent_false": int(stats["consent_false"] or 0),
        "quality": result.headline(),
        "quality_results": result.results_path,
        "data_docs": result.docs_path,
    }
    if set_aside:
        summary["set_aside"] = set_aside
        ctx.status = "set_aside"
    summary["duration_s"] = round((datetime.now(timezone.utc) - started).total_seconds(), 1)
    return summary


def _set_aside_and_clean_the_rest(ctx: JobContext, started: datetime, standardized: DataFrame, batch_ids: list[str],
                                  max_ts: datetime, impute_decimals: int, attempt: int, result, culprits: list[str],
                                  good: dict, set_aside: dict) -> dict:
    """Set aside the batches that failed the suite alone, then clean the others as if the
    culprits had never been pending (their own medians, dedupe and checks)."""
    n = len(batch_ids)
    why = (f"failed the quality suite on its own (with {n} batches together: {result.summary()})" if n > 1
           else f"failed the quality suite: {result.summary()}")
    set_aside = {**set_aside, **clean_batches.set_aside(
        ctx.spark, ctx.cfg, {b: good[b] for b in culprits}, float(ctx.cfg.get("clean.max_reject_share")),
        ctx.run_id, reasons={b: why for b in culprits})}
    rest = [b for b in batch_ids if b not in culprits]
    ctx.status = "set_aside"
    if not rest:
        return {"batches": 0, "records_in": 0, "set_aside": set_aside, "quality": result.headline(),
                "note": f"every pending batch was set aside (see {clean_batches.CLEAN_SET_ASIDE})"}
    summary = _write(ctx, started, standardized.where(F.col("_batch_id").isin(rest)), rest, max_ts,
                     impute_decimals, attempt + 1)
    summary["set_aside"] = {**set_aside, **summary.get("set_aside", {})}
    summary["quality_with_set_aside_batches"] = result.headline()
    ctx.status = "set_aside"
    return summary
