"""``ops.outbox``: one row per message to one destination, with the policies applied.

:func:`new_messages` turns segment changes (``gold.segment_changes``: entered / exited) and
trigger firings (``gold.segment_triggers``) into messages for every enabled destination that
takes them, with

* a deterministic ``idempotency_key``: sha256 of destination | customer | kind | name | change |
  version (the as-of date of a segment change, the deciding event_key of a trigger), so building
  the outbox twice, or after a crash, inserts nothing twice (the write is a MERGE on the key);
* a send time (``scheduled_at``, UTC): triggers at their firing; segment changes of a
  ``send_time: peak_hour`` destination at the customer's peak activity hour
  (``gold.customer_features.peak_hour`` at that as-of; a UTC hour) at or after the start of the
  as-of day in ``time.zone``, else at ``default_send_hour`` local time; then out of the quiet
  hours of its channel (moved to their end);
* suppression: a customer whose consent is withdrawn (``ops.consent``), or who unsubscribed from
  the channel, gets the row with ``state = suppressed`` and the reason (kept, never sent);
* frequency caps (:func:`apply_caps`): per customer and channel, entered/fired messages beyond
  ``max_messages`` in any rolling ``window_days`` become ``state = capped``, lowest priority first.
  Exits are tag removals, not messages to the person: never capped, never counted.

States: pending -> delivered | retrying -> ... | dead (copied to ``ops.dead_letter``);
suppressed, capped (at creation); cancelled (pending when the customer withdrew consent or
unsubscribed). Erasure deletes the person's rows (``seglake run erase`` finds the customer_id
column).
"""
from __future__ import annotations

import logging
from datetime import date, datetime

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.config import Config
from seglake.core.contracts import CUSTOMER_FEATURES, OUTBOX, SEGMENT_CHANGES, SEGMENT_TRIGGERS
from seglake.core.timezones import calendar_zone
from seglake.stages.export.settings import DestinationSpec, ExportSettings, Policies

log = logging.getLogger(__name__)

OUTBOX_DDL = (
    "idempotency_key STRING, destination STRING, channel STRING, customer_id STRING, kind STRING, "
    "name STRING, change STRING, version STRING, priority INT, payload STRING, scheduled_at TIMESTAMP, "
    "state STRING, reason STRING, attempts INT, last_attempt_at TIMESTAMP, response STRING, error STRING, "
    "delivered_at TIMESTAMP, created_at TIMESTAMP, created_run_id STRING, run_id STRING")
OUTBOX_COLUMNS = [c.split()[0] for c in OUTBOX_DDL.split(", ")]

#: states whose rows may still be sent, and states that count against a frequency cap
OPEN_STATES = ("pending", "retrying")
COUNTED_STATES = ("pending", "retrying", "delivered")
#: the key of ``frequency_caps`` that caps every channel together
ALL_CHANNELS = "all"
#: changes that reach the person (and so count against caps); exits only remove a tag
MESSAGE_CHANGES = ("entered", "fired")


def _names_filter(col: str, names: tuple[str, ...] | None) -> Column:
    return F.lit(True) if names is None else F.col(col).isin(*names) if names else F.lit(False)


def candidates(spark: SparkSession, cfg: Config, spec: DestinationSpec, as_of: date | None) -> DataFrame | None:
    """Every message ``spec`` takes from the gold tables (before dedupe and policies):
    customer_id, kind, name, change, version, base_ts (UTC: the as-of day's start in
    ``time.zone``, or the firing time), as_of_date (segments; null for triggers), payload."""
    zone = calendar_zone(cfg)
    parts = []
    if spec.segments != () and tables.exists(spark, cfg, SEGMENT_CHANGES):
        ch = tables.read(spark, cfg, SEGMENT_CHANGES).where(_names_filter("segment", spec.segments))
        if as_of is not None:
            ch = ch.where(F.col("as_of_date") <= F.lit(as_of))
        if spec.since is not None:
            ch = ch.where(F.col("as_of_date") >= F.lit(spec.since))
        parts.append(ch.select(
            "customer_id", F.lit("segment").alias("kind"), F.col("segment").alias("name"), "change",
            F.col("as_of_date").cast("string").alias("version"),
            day_start(F.col("as_of_date"), zone).alias("base_ts"), "as_of_date",
            F.to_json(F.struct("customer_id", "segment", "change", "as_of_date", "previous_as_of_date",
                               "reason")).alias("payload")))
    if spec.triggers != () and tables.exists(spark, cfg, SEGMENT_TRIGGERS):
        tr = tables.read(spark, cfg, SEGMENT_TRIGGERS).where(_names_filter("trigger", spec.triggers))
        if as_of is not None:   # firings before the end of the as-of day
            tr = tr.where(F.col("fired_at") < day_start(F.date_add(F.lit(as_of), 1), zone))
        parts.append(tr.select(
            "customer_id", F.lit("trigger").alias("kind"), F.col("trigger").alias("name"),
            F.lit("fired").alias("change"), F.col("event_key").alias("version"),
            F.col("fired_at").alias("base_ts"), F.lit(None).cast("date").alias("as_of_date"),
            F.to_json(F.struct("customer_id", "trigger", "event_ts", "event_key", "fired_at",
                               "rule_version")).alias("payload")))
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out.where(F.col("customer_id").isNotNull())


