"""Rule segments: YAML validation, every shipped rule at its boundaries, sequences, history."""
from __future__ import annotations

import json
import shutil
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from pyspark.sql import functions as F

from seglake.stages import segments as S
from seglake.core.config import load_config

REPO = Path(__file__).resolve().parents[1]
AS_OF = date(2026, 11, 1)
MIDNIGHT = datetime(2026, 11, 1)

# gold.customer_features contract columns (CONTRACTS.md) with the types features writes
FEATURE_TYPES = {
    "customer_id": "string", "as_of_date": "date", "first_seen_ts": "timestamp", "last_seen_ts": "timestamp",
    "tenure_days": "int", "recency_days": "int", "recency_purchase_days": "int",
    "sessions_7d": "bigint", "sessions_30d": "bigint", "sessions_90d": "bigint", "sessions_180d": "bigint",
    "purchases_7d": "bigint", "purchases_30d": "bigint", "purchases_90d": "bigint", "purchases_180d": "bigint",
    "revenue_total": "double", "revenue_90d": "double", "revenue_180d": "double", "avg_order_value": "double",
    "pages_per_session": "double", "avg_session_duration_s": "double", "avg_scroll_depth": "double",
    "distinct_features_30d": "bigint", "product_views_30d": "bigint", "carts_30d": "bigint",
    "checkouts_30d": "bigint", "product_views_total": "bigint", "carts_total": "bigint",
    "checkouts_total": "bigint", "purchases_total": "bigint", "cart_to_purchase_rate": "double",
    "view_to_cart_rate": "double", "email_opens_90d": "bigint", "email_clicks_90d": "bigint",
    "email_click_rate": "double", "push_opens_90d": "bigint", "share_web": "double", "share_app": "double",
    "share_email": "double", "share_mobile": "double", "share_desktop": "double", "peak_hour": "int",
    "product_page_time_s_30d": "double", "sessions_per_week_30d": "double", "cohort_week": "date",
    "cohort_month": "date", "is_new_user": "boolean", "is_long_term": "boolean",
    "is_high_frequency": "boolean", "is_inactive": "boolean",
}
# a customer matching no shipped segment (seen 60 days, active yesterday, web + app)
NEUTRAL = {
    "first_seen_ts": "2026-09-02 10:00:00", "last_seen_ts": "2026-10-31 10:00:00", "tenure_days": 60,
    "recency_days": 1, "recency_purchase_days": None, "sessions_30d": 3, "sessions_per_week_30d": 0.7,
    "share_web": 0.5, "share_app": 0.5, "revenue_total": 0.0, "revenue_90d": 0.0,
}


def features_df(spark, rows: list[dict], as_of: date = AS_OF):
    """Features rows: contract columns, unspecified numbers 0, strings/booleans null."""
    ddl = ", ".join(f"{c} {'string' if t in ('timestamp', 'date') else t}" for c, t in FEATURE_TYPES.items())
    full = []
    for row in rows:
        values = {c: (0 if t in ("int", "bigint") else 0.0 if t == "double" else None)
                  for c, t in FEATURE_TYPES.items()}
        values.update(NEUTRAL)
        values["as_of_date"] = as_of.isoformat()
        values.update(row)
        full.append(tuple(values[c] for c in FEATURE_TYPES))
    df = spark.createDataFrame(full, ddl)
    for c, t in FEATURE_TYPES.items():
        if t in ("timestamp", "date"):
            df = df.withColumn(c, F.col(c).cast(t))
    return df


def features_schema(spark):
    return features_df(spark, [{"customer_id": "x"}]).schema


def events_df(spark, rows: list[tuple[str, str, datetime]]):
    """(customer_id, event_type, event_ts) rows; timestamps are UTC."""
    data = [(c, t, ts.strftime("%Y-%m-%d %H:%M:%S.%f")) for c, t, ts in rows]
    return (spark.createDataFrame(data, "customer_id string, event_type string, event_ts string")
            .withColumn("event_ts", F.to_timestamp("event_ts")))


def shipped() -> list[S.Segment]:
    return S.load_segments(REPO / "conf" / "segments.yaml")


def seg(name: str, segments: list[S.Segment] | None = None) -> S.Segment:
    return next(s for s in (segments or shipped()) if s.name == name)


def members_of(df, segment: str) -> set[str]:
    return {r["customer_id"] for r in df.where(F.col("segment") == segment).select("customer_id").collect()}


# --------------------------------------------------------------------------- configuration
ISSUE_SEGMENTS = {
    "cart_abandoners", "high_intent_abandoners", "repeat_buyers", "browsers", "frequent_buyers",
    "infrequent_browsers", "vip", "inactive", "lapsed_purchasers", "new_users", "long_term_users",
    "high_frequency_users", "feature_explorers", "high_interest", "email_responders", "web_only_visitors",
}
CLV_TIERS = {"high_value_at_risk", "high_value_loyal"}   # issue #20: rules over gold.customer_value


