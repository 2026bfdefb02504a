"""Journeys: transition counting vs a plain-Python reference, absorbing-chain algebra vs an
independent numpy computation, removal effects vs a hand-computed example, funnel/paths,
and (slow) recovery of the generator's planted chains per archetype."""
from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from seglake.stages import journeys as J

REPO = Path(__file__).resolve().parents[1]
EVENTS_DDL = ("customer_id string, session_key string, event_ts timestamp, session_seq int, event_seq int, "
              "event_type string, channel string")
T0 = datetime(2026, 9, 1, 12, 0, 0)
#: archetypes whose sessions the generator re-draws until a planted fact holds (>= 1 cart,
#: >= 3 / >= 5 purchases, an email purchase, a high-intent session): their observed
#: transitions are conditioned on the outcome, so the raw chain is not what the data follow.
_BIASED_ARCHETYPES = {"cart_abandoner", "high_intent_abandoner", "repeat_buyer", "vip", "email_responder"}
STATE_OF = {"page_view": "browse", "app_open": "browse", "search": "search", "product_view": "product_view",
            "add_to_cart": "cart", "checkout_start": "checkout", "purchase": "conversion"}


@pytest.fixture(scope="module")
def spec():
    return J.load_states(REPO / "conf" / "states.yaml")


def _events(spark, sessions):
    """sessions: list of (customer, session_key, [event types], channel, minute offset), each
    customer's sessions in time order (session_seq numbers them as sessionize would)."""
    rows, seen = [], Counter()
    for customer, key, types, channel, t0 in sessions:
        seen[customer] += 1
        for i, et in enumerate(types):
            rows.append((customer, key, T0 + timedelta(minutes=t0 + i), seen[customer], i + 1, et,
                         channel if i == 0 else None))
    return spark.createDataFrame(rows, EVENTS_DDL)


def _random_sessions(seed=3, n=60):
    r = random.Random(seed)
    types = list(STATE_OF) + ["email_open", "feature_use"]
    out = []
    for s in range(n):
        customer = f"c{s % 17}"
        length = r.randint(1, 9)
        out.append((customer, f"{customer}-s{s}", [r.choice(types) for _ in range(length)],
                    r.choice(["web", "email", None]), s * 100))
    return out


def _reference_counts(sessions, max_order, spec, collapse=False):
    """Plain-Python transition counts: {(order, channel, from, to): n} (channel 'all' too)."""
    out = Counter()
    for _, _, types, channel, _ in sessions:
        states = [STATE_OF[t] for t in types if t in STATE_OF]
        if collapse:
            states = [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]
        journeys, cur = [], []
        for s in states:
            cur.append(s)
            if s == "conversion":
                journeys.append(cur)
                cur = []
        if cur:
            journeys.append(cur)
        for j, journey in enumerate(journeys):
            ch = channel or "unknown"  # the session's channel, for every journey of the session
            seq = ["start"] + journey + ([] if journey[-1] == "conversion" else ["exit"])
            for pos in range(1, len(seq)):
                for k in range(1, max_order + 1):
                    frm = ">".join(seq[max(0, pos - k):pos])
                    out[(k, ch, frm, seq[pos])] += 1
                    out[(k, "all", frm, seq[pos])] += 1
    return out


def _matrix(spark, spec, sessions, max_order=3, membership=None):
    events = J.assign_states(_events(spark, sessions), spec, keep_unmapped=True)
    journeys = J.build_journeys(events, spec)
    counts = J.transition_counts(J.journey_transitions(journeys, spec, max_order, membership))
    return J.transition_matrix(counts)


# --------------------------------------------------------------------------- spec


def test_load_states_reads_the_project_file(spec):
    assert spec.event_states["page_view"] == "browse" and spec.event_states["purchase"] == "conversion"
    assert spec.transient == ["start", "browse", "search", "product_view", "cart", "checkout"]
    assert spec.absorbing == ["conversion", "exit"]
    assert spec.scope == "session" and spec.collapse_repeats is False


def test_bad_states_spec_is_a_clear_error(tmp_path):
    bad = tmp_path / "states.yaml"
    bad.write_text("states: {page_view: browse}\n")
    with pytest.raises(ValueError, match="conversion state"):
        J.load_states(bad)
    bad.write_text("states: {page_view: browse, purchase: conversion}\noptions: {scope: week}\n")
    with pytest.raises(ValueError, match="options.scope"):
        J.load_states(bad)
    with pytest.raises(ValueError, match="not found"):
        J.load_states(tmp_path / "missing.yaml")


