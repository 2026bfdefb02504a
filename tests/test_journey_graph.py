"""Journey graph: PageRank (driver and Spark paths) vs a numpy power iteration, chain motif vs a
plain-Python count."""
from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from seglake.stages import journeys as J
from seglake.stages.journeys import graph as G

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 9, 1, 12, 0, 0)


def _numpy_pagerank(edges, damping=0.85, iters=1000):
    """Reference: dense power iteration, dangling rank spread uniformly (networkx's definition)."""
    nodes = sorted({u for u, _, _ in edges} | {v for _, v, _ in edges})
    idx = {n: i for i, n in enumerate(nodes)}
    W = np.zeros((len(nodes), len(nodes)))
    for u, v, w in edges:
        W[idx[u], idx[v]] += w
    out = W.sum(axis=1)
    P = np.divide(W, out[:, None], out=np.zeros_like(W), where=out[:, None] > 0)
    n = len(nodes)
    r = np.full(n, 1.0 / n)
    for _ in range(iters):
        dangling = r[out == 0].sum()
        r = (1 - damping) / n + damping * (r @ P + dangling / n)
    return dict(zip(nodes, r))


def _spy_spark_path(monkeypatch):
    """Count the calls of the Spark implementation (the driver path does not call it)."""
    calls = []
    real = G._pagerank_spark

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(G, "_pagerank_spark", spy)
    return calls


PR_EDGES = [("/home", "/p/1", 5), ("/home", "/p/2", 2), ("/p/1", "/cart", 3), ("/p/2", "/p/1", 1),
            ("/p/1", "/home", 1), ("/cart", "/checkout", 2), ("/home", "/p/1", 1),  # parallel edge
            ("/search", "/p/2", 4)]  # /checkout is dangling, /search has no in-edges


@pytest.mark.parametrize("driver_max_edges, on_spark", [(G.DRIVER_MAX_EDGES, False), (0, True)],
                         ids=["driver", "spark"])
def test_pagerank_matches_numpy_power_iteration(spark, monkeypatch, driver_max_edges, on_spark):
    calls = _spy_spark_path(monkeypatch)
    df = spark.createDataFrame(PR_EDGES, "src string, dst string, weight long")
    # damping 0.6: the error shrinks ~0.6x per iteration, so 1e-10 is reached in ~45 iterations
    result = G.pagerank(df, 0.6, 80, 1e-11, 10, driver_max_edges=driver_max_edges)
    assert result.dtypes == [("vertex", "string"), ("pagerank", "double"), ("rank", "int")]
    got = {r["vertex"]: (r["pagerank"], r["rank"]) for r in result.collect()}
    assert bool(calls) == on_spark
    want = _numpy_pagerank(PR_EDGES, damping=0.6)
    assert set(got) == set(want)
    for v, p in want.items():
        assert got[v][0] == pytest.approx(p, abs=1e-9)
    assert sum(p for p, _ in got.values()) == pytest.approx(1.0, abs=1e-9)
    best = max(want, key=want.get)
    assert got[best][1] == 1
    assert sorted(rank for _, rank in got.values()) == list(range(1, len(want) + 1))
    with pytest.raises(ValueError, match="damping"):
        G.pagerank(df, 1.5, driver_max_edges=driver_max_edges)


# dangling: x, y (an exact tie: one in-edge each from d, same weight) and z; parallel edges a->b, d->x;
# e has no in-edges
TIE_EDGES = [("a", "b", 3), ("a", "b", 2), ("a", "c", 1), ("b", "c", 4), ("c", "a", 2), ("c", "d", 1),
             ("d", "x", 1), ("d", "y", 2), ("d", "x", 1), ("b", "z", 2), ("e", "a", 1)]


def _rows(table):
    """A pyarrow (vertex, pagerank, rank) table as a list of tuples."""
    return list(zip(*(table.column(c).to_pylist() for c in ("vertex", "pagerank", "rank"))))


