"""Identity resolution: connected components vs scipy, guard, stable ids, attach, the job."""
from __future__ import annotations

import hashlib
import hmac
import os
from datetime import datetime

import numpy as np
import pytest
from pyspark.sql import functions as F

from seglake.core import contracts
from seglake.stages import identity
from seglake.core.context import JobContext

EVENT_DDL = ("event_key STRING, user_id STRING, anonymous_id STRING, device_id STRING, email_hash STRING, "
             "phone_hash STRING, event_type STRING, event_ts TIMESTAMP, consent BOOLEAN, _ingested_at TIMESTAMP")
T0 = datetime(2026, 8, 1, 10, 0, 0)
#: the PII key the identity job reads in tests (conftest sets SEGLAKE_PII_SALT)
KEY = os.environ["SEGLAKE_PII_SALT"]


def _components_scipy(n: int, edges: list[tuple[int, int]]) -> dict[int, int]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as scc
    rows = [a for a, _ in edges]
    cols = [b for _, b in edges]
    m = coo_matrix((np.ones(len(edges)), (rows, cols)), shape=(n, n))
    _, labels = scc(m, directed=False)
    smallest: dict[int, int] = {}
    for node, lab in enumerate(labels):
        smallest.setdefault(int(lab), node)
    return {node: smallest[int(lab)] for node, lab in enumerate(labels)}


def test_connected_components_match_scipy_on_random_graphs(spark):
    rng = np.random.default_rng(7)
    n = 300
    edges = [(int(a), int(b)) for a, b in rng.integers(0, n, size=(170, 2))]
    # a long path (deep component) with scrambled labels, plus self-loops for isolated nodes
    path = rng.permutation(np.arange(n, n + 60))
    edges += [(int(a), int(b)) for a, b in zip(path[:-1], path[1:])]
    total = n + 60
    edges += [(i, i) for i in range(total)]
    expected = _components_scipy(total, edges)
    df = spark.createDataFrame(edges, "src LONG, dst LONG")
    got, rounds = identity.connected_components_with_rounds(df, max_iterations=40)
    got = {r["id"]: r["component"] for r in got.collect()}
    assert got == expected
    assert len(set(expected.values())) > 50  # the random graph really has many components
    assert rounds <= 20


def test_connected_components_string_ids_and_round_limit(spark):
    df = spark.createDataFrame([("b", "a"), ("c", "b"), ("x", "y"), ("z", "z")], "src STRING, dst STRING")
    got = {r["id"]: r["component"] for r in identity.connected_components(df).collect()}
    assert got == {"a": "a", "b": "a", "c": "a", "x": "x", "y": "x", "z": "z"}
    chain = spark.createDataFrame([(i, i + 1) for i in range(64)], "src LONG, dst LONG")
    with pytest.raises(identity.ConvergenceError, match="did not converge in 1 rounds"):
        identity.connected_components(chain, max_iterations=1)


def test_graphframes_engine_without_jar_is_a_clear_error(spark):
    df = spark.createDataFrame([(1, 2)], "src LONG, dst LONG")
    with pytest.raises(RuntimeError, match="GraphFrames JVM jar|graphframes package"):
        identity.graphframes_components(df).collect()


def _tuples(spark, rows):
    return spark.createDataFrame(rows, "user_id STRING, anonymous_id STRING, device_id STRING, "
                                       "email_hash STRING, phone_hash STRING")


def test_edges_and_guard(spark):
    rows = [("u1", "a1", "d1", None, None), ("u1", None, None, "e1", None), (None, "a2", "d1", None, None)]
    # a shared device seen with 3 distinct user_ids
    rows += [(f"u{i}", None, "dshared", None, None) for i in range(2, 5)]
    edges = identity.identity_edges(_tuples(spark, rows))
    got = {tuple(r) for r in edges.collect()}
    assert ("user_id", "u1", "anonymous_id", "a1") in got
    assert ("anonymous_id", "a1", "device_id", "d1") in got
    assert ("user_id", "u1", "email", "e1") in got
    assert ("anonymous_id", "a2", "device_id", "d1") in got
    assert len(got) == 3 + 1 + 1 + 3
    counts = {(r["identifier_type"], r["identifier"]): r["n_user_ids"]
              for r in identity.guard_counts(edges).collect()}
    assert counts[("device_id", "dshared")] == 3
    assert counts[("device_id", "d1")] == 1
    ex = [tuple(r) for r in identity.excluded_identifiers(edges, 2).select("identifier_type", "identifier").collect()]
    assert ex == [("device_id", "dshared")]


def _map(df):
    return {(r["identifier_type"], r["identifier"]): r["customer_id"] for r in df.collect()}