# --------------------------------------------------------------------------- transitions


def test_transition_counts_match_python_reference(spark, spec):
    sessions = _random_sessions()
    got = {(r["order"], r["channel"], r["from_state"], r["to_state"]): r["count"]
           for r in _matrix(spark, spec, sessions).where(F.col("segment") == "all").collect()}
    want = _reference_counts(sessions, 3, spec)
    assert len(want) > 100
    assert got == dict(want)


def test_every_row_of_probabilities_sums_to_one(spark, spec):
    members = spark.createDataFrame([(f"c{i}", "even" if i % 2 == 0 else "odd") for i in range(17)]
                                    + [("c1", "vip")], "customer_id string, segment string")
    m = _matrix(spark, spec, _random_sessions(seed=5), membership=members)
    sums = (m.groupBy("order", "segment", "channel", "from_state")
            .agg(F.sum("probability").alias("p"), F.min("probability").alias("lo")).collect())
    assert {r["segment"] for r in sums} == {"all", "even", "odd", "vip"}
    assert {r["order"] for r in sums} == {1, 2, 3}
    assert all(abs(r["p"] - 1.0) < 1e-12 and r["lo"] > 0 for r in sums)
    # a segment's counts are its members' counts: even + odd = all (over channels)
    seg = {(r["segment"], r["order"], r["from_state"], r["to_state"]): r["count"]
           for r in m.where(F.col("channel") == "all").collect()}
    for (s, k, f, t), c in seg.items():
        if s == "all":
            assert c == seg.get(("even", k, f, t), 0) + seg.get(("odd", k, f, t), 0)


def test_journeys_split_after_conversion_and_end_in_exit(spark, spec):
    sessions = [("c1", "s1", ["page_view", "add_to_cart", "checkout_start", "purchase", "page_view"], "web", 0)]
    j = J.build_journeys(J.assign_states(_events(spark, sessions), spec), spec)
    rows = j.orderBy("event_ts").select("journey_key", "journey_pos", "is_last", "journey_channel").collect()
    assert [r["journey_pos"] for r in rows] == [1, 2, 3, 4, 1]
    assert len({r["journey_key"] for r in rows}) == 2
    assert [r["is_last"] for r in rows] == [False, False, False, True, True]
    assert [r["journey_channel"] for r in rows] == ["web"] * 5
    t = J.journey_transitions(j, spec, 1).select("from_state", "to_state").collect()
    assert sorted((r[0], r[1]) for r in t) == sorted([
        ("start", "browse"), ("browse", "cart"), ("cart", "checkout"), ("checkout", "conversion"),
        ("start", "browse"), ("browse", "exit")])


def test_collapse_repeats_and_customer_scope(spark, spec):
    sessions = [("c1", "s1", ["page_view", "page_view", "search", "search", "page_view"], "web", 0),
                ("c1", "s2", ["product_view"], "email", 100)]
    collapsed = J.StateSpec(spec.event_states, collapse_repeats=True)
    got = Counter((r["from_state"], r["to_state"]) for r in
                  _matrix(spark, collapsed, sessions, 1).where("channel = 'all'").collect()
                  for _ in range(r["count"]))
    want = _reference_counts(sessions, 1, spec, collapse=True)
    assert got == Counter({(f, t): n for (k, ch, f, t), n in want.items() if ch == "all"})
    assert got[("browse", "browse")] == 0
    per_customer = J.StateSpec(spec.event_states, scope="customer")
    rows = {(r["from_state"], r["to_state"]): r["count"] for r in
            _matrix(spark, per_customer, sessions, 1).where("channel = 'all'").collect()}
    # one journey over both sessions: start>browse>browse>search>search>browse>product_view>exit
    assert rows[("start", "browse")] == 1 and rows[("browse", "product_view")] == 1
    assert rows[("product_view", "exit")] == 1 and sum(rows.values()) == 7