def test_pagerank_driver_needs_no_spark_and_breaks_ties_by_vertex():
    table, iterations = G._pagerank_driver(
        [("a", "b", 5.0), ("a", "c", 1.0), ("b", "c", 4.0), ("c", "a", 2.0), ("c", "d", 1.0), ("d", "x", 2.0),
         ("d", "y", 2.0), ("b", "z", 2.0), ("e", "a", 1.0)], 0.85, 1000, 1e-14)
    ranked = _rows(table)
    want = _numpy_pagerank(TIE_EDGES, damping=0.85)
    assert 0 < iterations < 1000
    assert {v: p for v, p, _ in ranked} == pytest.approx(want, abs=1e-12)
    assert [k for _, _, k in ranked] == list(range(1, len(want) + 1))
    assert [(-p, v) for v, p, _ in ranked] == sorted((-p, v) for v, p, _ in ranked)
    pos = {v: k for v, _, k in ranked}
    assert pos["y"] == pos["x"] + 1  # equal PageRank: vertex ascending
    empty, iterations = G._pagerank_driver([], 0.85, 10, 1e-8)
    assert (_rows(empty), iterations) == ([], 0)


def test_pagerank_driver_and_spark_paths_agree(spark, monkeypatch):
    calls = _spy_spark_path(monkeypatch)
    df = spark.createDataFrame(TIE_EDGES, "src string, dst string, weight long")
    # tol 0: both paths run exactly max_iter iterations of the same recurrence
    on_driver = {r["vertex"]: (r["pagerank"], r["rank"]) for r in G.pagerank(df, 0.85, 20, 0.0, 10).collect()}
    assert not calls
    on_spark = {r["vertex"]: (r["pagerank"], r["rank"])
                for r in G.pagerank(df, 0.85, 20, 0.0, 10, driver_max_edges=0).collect()}
    assert len(calls) == 1
    assert set(on_driver) == set(on_spark) == set("abcdexyz")
    for v, (p, rank) in on_driver.items():
        assert on_spark[v][0] == pytest.approx(p, abs=1e-9)
        assert on_spark[v][1] == rank
    assert on_driver["x"][0] == on_driver["y"][0] and on_driver["y"][1] == on_driver["x"][1] + 1
    empty = spark.createDataFrame([("a", "b", 0)], "src string, dst string, weight long")  # no positive edge
    assert G.pagerank(empty).count() == 0 and G.pagerank(empty, driver_max_edges=0).count() == 0


def test_pagerank_falls_back_to_spark_above_driver_max_edges(spark, monkeypatch):
    edges = [("a", "b", 1), ("b", "c", 2), ("c", "a", 1), ("c", "d", 3), ("e", "c", 1)]  # 5 edges, d dangling
    df = spark.createDataFrame(edges, "src string, dst string, weight long")
    want = _numpy_pagerank(edges, damping=0.6)
    for limit, on_spark in ((2, True), (5, False)):  # 5 edges fit a limit of 5
        calls = _spy_spark_path(monkeypatch)
        got = {r["vertex"]: r["pagerank"] for r in G.pagerank(df, 0.6, 80, 1e-11, 10, limit).collect()}
        assert bool(calls) == on_spark, limit
        assert got == pytest.approx(want, abs=1e-9)


def test_page_edges_link_consecutive_pages_of_a_session(spark):
    rows = [("c1", "s1", T0, 1, 1, "/home"), ("c1", "s1", T0 + timedelta(seconds=9), 1, 2, None),
            ("c1", "s1", T0 + timedelta(seconds=20), 1, 3, "/p/1"),
            ("c1", "s2", T0 + timedelta(hours=2), 2, 1, "/p/1"),
            ("c2", "s3", T0, 1, 1, "/home"), ("c2", "s3", T0 + timedelta(seconds=5), 1, 2, "/p/1")]
    df = spark.createDataFrame(rows, "customer_id string, session_key string, event_ts timestamp, "
                                     "session_seq int, event_seq int, page_url string")
    assert {(r["src"], r["dst"]): r["weight"] for r in G.page_edges(df).collect()} == {("/home", "/p/1"): 2}


def _journeys(spark, spec, sessions):
    rows, seen = [], {}
    for customer, key, types in sessions:
        seen[customer] = seen.get(customer, 0) + 1  # session_seq: the customer's sessions numbered 1..
        for i, et in enumerate(types):
            rows.append((customer, key, T0 + timedelta(minutes=i), seen[customer], i + 1, et, "web"))
    df = spark.createDataFrame(rows, "customer_id string, session_key string, event_ts timestamp, "
                                     "session_seq int, event_seq int, event_type string, channel string")
    return J.build_journeys(J.assign_states(df, spec, keep_unmapped=True), spec)