def test_shipped_segments_parse_and_validate_against_the_features_contract(spark):
    segments = shipped()
    assert {s.name for s in segments} == ISSUE_SEGMENTS | CLV_TIERS
    assert all(s.description for s in segments)
    from seglake.stages.segments.value import needs_value, rule_schema
    assert {s.name for s in segments if needs_value(s)} == CLV_TIERS
    S.validate_rules(spark, segments, rule_schema(features_schema(spark)))
    # the business starting thresholds of the issue
    assert seg("cart_abandoners").thresholds["abandon_hours"].value == 48.0
    hi = seg("high_intent_abandoners").thresholds
    assert (hi["min_views"].value, hi["view_window_minutes"].value, hi["abandon_hours"].value) == (3, 10.0, 24.0)
    assert seg("repeat_buyers").thresholds["min_purchases_180d"].value == 3
    assert seg("high_frequency_users").thresholds["min_sessions_per_week"].value == 10.0


def test_rendering_uses_typed_literals_only():
    text = """
segments:
  - name: s
    description: d
    rule: cohort_month = ${m} AND revenue_total > ${r} AND purchases_total >= ${n} AND is_new_user = ${b}
    thresholds:
      m: {type: string, value: "2026-10' OR 1=1 --"}
      r: -0.5
      n: 3
      b: true
"""
    s = S.parse_segments(text)[0]
    assert S.render_rule(s) == ("cohort_month = '2026-10\\' OR 1=1 --' AND revenue_total > (-0.5D) "
                                "AND purchases_total >= 3 AND is_new_user = TRUE")


def _problem(text: str, spark=None) -> str:
    with pytest.raises(S.SegmentConfigError) as err:
        segments = S.parse_segments(text, "segments.yaml")
        S.validate_rules(spark, segments, features_schema(spark), "segments.yaml")
    return str(err.value)


GOOD = """segments:
  - name: repeat_buyers
    description: three purchases
    rule: purchases_180d >= ${n}
    thresholds:
      n: {type: int, value: 3}
"""


def test_validation_unknown_column_names_segment_line_and_suggestion(spark):
    msg = _problem(GOOD + """  - name: vip
    description: big spenders
    rule: revenue_totl > ${r}
    thresholds:
      r: {type: float, value: 100}
""", spark)
    assert msg == ("segments.yaml line 9, segment 'vip': unknown column 'revenue_totl' in rule "
                   "(did you mean 'revenue_total'?); nothing was written.")


@pytest.mark.parametrize("rule, expected", [
    ("purchases_180d >= ", "line 4, segment 'repeat_buyers': malformed rule expression"),
    ("purchases_180d + 1", "line 4, segment 'repeat_buyers': the rule must be a true/false condition, but it gives bigint"),
    ("count(*) > 0", "line 4, segment 'repeat_buyers': invalid rule"),
    ("purchases_180d > 1) OR (1 = 1", "line 4, segment 'repeat_buyers': malformed rule expression"),
    ("exists(select 1)", "line 4, segment 'repeat_buyers': subqueries are not allowed"),
    ("no_such_fn(purchases_180d)", "line 4, segment 'repeat_buyers': unknown function"),
    ("purchases_180d > 'abc'", "line 4, segment 'repeat_buyers': invalid rule"),
])
def test_validation_malformed_expressions(spark, rule, expected):
    text = f"""segments:
  - name: repeat_buyers
    description: d
    rule: "{rule}"
"""
    msg = _problem(text, spark)
    assert msg.startswith("segments.yaml " + expected), msg


def test_validation_wrong_threshold_type_duplicate_and_placeholders(spark):
    assert _problem(GOOD.replace("value: 3", "value: '3'"), spark) == (
        "segments.yaml line 6, segment 'repeat_buyers': threshold 'n' is declared int but its value '3' "
        "is string; nothing was written.")
    assert "line 6, segment 'repeat_buyers': threshold 'n' is declared int but its value 2.5" in \
        _problem(GOOD.replace("value: 3", "value: 2.5"), spark)
    dup = _problem(GOOD + GOOD.replace("segments:\n", ""), spark)
    assert dup == ("segments.yaml line 7, segment 'repeat_buyers': duplicate segment name "
                   "(first defined at line 2); nothing was written.")
    undefined = _problem(GOOD.replace("${n}", "${min_n}"), spark)
    assert "line 4, segment 'repeat_buyers': rule uses ${min_n} but no threshold 'min_n' is defined" in undefined
    assert "line 6, segment 'repeat_buyers': threshold 'n' is defined but not used" in undefined
    assert "2 problems" in undefined
    seq = _problem("""segments:
  - name: carts
    description: d
    sequence: cart_abandonment
    thresholds:
      abandon_hours: "48"
      lookback_days: 30
""", spark)
    assert "line 6, segment 'carts': threshold 'abandon_hours' of sequence 'cart_abandonment' must be float" in seq
    fam = _problem(GOOD.replace("    thresholds:", "    family: value\n    thresholds:"), spark)
    assert "segment 'repeat_buyers': segment of family 'value' needs an integer priority" in fam
    quant = _problem(GOOD.replace("{type: int, value: 3}", "{type: quantile, of: customer_id, value: 0.9}"), spark)
    assert "line 6, segment 'repeat_buyers': quantile threshold 'n' needs a numeric column" in quant