def test_bad_input_is_a_clear_error(spark, spec):
    df = spark.createDataFrame([("c1", "page_view")], "customer_id string, event_type string")
    with pytest.raises(ValueError, match="build_journeys is missing required column"):
        J.build_journeys(J.assign_states(df, spec), spec)
    with pytest.raises(ValueError, match="max_order"):
        J.journey_transitions(df, spec, 9)


# --------------------------------------------------------------------------- absorbing chain


def _limit_absorption(P: np.ndarray, steps: int = 4000) -> np.ndarray:
    """Independent route: absorption probabilities as the limit of P^n (absorbing rows = identity)."""
    return np.linalg.matrix_power(P, steps)


def test_absorption_agrees_with_independent_numpy_solve(spark, spec):
    sessions = _random_sessions(seed=11, n=120)
    first = _matrix(spark, spec, sessions, 1).where("segment = 'all' and channel = 'all'").collect()
    metrics = {(m["metric"], m["subject"]): m["value"] for m in J.matrix_metrics(first, spec)
               if m["segment"] == "all" and m["channel"] == "all"}
    # full transition matrix from the plain-Python counts, absorbing rows = identity
    states = spec.states
    idx = {s: i for i, s in enumerate(states)}
    P = np.zeros((len(states), len(states)))
    for (k, ch, f, t), n in _reference_counts(sessions, 1, spec).items():
        if ch == "all":
            P[idx[f], idx[t]] += n
    for s in spec.absorbing:
        P[idx[s], idx[s]] = 1.0
    P = P / P.sum(axis=1, keepdims=True)
    L = _limit_absorption(P)
    for s in spec.transient:
        assert metrics[("conversion_probability", s)] == pytest.approx(L[idx[s], idx["conversion"]], abs=1e-9)
    # expected steps: solve t = 1 + P_TT t directly with lstsq
    T = [idx[s] for s in spec.transient]
    A = np.eye(len(T)) - P[np.ix_(T, T)]
    t = np.linalg.lstsq(A, np.ones(len(T)), rcond=None)[0]
    for i, s in enumerate(spec.transient):
        assert metrics[("expected_steps", s)] == pytest.approx(t[i], rel=1e-9)
    # drop-off masses decompose P(exit | start)
    drops = [v for (m, _), v in metrics.items() if m == "dropoff_mass"]
    assert sum(drops) == pytest.approx(L[idx["start"], idx["exit"]], abs=1e-9)


def test_removal_effects_hand_computed_example():
    # start->A .5, start->B .5; A->conv .5, A->exit .5; B->A .5, B->exit .5
    # P(conv) = .5*.5 + .5*.5*.5 = .375; without A: 0 -> RE 1; without B: .25 -> RE 1/3
    rows = [("start", "A", .5), ("start", "B", .5), ("A", "conversion", .5), ("A", "exit", .5),
            ("B", "A", .5), ("B", "exit", .5)]
    chain = J.Chain.from_rows(rows, ["start", "A", "B"], ["conversion", "exit"])
    assert chain.p_absorb("start", "conversion") == pytest.approx(0.375)
    assert chain.removal_effects("start", "conversion", "exit") == pytest.approx({"A": 1.0, "B": 1 / 3})


def test_channel_attribution_from_touchpoints_hand_example(spark, spec):
    # paths (channel touchpoints, converted on the last one):
    # A conv x2, A exit x2, B exit x2, B A conv x1, B A exit x1 -> the chain of the example above
    # (one customer holds two paths: the split after a conversion is tested too)
    paths = [["A*"], ["A*"], ["A"], ["A"], ["B"], ["B"], ["B", "A*"], ["B", "A"]]
    rows = []
    customers = ["k1", "k2", "k3", "k4", "k5", "k6", "k1", "k8"]  # k1: 'A*' then later 'B','A*'
    for p, (customer, path) in enumerate(zip(customers, paths)):
        for i, touch in enumerate(path):
            rows.append((customer, f"{customer}-{p}-{i}", T0 + timedelta(hours=10 * p + i),
                         touch.rstrip("*").lower(), touch.endswith("*")))
    tp = spark.createDataFrame(rows, "customer_id string, session_key string, touch_ts timestamp, "
                                     "channel string, converted boolean")
    counts = {(r["from_state"], r["to_state"]): r["count"]
              for r in J.channel_path_transitions(tp, spec).collect()}
    assert counts == {("start", "a"): 4, ("start", "b"): 4, ("a", "conversion"): 3, ("a", "exit"): 3,
                      ("b", "exit"): 2, ("b", "a"): 2}
    got = {(m["metric"], m["subject"]): m["value"] for m in J.channel_attribution(counts_rows(counts), spec)}
    assert got[("conversion_probability", "start")] == pytest.approx(0.375)
    assert got[("removal_effect", "a")] == pytest.approx(1.0)
    assert got[("removal_effect", "b")] == pytest.approx(1 / 3)
    assert got[("attributed_share", "a")] == pytest.approx(0.75)
    assert got[("attributed_conversions", "a")] == pytest.approx(2.25)
    assert got[("attributed_conversions", "b")] == pytest.approx(0.75)


