"""Customer features: hand-computed customers, point-in-time, pandas cross-check, scaling, job."""
from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from seglake.stages import features, sessions
from seglake.stages.features import FeatureParams

DDL = ("event_key STRING, customer_id STRING, event_type STRING, event_ts TIMESTAMP, source STRING, "
       "device_type STRING, revenue_usd DOUBLE, scroll_depth DOUBLE, duration_s DOUBLE, "
       "properties MAP<STRING,STRING>, session_id STRING")
AS_OF = date(2026, 9, 1)


def ev(key, cust, etype, ts, source="web", device="desktop", revenue=None, scroll=None, dur=None, props=None):
    return (key, cust, etype, ts, source, device, revenue, scroll, dur, props, None)


A = [
    ev("a1", "A", "page_view", datetime(2026, 5, 20, 10, 0)),
    ev("a2", "A", "product_view", datetime(2026, 8, 20, 12, 0), scroll=0.5, dur=30.0),
    ev("a3", "A", "add_to_cart", datetime(2026, 8, 20, 12, 5)),
    ev("a4", "A", "purchase", datetime(2026, 8, 20, 12, 10), revenue=100.0),
    ev("a5", "A", "email_open", datetime(2026, 8, 28, 9, 0), source="email", device=None),
    ev("a6", "A", "email_click", datetime(2026, 8, 28, 9, 1), source="email", device=None),
    ev("a7", "A", "store_purchase", datetime(2026, 8, 30, 20, 0), source="offline", device=None, revenue=50.0),
]
B = [
    ev("b1", "B", "app_open", datetime(2026, 8, 29, 10, 0), "app", "ios"),
    ev("b2", "B", "feature_use", datetime(2026, 8, 29, 10, 1), "app", "ios", props={"feature": "f1"}),
    ev("b3", "B", "feature_use", datetime(2026, 8, 29, 10, 2), "app", "ios", props={"feature": "f2"}),
    ev("b4", "B", "feature_use", datetime(2026, 8, 29, 10, 3), "app", "ios", props={"feature": "f1"}),
    ev("b5", "B", "push_open", datetime(2026, 8, 29, 10, 4), "app", "ios"),
    ev("b6", "B", "feature_use", datetime(2026, 8, 31, 23, 59), "app", "android", props={"feature": "f3"}),
]
C = [ev("c1", "C", "page_view", datetime(2026, 7, 1, 8, 0), "web", "android")]
FUTURE = [
    ev("a8", "A", "purchase", datetime(2026, 9, 1, 8, 0), revenue=1000.0),       # after as_of
    ev("b7", "B", "feature_use", datetime(2026, 9, 1, 0, 5), "app", "ios", props={"feature": "f9"}),  # same session as b6
    ev("d1", "D", "page_view", datetime(2026, 9, 2, 8, 0)),                       # customer only after as_of
]

EXPECTED_A = dict(
    first_seen_ts=datetime(2026, 5, 20, 10, 0), last_seen_ts=datetime(2026, 8, 30, 20, 0), tenure_days=104,
    recency_days=2, recency_purchase_days=2, sessions_7d=2, sessions_30d=3, sessions_90d=3, sessions_180d=4,
    purchases_7d=1, purchases_30d=2, purchases_90d=2, purchases_180d=2, revenue_total=150.0, revenue_90d=150.0,
    revenue_180d=150.0, avg_order_value=75.0, pages_per_session=0.5, avg_session_duration_s=165.0,
    avg_scroll_depth=0.5, distinct_features_30d=0, product_views_30d=1, carts_30d=1, checkouts_30d=0,
    product_views_total=1, carts_total=1, checkouts_total=0, purchases_total=2, cart_to_purchase_rate=1.0,
    view_to_cart_rate=1.0, email_opens_90d=1, email_clicks_90d=1, email_click_rate=1.0, push_opens_90d=0,
    share_web=4 / 7, share_app=0.0, share_email=2 / 7, share_mobile=0.0, share_desktop=4 / 7, peak_hour=12,
    product_page_time_s_30d=30.0, sessions_per_week_30d=0.7, cohort_week=date(2026, 5, 18),
    cohort_month=date(2026, 5, 1), is_new_user=False, is_long_term=True, is_high_frequency=False,
    is_inactive=False)