def _resolve(spark, rows, previous=None, max_persons=20, key=KEY):
    tuples = _tuples(spark, rows)
    edges = identity.identity_edges(tuples)
    ex = identity.excluded_identifiers(edges, max_persons)
    nodes = identity.identity_nodes(tuples).join(ex.select("identifier_type", "identifier"),
                                                 ["identifier_type", "identifier"], "left_anti")
    out, _ = identity.resolve(identity.drop_excluded(edges, ex), nodes, previous, key=key)
    return out


def _expected_id(spark, rep, key=KEY):
    """``c_`` + the first 20 hex characters of Python's own HMAC-SHA256(key, representative)."""
    return "c_" + hmac.new(key.encode(), rep.encode(), hashlib.sha256).hexdigest()[:20]


def _groups(m):
    """The grouping of a map, without the ids: a set of frozensets of identifiers."""
    by_id: dict[str, set] = {}
    for ident, cid in m.items():
        by_id.setdefault(cid, set()).add(ident)
    return {frozenset(g) for g in by_id.values()}


def test_derive_customer_id_is_keyed_hmac(spark):
    reps = ["1|user_id|u1", "2|anonymous_id|Ä-é-9"]
    df = spark.createDataFrame([(r,) for r in reps], "rep STRING")
    got = [r["c"] for r in df.select(identity.derive_customer_id(F.col("rep"), "c_", "k1").alias("c")).collect()]
    assert got == [_expected_id(spark, r, "k1") for r in reps]
    assert all(len(c) == 22 for c in got)
    # not the old unkeyed id, which anyone holding user ids could recompute
    assert got[0] != "c_" + hashlib.sha256(b"1|user_id|u1").hexdigest()[:20]
    with pytest.raises(ValueError, match="non-empty key"):
        identity.derive_customer_id(F.col("rep"), "c_", "")


def test_customer_ids_are_keyed_same_grouping_other_key(spark):
    # planted graph: {u2, u1, a1, d1, e1} (smallest user_id u1), {a9, d9} (no user_id), {u7}
    rows = [("u2", "a1", None, None, None), ("u1", "a1", "d1", "e1", None), (None, "a9", "d9", None, None),
            ("u7", None, None, None, None)]
    m1 = _map(_resolve(spark, rows, key="key-one"))
    assert m1[("user_id", "u1")] == m1[("email", "e1")] == _expected_id(spark, "1|user_id|u1", "key-one")
    assert m1[("anonymous_id", "a9")] == _expected_id(spark, "2|anonymous_id|a9", "key-one")
    assert m1[("user_id", "u7")] == _expected_id(spark, "1|user_id|u7", "key-one")
    # same key and data: identical ids
    assert _map(_resolve(spark, rows, key="key-one")) == m1
    # another key: the same grouping, every id different
    m2 = _map(_resolve(spark, rows, key="key-two"))
    assert m2.keys() == m1.keys() and _groups(m2) == _groups(m1) and len(_groups(m1)) == 3
    assert set(m2.values()).isdisjoint(m1.values())
    assert m2[("user_id", "u1")] == _expected_id(spark, "1|user_id|u1", "key-two")


def test_split_clash_id_is_keyed(spark):
    # one customer named from u1 splits: {a1, d1, e1} (3 identifiers) keeps the id, {u1} alone
    # would get the same derivation again, so it gets the keyed '|split' derivation
    m1 = _map(_resolve(spark, [("u1", "a1", "d1", "e1", None)]))
    c1 = _expected_id(spark, "1|user_id|u1")
    assert set(m1.values()) == {c1}
    prev = spark.createDataFrame([(t, i, c) for (t, i), c in m1.items()],
                                 "identifier_type STRING, identifier STRING, customer_id STRING")
    split = _map(_resolve(spark, [("u1", None, None, None, None), (None, "a1", "d1", "e1", None)], prev))
    assert split[("anonymous_id", "a1")] == split[("email", "e1")] == c1
    assert split[("user_id", "u1")] == _expected_id(spark, "1|user_id|u1|split")


def test_resolve_names_components_by_smallest_user_id_and_is_stable(spark):
    rows = [("u2", "a1", None, None, None), ("u1", "a1", "d1", None, None), (None, "a9", "d9", None, None),
            (None, "a5", None, None, None)]
    m1 = _map(_resolve(spark, rows))
    c1 = _expected_id(spark, "1|user_id|u1")
    assert {m1[("user_id", "u1")], m1[("user_id", "u2")], m1[("anonymous_id", "a1")], m1[("device_id", "d1")]} == {c1}
    assert m1[("anonymous_id", "a9")] == m1[("device_id", "d9")] == _expected_id(spark, "2|anonymous_id|a9")
    assert m1[("anonymous_id", "a5")] not in (c1, m1[("anonymous_id", "a9")])
    assert len(m1) == 7
    # rerun with the previous map: identical
    prev = spark.createDataFrame([(t, i, c) for (t, i), c in m1.items()],
                                 "identifier_type STRING, identifier STRING, customer_id STRING")
    assert _map(_resolve(spark, rows, prev)) == m1