def counts_rows(counts):
    return [(f, t, c) for (f, t), c in counts.items()]


def test_channel_touchpoints_use_entry_channel_and_conversion(spark, spec):
    rows = [("c1", "s1", T0, 1, 1, "email_open", None),
            ("c1", "s1", T0 + timedelta(seconds=5), 1, 2, "page_view", "Email"),
            ("c1", "s1", T0 + timedelta(seconds=9), 1, 3, "purchase", "direct"),
            ("c1", "s2", T0 + timedelta(hours=3), 2, 1, "page_view", None)]
    ev = J.assign_states(spark.createDataFrame(rows, EVENTS_DDL), spec, keep_unmapped=True)
    tp = {r["session_key"]: (r["channel"], r["converted"]) for r in J.channel_touchpoints(ev, spec).collect()}
    assert tp == {"s1": ("email", True), "s2": ("unknown", False)}


# --------------------------------------------------------------------------- paths + funnel


def test_paths_and_funnel(spark, spec):
    sessions = [("c1", "s1", ["page_view", "product_view", "add_to_cart", "checkout_start", "purchase"], "web", 0),
                ("c2", "s2", ["product_view", "add_to_cart"], "web", 0),
                ("c3", "s3", ["product_view", "add_to_cart"], "web", 0),
                ("c4", "s4", ["add_to_cart", "product_view"], "web", 0),
                ("c5", "s5", ["page_view"] * 14, "web", 0)]
    j = J.build_journeys(J.assign_states(_events(spark, sessions), spec), spec)
    s = J.journey_summaries(j, spec, max_states=10)
    paths = {r["path"]: (r["journeys"], r["rank"], r["share"]) for r in J.top_paths(s, 3).collect()}
    # ties (1 journey each) are ranked by path text
    assert paths == {"start>product_view>cart>exit": (2, 1, 0.4),
                     "start>browse>" + ">".join(["browse"] * 9) + ">...>exit": (1, 2, 0.2),
                     "start>browse>product_view>cart>checkout>conversion": (1, 3, 0.2)}
    long = s.where("journey_key like 'c5%'").first()
    assert long["path"] == "start>" + ">".join(["browse"] * 10) + ">...>exit" and long["n_states"] == 14
    steps = {r["funnel_step"]: r["journeys"] for r in J.funnel_counts(s).collect()}
    # ordered funnel product_view > cart > checkout > conversion
    assert steps == {4: 1, 2: 2, 1: 1, 0: 1}
    f = {(m["metric"], m["subject"]): m["value"] for m in J.funnel_metrics(steps, spec)}
    assert f[("funnel_journeys", "start")] == 5 and f[("funnel_journeys", "product_view")] == 4
    assert f[("funnel_journeys", "cart")] == 3 and f[("funnel_step_rate", "cart")] == pytest.approx(0.75)
    assert f[("funnel_dropoff", "checkout")] == pytest.approx(2 / 3)
    assert f[("funnel_journeys", "conversion")] == 1


def test_kstep_paths_from_the_matrix(spark, spec):
    sessions = [("c1", "s1", ["page_view", "product_view", "add_to_cart"], "web", 0),
                ("c2", "s2", ["page_view", "product_view", "add_to_cart"], "web", 0),
                ("c3", "s3", ["search"], "web", 0)]
    k = {r["path"]: r["journeys"] for r in J.kstep_paths(_matrix(spark, spec, sessions), 3).collect()}
    assert k == {"start>browse>product_view>cart": 2, "browse>product_view>cart>exit": 2}