EXPECTED_B = dict(
    first_seen_ts=datetime(2026, 8, 29, 10, 0), last_seen_ts=datetime(2026, 8, 31, 23, 59), tenure_days=3,
    recency_days=1, recency_purchase_days=None, sessions_7d=2, sessions_30d=2, sessions_180d=2, purchases_180d=0,
    revenue_total=0.0, avg_order_value=None, pages_per_session=0.5, avg_session_duration_s=120.0,
    avg_scroll_depth=None, distinct_features_30d=3, cart_to_purchase_rate=None, view_to_cart_rate=None,
    email_click_rate=None, push_opens_90d=1, share_app=1.0, share_web=0.0, share_mobile=1.0, share_desktop=0.0,
    peak_hour=10, cohort_week=date(2026, 8, 24), cohort_month=date(2026, 8, 1), is_new_user=True,
    is_long_term=False, is_inactive=False)
EXPECTED_C = dict(recency_days=62, tenure_days=62, sessions_30d=0, sessions_90d=1, is_inactive=True,
                  is_new_user=False, share_mobile=1.0, peak_hour=8, cohort_week=date(2026, 6, 29))


def _features(spark, rows, as_of=AS_OF, params=FeatureParams()):
    df = spark.createDataFrame(rows, DDL)
    return features.compute_features(sessions.sessionize(df, 30), as_of, params)


def _check(row, expected):
    for k, v in expected.items():
        if isinstance(v, float):
            assert row[k] == pytest.approx(v, abs=1e-9), k
        else:
            assert row[k] == v, k


def test_hand_computed_customers(spark):
    rows = {r["customer_id"]: r.asDict() for r in _features(spark, A + B + C).collect()}
    assert set(rows) == {"A", "B", "C"}
    _check(rows["A"], EXPECTED_A)
    _check(rows["B"], EXPECTED_B)
    _check(rows["C"], EXPECTED_C)
    assert all(r["as_of_date"] == AS_OF for r in rows.values())


def test_failed_searches_and_support_contacts_count_the_last_30_days(spark):
    E = [
        ev("e1", "E", "search", datetime(2026, 8, 25, 9, 0), props={"results": "0"}),   # failed
        ev("e2", "E", "search", datetime(2026, 8, 25, 9, 1), props={"results": "5"}),
        ev("e3", "E", "search", datetime(2026, 8, 25, 9, 2)),                          # no count: not failed
        ev("e4", "E", "search", datetime(2026, 7, 1, 9, 0), props={"results": "0"}),    # before the window
        ev("e5", "E", "page_view", datetime(2026, 8, 26, 9, 0), props={"results": "0"}),  # not a search
        ev("e6", "E", "call_center", datetime(2026, 8, 20, 15, 0), source="crm", device=None),
        ev("e7", "E", "call_center", datetime(2026, 7, 15, 15, 0), source="crm", device=None),
        ev("e8", "E", "search", datetime(2026, 8, 2, 0, 0), props={"results": "0"}),    # first day of the window
        ev("e9", "E", "search", datetime(2026, 9, 1, 0, 0), props={"results": "0"}),    # at as_of: not seen
    ]
    rows = {r["customer_id"]: r.asDict() for r in _features(spark, E + C).collect()}
    assert (rows["E"]["failed_searches_30d"], rows["E"]["support_contacts_30d"]) == (2, 1)
    assert (rows["C"]["failed_searches_30d"], rows["C"]["support_contacts_30d"]) == (0, 0)
    # a site that calls its support events otherwise says so in the config
    other = FeatureParams(support_event_types=("call_center", "page_view"), search_results_key="hits")
    row = [r for r in _features(spark, E, params=other).collect() if r["customer_id"] == "E"][0]
    assert (row["failed_searches_30d"], row["support_contacts_30d"]) == (0, 2)


def test_contract_columns_present():
    params = FeatureParams()
    assert len(features.FEATURE_COLUMNS) == len(set(features.FEATURE_COLUMNS))
    assert set(params.windows_days) >= {7, 30, 90, 180}