def test_validation_failure_writes_nothing(spark, lakehouse, tmp_path):
    from seglake.core import tables
    from seglake.core.context import JobContext

    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    text = (conf / "segments.yaml").read_text()
    (conf / "segments.yaml").write_text(text.replace("purchases_180d >= ${min_purchases_180d}",
                                                     "purchases_180days >= ${min_purchases_180d}"))
    line = text[: text.index("purchases_180d >= ${min_purchases_180d}")].count("\n") + 1
    cfg = load_config("local", conf, overrides={"paths": {"lakehouse": str(lakehouse)}})
    tables.overwrite(features_df(spark, [{"customer_id": "c1", "purchases_180d": 5}]), cfg, S.FEATURES)
    with pytest.raises(S.SegmentConfigError, match=rf"line {line}, segment 'repeat_buyers': unknown column "
                                                   r"'purchases_180days' in rule \(did you mean 'purchases_180d'\?\)"):
        S.run(JobContext(spark, cfg, as_of=AS_OF))
    for table in (S.MEMBERSHIP, S.CHANGES, S.HEALTH, S.OVERLAP):
        assert not tables.exists(spark, cfg, table)


# --------------------------------------------------------------------------- sequence rules
def _carts(spark, rows, as_of=AS_OF, **params):
    p = {"abandon_hours": 48.0, "lookback_days": 30} | params
    out = S.cart_abandonment(events_df(spark, rows), as_of, **p)
    return {r["customer_id"]: r["evidence"] for r in out.collect()}


def test_cart_abandonment_boundaries(spark):
    cart = MIDNIGHT - timedelta(days=5)
    rows = [
        ("p47", "add_to_cart", cart), ("p47", "purchase", cart + timedelta(hours=47)),
        ("p49", "add_to_cart", cart), ("p49", "purchase", cart + timedelta(hours=49)),
        ("p48", "add_to_cart", cart), ("p48", "purchase", cart + timedelta(hours=48)),  # inclusive
        ("same", "add_to_cart", cart), ("same", "purchase", cart),
        ("never", "add_to_cart", cart),
        # observation: the cart must be at least 48 h before as_of
        ("obs47", "add_to_cart", MIDNIGHT - timedelta(hours=47)),
        ("obs49", "add_to_cart", MIDNIGHT - timedelta(hours=49)),
        # purchase after as_of is not visible (point in time): still abandoned
        ("late", "add_to_cart", MIDNIGHT - timedelta(hours=49)), ("late", "purchase", MIDNIGHT + timedelta(hours=1)),
        # the latest observable cart decides: abandoned first cart, later cart bought
        ("bought_later", "add_to_cart", cart - timedelta(days=3)),
        ("bought_later", "add_to_cart", cart), ("bought_later", "purchase", cart + timedelta(minutes=5)),
        ("abandoned_later", "add_to_cart", cart - timedelta(days=3)),
        ("abandoned_later", "purchase", cart - timedelta(days=3) + timedelta(minutes=5)),
        ("abandoned_later", "add_to_cart", cart),
        # lookback: 31 days old is too old
        ("old", "add_to_cart", MIDNIGHT - timedelta(days=31)),
        ("viewer", "product_view", cart),
    ]
    got = _carts(spark, rows)
    assert set(got) == {"p49", "never", "obs49", "late", "abandoned_later"}
    assert got["p49"]["hours_without_purchase"] == 49.0
    assert got["never"]["hours_without_purchase"] == 120.0
    assert got["never"]["next_purchase_ts"] is None
    assert got["obs49"]["cart_ts"] == MIDNIGHT - timedelta(hours=49)
    # the threshold is data: a 50 h window turns the 49 h buyer into a converter
    assert "p49" not in _carts(spark, rows, abandon_hours=50.0)
    assert "old" in _carts(spark, rows, lookback_days=40)


def _intent(spark, rows, **params):
    p = {"min_views": 3, "view_window_minutes": 10.0, "cart_within_minutes": 30.0, "abandon_hours": 24.0,
         "lookback_days": 30} | params
    out = S.high_intent_abandonment(events_df(spark, rows), AS_OF, **p)
    return {r["customer_id"]: r["evidence"] for r in out.collect()}


def _burst(cust: str, start: datetime, span_minutes: float, n: int = 3, cart_after: float = 0.5):
    step = timedelta(minutes=span_minutes / (n - 1))
    views = [(cust, "product_view", start + i * step) for i in range(n)]
    return views + [(cust, "add_to_cart", start + timedelta(minutes=span_minutes + cart_after))]