# --------------------------------------------------------------------------- determinism (equal timestamps)


T1 = T0 + timedelta(seconds=60)
TIED_DDL = ("event_key string, customer_id string, event_ts timestamp, event_type string, session_id string, "
            "channel string")
#: Two customers whose events share timestamps, listed out of order. The event_key order
#: (k01 < k02 < ... and x1 < x2 < x3) is the order sessionize gives equal timestamps, so it is
#: the order every journeys window must keep. c1 switches session_id (A -> B) between k03 and
#: k04, both at T1: its two sessions share a timestamp, and event_seq restarts at 1 in the second
#: (a customer-scope order by event_ts, event_seq would put k04 before k02).
TIED_ROWS = [
    ("k06", "c1", T1, "purchase", "B", None),
    ("k02", "c1", T1, "product_view", "A", None),
    ("x3", "c2", T0, "checkout_start", None, None),
    ("k07", "c1", T1, "page_view", "B", None),
    ("k04", "c1", T1, "search", "B", "email"),
    ("k01", "c1", T0, "page_view", "A", "web"),
    ("x2", "c2", T0, "add_to_cart", None, "web"),
    ("k05", "c1", T1, "product_view", "B", None),
    ("k03", "c1", T1, "add_to_cart", "A", None),
    ("x1", "c2", T0, "product_view", None, "email"),
]
#: (session_seq, event_seq) of every event, in event_key order within each timestamp
TIED_SEQ = {"k01": (1, 1), "k02": (1, 2), "k03": (1, 3), "k04": (2, 1), "k05": (2, 2), "k06": (2, 3),
            "k07": (2, 4), "x1": (1, 1), "x2": (1, 2), "x3": (1, 3)}
#: Hand-computed first-order counts {channel: {(from, to): n}} and full paths {path: journeys}.
#: Scope session: c1/A (channel web) browse product_view cart | exit; c1/B (email) search
#: product_view conversion, then browse | exit; c2 (email, x1's channel) product_view cart checkout | exit.
TIED_WANT = {"session": (
    {"web": {("start", "browse"): 1, ("browse", "product_view"): 1, ("product_view", "cart"): 1, ("cart", "exit"): 1},
     "email": {("start", "search"): 1, ("search", "product_view"): 1, ("product_view", "conversion"): 1,
               ("start", "browse"): 1, ("browse", "exit"): 1, ("start", "product_view"): 1,
               ("product_view", "cart"): 1, ("cart", "checkout"): 1, ("checkout", "exit"): 1},
     "all": {("start", "browse"): 2, ("browse", "product_view"): 1, ("product_view", "cart"): 2, ("cart", "exit"): 1,
             ("start", "search"): 1, ("search", "product_view"): 1, ("product_view", "conversion"): 1,
             ("browse", "exit"): 1, ("start", "product_view"): 1, ("cart", "checkout"): 1, ("checkout", "exit"): 1}},
    {"start>browse>product_view>cart>exit": 1, "start>search>product_view>conversion": 1, "start>browse>exit": 1,
     "start>product_view>cart>checkout>exit": 1}),
    # scope customer: c1 is one journey over both sessions up to the purchase (channel of its
    # first session: web), then browse | exit (email); c2 as above
    "customer": (
    {"web": {("start", "browse"): 1, ("browse", "product_view"): 1, ("product_view", "cart"): 1, ("cart", "search"): 1,
             ("search", "product_view"): 1, ("product_view", "conversion"): 1},
     "email": {("start", "browse"): 1, ("browse", "exit"): 1, ("start", "product_view"): 1,
               ("product_view", "cart"): 1, ("cart", "checkout"): 1, ("checkout", "exit"): 1},
     "all": {("start", "browse"): 2, ("browse", "product_view"): 1, ("product_view", "cart"): 2, ("cart", "search"): 1,
             ("search", "product_view"): 1, ("product_view", "conversion"): 1, ("browse", "exit"): 1,
             ("start", "product_view"): 1, ("cart", "checkout"): 1, ("checkout", "exit"): 1}},
    {"start>browse>product_view>cart>search>product_view>conversion": 1, "start>browse>exit": 1,
     "start>product_view>cart>checkout>exit": 1})}