def idempotency_key(destination: Column | str, *cols: str) -> Column:
    """sha256 hex of destination | customer_id | kind | name | change | version."""
    dest = F.lit(destination) if isinstance(destination, str) else destination
    return F.sha2(F.concat_ws("|", dest, *[F.col(c) for c in cols]), 256)


DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
MINUTE_US = 60_000_000


# Time arithmetic in epoch microseconds, so the results do not depend on the session time zone
# (jobs run with it set to time.zone, tests and notebooks may not): ``wall_us`` is the local
# wall-clock time of an instant in ``zone`` written as if it were UTC, ``from_wall_us`` its inverse.
def wall_us(ts: Column, zone: str) -> Column:
    return F.unix_micros(F.from_utc_timestamp(ts, zone))


def from_wall_us(us: Column, zone: str) -> Column:
    return F.to_utc_timestamp(F.timestamp_micros(us), zone)


def day_start(day: Column, zone: str) -> Column:
    """The instant a calendar day starts in ``zone`` (00:00 local)."""
    return from_wall_us(F.unix_date(day).cast("long") * F.lit(DAY_US), zone)


def out_of_quiet_hours(ts: Column, policies: Policies, zone: str) -> Column:
    """``ts`` (UTC), moved to the end of the quiet hours when it falls inside them (local time)."""
    if policies.quiet_start is None or policies.quiet_start == policies.quiet_end:
        return ts
    start = policies.quiet_start.hour * 60 + policies.quiet_start.minute
    end = policies.quiet_end.hour * 60 + policies.quiet_end.minute
    w = wall_us(ts, zone)
    into_day = F.pmod(w, F.lit(DAY_US))
    m = F.floor(into_day / MINUTE_US)                   # local minutes since midnight
    midnight = w - into_day
    end_today = from_wall_us(midnight + F.lit(end * MINUTE_US), zone)
    end_tomorrow = from_wall_us(midnight + F.lit(DAY_US + end * MINUTE_US), zone)
    if start > end:      # overnight, e.g. 21:00-08:00
        return F.when(m >= start, end_tomorrow).when(m < end, end_today).otherwise(ts)
    return F.when((m >= start) & (m < end), end_today).otherwise(ts)


def send_times(df: DataFrame, spark: SparkSession, cfg: Config, spec: DestinationSpec,
               policies: Policies) -> DataFrame:
    """``scheduled_at`` for every candidate of ``spec`` (see the module doc)."""
    zone = calendar_zone(cfg)
    at = F.col("base_ts")
    if spec.send_time == "peak_hour" and tables.exists(spark, cfg, CUSTOMER_FEATURES):
        peaks = (tables.read(spark, cfg, CUSTOMER_FEATURES).select("customer_id", "as_of_date", "peak_hour")
                 .where(F.col("peak_hour").isNotNull()))
        df = df.join(peaks, ["customer_id", "as_of_date"], "left")
        base = F.unix_micros(F.col("base_ts"))
        first = base - F.pmod(base, F.lit(DAY_US)) + F.col("peak_hour").cast("long") * F.lit(HOUR_US)  # UTC hour
        peak_at = F.timestamp_micros(F.when(first >= base, first).otherwise(first + F.lit(DAY_US)))
        local_default = from_wall_us(wall_us(F.col("base_ts"), zone) + F.lit(policies.default_send_hour * HOUR_US),
                                     zone)
        at = (F.when(F.col("kind") == "trigger", F.col("base_ts"))
              .when(F.col("peak_hour").isNotNull(), peak_at).otherwise(local_default))
    if spec.channel in policies.quiet_channels:
        at = out_of_quiet_hours(at, policies, zone)
    return df.withColumn("scheduled_at", at).drop("peak_hour")