def test_high_intent_abandonment_boundaries(spark):
    t = MIDNIGHT - timedelta(days=4)
    rows = (_burst("views9", t, 9) + _burst("views11", t, 11) + _burst("views10", t, 10)
            + _burst("two_views", t, 5, n=2)
            + _burst("buy23", t, 9) + [("buy23", "purchase", t + timedelta(minutes=9.5, hours=23))]
            + _burst("buy25", t, 9) + [("buy25", "purchase", t + timedelta(minutes=9.5, hours=25))]
            + _burst("cart_late", t, 9, cart_after=31)
            + _burst("cart_29", t, 9, cart_after=29)
            + _burst("recent", MIDNIGHT - timedelta(hours=23), 9))
    got = _intent(spark, rows)
    assert set(got) == {"views9", "views10", "buy25", "cart_29"}
    assert got["views9"]["views_in_window"] == 3
    assert got["views9"]["burst_ts"] == t + timedelta(minutes=9)
    assert got["buy25"]["hours_without_purchase"] == 25.0
    # thresholds are data: 12-minute windows accept the 11-minute burst, 4 views reject all
    assert "views11" in _intent(spark, rows, view_window_minutes=12.0)
    assert _intent(spark, rows, min_views=4) == {}


# --------------------------------------------------------------------------- feature rules
def _evaluate(spark, rows, segments=None, events=None):
    from seglake.stages.segments.value import needs_value
    # the shipped segments over features (the CLV tiers need gold.customer_value: tested on their own)
    segments = segments or [s for s in shipped() if not needs_value(s)]
    if events is None:
        events = events_df(spark, [])
    return S.evaluate_segments(features_df(spark, rows), segments, AS_OF, events=events)


def _ts(days_before: float) -> str:
    return (MIDNIGHT - timedelta(days=days_before)).strftime("%Y-%m-%d %H:%M:%S")


# (segment, rows that must be in it, rows that must not) at the threshold boundaries
RULE_CASES = [
    ("repeat_buyers", {"purchases_180d": 3, "purchases_total": 3}, {"purchases_180d": 2, "purchases_total": 2}),
    ("browsers", {"product_views_total": 5}, {"product_views_total": 4}),
    ("browsers", {"product_views_total": 9, "last_seen_ts": _ts(29.9)},
     {"product_views_total": 9, "last_seen_ts": _ts(30.1)}),
    ("infrequent_browsers", {"sessions_30d": 8, "recency_purchase_days": 31, "purchases_total": 1},
     {"sessions_30d": 8, "recency_purchase_days": 30, "purchases_total": 1}),
    ("frequent_buyers", {"purchases_30d": 4, "avg_order_value": 100.0, "purchases_180d": 4},
     {"purchases_30d": 3, "avg_order_value": 100.0, "purchases_180d": 3}),
    ("lapsed_purchasers", {"purchases_total": 1, "recency_purchase_days": 91},
     {"purchases_total": 1, "recency_purchase_days": 90}),
    ("new_users", {"first_seen_ts": _ts(6.9), "tenure_days": 6}, {"first_seen_ts": _ts(7.1), "tenure_days": 7}),
    ("long_term_users", {"tenure_days": 180}, {"tenure_days": 179}),
    ("inactive", {"last_seen_ts": _ts(30.1), "recency_days": 30}, {"last_seen_ts": _ts(29.9), "recency_days": 29}),
    ("high_frequency_users", {"sessions_per_week_30d": 10.5}, {"sessions_per_week_30d": 10.0}),
    ("feature_explorers", {"distinct_features_30d": 3}, {"distinct_features_30d": 2}),
    ("high_interest", {"product_page_time_s_30d": 181.0}, {"product_page_time_s_30d": 180.0}),
    ("email_responders", {"email_opens_90d": 2, "email_clicks_90d": 1},
     {"email_opens_90d": 5, "email_clicks_90d": 0}),
    ("web_only_visitors", {"share_web": 0.8, "share_app": 0.0, "share_email": 0.2},
     {"share_web": 0.99, "share_app": 0.01}),
]


def test_every_feature_rule_at_its_boundary(spark):
    rows = [{"customer_id": "neutral"}]
    for k, (name, inside, outside) in enumerate(RULE_CASES):
        rows.append({"customer_id": f"{name}+in{k}", **inside})
        rows.append({"customer_id": f"{name}+out{k}", **outside})
    out = _evaluate(spark, rows).cache()
    got: dict[str, set] = {}
    for r in out.collect():
        got.setdefault(r["segment"], set()).add(r["customer_id"])
    for k, (name, _, _) in enumerate(RULE_CASES):
        assert f"{name}+in{k}" in got.get(name, set()), name
        assert f"{name}+out{k}" not in got.get(name, set()), name
    # the neutral customer is in no segment; each boundary row only where its case says
    assert "neutral" not in {c for cs in got.values() for c in cs}
    reason = json.loads(out.where((F.col("segment") == "repeat_buyers")
                                  & (F.col("customer_id") == "repeat_buyers+in0")).first()["reason"])
    assert reason == {"purchases_180d": 3}
    assert out.select("as_of_date").distinct().collect()[0][0] == AS_OF