def _layouts(spark, rows, schema):
    """The same rows in four physical layouts: partitions and row order within them differ."""
    return {
        "one partition": spark.createDataFrame(rows, schema).repartition(1),
        "7 partitions by a random column": (spark.createDataFrame(rows, schema).withColumn("_r", F.rand(7))
                                            .repartition(7, "_r").drop("_r")),
        "reversed, one partition": spark.createDataFrame(rows[::-1], schema).coalesce(1),
        "shuffled, 3 partitions": spark.createDataFrame(random.Random(13).sample(rows, len(rows)), schema)
                                  .repartition(3),
    }


def _journey_tables(events, spec):
    """(every transition_matrix row of orders 1..3, every top_paths row), sorted."""
    journeys = J.build_journeys(J.assign_states(events, spec, keep_unmapped=True), spec)
    matrix = J.transition_matrix(J.transition_counts(J.journey_transitions(journeys, spec, 3)))
    rows = sorted(tuple(r) for r in matrix.select("order", "segment", "channel", "from_state", "to_state", "count",
                                                  "probability").collect())
    paths = sorted(tuple(r) for r in J.top_paths(J.journey_summaries(journeys, spec), 20).collect())
    return rows, paths


def test_equal_timestamps_give_the_same_journeys_on_any_partitioning(spark, cfg, spec):
    from seglake.stages import enriched

    scopes = {"session": spec, "customer": J.StateSpec(spec.event_states, scope="customer")}
    got = {scope: {} for scope in scopes}
    for name, raw in _layouts(spark, TIED_ROWS, TIED_DDL).items():
        # sessionized as silver.enriched_events is built, with the columns the job reads
        sessionized = enriched.build(raw, cfg).select("customer_id", "event_key", "session_key", *J.EVENT_ORDER,
                                                      "event_type", "channel", "page_url")
        rows = sessionized.collect()
        assert {r["event_key"]: (r["session_seq"], r["event_seq"]) for r in rows} == TIED_SEQ, name
        # the journeys job reads that table in whatever layout its files give: vary it too
        events = _layouts(spark, rows, sessionized.schema)[name]
        for scope, scope_spec in scopes.items():
            got[scope][name] = _journey_tables(events, scope_spec)
    for scope, by_layout in got.items():
        (first_name, (matrix, paths)), *others = by_layout.items()
        for name, tables in others:
            assert tables == (matrix, paths), (scope, name, first_name)
        want_counts, want_paths = TIED_WANT[scope]
        first_order = defaultdict(dict)
        for order, segment, channel, frm, to, count, _ in matrix:
            if order == 1 and segment == "all":
                first_order[channel][(frm, to)] = count
        assert dict(first_order) == want_counts, scope
        assert {path: n for path, n, _, _ in paths} == want_paths, scope


# --------------------------------------------------------------------------- end to end (generated data)


def _customer_archetypes(spark, cfg, gen_dir):
    """customer_id -> archetype via ground truth (majority person of the customer's user/anonymous ids)."""
    from seglake.core import tables

    ids = spark.read.parquet(str(Path(gen_dir) / "ground_truth" / "identifiers.parquet"))
    persons = spark.read.parquet(str(Path(gen_dir) / "ground_truth" / "persons.parquet"))
    idmap = tables.read(spark, cfg, "silver.identity_map").where(
        F.col("identifier_type").isin("user_id", "anonymous_id"))
    votes = (idmap.join(ids.where(F.col("person_id").isNotNull()), ["identifier_type", "identifier"])
             .groupBy("customer_id", "person_id").count())
    best = votes.groupBy("customer_id").agg(F.max_by("person_id", "count").alias("person_id"))
    return best.join(persons.select("person_id", "archetype"), "person_id").select(
        "customer_id", F.col("archetype").alias("segment"))