def test_events_after_as_of_change_nothing(spark):
    before = {r["customer_id"]: r.asDict() for r in _features(spark, A + B + C).collect()}
    after = {r["customer_id"]: r.asDict() for r in _features(spark, A + B + C + FUTURE).collect()}
    assert after == before
    # ... while the next day's features do see them
    nxt = {r["customer_id"]: r.asDict() for r in _features(spark, A + B + C + FUTURE, AS_OF + timedelta(days=1)).collect()}
    assert nxt["A"]["revenue_total"] == 1150.0 and nxt["B"]["distinct_features_30d"] == 4 and "D" not in nxt


def _random_events(seed=11, customers=12):
    rng = np.random.default_rng(seed)
    types = ["page_view", "product_view", "add_to_cart", "purchase", "email_open", "feature_use", "search",
             "call_center"]
    rows = []
    for c in range(customers):
        t = datetime(2026, 6, 1) + timedelta(hours=int(rng.integers(0, 800)))
        for i in range(int(rng.integers(5, 60))):
            t += timedelta(minutes=float(rng.choice([2, 10, 45, 600, 3000])))
            et = str(rng.choice(types, p=[0.3, 0.25, 0.1, 0.1, 0.1, 0.05, 0.07, 0.03]))
            rev = float(rng.integers(5, 300)) if et == "purchase" else None
            rows.append(ev(f"r{c}-{i:03d}", f"R{c}", et, t, str(rng.choice(["web", "app"])),
                           str(rng.choice(["ios", "desktop"])), rev, float(rng.random()), float(rng.integers(1, 90)),
                           {"feature": f"f{int(rng.integers(0, 4))}"} if et == "feature_use" else
                           {"results": str(rng.choice([0, 0, 3, 12]))} if et == "search" else None))
    return rows


def _pandas_features(rows, as_of):
    cols = ["event_key", "customer_id", "event_type", "event_ts", "source", "device_type", "revenue_usd",
            "scroll_depth", "duration_s", "properties", "session_id"]
    df = pd.DataFrame(rows, columns=cols)
    cut = pd.Timestamp(as_of)
    df = df[df.event_ts < cut].sort_values(["customer_id", "event_ts", "event_key"])
    out = {}
    for cid, g in df.groupby("customer_id"):
        new = g.event_ts.diff().isna() | (g.event_ts.diff() > pd.Timedelta(minutes=30))
        sess = new.cumsum()
        starts = g.groupby(sess).event_ts.min()
        ends = g.groupby(sess).event_ts.max()
        pages = g.groupby(sess).event_type.apply(lambda s: s.isin(["page_view", "product_view", "app_open"]).sum())
        purch = g[g.event_type == "purchase"]
        hours = g.event_ts.dt.hour.value_counts()
        out[cid] = dict(
            recency_days=(as_of - g.event_ts.max().date()).days,
            tenure_days=(as_of - g.event_ts.min().date()).days,
            sessions_30d=int((starts >= cut - pd.Timedelta(days=30)).sum()),
            sessions_180d=int((starts >= cut - pd.Timedelta(days=180)).sum()),
            purchases_90d=int((purch.event_ts >= cut - pd.Timedelta(days=90)).sum()),
            revenue_total=float(purch.revenue_usd.sum()),
            avg_session_duration_s=float((ends - starts).dt.total_seconds().mean()),
            pages_per_session=float(pages.mean()),
            avg_scroll_depth=float(g.scroll_depth.mean()),
            peak_hour=int(hours[hours == hours.max()].index.min()),
            product_views_30d=int(((g.event_type == "product_view") & (g.event_ts >= cut - pd.Timedelta(days=30))).sum()),
            share_app=float((g.source == "app").mean()),
            failed_searches_30d=int(sum(1 for t, e, p in zip(g.event_ts, g.event_type, g.properties)
                                        if e == "search" and t >= cut - pd.Timedelta(days=30) and p["results"] == "0")),
            support_contacts_30d=int(((g.event_type == "call_center") & (g.event_ts >= cut - pd.Timedelta(days=30))).sum()),
        )
    return out


def test_independent_pandas_computation_agrees(spark):
    rows = _random_events()
    as_of = date(2026, 8, 15)
    got = {r["customer_id"]: r.asDict() for r in _features(spark, rows, as_of).collect()}
    expected = _pandas_features(rows, as_of)
    assert set(got) == set(expected) and len(expected) >= 8
    for cid, exp in expected.items():
        _check(got[cid], exp)