def test_resolve_merge_keeps_the_bigger_customer_and_split_keeps_the_bigger_part(spark):
    prev = spark.createDataFrame(
        [("user_id", "u1", "cA"), ("anonymous_id", "a1", "cA"),
         ("user_id", "u2", "cB"), ("anonymous_id", "a2", "cB"), ("device_id", "d2", "cB")],
        "identifier_type STRING, identifier STRING, customer_id STRING")
    # merge: a new event links a1 and a2 -> one component; cB holds 3 identifiers, cA 2
    rows = [("u1", "a1", None, None, None), ("u2", "a2", "d2", None, None), (None, "a1", None, None, "p1"),
            (None, "a2", None, None, "p1")]
    merged = _map(_resolve(spark, rows, prev))
    assert set(merged.values()) == {"cB"}
    # split: cB's identifiers fall apart into {u2, a2, d2} (keeps cB) and {u1, a1} (new id)
    prev2 = spark.createDataFrame([(t, i, c) for (t, i), c in merged.items()],
                                  "identifier_type STRING, identifier STRING, customer_id STRING")
    rows2 = [("u1", "a1", None, None, None), ("u2", "a2", "d2", None, None)]
    split = _map(_resolve(spark, rows2, prev2))
    assert split[("user_id", "u2")] == split[("device_id", "d2")] == "cB"
    assert split[("user_id", "u1")] == split[("anonymous_id", "a1")] == _expected_id(spark, "1|user_id|u1")


def test_guard_excludes_shared_device_from_linking(spark):
    rows = [(f"u{i}", f"a{i}", "shared", None, None) for i in range(5)]
    m = _map(_resolve(spark, rows, max_persons=3))
    assert ("device_id", "shared") not in m
    assert len({m[("user_id", f"u{i}")] for i in range(5)}) == 5
    assert all(m[("user_id", f"u{i}")] == m[("anonymous_id", f"a{i}")] for i in range(5))
    # below the threshold the device links them all
    m2 = _map(_resolve(spark, rows, max_persons=5))
    assert len(set(m2.values())) == 1


def test_attach_customer_id_priority_and_excluded(spark):
    idmap = spark.createDataFrame(
        [("user_id", "u1", "c1"), ("anonymous_id", "a1", "c1"), ("anonymous_id", "a2", "c2"),
         ("device_id", "d3", "c3"), ("email", "e4", "c4")],
        "identifier_type STRING, identifier STRING, customer_id STRING")
    excluded = spark.createDataFrame([("anonymous_id", "shared")], "identifier_type STRING, identifier STRING")
    ev = spark.createDataFrame([
        ("k1", "u1", "a2", None, None, None),       # user_id wins
        ("k2", None, "a2", "d3", None, None),       # anonymous_id before device
        ("k3", None, "shared", "d3", None, None),   # excluded anonymous_id skipped -> device
        ("k4", None, None, None, "e4", None),
        ("k5", None, "unknown", None, None, None),  # not in the map -> null
    ], "event_key STRING, user_id STRING, anonymous_id STRING, device_id STRING, email_hash STRING, phone_hash STRING")
    got = {r["event_key"]: r["customer_id"] for r in contracts.attach_customer_id(ev, idmap, excluded).collect()}
    assert got == {"k1": "c1", "k2": "c2", "k3": "c3", "k4": "c4", "k5": None}
    no_ex = {r["event_key"]: r["customer_id"] for r in contracts.attach_customer_id(ev, idmap).collect()}
    assert no_ex["k3"] is None
    with pytest.raises(ValueError, match="missing required column"):
        contracts.attach_customer_id(ev.drop("phone_hash"), idmap)


def _events(spark, rows, ingested):
    out = []
    for i, (uid, anon, dev, email, consent) in enumerate(rows):
        out.append((f"e{ingested.day}-{i}", uid, anon, dev, email, None, "page_view", T0, consent, ingested))
    return spark.createDataFrame(out, EVENT_DDL)


