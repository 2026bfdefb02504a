"""``seglake run consent``: the person-level consent ledger ``ops.consent``.

``seglake run consent --withdraw X [--withdraw Y] [--grant Z] [--at 2026-09-01T10:00:00Z]``
records a person's decision given on another channel (X as the person gives it: an email, a
phone number, a user id, ...); without flags the job records the consent *events* of
silver.events (event types ``consent_withdrawn`` / ``consent_granted``, aliases in
``conf/standardize.yaml``), whatever their per-event ``consent`` flag (a withdrawal event
often carries consent=false).

**Rows** (one per identifier): ``request_id``, ``identifier_type``, ``identifier`` in the form
silver.identity_map holds it (user_id and anonymous_id as given, trimmed; device_id, email and
phone as the keyed hash :func:`seglake.core.pii.hash_identifier`), ``customer_id`` the identifier
had when recorded (null when unknown), ``action`` (``withdraw`` | ``grant``), ``effective_at``
(UTC), ``source`` (``cli`` | ``event``), ``recorded_at``, ``run_id``. One MERGE on
(identifier_type, identifier, action, effective_at) inserts only new rows: a rerun (or a
scheduler's rerun of a day) adds nothing.

**CLI values**: every identity-map form of the value (:func:`candidate_forms`) is looked up in
silver.identity_map; the forms found are recorded (with their customer). A value the map does not
know is recorded in every form that can match it later: the hashes as device_id, email and phone,
and the value as user_id and anonymous_id, unless it looks like an email or a phone number (those
are never stored in clear; the map then holds them only as hashes anyway).

**Events**: each non-null identifier column of a consent event (user_id, anonymous_id, device_id,
email_hash, phone_hash: already in the map's form in silver) gives a row effective at the event's
``event_ts``; identifiers the identity guard excluded (shared devices) are skipped. All consent
events are merged on every run (they are few; the MERGE key keeps it idempotent).

**Effect**: :func:`seglake.core.contracts.withdrawn_customers` (the latest action over a
customer's identifiers decides; ties: withdraw) is left out by every stage's reader from the
as-of on (see the README, privacy: consent). Withdrawal is not erasure: ``seglake run erase``.
The summary holds counts only, never identifiers.
"""
from __future__ import annotations

import argparse
import logging
import re
import uuid
from datetime import date, datetime, timezone
from typing import Iterable, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from seglake.core import pii, tables
from seglake.core.config import Config
from seglake.core.context import JobContext
from seglake.core.contracts import (CONSENT_ACTIONS, CONSENT_EVENT_TYPES, CONSENT_LEDGER, IDENTIFIERS,
                                    IDENTITY_EXCLUDED, IDENTITY_MAP, SILVER_EVENTS, consent_instant, instant_col,
                                    withdrawn_customers)
from seglake.core.timezones import calendar_zone

log = logging.getLogger(__name__)

LEDGER_DDL = ("request_id STRING, identifier_type STRING, identifier STRING, customer_id STRING, action STRING, "
              "effective_at TIMESTAMP, source STRING, recorded_at TIMESTAMP, run_id STRING")
LEDGER_COLUMNS: tuple[str, ...] = tuple(f.split()[0] for f in LEDGER_DDL.split(", "))
#: the MERGE key: the same decision on the same identifier at the same instant is one row
LEDGER_KEY: tuple[str, ...] = ("identifier_type", "identifier", "action", "effective_at")
#: identifier types silver.identity_map stores as given (the others are keyed hashes)
RAW_TYPES: tuple[str, ...] = ("user_id", "anonymous_id")
HASHED_TYPES: tuple[str, ...] = ("device_id", "email", "phone")
_KEY_COLS = ["identifier_type", "identifier"]
_PHONE = re.compile(r"\+?[\d\s().\-/]+")


# --------------------------------------------------------------------------- arguments