def test_several_as_of_dates_in_one_pass(spark):
    """compute_features with a list of dates (the propensity snapshots' one pass) gives, per date,
    the rows of the pandas computation and exactly the rows of a call with that date alone."""
    rows = _random_events(seed=5, customers=14)
    dates = [date(2026, 6, 20), date(2026, 7, 20), date(2026, 8, 15), date(2026, 9, 30)]
    events = sessions.sessionize(spark.createDataFrame(rows, DDL), 30)
    together = features.compute_features(events, list(reversed(dates))).collect()
    assert len({(r["customer_id"], r["as_of_date"]) for r in together}) == len(together)
    for d in dates:
        got = {r["customer_id"]: r.asDict() for r in together if r["as_of_date"] == d}
        expected = _pandas_features(rows, d)
        assert set(got) == set(expected) and len(expected) >= 3, d
        for cid, exp in expected.items():
            _check(got[cid], exp)
        alone = {r["customer_id"]: r.asDict() for r in features.compute_features(events, d).collect()}
        assert got == alone, d
    assert {r["as_of_date"] for r in together} == set(dates)
    with pytest.raises(ValueError, match="as_of must be a date"):
        features.compute_features(events, [])


def test_scaling_matches_sklearn_and_reuses_saved_stats(spark):
    from sklearn.preprocessing import MinMaxScaler, StandardScaler
    feats = _features(spark, _random_events(seed=5, customers=15), date(2026, 8, 15)).orderBy("customer_id")
    inputs = ["recency_days", "sessions_30d", "revenue_total", "avg_order_value"]
    scaled, stats = features.build(feats, inputs)
    pdf = scaled.toPandas()  # 15 rows
    for f in inputs:
        x = pdf[[f]].astype(float)
        seen = x.dropna()  # statistics over the customers that have the value
        x = x.fillna(seen.mean())  # nulls are imputed with the mean at scoring time
        z = StandardScaler().fit(seen).transform(x)[:, 0]
        mm = MinMaxScaler().fit(seen).transform(x)[:, 0]
        assert np.allclose(pdf[f"z_{f}"], z, atol=1e-9), f
        assert np.allclose(pdf[f"mm_{f}"], mm, atol=1e-9), f
    assert pdf["avg_order_value"].isna().any()  # the imputation path was exercised
    # scoring new rows with saved stats: a row equal to the mean scores z=0
    saved = stats.collect()
    mean_rev = [r for r in saved if r["feature"] == "revenue_total"][0]["mean"]
    probe = spark.createDataFrame([(mean_rev,)], "revenue_total DOUBLE")
    out = features.apply_scaling(probe, [r for r in saved if r["feature"] == "revenue_total"]).first()
    assert out["z_revenue_total"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="unknown feature"):
        features.scaling_stats(feats, ["no_such_feature"])