def test_vip_quantile_cutoff_matches_numpy_and_family_precedence(spark):
    rng = np.random.default_rng(3)
    revenue = np.round(rng.gamma(2.0, 150.0, size=60), 2)
    rows = [{"customer_id": f"c{i}", "revenue_total": float(v), "purchases_180d": 3, "purchases_total": 3}
            for i, v in enumerate(revenue)]
    out = _evaluate(spark, rows).cache()
    cutoff = np.quantile(revenue, 0.95, method="inverted_cdf")  # the value percentile_approx returns
    expected_vip = {f"c{i}" for i, v in enumerate(revenue) if v >= cutoff}
    assert len(expected_vip) == 60 - 57 + 1  # values at or above the 57th smallest
    assert members_of(out, "vip") == expected_vip
    # family 'value': vip (priority 1) wins over repeat_buyers (priority 3)
    assert members_of(out, "repeat_buyers") == {f"c{i}" for i in range(60)} - expected_vip
    reason = json.loads(out.where(F.col("segment") == "vip").first()["reason"])
    assert reason["revenue_cutoff"] == pytest.approx(cutoff)


def test_sequence_segments_through_evaluate_and_abandonment_family(spark):
    t = MIDNIGHT - timedelta(days=3)
    events = events_df(spark, _burst("intent", t, 9) + [("plain", "add_to_cart", t)]
                       + [("stranger", "add_to_cart", t)])
    out = _evaluate(spark, [{"customer_id": "intent"}, {"customer_id": "plain"}, {"customer_id": "other"}],
                    events=events).cache()
    assert members_of(out, "high_intent_abandoners") == {"intent"}
    # 'intent' also abandoned a cart, but the abandonment family keeps the higher priority only;
    # 'stranger' has no features row at this as_of and is not a member
    assert members_of(out, "cart_abandoners") == {"plain"}
    reason = json.loads(out.where(F.col("segment") == "cart_abandoners").first()["reason"])
    assert reason["hours_without_purchase"] == 72.0


# --------------------------------------------------------------------------- history, health, overlap
def test_changes_overlap_and_health_against_python(spark):
    cur = spark.createDataFrame([("a", "s1", "{}"), ("b", "s1", "{}"), ("c", "s1", "{}"), ("b", "s2", "{}"),
                                 ("c", "s2", "{}"), ("d", "s3", "{}")], "customer_id string, segment string, reason string")
    prev = spark.createDataFrame([("a", "s1"), ("e", "s1"), ("b", "s2"), ("d", "s2")], "customer_id string, segment string")
    changes = S.segment_changes(cur, prev, AS_OF, AS_OF - timedelta(days=7))
    got = {(r["customer_id"], r["segment"], r["change"]) for r in changes.collect()}
    assert got == {("b", "s1", "entered"), ("c", "s1", "entered"), ("e", "s1", "exited"),
                   ("c", "s2", "entered"), ("d", "s2", "exited"), ("d", "s3", "entered")}
    first = S.segment_changes(cur, None, AS_OF, None)
    assert first.where(F.col("change") == "entered").count() == 6

    overlap = S.segment_overlap(cur, max_jaccard=0.6)
    ov = {(r["segment_a"], r["segment_b"]): (r["intersection"], r["jaccard"], r["high_overlap"])
          for r in overlap.collect()}
    sets = {"s1": {"a", "b", "c"}, "s2": {"b", "c"}, "s3": {"d"}}
    j = len(sets["s1"] & sets["s2"]) / len(sets["s1"] | sets["s2"])
    assert ov == {("s1", "s2"): (2, pytest.approx(j), True)}

    feats = features_df(spark, [
        {"customer_id": "a", "revenue_90d": 100.0, "purchases_30d": 1},
        {"customer_id": "b", "revenue_90d": 50.0, "purchases_30d": 0},
        {"customer_id": "c", "revenue_90d": 0.0, "purchases_30d": 2},
        {"customer_id": "d", "revenue_90d": 50.0, "purchases_30d": 0},
        {"customer_id": "z", "revenue_90d": 0.0, "purchases_30d": 0}])
    defs = S.parse_segments("""segments:
  - {name: s1, description: d, rule: "true"}
  - {name: s2, description: d, rule: "true"}
  - {name: s3, description: d, rule: "true"}
  - {name: s4, description: d, rule: "false"}
""")
    prev_sizes = prev.groupBy("segment").agg(F.count(F.lit(1)).alias("previous_size"))
    health = S.segment_health(cur, feats, defs, prev_sizes, changes, overlap, as_of=AS_OF,
                              alert_size_change=0.3, min_size=2, revenue_column="revenue_90d",
                              conversion_column="purchases_30d")
    h = {r["segment"]: r.asDict() for r in health.collect()}
    assert h["s1"]["size"] == 3 and h["s1"]["share"] == pytest.approx(3 / 5)
    assert h["s1"]["revenue_share"] == pytest.approx(150 / 200)
    assert h["s1"]["conversion_rate"] == pytest.approx(2 / 3)
    assert (h["s1"]["previous_size"], h["s1"]["size_change"], h["s1"]["alert"]) == (2, pytest.approx(0.5), True)
    assert (h["s2"]["size_change"], h["s2"]["alert"], h["s2"]["entered"], h["s2"]["exited"]) == (0.0, False, 1, 1)
    assert (h["s3"]["previous_size"], h["s3"]["alert"], h["s3"]["too_small"]) == (0, True, True)
    assert (h["s4"]["size"], h["s4"]["too_small"], h["s4"]["conversion_rate"]) == (0, True, None)
    assert h["s1"]["max_overlap_with"] == "s2" and h["s3"]["max_jaccard"] is None
    assert "+50%" in h["s1"]["alert_reason"]