@pytest.mark.slow
def test_end_to_end_recovers_planted_transitions(spark, pipeline_through):
    cfg, gen_dir = pipeline_through("journeys")
    from seglake.core import tables

    summary = pipeline_through.summaries["journeys"]
    assert summary["journeys"] > 0
    m = tables.read(spark, cfg, J.MATRIX_TABLE)
    bad = (m.groupBy("as_of_date", "order", "segment", "channel", "from_state")
           .agg(F.sum("probability").alias("p")).where(F.abs(F.col("p") - 1) > 1e-9).count())
    assert bad == 0
    metrics = tables.read(spark, cfg, J.METRICS_TABLE)
    assert metrics.where("metric = 'conversion_probability' and subject = 'start'").count() >= 1
    assert metrics.where("metric = 'removal_effect' and subject_type = 'channel'").count() >= 2

    # per-archetype first-order matrices from the stage's own input, customers labelled by truth
    spec = J.load_states(cfg.conf_file(cfg.get("journeys.states_file")))
    last = tables.read(spark, cfg, "silver.events").agg(F.max("event_date")).first()[0]
    as_of = last + timedelta(days=1)
    events = J.assign_states(J.sessionized_events(spark, cfg, as_of - timedelta(days=400), as_of), spec)
    counts = J.transition_counts(J.journey_transitions(J.build_journeys(events, spec), spec, 1,
                                                       _customer_archetypes(spark, cfg, gen_dir)))
    arch = J.transition_matrix(counts).where(
        "order = 1 and channel = 'all' and segment != 'all'")
    est = {(r["segment"], r["from_state"], r["to_state"]): (r["count"], r["probability"]) for r in arch.collect()}
    truth = spark.read.parquet(str(Path(gen_dir) / "ground_truth" / "transitions.parquet")).collect()
    checked, worst = _check_recovery(est, truth)
    print(f"planted-chain recovery: {checked} cells checked, worst |diff|/tolerance = {worst:.2f}")
    assert checked >= 20, checked


# --------------------------------------------------------------------------- run(ctx) on crafted tables


def _write_silver(spark, cfg, as_of):
    from seglake.core import tables

    rows = []
    plan = [("u1", ["page_view", "product_view", "add_to_cart", "checkout_start", "purchase"], "email", True),
            ("u1", ["page_view", "product_view", "add_to_cart"], "direct", True),
            ("u2", ["search", "product_view", "add_to_cart", "email_open"], "direct", True),
            ("u2", ["page_view", "page_view"], "social", False),  # consent = false: never profiled
            ("u3", ["app_open", "product_view", "product_view"], "email", True)]
    for s, (user, types, channel, consent) in enumerate(plan):
        start = datetime(2026, 9, 1 + s, 10, 0, 0)
        for i, et in enumerate(types):
            ts = start + timedelta(seconds=40 * i)
            rows.append((user, None, None, None, None, et, ts, ts.date(), channel, f"/{et}/{i % 2}", consent,
                         None, "web"))
    ddl = ("user_id string, anonymous_id string, device_id string, email_hash string, phone_hash string, "
           "event_type string, event_ts timestamp, event_date date, channel string, page_url string, "
           "consent boolean, session_id string, source string")
    tables.overwrite(spark.createDataFrame(rows, ddl), cfg, "silver.events")
    tables.overwrite(spark.createDataFrame([("user_id", u, f"c_{u}") for u in ("u1", "u2", "u3")],
                                           "identifier_type string, identifier string, customer_id string"),
                     cfg, "silver.identity_map")
    tables.overwrite(spark.createDataFrame([("c_u1", "buyers", as_of), ("c_u2", "browsers", as_of),
                                            ("c_u3", "browsers", as_of)],
                                           "customer_id string, segment string, as_of_date date"),
                     cfg, "gold.segment_membership")