def priority_of(policies: Policies) -> Column:
    """Priority rank (lower goes first): the listed names in order, then triggers, then segments."""
    listed = len(policies.priority)
    expr = F.when(F.col("kind") == "trigger", F.lit(listed)).otherwise(F.lit(listed + 1))
    for i, name in reversed(list(enumerate(policies.priority))):
        expr = F.when(F.col("name") == name, F.lit(i)).otherwise(expr)
    return expr.cast("int")


def apply_caps(new: DataFrame, existing: DataFrame | None, policies: Policies) -> DataFrame:
    """``state = capped`` for the new entered/fired messages beyond a cap: first each channel's,
    then the cross-channel one (``frequency_caps.all``, over the channels that have a cap of their
    own: tag syncs to a CRM or files are not messages to the person) over what they left.

    Per customer and cap: the messages already counted (:data:`COUNTED_STATES`) with
    ``scheduled_at`` after (the earliest new message - window) use up the cap first; the new ones
    take what is left in (priority, scheduled_at, key) order. Any rolling window that holds a new
    message starts after that earliest time minus the window, so it holds at most the counted
    old ones plus the admitted new ones: never more than ``max_messages``.
    """
    by_channel = {c: cap for c, cap in policies.caps.items() if c != ALL_CHANNELS}
    if by_channel:
        new = _cap(new, existing, by_channel, F.col("channel"))
    if ALL_CHANNELS in policies.caps and by_channel:   # over the channels that have their own cap
        scope = F.when(F.col("channel").isin(*by_channel), F.lit(ALL_CHANNELS))
        new = _cap(new, existing, {ALL_CHANNELS: policies.caps[ALL_CHANNELS]}, scope)
    return new


def _cap(new: DataFrame, existing: DataFrame | None, caps: dict, scope: Column) -> DataFrame:
    """One cap pass: ``scope`` is the column the caps are keyed by (the channel, or 'all')."""
    caps_df = F.broadcast(new.sparkSession.createDataFrame(
        [(c, cap.max_messages, cap.window_days) for c, cap in caps.items()], "_scope STRING, _max INT, _days INT"))
    limited = (F.col("change").isin(*MESSAGE_CHANGES) & (F.col("state") == "pending") & F.col("_max").isNotNull())
    cand = new.withColumn("_scope", scope).join(caps_df, "_scope", "left").withColumn("_limited", limited)
    if existing is not None:
        first = (cand.where(F.col("_limited")).groupBy("customer_id", "_scope")
                 .agg(F.min("scheduled_at").alias("_first")))
        used = (existing.where(F.col("state").isin(*COUNTED_STATES) & F.col("change").isin(*MESSAGE_CHANGES))
                .select("customer_id", scope.alias("_scope"), F.col("scheduled_at").alias("_old_at"))
                .join(first, ["customer_id", "_scope"]).join(caps_df, "_scope")
                .where(F.col("_old_at") > F.col("_first") - F.make_interval(days=F.col("_days")))
                .groupBy("customer_id", "_scope").agg(F.count(F.lit(1)).alias("_used")))
        cand = cand.join(used, ["customer_id", "_scope"], "left")
    else:
        cand = cand.withColumn("_used", F.lit(None).cast("long"))
    # ranked among the limited messages only: exits and suppressed rows take no place
    order = Window.partitionBy("customer_id", "_scope", "_limited").orderBy("priority", "scheduled_at",
                                                                            "idempotency_key")
    capped = F.col("_limited") & (F.row_number().over(order) > F.col("_max") - F.coalesce(F.col("_used"), F.lit(0)))
    where = F.when(F.col("_scope") == ALL_CHANNELS, F.lit("all channels")).otherwise(F.col("_scope"))
    return (cand.withColumn("_capped", capped)
            .withColumn("reason", F.when(F.col("_capped"), F.format_string(
                "frequency cap: %d per %d days on %s", F.col("_max"), F.col("_days"), where)).otherwise(F.col("reason")))
            .withColumn("state", F.when(F.col("_capped"), F.lit("capped")).otherwise(F.col("state")))
            .drop("_scope", "_max", "_days", "_used", "_limited", "_capped"))