def _python_motif(sessions, pattern):
    """Plain-Python count of the pattern as consecutive states of the journeys' full paths
    (start, the states, exit unless the journey converted)."""
    state_of = {"page_view": "browse", "search": "search", "product_view": "product_view",
                "add_to_cart": "cart", "checkout_start": "checkout", "purchase": "conversion"}
    per_customer = {}
    for customer, _, types in sessions:
        states = [state_of[t] for t in types if t in state_of]
        journeys, cur = [], ["start"]
        for s in states:
            cur.append(s)
            if s == "conversion":
                journeys.append(cur)
                cur = ["start"]
        if len(cur) > 1:
            journeys.append(cur + ["exit"])
        k = len(pattern)
        n = sum(1 for j in journeys for i in range(len(j) - k + 1) if tuple(j[i:i + k]) == tuple(pattern))
        per_customer[customer] = per_customer.get(customer, 0) + n
    return per_customer


def test_chain_motif_matches_python_count_per_segment(spark):
    spec = J.load_states(REPO / "conf" / "states.yaml")
    r = random.Random(9)
    types = ["page_view", "product_view", "add_to_cart", "add_to_cart", "checkout_start", "purchase", "email_open"]
    sessions = [(f"c{i % 6}", f"s{i}", [r.choice(types) for _ in range(r.randint(1, 7))]) for i in range(80)]
    sessions.append(("c0", "s-fixed", ["product_view", "add_to_cart"]))  # at least one match
    want = _python_motif(sessions, spec.motif)
    edges = G.event_edges(_journeys(spark, spec, sessions), spec)
    matches = G.find_chain(edges, spec.motif)
    got = {row["customer_id"]: row["count"] for row in matches.groupBy("customer_id").count().collect()}
    assert got == {c: n for c, n in want.items() if n}
    members = spark.createDataFrame([(f"c{i}", "low" if i < 3 else "high") for i in range(6)],
                                    "customer_id string, segment string")
    counts = {row["segment"]: (row["matches"], row["customers"]) for row in
              G.motif_counts(matches, ">".join(spec.motif), members).collect()}
    low = [want.get(f"c{i}", 0) for i in range(3)]
    high = [want.get(f"c{i}", 0) for i in range(3, 6)]
    assert counts["all"] == (sum(want.values()), sum(1 for v in want.values() if v))
    assert counts["low"] == (sum(low), sum(1 for v in low if v))
    assert counts.get("high", (0, 0)) == (sum(high), sum(1 for v in high if v)) or sum(high) == 0
    # the job's way: the same matches counted from the journey summaries' collected states
    summaries = J.journey_summaries(_journeys(spark, spec, sessions), spec, motif=spec.motif)
    per_customer = summaries.where("motif_matches > 0").groupBy("customer_id").agg(F.sum("motif_matches").alias("n"))
    assert {r["customer_id"]: r["n"] for r in per_customer.collect()} == got
    assert {row["segment"]: (row["matches"], row["customers"]) for row in
            G.motif_totals(per_customer, ">".join(spec.motif), members).collect()} == counts


@pytest.mark.parametrize("pattern", [("start", "product_view", "cart"), ("cart", "exit"),
                                     ("cart", "cart", "checkout", "conversion")])
def test_motif_from_summaries_and_find_chain_agree_with_python(spark, pattern):
    spec = J.load_states(REPO / "conf" / "states.yaml")
    r = random.Random(4)
    types = ["page_view", "product_view", "add_to_cart", "checkout_start", "purchase", "email_open"]
    sessions = [(f"c{i % 9}", f"s{i}", [r.choice(types) for _ in range(r.randint(1, 8))]) for i in range(120)]
    sessions += [("c1", "s-a", ["product_view", "add_to_cart"]),
                 ("c2", "s-b", ["add_to_cart", "add_to_cart", "checkout_start", "purchase"])]
    want = {c: n for c, n in _python_motif(sessions, pattern).items() if n}
    assert want  # the fixed sessions plant at least one match of each pattern
    journeys = _journeys(spark, spec, sessions)
    chain = G.find_chain(G.event_edges(journeys, spec), list(pattern))
    assert {row["customer_id"]: row["count"] for row in chain.groupBy("customer_id").count().collect()} == want
    summaries = J.journey_summaries(journeys, spec, motif=list(pattern))
    got = summaries.groupBy("customer_id").agg(F.sum("motif_matches").alias("n")).where("n > 0")
    assert {row["customer_id"]: row["n"] for row in got.collect()} == want


def test_find_chain_needs_two_states(spark):
    df = spark.createDataFrame([("c", "a", "b", "x", "y")], "customer_id string, src string, dst string, "
                                                           "src_state string, dst_state string")
    with pytest.raises(ValueError, match="at least two states"):
        G.find_chain(df, ["x"])