def _features_only_conf(tmp_path: Path, edit=None) -> Path:
    """A copy of the repo's conf dir; sequence segments switched off (no silver tables here)."""
    conf = tmp_path / "conf"
    if not conf.exists():
        shutil.copytree(REPO / "conf", conf)
    data = yaml.safe_load((REPO / "conf" / "segments.yaml").read_text())
    for s in data["segments"]:
        if "sequence" in s:
            s["enabled"] = False
    if edit:
        edit(data)
    (conf / "segments.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return conf


@pytest.mark.slow
def test_run_history_changes_health_and_threshold_edit(spark, lakehouse, tmp_path):
    """Two as-of dates, a rerun, then a YAML threshold edit that changes membership."""
    from seglake.core import tables
    from seglake.core.context import JobContext

    d1, d2 = date(2026, 10, 25), AS_OF
    rows1 = [{"customer_id": f"r{i}", "purchases_180d": 3, "purchases_total": 3} for i in range(10)] \
        + [{"customer_id": f"t{i}", "purchases_180d": 2, "purchases_total": 2} for i in range(5)]
    rows2 = [{"customer_id": f"r{i}", "purchases_180d": 3, "purchases_total": 3} for i in range(4)] \
        + [{"customer_id": f"t{i}", "purchases_180d": 2, "purchases_total": 2} for i in range(5)]
    feats = features_df(spark, rows1, d1).unionByName(features_df(spark, rows2, d2))
    conf = _features_only_conf(tmp_path)
    cfg = load_config("local", conf, overrides={"paths": {"lakehouse": str(lakehouse)},
                                               "segments": {"min_size": 5}})
    tables.overwrite(feats, cfg, S.FEATURES, partition_by=["as_of_date"])

    s1 = S.run(JobContext(spark, cfg, as_of=d1))
    assert s1["sizes"]["repeat_buyers"] == 10 and s1["entered"] == s1["memberships"]
    s2 = S.run(JobContext(spark, cfg, as_of=d2))
    assert s2["previous_as_of"] == d1.isoformat()
    assert s2["sizes"]["repeat_buyers"] == 4 and "repeat_buyers" in s2["alerts"]
    assert "repeat_buyers" in s2["too_small"]
    changes = tables.read(spark, cfg, S.CHANGES).where(F.col("as_of_date") == d2)
    exited = {r["customer_id"] for r in changes.where((F.col("segment") == "repeat_buyers")
                                                       & (F.col("change") == "exited")).collect()}
    assert exited == {f"r{i}" for i in range(4, 10)}
    health = tables.read(spark, cfg, S.HEALTH).where((F.col("as_of_date") == d2)
                                                     & (F.col("segment") == "repeat_buyers")).first()
    assert (health["size"], health["previous_size"], health["size_change"], health["alert"]) == \
        (4, 10, pytest.approx(-0.6), True)

    # rerun = same tables (replaceWhere on the as_of slice)
    before = tables.read(spark, cfg, S.MEMBERSHIP).drop("run_id").collect()
    S.run(JobContext(spark, cfg, as_of=d2))
    assert sorted(map(tuple, tables.read(spark, cfg, S.MEMBERSHIP).drop("run_id").collect())) == \
        sorted(map(tuple, before))
    assert tables.read(spark, cfg, S.HEALTH).where(F.col("as_of_date") == d2).count() == s2["segments"]

    # edit the threshold in the YAML only: 2 purchases now make a repeat buyer
    def two(data):
        next(s for s in data["segments"] if s["name"] == "repeat_buyers")["thresholds"]["min_purchases_180d"]["value"] = 2

    edited = load_config("local", _features_only_conf(tmp_path, two),
                         overrides={"paths": {"lakehouse": str(lakehouse)}})
    s3 = S.run(JobContext(spark, edited, as_of=d2))
    assert s3["sizes"]["repeat_buyers"] == 9
    members = tables.read(spark, cfg, S.MEMBERSHIP).where((F.col("as_of_date") == d2)
                                                          & (F.col("segment") == "repeat_buyers"))
    assert {r["customer_id"] for r in members.collect()} == {f"r{i}" for i in range(4)} | {f"t{i}" for i in range(5)}
    assert tables.read(spark, cfg, S.MEMBERSHIP).where(F.col("as_of_date") == d1).count() == s1["memberships"]


# --------------------------------------------------------------------------- generated data
#: segment -> the planted archetypes it stands for (ground truth of the generator); "churned" is a
#: churner whose last planted event is more than 30 days before the as-of (gone for the whole window
#: of the inactive rule; a churner still in its decline is not inactive yet)
ARCHETYPE_OF = {
    "cart_abandoners": {"cart_abandoner"}, "browsers": {"casual_browser"},
    "repeat_buyers": {"repeat_buyer"}, "vip": {"vip"}, "inactive": {"churned"},
    "lapsed_purchasers": {"churned"}, "new_users": {"new_user"}, "email_responders": {"email_responder"},
    "high_frequency_users": {"power_user"}, "feature_explorers": {"power_user"},
    "high_intent_abandoners": {"high_intent_abandoner"},
}


# (precision, recall) floors on the seed-7 test dataset; observed values are in the README. inactive:
# since churn is planted as a decline (5 Dec 2026) the sparsest customers of other archetypes are
# sometimes quiet for 30 days by chance (5 of 24 members here), as in real data
PR_FLOORS = {
    "new_users": (0.95, 0.95), "email_responders": (0.95, 0.90), "inactive": (0.65, 0.95),
    "feature_explorers": (0.90, 0.75), "browsers": (0.80, 0.60), "vip": (0.30, 0.90),
    "repeat_buyers": (0.30, 0.60), "high_intent_abandoners": (0.35, 0.50), "cart_abandoners": (0.20, 0.45),
}


def segment_scores(members, person_of, persons) -> dict[str, dict]:
    """Precision / recall of each mapped segment against the planted archetypes (pandas).

    Args:
        members: pandas customer_id, segment.
        person_of: pandas customer_id, person_id (customers with a features row).
        persons: pandas person_id, archetype.
    """
    arch = person_of.merge(persons, on="person_id")
    out = {}
    for segment, archetypes in ARCHETYPE_OF.items():
        got = set(members.loc[members["segment"] == segment, "customer_id"])
        truth = set(arch.loc[arch["archetype"].isin(archetypes), "customer_id"])
        hit = len(got & truth)
        out[segment] = {"size": len(got), "truth": len(truth), "hit": hit,
                        "precision": hit / len(got) if got else None,
                        "recall": hit / len(truth) if truth else None}
    return out


@pytest.mark.slow
def test_generated_data_precision_recall_against_planted_archetypes(spark, pipeline_through):
    from seglake.core import pii, tables

    cfg, gen_dir = pipeline_through("segments")
    summary = pipeline_through.summaries["segments"]
    as_of = date.fromisoformat(summary["as_of"])
    members = tables.read(spark, cfg, S.MEMBERSHIP).where(F.col("as_of_date") == F.lit(as_of))
    assert members.count() == summary["memberships"]
    # every membership row carries a JSON reason with the deciding values
    sample = members.where(F.col("segment") == "repeat_buyers").first()
    assert sample is None or json.loads(sample["reason"])["purchases_180d"] >= 3
    # customer -> planted person: majority of the customer's identifiers (hashed like silver)
    gt = gen_dir / "ground_truth"
    salt = pii.salt(cfg)
    hashed = F.col("identifier_type").isin("device_id", "email", "phone")
    ids = (spark.read.parquet(str(gt / "identifiers.parquet")).where(F.col("person_id").isNotNull())
           .withColumn("identifier", F.when(hashed, pii.hash_identifier(F.col("identifier"), salt))
                       .otherwise(F.col("identifier")))
           .withColumn("identifier_type", F.when(F.col("identifier_type") == "email", F.lit("email_hash"))
                       .when(F.col("identifier_type") == "phone", F.lit("phone_hash"))
                       .otherwise(F.col("identifier_type"))))
    idmap = tables.read(spark, cfg, "silver.identity_map")
    if idmap.where(F.col("identifier_type") == "email_hash").limit(1).count() == 0:
        ids = ids.withColumn("identifier_type", F.regexp_replace("identifier_type", "_hash$", ""))
    votes = (idmap.join(ids, ["identifier_type", "identifier"]).groupBy("customer_id", "person_id")
             .agg(F.count(F.lit(1)).alias("n")))
    customers = (tables.read(spark, cfg, S.FEATURES).where(F.col("as_of_date") == F.lit(as_of))
                 .select("customer_id"))
    # small: one row per customer / person of the 400-person test dataset
    person_of = (votes.join(customers, "customer_id")
                 .groupBy("customer_id").agg(F.max_by("person_id", "n").alias("person_id")).toPandas())
    gone = (F.col("archetype") == "churner") & (
        F.col("last_seen") < F.lit(datetime.combine(as_of - timedelta(days=30), datetime.min.time())))
    persons = spark.read.parquet(str(gt / "persons.parquet")).select(
        "person_id", F.when(gone, F.lit("churned")).otherwise(F.col("archetype")).alias("archetype")).toPandas()
    assert len(person_of) >= 0.9 * customers.count()
    scores = segment_scores(members.select("customer_id", "segment").toPandas(), person_of, persons)
    print(f"\nsegments vs planted archetypes (as_of {as_of}, {len(person_of)} customers):")
    print(f"{'segment':<24}{'archetype':<24}{'size':>6}{'truth':>7}{'precision':>11}{'recall':>8}")
    for segment, s in scores.items():
        fmt = lambda v: "   -" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"{segment:<24}{'/'.join(sorted(ARCHETYPE_OF[segment])):<24}{s['size']:>6}{s['truth']:>7}"
              f"{fmt(s['precision']):>11}{fmt(s['recall']):>8}")
    pipeline_through.summaries["segments_scores"] = scores
    # floors a little under what this dataset gives (README), so a regression in a rule, the
    # features or the generator's planted behaviour fails here
    for segment, (p_min, r_min) in PR_FLOORS.items():
        s = scores[segment]
        assert s["size"] > 0, f"{segment} is empty"
        assert s["precision"] >= p_min and s["recall"] >= r_min, f"{segment}: {s}"
    # every non-empty mapped segment is at least twice as precise as picking customers at random
    n_customers = len(person_of)
    for segment, s in scores.items():
        if s["size"] and s["truth"]:
            assert s["precision"] >= 2 * s["truth"] / n_customers, f"{segment} no better than chance: {s}"
    health = tables.read(spark, cfg, S.HEALTH).where(F.col("as_of_date") == F.lit(as_of))
    assert health.count() == summary["segments"]
    assert {r["segment"]: r["size"] for r in health.collect()} == summary["sizes"]


