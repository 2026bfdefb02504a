"""Row-level rules of the clean stage (:mod:`seglake.stages.clean`), as pure column and
``DataFrame -> DataFrame`` functions: timestamp parsing in every contract format, the
canonical vocabularies of ``conf/standardize.yaml``, PII hashing, quarantine reasons, the
derived event key, in-batch deduplication and the silver.events column order.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import yaml
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from seglake.core import pii
from seglake.core.contracts import BRONZE_EVENTS, BRONZE_META_FIELDS, IDENTIFIER_FIELDS, RAW_FIELDS

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
        raise ValueError(f"{BRONZE_EVENTS} does not follow the raw contract: missing columns {missing}; "
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


def with_raw_order(standardized: DataFrame) -> DataFrame:
    """``standardized`` with the raw line replaced by ``_raw_order``, the SHA-256 of the line
    (32 bytes): the last tie-break of :func:`dedupe_batch`.

    The raw line (~400 bytes a record, a JSON rendering for CSV and Parquet records too) is
    larger than every other column of a record together; carried through clean's persisted batch
    and the dedupe shuffle, it doubled their bytes. Equal lines have equal hashes, and equal lines
    of one file make equal rows, so which of them is kept does not matter; of two different lines
    of one file with the same event key, the one with the smaller hash is kept (until 8 December
    2026: the lexicographically smaller line; equally arbitrary, equally deterministic).
    A frame without ``_raw_line`` (already replaced) is returned as it is.
    """
    if "_raw_line" not in standardized.columns:
        return standardized
    return standardized.withColumn("_raw_order", F.unhex(F.sha2(F.col("_raw_line"), 256))).drop("_raw_line")


def dedupe_batch(valid: DataFrame) -> DataFrame:
    """One row per ``event_key``: the first ingested copy (ties: source file, then the SHA-256 of
    the raw line: :func:`with_raw_order`).

    Deterministic, so a rerun keeps the same copy, on any partitioning.
    """
    valid = with_raw_order(valid)
    order = Window.partitionBy("event_key").orderBy(
        F.col("_ingested_at").asc_nulls_last(), F.col("_source_file").asc_nulls_last(),
        F.col("_raw_order").asc_nulls_last())
    return (valid.withColumn("_rn", F.row_number().over(order))
            .where(F.col("_rn") == 1).drop("_rn", "_raw_order"))


def parse_properties(text: Column) -> Column:
    """The properties JSON object as ``map<string,string>`` (null when it is not one)."""
    return F.from_json(text, "map<string,string>")


def to_silver(events: DataFrame, run_id: str) -> DataFrame:
    """Select the silver.events columns in contract order, adding ``_run_id`` (and parsing
    ``properties`` when :func:`standardize` left it as text)."""
    if dict(events.dtypes)["properties"] == "string":
        events = events.withColumn("properties", parse_properties(F.col("properties")))
    return events.withColumn("_run_id", F.lit(run_id)).select(*SILVER_COLUMNS)