def parse_instant(value: str | date | datetime, zone: str = "UTC") -> datetime:
    """``--at``: an ISO 8601 time (``2026-09-01T10:00:00Z``, ``+02:00`` offsets; without an offset:
    a wall-clock time in ``zone``, seglake's ``time.zone``) or a date (its 00:00 in ``zone``), as
    an aware UTC datetime."""
    if isinstance(value, (date, datetime)):
        return consent_instant(value, zone)
    text = str(value).strip()
    try:  # a date alone parses as its (naive) midnight
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise ValueError(f"not an ISO 8601 time or date: {value!r} (e.g. 2026-09-01T10:00:00Z)") from None
    return consent_instant(parsed, zone)


def _at_argument(value: str) -> str:
    """Checks ``--at`` when the command line is read; the job reads it in ``time.zone``."""
    try:
        parse_instant(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def add_arguments(parser) -> None:
    """``--withdraw X`` / ``--grant X`` (repeatable) and ``--at TIME``."""
    parser.add_argument("--withdraw", action="append", default=[], metavar="X",
                        help="an identifier of a person who withdraws consent (email, phone, user id, ...); "
                             "repeatable. Without --withdraw/--grant the job records the consent events of "
                             "silver.events")
    parser.add_argument("--grant", action="append", default=[], metavar="X",
                        help="an identifier of a person who grants consent (again); repeatable")
    parser.add_argument("--at", type=_at_argument, default=None, metavar="TIME",
                        help="when the decision takes effect, ISO 8601 UTC (e.g. 2026-09-01T10:00:00Z; a date = "
                             "its 00:00 UTC); default: now")


def requests_from_args(args: dict) -> list[tuple[str, str]]:
    """``(action, value)`` of ``--withdraw`` / ``--grant``, blank values dropped, distinct, in order."""
    out: list[tuple[str, str]] = []
    for action, key in (("withdraw", "withdraw"), ("grant", "grant")):
        for value in args.get(key) or ():
            if value is not None and str(value).strip() and (action, str(value).strip()) not in out:
                out.append((action, str(value).strip()))
    return out


# --------------------------------------------------------------------------- identifier forms

def looks_personal(value: str) -> bool:
    """True for a value that looks like an email or a phone number (never stored in clear)."""
    v = value.strip()
    return "@" in v or (_PHONE.fullmatch(v) is not None and sum(ch.isdigit() for ch in v) >= 7)


def candidate_forms(spark: SparkSession, values: Sequence[str], key: str) -> DataFrame:
    """Every identity-map form of each value (no I/O; small).

    Returns:
        ``n`` (index in ``values``), ``identifier_type``, ``identifier`` and ``fallback`` (True:
        recorded when the map knows no form of the value) -- user_id and anonymous_id: the value
        trimmed, fallback unless it :func:`looks_personal`; device_id, email, phone: its keyed
        hash (:func:`seglake.core.pii.hash_identifier`), always a fallback.
    """
    if not values:
        return spark.createDataFrame([], "n INT, identifier_type STRING, identifier STRING, fallback BOOLEAN")
    df = spark.createDataFrame([(i, v.strip(), looks_personal(v)) for i, v in enumerate(values)],
                               "n INT, v STRING, personal BOOLEAN")
    forms = ([F.struct(F.lit(t).alias("identifier_type"), F.col("v").alias("identifier"),
                       (~F.col("personal")).alias("fallback")) for t in RAW_TYPES]
             + [F.struct(F.lit(t).alias("identifier_type"), pii.hash_identifier(F.col("v"), key).alias("identifier"),
                         F.lit(True).alias("fallback")) for t in HASHED_TYPES])
    return (df.select("n", F.explode(F.array(*forms)).alias("f")).select("n", "f.*")
            .where(F.col("identifier").isNotNull()))


def resolve_forms(forms: DataFrame, identity_map: DataFrame) -> DataFrame:
    """The forms to record: a value's forms the map holds (with their customer_id), or, for a
    value the map does not know at all, its fallback forms (customer_id null).

    Args:
        forms: :func:`candidate_forms` (small).
        identity_map: identifier_type, identifier, customer_id.

    Returns:
        ``n, identifier_type, identifier, customer_id``.
    """
    found = (identity_map.select(*_KEY_COLS, "customer_id")
             .join(F.broadcast(forms.select("n", *_KEY_COLS)), _KEY_COLS))
    unknown = (forms.join(F.broadcast(found.select("n").distinct()), "n", "left_anti").where(F.col("fallback"))
               .select("n", *_KEY_COLS, F.lit(None).cast("string").alias("customer_id")))
    return found.select("n", *_KEY_COLS, "customer_id").unionByName(unknown)


def cli_rows(spark: SparkSession, requests: Sequence[tuple[str, str]], identity_map: DataFrame, key: str,
             at: datetime, run_id: str) -> DataFrame:
    """Ledger rows of ``(action, value)`` requests effective at ``at`` (source ``cli``)."""
    values = [v for _, v in requests]
    actions = spark.createDataFrame([(i, a) for i, (a, _) in enumerate(requests)], "n INT, action STRING")
    rows = resolve_forms(candidate_forms(spark, values, key), identity_map).join(actions, "n")
    return rows.select(F.lit(f"cli-{uuid.uuid4()}").alias("request_id"), *_KEY_COLS, "customer_id", "action",
                       instant_col(at).alias("effective_at"), F.lit("cli").alias("source"),
                       F.current_timestamp().alias("recorded_at"), F.lit(run_id).alias("run_id"))


def event_rows(events: DataFrame, identity_map: DataFrame, excluded: DataFrame | None, run_id: str) -> DataFrame:
    """Ledger rows of the consent events among silver ``events`` (source ``event``).

    One row per non-null identifier of each event whose ``event_type`` is in
    :data:`~seglake.core.contracts.CONSENT_EVENT_TYPES`, effective at its ``event_ts``, with the
    identifier's current customer_id (null when unknown); identifiers in ``excluded`` (the guard's
    shared identifiers: no one's own) are skipped.
    """
    action = F.lit(None).cast("string")
    for event_type, act in CONSENT_EVENT_TYPES.items():
        action = F.when(F.col("event_type") == F.lit(event_type), F.lit(act)).otherwise(action)
    ids = F.array(*[F.struct(F.lit(t).alias("identifier_type"), F.col(c).alias("identifier")) for t, c in IDENTIFIERS])
    rows = (events.where(F.col("event_type").isin(*CONSENT_EVENT_TYPES))
            .select(F.explode(ids).alias("i"), action.alias("action"), F.col("event_ts").alias("effective_at"))
            .select("i.*", "action", "effective_at")
            .where(F.col("identifier").isNotNull() & F.col("effective_at").isNotNull()))
    if excluded is not None:
        rows = rows.join(F.broadcast(excluded.select(*_KEY_COLS)), _KEY_COLS, "left_anti")
    known = (identity_map.select(*_KEY_COLS, "customer_id")
             .join(F.broadcast(rows.select(*_KEY_COLS).distinct()), _KEY_COLS))
    return rows.join(F.broadcast(known), _KEY_COLS, "left").select(
        F.lit(f"event-{run_id}").alias("request_id"), *_KEY_COLS, "customer_id", "action", "effective_at",
        F.lit("event").alias("source"), F.current_timestamp().alias("recorded_at"), F.lit(run_id).alias("run_id"))


# --------------------------------------------------------------------------- the ledger

def _one_per_key(rows: DataFrame) -> DataFrame:
    """One row per :data:`LEDGER_KEY` (an insert-only MERGE would insert source duplicates);
    the smallest (request_id, customer_id) wins, so the choice does not depend on partitioning."""
    keep = F.min(F.struct("request_id", "customer_id", "source", "recorded_at", "run_id")).alias("r")
    return rows.groupBy(*LEDGER_KEY).agg(keep).select(*[F.col(c) if c in LEDGER_KEY else F.col(f"r.{c}")
                                                        for c in LEDGER_COLUMNS])


def record(spark: SparkSession, cfg: Config, rows: DataFrame) -> dict[str, int]:
    """MERGE ledger ``rows`` into ``ops.consent`` (insert-only, on :data:`LEDGER_KEY`); the new
    rows per action. The table is created (empty) when it does not exist yet."""
    rows = _one_per_key(rows.select(*LEDGER_COLUMNS)).localCheckpoint()  # few rows, used twice
    exists = tables.exists(spark, cfg, CONSENT_LEDGER)
    new = (rows.join(tables.read(spark, cfg, CONSENT_LEDGER).select(*LEDGER_KEY), list(LEDGER_KEY), "left_anti")
           if exists else rows)
    counts = {r["action"]: int(r["count"]) for r in new.groupBy("action").count().collect()}  # <= 2 rows
    if sum(counts.values()) or not exists:
        # the first write creates the table (empty when there is nothing yet); the MERGE condition
        # names columns only (tables.merge): no identifier reaches the Delta commit info
        tables.merge(spark, rows, cfg, CONSENT_LEDGER, keys=LEDGER_KEY)
    return {a: counts.get(a, 0) for a in CONSENT_ACTIONS}


def _identity_map(spark: SparkSession, cfg: Config) -> DataFrame:
    if tables.exists(spark, cfg, IDENTITY_MAP):
        return tables.read(spark, cfg, IDENTITY_MAP).select(*_KEY_COLS, "customer_id")
    return spark.createDataFrame([], "identifier_type STRING, identifier STRING, customer_id STRING")


def forms_of(spark: SparkSession, cfg: Config, values: Iterable[str]) -> DataFrame:
    """The ledger forms ``seglake run consent --withdraw`` would record for ``values`` now
    (``n, identifier_type, identifier, customer_id``): for checks and tests."""
    return resolve_forms(candidate_forms(spark, list(values), pii.key(cfg)), _identity_map(spark, cfg))


def run(ctx: JobContext) -> dict:
    """``seglake run consent [--withdraw X] [--grant X] [--at TIME]``: record consent decisions."""
    spark, cfg = ctx.spark, ctx.cfg
    requests = requests_from_args(ctx.args)
    idmap = _identity_map(spark, cfg)
    if requests:
        at = (parse_instant(ctx.args["at"], calendar_zone(cfg)) if ctx.args.get("at") is not None
              else consent_instant(None))
        source = "cli"
        rows = cli_rows(spark, requests, idmap, pii.key(cfg), at, ctx.run_id)
    else:
        source = "events"
        if not tables.exists(spark, cfg, SILVER_EVENTS):
            raise FileNotFoundError(f"{SILVER_EVENTS} does not exist yet: run clean first, or pass --withdraw/--grant")
        excluded = tables.read(spark, cfg, IDENTITY_EXCLUDED) if tables.exists(spark, cfg, IDENTITY_EXCLUDED) else None
        # silver.events directly, not profiling_events: a withdrawal event may carry consent=false
        events = (tables.read(spark, cfg, SILVER_EVENTS).where(F.col("event_type").isin(*CONSENT_EVENT_TYPES))
                  .select("event_type", "event_ts", *[c for _, c in IDENTIFIERS])
                  .localCheckpoint())  # few rows: silver is scanned once, the map lookup reuses them
        rows = event_rows(events, idmap, excluded, ctx.run_id)
    recorded = record(spark, cfg, rows)
    withdrawn = withdrawn_customers(spark, cfg, None).count()  # one number, never identifiers
    log.info("consent: %d withdrawal(s) and %d grant(s) recorded from %s; %d customer(s) withdrawn now",
             recorded["withdraw"], recorded["grant"], source, withdrawn)
    return {"source": source, "withdrawals_recorded": recorded["withdraw"], "grants_recorded": recorded["grant"],
            "customers_withdrawn": int(withdrawn), "ledger": CONSENT_LEDGER}