def test_clv_tiers_use_gold_customer_value_and_are_skipped_without_it(spark, lakehouse):
    """high_value_at_risk / high_value_loyal against numpy on the same values: the 0.8 quantile
    of clv over the customers who have a value (percentile_disc: the smallest value whose
    cumulative share reaches 0.8), p_alive below 0.5 / at least 0.8; no value row: in neither."""
    from seglake.core import tables
    from seglake.core.contracts import CUSTOMER_VALUE
    from seglake.stages.segments.value import with_value

    rng = np.random.default_rng(3)
    n = 60
    clv = np.round(rng.gamma(0.8, 100.0, n), 2)
    p_alive = np.round(rng.uniform(0, 1, n), 3)
    ids = [f"v{i:02d}" for i in range(n)]
    feats = features_df(spark, [{"customer_id": c} for c in ids] + [{"customer_id": "never-bought"}])
    cfg = load_config("local", REPO / "conf", overrides={"paths": {"lakehouse": str(lakehouse)}})
    tiers = [s for s in shipped() if s.name in CLV_TIERS]

    # no gold.customer_value yet: both tiers skipped, named
    _, kept, skipped = with_value(spark, cfg, feats, shipped(), AS_OF)
    assert set(skipped) == CLV_TIERS and not CLV_TIERS & {s.name for s in kept}

    rows = [(c, AS_OF, float(v), float(p)) for c, v, p in zip(ids, clv, p_alive)]
    rows.append(("other-day", AS_OF - timedelta(days=1), 1e9, 0.0))          # another as-of: ignored
    tables.overwrite(spark.createDataFrame(rows, "customer_id string, as_of_date date, clv double, p_alive double"),
                     cfg, CUSTOMER_VALUE, partition_by=["as_of_date"])
    joined, kept, skipped = with_value(spark, cfg, feats, tiers, AS_OF)
    assert skipped == [] and {s.name for s in kept} == CLV_TIERS
    members = S.evaluate_segments(joined, kept, AS_OF, None, S.resolve_quantiles(joined, kept))
    ordered = np.sort(clv)
    cutoff = ordered[int(np.ceil(0.8 * n)) - 1]
    at_risk = {c for c, v, p in zip(ids, clv, p_alive) if v >= cutoff and p < 0.5}
    loyal = {c for c, v, p in zip(ids, clv, p_alive) if v >= cutoff and p >= 0.8}
    assert at_risk and loyal
    assert members_of(members, "high_value_at_risk") == at_risk
    assert members_of(members, "high_value_loyal") == loyal