@pytest.mark.slow
def test_run_full_then_incremental(spark, cfg):
    from seglake.core import tables
    batch1 = [("u1", "a1", "d1", None, True), ("u2", "a2", None, "e2", True), (None, "a3", "d3", None, True),
              ("u9", "a9", None, None, False)]  # consent=false: never linked
    tables.overwrite(_events(spark, batch1, datetime(2026, 8, 1)), cfg, "silver.events")
    s1 = identity.run(JobContext(spark, cfg, run_id="r1"))
    assert s1["mode"] == "full" and s1["customers"] == 3 and s1["identifiers"] == 8
    m1 = _map(tables.read(spark, cfg, identity.MAP_TABLE).select("identifier_type", "identifier", "customer_id"))
    assert ("user_id", "u9") not in m1
    # rerun without new data: same map
    s1b = identity.run(JobContext(spark, cfg, run_id="r1b"))
    assert s1b["mode"] == "incremental" and s1b["changed_identifiers"] == 0
    # batch 2 links a3 (anonymous) to u1 and adds a new person
    batch2 = [("u1", "a3", None, None, True), ("u5", "a5", None, None, True)]
    tables.append(_events(spark, batch2, datetime(2026, 8, 2)), cfg, "silver.events")
    s2 = identity.run(JobContext(spark, cfg, run_id="r2"))
    assert s2["mode"] == "incremental"
    m2 = _map(tables.read(spark, cfg, identity.MAP_TABLE).select("identifier_type", "identifier", "customer_id"))
    c1 = m1[("user_id", "u1")]
    assert m2[("anonymous_id", "a3")] == m2[("device_id", "d3")] == c1  # u1's customer (3 ids) absorbs a3's (2)
    assert m2[("user_id", "u2")] == m1[("user_id", "u2")]
    assert m2[("user_id", "u5")] == m2[("anonymous_id", "a5")] == _expected_id(spark, "1|user_id|u5")
    assert s2["customers"] == 3 and s2["identifiers"] == 10
    # a full rebuild gives the same map (stable ids)
    s3 = identity.run(JobContext(spark, cfg, run_id="r3", args={"full": True}))
    m3 = _map(tables.read(spark, cfg, identity.MAP_TABLE).select("identifier_type", "identifier", "customer_id"))
    assert s3["mode"] == "full" and m3 == m2


def _pair_scores(df):
    """Pairwise precision/recall of 'same person' from (person_id, customer_id) rows, via counts."""
    cells = df.groupBy("person_id", "customer_id").count()
    c2 = (F.col("count") * (F.col("count") - 1) / 2)
    tp = cells.agg(F.sum(c2)).first()[0] or 0
    pred = df.groupBy("customer_id").count().agg(F.sum(c2)).first()[0] or 0
    true = df.groupBy("person_id").count().agg(F.sum(c2)).first()[0] or 0
    return tp / pred, tp / true, true


@pytest.mark.slow
def test_identity_recovers_planted_persons(spark, pipeline_through):
    from seglake.core import pii, tables
    cfg, gen_dir = pipeline_through("identity")
    salt = pii.salt(cfg)
    gt = spark.read.parquet(str(gen_dir / "ground_truth" / "identifiers.parquet"))
    hashed = F.col("identifier_type").isin("device_id", "email", "phone")
    gt = gt.withColumn("identifier", F.when(hashed, pii.hash_identifier(F.col("identifier"), salt))
                       .otherwise(F.col("identifier")))
    shared = gt.filter(F.col("person_id").isNull())
    # identifiers the pipeline may use: those in consented silver events
    seen = identity.identity_nodes(identity.identifier_tuples(
        contracts.profiling_events(tables.read(spark, cfg, "silver.events"))))
    truth = gt.filter(F.col("person_id").isNotNull()).join(seen, ["identifier_type", "identifier"])
    idmap = tables.read(spark, cfg, identity.MAP_TABLE)
    # an identifier missing from the map counts as its own (wrong) customer
    joined = truth.join(idmap, ["identifier_type", "identifier"], "left").withColumn(
        "customer_id", F.coalesce("customer_id", F.concat(F.lit("missing:"), F.col("identifier"))))
    precision, recall, true_pairs = _pair_scores(joined)
    assert true_pairs > 1000
    assert precision >= 0.99, precision
    assert recall >= 0.99, recall
    # the planted shared kiosk devices were excluded by the guard and reported
    excluded = tables.read(spark, cfg, identity.EXCLUDED_TABLE)
    if shared.count():
        assert shared.join(excluded, ["identifier_type", "identifier"]).count() == \
            shared.join(seen, ["identifier_type", "identifier"]).count()
    summary = pipeline_through.summaries["identity"]
    assert summary["customers"] == idmap.select("customer_id").distinct().count()