def suppressed_customers(spark: SparkSession, cfg: Config, policies: Policies, now: datetime) -> DataFrame:
    """customer_id, channel (null = every channel), reason of everyone who must receive nothing:
    consent withdrawn at ``now``, or on a channel's unsubscribe list. Small (decisions, not events)."""
    from seglake.core.contracts import withdrawn_customers

    out = withdrawn_customers(spark, cfg, now).select(
        "customer_id", F.lit(None).cast("string").alias("channel"), F.lit("consent_withdrawn").alias("why"))
    for channel, path in policies.unsubscribed.items():
        fmt = "csv" if path.endswith(".csv") else "parquet"
        reader = spark.read.option("header", "true") if fmt == "csv" else spark.read
        try:
            lst = reader.format(fmt).load(path)
        except Exception as exc:  # noqa: BLE001 - a missing list is a clear config error, not a trace
            raise ValueError(f"policies.unsubscribed.{channel}: cannot read {path}: {str(exc).splitlines()[0]}") from None
        if "customer_id" not in lst.columns:
            raise ValueError(f"policies.unsubscribed.{channel}: {path} has no customer_id column "
                             f"(it has {', '.join(lst.columns)})")
        out = out.unionByName(lst.select(F.col("customer_id").cast("string"), F.lit(channel).alias("channel"),
                                         F.lit("unsubscribed").alias("why")))
    return out.dropDuplicates(["customer_id", "channel"])


def mark_suppressed(df: DataFrame, suppressed: DataFrame) -> DataFrame:
    """``state = suppressed`` (with the reason) for rows of suppressed customers on their channel."""
    s = F.broadcast(suppressed.select("customer_id", F.col("channel").alias("_sch"), "why"))
    hit = df.join(s, (df["customer_id"] == s["customer_id"]) & (s["_sch"].isNull() | (s["_sch"] == df["channel"])),
                  "left").drop(s["customer_id"])
    # a customer may match both a withdrawal and an unsubscribe: one row per message, withdrawal first
    w = Window.partitionBy("idempotency_key").orderBy(F.col("why").asc_nulls_last())
    hit = hit.withColumn("_n", F.row_number().over(w)).where(F.col("_n") == 1).drop("_n", "_sch")
    return (hit.withColumn("state", F.when(F.col("why").isNotNull(), F.lit("suppressed")).otherwise(F.col("state")))
            .withColumn("reason", F.coalesce(F.col("why"), F.col("reason"))).drop("why"))


def new_messages(spark: SparkSession, cfg: Config, settings: ExportSettings, specs: list[DestinationSpec],
                 as_of: date | None, run_id: str, now: datetime) -> DataFrame | None:
    """The outbox rows not in ``ops.outbox`` yet, for ``specs``, with send times and policies applied."""
    existing = tables.read(spark, cfg, OUTBOX) if tables.exists(spark, cfg, OUTBOX) else None
    parts = []
    for spec in specs:
        cand = candidates(spark, cfg, spec, as_of)
        if cand is None:
            continue
        cand = (send_times(cand, spark, cfg, spec, settings.policies)
                .withColumn("destination", F.lit(spec.name)).withColumn("channel", F.lit(spec.channel))
                .withColumn("idempotency_key", idempotency_key(spec.name, "customer_id", "kind", "name",
                                                               "change", "version")))
        parts.append(cand)
    if not parts:
        return None
    new = parts[0]
    for p in parts[1:]:
        new = new.unionByName(p)
    if existing is not None:
        new = new.join(existing.select("idempotency_key"), "idempotency_key", "left_anti")
    new = (new.withColumn("priority", priority_of(settings.policies))
           .withColumn("state", F.lit("pending")).withColumn("reason", F.lit(None).cast("string")))
    new = mark_suppressed(new, suppressed_customers(spark, cfg, settings.policies, now))
    new = apply_caps(new, existing, settings.policies)
    return new.select(
        "idempotency_key", "destination", "channel", "customer_id", "kind", "name", "change", "version",
        "priority", "payload", "scheduled_at", "state", "reason", F.lit(0).alias("attempts"),
        F.lit(None).cast("timestamp").alias("last_attempt_at"), F.lit(None).cast("string").alias("response"),
        F.lit(None).cast("string").alias("error"), F.lit(None).cast("timestamp").alias("delivered_at"),
        F.current_timestamp().alias("created_at"), F.lit(run_id).alias("created_run_id"),
        F.lit(run_id).alias("run_id"))