@pytest.mark.slow
def test_features_job_backfill_is_idempotent(spark, cfg):
    from seglake.stages import identity
    from seglake.core import tables
    from seglake.core.context import JobContext
    rows = []
    for r in A + B + C + FUTURE:
        key, cust, et, ts, src, dev, rev, scroll, dur, props, sid = r
        rows.append((key, f"u-{cust}", None, None, None, None, et, ts, src, dev, rev, scroll, dur, props, sid, True,
                     datetime(2026, 9, 3)))
    silver = spark.createDataFrame(rows, "event_key STRING, user_id STRING, anonymous_id STRING, device_id STRING, "
                                         "email_hash STRING, phone_hash STRING, event_type STRING, event_ts TIMESTAMP, "
                                         "source STRING, device_type STRING, revenue_usd DOUBLE, scroll_depth DOUBLE, "
                                         "duration_s DOUBLE, properties MAP<STRING,STRING>, session_id STRING, "
                                         "consent BOOLEAN, _ingested_at TIMESTAMP")
    tables.overwrite(silver.withColumn("channel", F.lit(None).cast("string"))
                     .withColumn("product_id", F.lit(None).cast("string")), cfg, "silver.events")
    identity.run(JobContext(spark, cfg, run_id="i1"))
    args = {"start": date(2026, 8, 31), "end": date(2026, 9, 2), "step_days": 1}
    s1 = features.run(JobContext(spark, cfg, run_id="f1", args=args))
    assert s1["customers"] == 3  # D's only event (2026-09-02 08:00) is not before 2026-09-02
    gold = tables.read(spark, cfg, "gold.customer_features")
    counts = {r["as_of_date"]: r["count"] for r in gold.groupBy("as_of_date").count().collect()}
    assert counts == {date(2026, 8, 31): 3, date(2026, 9, 1): 3, date(2026, 9, 2): 3}
    a = gold.filter((F.col("as_of_date") == F.lit(AS_OF))).join(
        tables.read(spark, cfg, "silver.identity_map").filter("identifier = 'u-A'"), "customer_id").first()
    _check(a, EXPECTED_A)
    assert a["z_recency_days"] is not None and "mm_sessions_30d" in gold.columns
    features.run(JobContext(spark, cfg, run_id="f2", args={"start": date(2026, 9, 1), "end": date(2026, 9, 1)}))
    gold2 = tables.read(spark, cfg, "gold.customer_features")
    assert gold2.count() == 9
    assert gold2.drop("_run_id").exceptAll(gold.drop("_run_id")).count() == 0
    scaling = tables.read(spark, cfg, "gold.feature_scaling")
    assert scaling.filter(F.col("as_of_date") == F.lit(AS_OF)).count() == len(FeatureParams.from_config(cfg).model_inputs)
    rm = tables.read(spark, cfg, "gold.retention_matrix").filter(F.col("as_of_date") == F.lit(AS_OF))
    assert rm.filter("period = 0").agg(F.min("active_share")).first()[0] == 1.0
    # one as_of (no disk cache of the events): the summary's cell count is the table's
    s3 = features.run(JobContext(spark, cfg, run_id="f3", as_of=AS_OF))
    assert s3["customers"] == 3 and s3["retention_cells"] == rm.count() > 0


@pytest.mark.slow
def test_end_to_end_features_follow_the_planted_archetypes(spark, pipeline_through):
    from seglake.core import tables
    cfg, gen_dir = pipeline_through("features")
    gold = tables.read(spark, cfg, "gold.customer_features")
    as_of = gold.agg(F.max("as_of_date")).first()[0]
    gold = gold.filter(F.col("as_of_date") == F.lit(as_of))
    gt = gen_dir / "ground_truth"
    uid = (spark.read.parquet(str(gt / "identifiers.parquet")).filter("identifier_type = 'user_id'")
           .select(F.col("identifier"), "person_id"))
    person_of = (tables.read(spark, cfg, "silver.identity_map").filter("identifier_type = 'user_id'")
                 .join(uid, "identifier").select("customer_id", "person_id").distinct())
    persons = spark.read.parquet(str(gt / "persons.parquet")).select("person_id", "archetype")
    by = (gold.join(person_of, "customer_id").join(persons, "person_id").groupBy("archetype")
          .agg(F.count(F.lit(1)).alias("n"), F.avg("revenue_total").alias("rev"),
               F.avg(F.col("is_new_user").cast("int")).alias("new"), F.avg("carts_total").alias("carts"),
               F.avg("purchases_total").alias("purch"), F.avg("sessions_per_week_30d").alias("spw"),
               F.avg("distinct_features_30d").alias("feat")))
    a = {r["archetype"]: r.asDict() for r in by.collect()}  # one row per archetype
    assert len(a) >= 6 and sum(r["n"] for r in a.values()) > 100
    assert pipeline_through.summaries["features"]["customers"] == gold.count()
    if "vip" in a:
        assert a["vip"]["rev"] == max(r["rev"] for r in a.values())
    if "new_user" in a:
        assert a["new_user"]["new"] >= 0.8
        assert max(r["new"] for k, r in a.items() if k != "new_user") < 0.5
    if "casual_browser" in a:
        assert a["casual_browser"]["carts"] < min(a[k]["carts"] for k in ("cart_abandoner", "high_intent_abandoner") if k in a)
    if "power_user" in a:
        assert a["power_user"]["feat"] == max(r["feat"] for r in a.values())
    # every feature row's model inputs were scaled with the saved statistics
    assert gold.filter(F.col("z_recency_days").isNull()).count() == 0
