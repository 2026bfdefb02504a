"""Point-in-time customer features: one row per (customer_id, as_of_date) in gold.customer_features.

Only events with ``event_ts < as_of_date`` (midnight UTC) are used, so a row never sees
the future: recomputing a past as_of after new data arrived gives the same row. Sessions
are cut at as_of as well (an event's session depends only on the events before it). A customer
whose consent is withdrawn at as_of (``ops.consent``, :func:`seglake.core.contracts.withdrawn_customers`)
gets no row for that as_of.

Definitions (windows are ``[as_of - N days, as_of)``; "purchase" = features.purchase_event_types):
- first_seen_ts / last_seen_ts: first / last event; tenure_days, recency_days,
  recency_purchase_days: whole days from that event's date to as_of (null if no purchase).
- sessions_Nd: sessions starting in the window; purchases_Nd, revenue_Nd (revenue_usd).
- avg_order_value = revenue_total / purchases_total (null without purchases).
- pages_per_session, avg_session_duration_s: over all sessions before as_of (n_pages counts
  sessions.page_event_types; a session's duration is last - first event).
- avg_scroll_depth: mean of scroll_depth (0..1) over events that have one.
- distinct_features_30d: distinct ``properties[feature_property_key]`` of feature_use events.
- funnel: product_view / add_to_cart / checkout_start counts (30d and total);
  cart_to_purchase_rate = online purchases (event_type purchase) / carts_total,
  view_to_cart_rate = carts_total / product_views_total (null when the denominator is 0).
- email_click_rate = email_clicks_90d / email_opens_90d (null without opens).
- share_web / share_app / share_email: share of events by source; share_mobile (ios,
  android) / share_desktop by device_type.
- peak_hour: UTC hour with most events (ties: the earliest hour).
- product_page_time_s_30d: summed duration_s of product_view events in 30 days.
- failed_searches_30d: search events in 30 days whose ``properties[search_results_property_key]``
  is "0" (the site found nothing); support_contacts_30d: events of features.support_event_types
  (call_center) in 30 days.
- sessions_per_week_30d = sessions_30d * 7 / 30.
- cohort_week / cohort_month: Monday / first day of the month of first_seen_ts.
- is_new_user: first seen within features.new_user_days; is_long_term: first to last event
  spans more than features.long_term_days; is_high_frequency: sessions_per_week_30d above
  features.high_frequency_sessions_per_week; is_inactive: no event in features.inactive_days.
- z_<f>, mm_<f> for f in features.model_inputs: z-score with the population standard
  deviation and min-max scaling over that as_of's customers; a null input is imputed with
  the mean (z = 0). Statistics go to gold.feature_scaling; :func:`apply_scaling` reuses them.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Iterable, Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

log = logging.getLogger(__name__)

#: the stage runner resolves ``--as-of`` (default: the day after the last event) before run()
USES_AS_OF = True

FEATURE_COLUMNS = (
    "customer_id", "as_of_date", "first_seen_ts", "last_seen_ts", "tenure_days", "recency_days",
    "recency_purchase_days", "sessions_7d", "sessions_30d", "sessions_90d", "sessions_180d", "purchases_7d",
    "purchases_30d", "purchases_90d", "purchases_180d", "revenue_total", "revenue_90d", "revenue_180d",
    "avg_order_value", "pages_per_session", "avg_session_duration_s", "avg_scroll_depth",
    "distinct_features_30d", "product_views_30d", "carts_30d", "checkouts_30d", "product_views_total",
    "carts_total", "checkouts_total", "purchases_total", "cart_to_purchase_rate", "view_to_cart_rate",
    "email_opens_90d", "email_clicks_90d", "email_click_rate", "push_opens_90d", "share_web", "share_app",
    "share_email", "share_mobile", "share_desktop", "peak_hour", "product_page_time_s_30d",
    "sessions_per_week_30d", "cohort_week", "cohort_month", "is_new_user", "is_long_term",
    "is_high_frequency", "is_inactive", "failed_searches_30d", "support_contacts_30d",
)
REQUIRED_WINDOWS = (7, 30, 90, 180)


@dataclass(frozen=True)
class FeatureParams:
    """The knobs of :func:`compute_features` (from conf ``features:`` and ``sessions:``)."""

    windows_days: tuple[int, ...] = REQUIRED_WINDOWS
    purchase_event_types: tuple[str, ...] = ("purchase", "store_purchase")
    feature_property_key: str = "feature"
    page_event_types: tuple[str, ...] = ("page_view", "product_view", "app_open")
    new_user_days: int = 7
    long_term_days: int = 90
    high_frequency_sessions_per_week: float = 10.0
    inactive_days: int = 30
    model_inputs: tuple[str, ...] = field(default_factory=tuple)
    search_results_key: str = "results"
    support_event_types: tuple[str, ...] = ("call_center",)

    @classmethod
    def from_config(cls, cfg) -> "FeatureParams":
        f = cfg["features"]
        windows = tuple(sorted(set(int(w) for w in f["windows_days"]) | set(REQUIRED_WINDOWS)))
        return cls(windows, tuple(f["purchase_event_types"]), str(f["feature_property_key"]),
                   tuple(cfg.get("sessions.page_event_types") or cls.page_event_types),
                   int(f["new_user_days"]), int(f["long_term_days"]),
                   float(f["high_frequency_sessions_per_week"]), int(f["inactive_days"]),
                   tuple(f["model_inputs"]), str(f.get("search_results_property_key") or cls.search_results_key),
                   tuple(f.get("support_event_types") or cls.support_event_types))


def _ts(d: date) -> Column:
    """Midnight UTC of ``d`` (the session time zone is UTC)."""
    return F.lit(d).cast("timestamp")


def _ratio(num: Column, den: Column) -> Column:
    return F.when(den > 0, num.cast("double") / den)


def compute_features(events: DataFrame, as_of: date | Sequence[date],
                     params: FeatureParams = FeatureParams()) -> DataFrame:
    """Customer features as of ``as_of`` from sessionized events (no scaling columns).

    Args:
        events: :func:`seglake.stages.sessions.sessionize` output over silver events with
            customer_id (event_type, event_ts, source, device_type, revenue_usd,
            scroll_depth, duration_s, properties, session_key). Events at or after as_of
            are ignored here, so the caller may pass everything.
        as_of: exclusive cut-off date, or several: the rows of every date from one pass
            (each event is counted for every date after it: one aggregation keyed by
            (customer, as_of_date) instead of one plan per date; the same rows as one call
            per date).
        params: definitions' knobs.

    Returns:
        One row per customer with an event before as_of (per date); the columns of FEATURE_COLUMNS.
    """
    need = ["customer_id", "session_key", "event_type", "event_ts", "source", "device_type", "revenue_usd",
            "scroll_depth", "duration_s", "properties"]
    missing = [c for c in need if c not in events.columns]
    if missing:
        raise ValueError(f"compute_features needs column(s) {', '.join(missing)}; got {', '.join(events.columns)}")
    dates = [as_of] if isinstance(as_of, date) else sorted(set(as_of))
    if not dates or not all(isinstance(d, date) for d in dates):
        raise ValueError(f"as_of must be a date or a list of dates, got {as_of!r}")
    ts = F.col("event_ts")
    ev = events.filter(F.col("customer_id").isNotNull() & (ts < _ts(dates[-1])))
    if len(dates) == 1:
        ev = ev.withColumn("_as_of", F.lit(dates[0]))
    else:   # every date after the event: the same events as one filter per date
        ev = ev.withColumn("_as_of", F.explode(F.filter(F.array(*[F.lit(d) for d in dates]),
                                                        lambda d: ts < d.cast("timestamp"))))
    asof = F.col("_as_of")

    def days_before(n: int) -> Column:
        """Midnight of as_of - n days (a literal for one date)."""
        return F.date_sub(asof, n).cast("timestamp")

    cut = {n: days_before(n) for n in set(params.windows_days) | {30, 90}}
    et = F.col("event_type")
    is_purchase = et.isin(list(params.purchase_event_types))

    def count_if(cond: Column) -> Column:
        return F.sum(F.when(cond, 1).otherwise(0)).cast("int")

    def within(n: int) -> Column:
        return ts >= cut[n]

    revenue = F.coalesce(F.col("revenue_usd"), F.lit(0.0))
    feature_name = F.try_element_at(F.col("properties"), F.lit(params.feature_property_key))
    results = F.trim(F.try_element_at(F.col("properties"), F.lit(params.search_results_key)))
    aggs = [
        F.min(ts).alias("first_seen_ts"), F.max(ts).alias("last_seen_ts"),
        F.max(F.when(is_purchase, ts)).alias("_last_purchase_ts"),
        F.count(F.lit(1)).alias("_n_events"),
        count_if(is_purchase).alias("purchases_total"),
        count_if(et == "purchase").alias("_online_purchases"),
        F.sum(F.when(is_purchase, revenue).otherwise(0.0)).alias("revenue_total"),
        F.avg("scroll_depth").alias("avg_scroll_depth"),
        count_if((et == "product_view") & within(30)).alias("product_views_30d"),
        count_if((et == "add_to_cart") & within(30)).alias("carts_30d"),
        count_if((et == "checkout_start") & within(30)).alias("checkouts_30d"),
        count_if(et == "product_view").alias("product_views_total"),
        count_if(et == "add_to_cart").alias("carts_total"),
        count_if(et == "checkout_start").alias("checkouts_total"),
        count_if((et == "email_open") & within(90)).alias("email_opens_90d"),
        count_if((et == "email_click") & within(90)).alias("email_clicks_90d"),
        count_if((et == "push_open") & within(90)).alias("push_opens_90d"),
        count_if(F.col("source") == "web").alias("_n_web"),
        count_if(F.col("source") == "app").alias("_n_app"),
        count_if(F.col("source") == "email").alias("_n_email"),
        count_if(F.col("device_type").isin("ios", "android")).alias("_n_mobile"),
        count_if(F.col("device_type") == "desktop").alias("_n_desktop"),
        F.sum(F.when((et == "product_view") & within(30), F.coalesce(F.col("duration_s"), F.lit(0.0)))
              .otherwise(0.0)).alias("product_page_time_s_30d"),
        count_if((et == "search") & within(30) & (results == F.lit("0"))).alias("failed_searches_30d"),
        count_if(et.isin(list(params.support_event_types)) & within(30)).alias("support_contacts_30d"),
    ]
    for n in params.windows_days:
        aggs.append(count_if(is_purchase & within(n)).alias(f"purchases_{n}d"))
    for n in params.windows_days:
        if n >= 90:
            aggs.append(F.sum(F.when(is_purchase & within(n), revenue).otherwise(0.0)).alias(f"revenue_{n}d"))
    # the peak hour from 24 counters in the same pass (most events; a tie goes to the earliest hour):
    # a separate group by (customer, hour) would read the events again
    hour = F.hour(ts)
    aggs += [count_if(hour == h).alias(f"_h{h}") for h in range(24)]
    per_event = ev.groupBy("customer_id", "_as_of").agg(*aggs)
    counts = F.array(*[F.col(f"_h{h}") for h in range(24)])
    per_event = per_event.withColumn("peak_hour", (F.array_position(counts, F.array_max(counts)) - 1).cast("int"))
    # distinct features: only the feature_use events of the last 30 days (a distinct count inside the
    # main aggregation would make Spark shuffle every event by (customer, feature) first)
    used = ev.where((et == "feature_use") & within(30) & feature_name.isNotNull())
    distinct_features = used.groupBy("customer_id", "_as_of").agg(
        F.countDistinct(feature_name).cast("int").alias("distinct_features_30d"))

    # sessions, cut at as_of (the events after as_of were filtered above)
    sess = ev.groupBy("customer_id", "_as_of", "session_key").agg(
        F.min(ts).alias("_start"), F.max(ts).alias("_end"),
        F.sum(et.isin(list(params.page_event_types)).cast("int")).alias("_pages"))
    sess_aggs = [F.avg("_pages").cast("double").alias("pages_per_session"),
                 F.avg((F.unix_micros("_end") - F.unix_micros("_start")) / F.lit(1e6)).alias("avg_session_duration_s")]
    for n in params.windows_days:
        sess_aggs.append(F.sum(F.when(F.col("_start") >= cut[n], 1).otherwise(0)).cast("int").alias(f"sessions_{n}d"))
    per_session = sess.groupBy("customer_id", "_as_of").agg(*sess_aggs)

    keys = ["customer_id", "_as_of"]
    df = (per_event.join(per_session, keys, "left").join(distinct_features, keys, "left")
          .fillna(0, ["distinct_features_30d"]))
    span_s = F.unix_seconds("last_seen_ts") - F.unix_seconds("first_seen_ts")
    df = df.select(
        "*",
        asof.alias("as_of_date"),
        F.datediff(asof, F.to_date("first_seen_ts")).alias("tenure_days"),
        F.datediff(asof, F.to_date("last_seen_ts")).alias("recency_days"),
        F.datediff(asof, F.to_date("_last_purchase_ts")).alias("recency_purchase_days"),
        _ratio(F.col("revenue_total"), F.col("purchases_total")).alias("avg_order_value"),
        _ratio(F.col("_online_purchases"), F.col("carts_total")).alias("cart_to_purchase_rate"),
        _ratio(F.col("carts_total"), F.col("product_views_total")).alias("view_to_cart_rate"),
        _ratio(F.col("email_clicks_90d"), F.col("email_opens_90d")).alias("email_click_rate"),
        _ratio(F.col("_n_web"), F.col("_n_events")).alias("share_web"),
        _ratio(F.col("_n_app"), F.col("_n_events")).alias("share_app"),
        _ratio(F.col("_n_email"), F.col("_n_events")).alias("share_email"),
        _ratio(F.col("_n_mobile"), F.col("_n_events")).alias("share_mobile"),
        _ratio(F.col("_n_desktop"), F.col("_n_events")).alias("share_desktop"),
        (F.col("sessions_30d") * F.lit(7.0) / F.lit(30.0)).alias("sessions_per_week_30d"),
        F.to_date(F.date_trunc("week", "first_seen_ts")).alias("cohort_week"),
        F.to_date(F.date_trunc("month", "first_seen_ts")).alias("cohort_month"),
        (F.col("first_seen_ts") >= days_before(params.new_user_days)).alias("is_new_user"),
        (span_s > F.lit(params.long_term_days * 86400)).alias("is_long_term"),
        (F.col("sessions_30d") * F.lit(7.0) / F.lit(30.0) > F.lit(params.high_frequency_sessions_per_week))
        .alias("is_high_frequency"),
        (F.col("last_seen_ts") < days_before(params.inactive_days)).alias("is_inactive"),
    )
    extra = [c for c in df.columns if not c.startswith("_") and c not in FEATURE_COLUMNS]
    return df.select(*FEATURE_COLUMNS, *extra)


# --------------------------------------------------------------------------- scaling
def scaling_stats(features: DataFrame, inputs: Sequence[str]) -> DataFrame:
    """mean, population stddev, min, max of each model input (nulls ignored).

    Returns:
        feature, mean, stddev, min, max — one row per input (small).
    """
    missing = [c for c in inputs if c not in features.columns]
    if missing:
        raise ValueError(f"features.model_inputs names unknown feature(s): {', '.join(missing)}")
    if not inputs:
        raise ValueError("features.model_inputs is empty: nothing to scale")
    aggs = []
    for i, c in enumerate(inputs):
        x = F.col(c).cast("double")
        aggs += [F.avg(x).alias(f"m{i}"), F.stddev_pop(x).alias(f"s{i}"), F.min(x).alias(f"lo{i}"),
                 F.max(x).alias(f"hi{i}")]
    row = features.agg(*aggs)
    stack = F.array(*[F.struct(F.lit(c).alias("feature"), F.col(f"m{i}").alias("mean"),
                               F.col(f"s{i}").alias("stddev"), F.col(f"lo{i}").alias("min"),
                               F.col(f"hi{i}").alias("max")) for i, c in enumerate(inputs)])
    return row.select(F.explode(stack).alias("s")).select("s.*")


def apply_scaling(features: DataFrame, stats: DataFrame | Iterable) -> DataFrame:
    """Add z_<f> and mm_<f> for every feature in ``stats`` using those saved statistics.

    ``stats`` holds one row per feature (feature, mean, stddev, min, max): tiny, so it is
    collected to build column expressions. Null inputs are imputed with the mean; a zero
    stddev or range gives 0.
    """
    rows = stats.collect() if isinstance(stats, DataFrame) else list(stats)  # one row per model input
    if not rows:
        raise ValueError("no scaling statistics: run the features job for that as_of first")
    cols = []
    for r in rows:
        f, mean, sd, lo, hi = r["feature"], r["mean"], r["stddev"], r["min"], r["max"]
        if f not in features.columns:
            raise ValueError(f"scaling statistics name feature {f!r}, which the features table does not have")
        x = F.coalesce(F.col(f).cast("double"), F.lit(mean if mean is not None else 0.0))
        mean = 0.0 if mean is None else mean
        z = (x - F.lit(mean)) / F.lit(sd) if sd else F.lit(0.0)
        mm = (x - F.lit(lo)) / F.lit(hi - lo) if (lo is not None and hi is not None and hi > lo) else F.lit(0.0)
        cols += [z.cast("double").alias(f"z_{f}"), mm.cast("double").alias(f"mm_{f}")]
    dup = [c for c in (f"z_{r['feature']}" for r in rows) if c in features.columns]
    if dup:
        raise ValueError(f"features already have scaled column(s) {', '.join(dup)}")
    return features.select("*", *cols)


def load_scaling(spark: SparkSession, cfg, as_of: date) -> DataFrame:
    """The saved scaling statistics of ``as_of`` from gold.feature_scaling."""
    from seglake.core import tables
    return tables.read(spark, cfg, "gold.feature_scaling").filter(F.col("as_of_date") == F.lit(as_of))


# --------------------------------------------------------------------------- job
def add_arguments(parser) -> None:
    """--start/--end (inclusive) backfill one as_of per --step-days; else --as-of or the default."""
    parser.add_argument("--start", type=date.fromisoformat, default=None, help="first as_of date of a backfill")
    parser.add_argument("--end", type=date.fromisoformat, default=None, help="last as_of date of a backfill")
    parser.add_argument("--step-days", type=int, default=None, dest="step_days",
                        help="days between backfill as_of dates (default features.backfill_step_days)")


def as_of_dates(ctx) -> list[date]:
    """The as_of dates of this run: a --start/--end range, else ctx.resolve_as_of()."""
    start, end = ctx.args.get("start"), ctx.args.get("end")
    if start is None and end is None:
        return [ctx.resolve_as_of()]
    if start is None or end is None:
        raise ValueError("a features backfill needs both --start and --end")
    if isinstance(start, str):
        start, end = date.fromisoformat(start), date.fromisoformat(end)
    step = int(ctx.args.get("step_days") or ctx.cfg["features"]["backfill_step_days"])
    if step < 1:
        raise ValueError(f"--step-days must be >= 1, got {step}")
    if end < start:
        raise ValueError(f"--end {end} is before --start {start}")
    out, d = [], start
    while d <= end:
        out.append(d)
        d += timedelta(days=step)
    return out


def build(features: DataFrame, inputs: Sequence[str]) -> tuple[DataFrame, DataFrame]:
    """(features with z_/mm_ columns, their scaling statistics) for one as_of."""
    stats = scaling_stats(features, inputs)
    return apply_scaling(features, stats.collect()), stats  # stats: one row per input


def run(ctx) -> dict:
    """``seglake run features [--as-of D | --start D1 --end D2 [--step-days N]]``."""
    from seglake.stages import cohorts, enriched
    from seglake.core import tables
    from seglake.core.contracts import CONSENT_RULE, exclude_withdrawn
    from seglake.core.spark import persist_events
    spark, cfg = ctx.spark, ctx.cfg
    params = FeatureParams.from_config(cfg)
    dates = as_of_dates(ctx)
    ctx.as_of = dates[-1]  # recorded in ops.run_log (a backfill's last date)
    consent_via = CONSENT_RULE
    # consent withdrawals (ops.consent) are judged at each as_of: customers withdrawn at the first
    # one are left out when reading, those withdrawn later only from the as_of dates after it
    first = min(dates)
    sev = enriched.read(spark, cfg, end=max(dates), consent_at=first, columns=(
        "session_key", "event_type", "event_ts", "source", "device_type", "revenue_usd", "scroll_depth",
        "duration_s", "properties"))
    if len(dates) > 1:  # a backfill reads the events once per as_of: keep them on local disk
        sev = persist_events(sev)
    # one as_of: the features and the retention matrix scan the (columnar) table directly, which
    # costs less than writing every event to the disk cache first and reading it back twice
    out: dict = {}
    feats = None
    # wall time of the two parts (summed over a backfill's dates), logged and in the summary: the
    # features proper (computed, scaled, written) and the retention matrix
    seconds = {"features": 0.0, "retention": 0.0}
    try:
        for d in dates:
            started = time.perf_counter()
            sev_d = sev if d == first else exclude_withdrawn(spark, cfg, sev, d)
            feats = compute_features(sev_d, d, params).persist()
            scaled, stats = build(feats, params.model_inputs)
            where = f"as_of_date = '{d.isoformat()}'"
            # merge_schema: a table written before a feature was added gains its column (null in old rows)
            tables.overwrite(scaled, cfg, "gold.customer_features", partition_by=["as_of_date"], replace_where=where,
                             merge_schema=True)
            tables.overwrite(stats.withColumn("as_of_date", F.lit(d)), cfg, "gold.feature_scaling",
                             partition_by=["as_of_date"], replace_where=where)
            seconds["features"] += time.perf_counter() - started
            started = time.perf_counter()
            n_rm = cohorts.write_retention(spark, cfg, sev_d, d)
            seconds["retention"] += time.perf_counter() - started
            log.info("features as of %s: features %.1f s, retention matrix %.1f s (so far)", d,
                     seconds["features"], seconds["retention"])
            row = feats.agg(F.count(F.lit(1)).alias("n"), F.avg(F.col("is_new_user").cast("int")).alias("new"),
                            F.avg(F.col("is_inactive").cast("int")).alias("inactive"),
                            F.avg("purchases_total").alias("p")).first()
            feats.unpersist()
            out[str(d)] = int(row["n"])
    finally:
        if feats is not None:
            feats.unpersist()
        sev.unpersist()
    last = dates[-1]
    return {"as_of": str(last) if len(dates) == 1 else f"{dates[0]}..{last} ({len(dates)} dates)",
            "customers": out[str(last)],
            "share_new_users": round(float(row["new"] or 0), 4),
            "share_inactive": round(float(row["inactive"] or 0), 4),
            "avg_purchases": round(float(row["p"] or 0), 3),
            "retention_cells": n_rm, "model_inputs": len(params.model_inputs), "consent": consent_via,
            "seconds_features": round(seconds["features"], 1), "seconds_retention": round(seconds["retention"], 1)}