@pytest.mark.slow
def test_run_writes_the_gold_tables_idempotently(spark, cfg):
    from datetime import date

    from seglake.core import tables
    from seglake.core.context import JobContext

    as_of = date(2026, 9, 10)
    cfg = cfg.with_overrides({"journeys": {"pagerank_max_iter": 4}})  # PageRank is tested on its own
    _write_silver(spark, cfg, as_of)
    summary = J.run(JobContext(spark, cfg, as_of=as_of))
    assert summary["journeys"] == 4 and summary["segments"] == 2
    # 4 journeys, 1 converts: P(conversion | start) from the overall first-order chain
    m = tables.read(spark, cfg, J.MATRIX_TABLE)
    first = {(r["from_state"], r["to_state"]): r["count"] for r in
             m.where("order = 1 and segment = 'all' and channel = 'all'").collect()}
    assert first[("start", "browse")] == 3 and first[("start", "search")] == 1
    assert first[("checkout", "conversion")] == 1 and ("browse", "browse") not in first  # u2's 2nd session: no consent
    assert {r["segment"] for r in m.select("segment").distinct().collect()} == {"all", "buyers", "browsers"}
    assert {r["channel"] for r in m.select("channel").distinct().collect()} == {"all", "email", "direct"}
    metrics = tables.read(spark, cfg, J.METRICS_TABLE)
    p = metrics.where("metric = 'conversion_probability' and subject = 'start' and segment = 'all' "
                      "and channel = 'all' and subject_type = 'state'").first()["value"]
    assert p == pytest.approx(summary["p_conversion"], abs=1e-4) and 0 < p < 1
    motif = metrics.where("metric = 'motif_matches' and segment = 'all'").first()["value"]
    assert motif == 2  # u1 (2nd session) and u2: product_view -> cart -> exit
    assert metrics.where("metric = 'pagerank'").count() > 0
    paths = tables.read(spark, cfg, J.PATHS_TABLE)
    assert paths.where("path_kind = 'full'").count() == 4
    before = {t: tables.read(spark, cfg, t).count() for t in (J.MATRIX_TABLE, J.METRICS_TABLE, J.PATHS_TABLE)}
    J.run(JobContext(spark, cfg, as_of=as_of))  # rerun: same tables (replaceWhere of the as_of slice)
    after = {t: tables.read(spark, cfg, t).count() for t in (J.MATRIX_TABLE, J.METRICS_TABLE, J.PATHS_TABLE)}
    assert after == before


def _check_recovery(est, truth, min_n=100):
    """Compare estimated first-order probabilities per archetype with the planted ones.

    Tolerance per (archetype, from, to): 5 binomial standard errors sqrt(p(1-p)/n) of the n
    transitions observed out of ``from`` (p floored at 0.01 so near-0/1 cells keep a
    non-zero band) plus 0.01 for the small distortions of the pipeline (sessions cut by the
    analysis window, identity merges). Cells with n < ``min_n`` are skipped.
    Returns (cells checked, worst |diff| / tolerance).
    """
    n_from = defaultdict(int)
    for (a, f, _), (c, _) in est.items():
        n_from[(a, f)] += c
    checked, worst = 0, 0.0
    for r in truth:
        a, f, t, p = r["archetype"], r["from_state"], r["to_state"], r["probability"]
        n = n_from.get((a, f), 0)
        if a in _BIASED_ARCHETYPES or n < min_n:
            continue
        p_hat = est.get((a, f, t), (0, 0.0))[1]
        tol = 5 * math.sqrt(max(p * (1 - p), 0.01 * 0.99) / n) + 0.01
        worst = max(worst, abs(p_hat - p) / tol)
        assert abs(p_hat - p) <= tol, (a, f, t, p, p_hat, n, tol)
        checked += 1
    return checked, worst


@pytest.mark.slow
def test_generated_truth_events_recover_planted_chains(spark, pipeline_through):
    """The journey transforms on the generator's own per-event truth (person = customer)."""
    from seglake.stages.sessions import sessionize

    pipeline_through.pipeline.generate()
    gen_dir = pipeline_through.pipeline.gen_dir
    spec = J.load_states(REPO / "conf" / "states.yaml")
    truth_events = spark.read.parquet(str(Path(gen_dir) / "ground_truth" / "events.parquet")).where("consent")
    ev = sessionize(truth_events.select(F.col("person_id").alias("customer_id"), "event_ts", "event_type",
                                        "channel"), 30)
    members = truth_events.select(F.col("person_id").alias("customer_id"), F.col("archetype").alias("segment"))
    counts = J.transition_counts(J.journey_transitions(
        J.build_journeys(J.assign_states(ev, spec, keep_unmapped=True), spec), spec, 1, members))
    m = J.transition_matrix(counts).where("order = 1 and channel = 'all' and segment != 'all'")
    est = {(r["segment"], r["from_state"], r["to_state"]): (r["count"], r["probability"]) for r in m.collect()}
    truth = spark.read.parquet(str(Path(gen_dir) / "ground_truth" / "transitions.parquet")).collect()
    checked, worst = _check_recovery(est, truth)
    print(f"planted-chain recovery: {checked} cells checked, worst |diff|/tolerance = {worst:.2f}")
    assert checked >= 20, checked
