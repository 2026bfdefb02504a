"""The identity graph: identifiers as nodes, co-occurrence as edges, components named as customers.

Builds the nodes and edges from the distinct identifier combinations of events, applies the
giant-component guard (:func:`excluded_identifiers`, :func:`drop_excluded`), and turns the
connected components into stable customer ids (:func:`resolve`, :func:`assign_customer_ids`,
:func:`derive_customer_id`: keyed by the PII secret), ordering nodes by identifier type rank
(:func:`_node_key`).
"""
from __future__ import annotations

import logging

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from seglake.core.contracts import IDENTIFIERS, require_columns
from seglake.core.pii import hmac_sha256
from seglake.stages.identity.components import connected_components_with_rounds, graphframes_components

log = logging.getLogger(__name__)

_RANK = {t: i + 1 for i, (t, _) in enumerate(IDENTIFIERS)}
_CUSTOMER_NODE = "customer"  # virtual node type used by incremental runs (rank 0)


# --------------------------------------------------------------------------- helpers
def _rank_col(type_col: Column) -> Column:
    expr = F.lit(9)
    for t, rank in sorted(_RANK.items(), key=lambda kv: -kv[1]):
        expr = F.when(type_col == t, F.lit(rank)).otherwise(expr)
    return F.when(type_col == _CUSTOMER_NODE, F.lit(0)).otherwise(expr)


def _node_key(type_col: Column, id_col: Column) -> Column:
    """A string that orders nodes by type rank, then identifier (smallest user_id first)."""
    return F.concat(_rank_col(type_col).cast("string"), F.lit("|"), type_col, F.lit("|"), id_col)


def derive_customer_id(rep_key: Column, prefix: str, key: str) -> Column:
    """``prefix`` + first 20 hex characters of the HMAC-SHA256 of a component's representative key.

    Keyed by the PII secret (:func:`seglake.core.pii.key`), so a customer_id cannot be
    recomputed from a user_id without the key; the same key and data give the same ids.

    Args:
        rep_key: the representative node key (:func:`_node_key`, e.g. ``1|user_id|u42``).
        prefix: customer id prefix (``identity.customer_id_prefix``).
        key: the PII secret (non-empty).
    """
    return F.concat(F.lit(prefix), F.substring(hmac_sha256(rep_key, key), 1, 20))


# --------------------------------------------------------------------------- graph building
def identifier_tuples(events: DataFrame) -> DataFrame:
    """Distinct combinations of the identifier columns of silver-like ``events``.

    Args:
        events: needs user_id, anonymous_id, device_id, email_hash, phone_hash.

    Returns:
        One row per distinct (user_id, anonymous_id, device_id, email_hash, phone_hash).
    """
    cols = [c for _, c in IDENTIFIERS]
    require_columns(events, cols, "events")
    return events.select(*cols).distinct()


def identity_nodes(tuples: DataFrame) -> DataFrame:
    """Every non-null identifier of ``tuples`` as (identifier_type, identifier), distinct."""
    arr = F.array(*[F.struct(F.lit(t).alias("identifier_type"), F.col(c).alias("identifier"))
                    for t, c in IDENTIFIERS])
    return (tuples.select(F.explode(arr).alias("n")).select("n.*")
            .filter(F.col("identifier").isNotNull()).distinct())


def identity_edges(tuples: DataFrame) -> DataFrame:
    """Undirected edges between identifiers seen together: every pair of non-null ones.

    Each pair is written once, ordered by node key (src < dst).

    Returns:
        src_type, src, dst_type, dst (distinct).
    """
    pairs = []
    for i, (ti, ci) in enumerate(IDENTIFIERS):
        for tj, cj in IDENTIFIERS[i + 1:]:
            pairs.append(F.when(F.col(ci).isNotNull() & F.col(cj).isNotNull(),
                                F.struct(F.lit(ti).alias("src_type"), F.col(ci).alias("src"),
                                         F.lit(tj).alias("dst_type"), F.col(cj).alias("dst"))))
    return (tuples.select(F.explode(F.array(*pairs)).alias("e")).filter(F.col("e").isNotNull())
            .select("e.*").distinct())


def guard_counts(edges: DataFrame) -> DataFrame:
    """Distinct user_ids linked to each non-user identifier.

    Returns:
        identifier_type, identifier, n_user_ids.
    """
    uid = edges.filter(F.col("src_type") == "user_id")  # user_id has the smallest rank: always src
    return (uid.groupBy(F.col("dst_type").alias("identifier_type"), F.col("dst").alias("identifier"))
            .agg(F.countDistinct("src").alias("n_user_ids")))


def excluded_identifiers(edges: DataFrame, max_persons: int) -> DataFrame:
    """Identifiers linked to more than ``max_persons`` distinct user_ids (the guard)."""
    if max_persons < 1:
        raise ValueError(f"identity.max_persons_per_identifier must be >= 1, got {max_persons}")
    return guard_counts(edges).filter(F.col("n_user_ids") > max_persons)


def drop_excluded(edges: DataFrame, excluded: DataFrame) -> DataFrame:
    """Edges with neither end in ``excluded`` (small: broadcast)."""
    ex = F.broadcast(excluded.select("identifier_type", "identifier"))
    out = edges.join(ex.withColumnRenamed("identifier_type", "src_type").withColumnRenamed("identifier", "src"),
                     ["src_type", "src"], "left_anti")
    return out.join(ex.withColumnRenamed("identifier_type", "dst_type").withColumnRenamed("identifier", "dst"),
                    ["dst_type", "dst"], "left_anti")


# --------------------------------------------------------------------------- customer ids
def assign_customer_ids(components: DataFrame, previous: DataFrame | None, prefix: str = "c_",
                        customer_sizes: DataFrame | None = None, *, key: str) -> DataFrame:
    """Name components with stable customer ids.

    Args:
        components: identifier_type, identifier, component (any id); may contain virtual
            nodes of type ``customer`` whose identifier is a previous customer_id.
        previous: the previous identity map (identifier_type, identifier, customer_id) or None.
        prefix: customer id prefix.
        customer_sizes: customer_id, n (identifiers held) for the virtual nodes; a virtual
            node without a size counts as 1.
        key: the PII secret keying new customer ids (:func:`derive_customer_id`).

    Returns:
        identifier_type, identifier, customer_id for every real (non-virtual) identifier.
    """
    require_columns(components, ["identifier_type", "identifier", "component"], "components")
    comp = components.withColumn("_key", _node_key(F.col("identifier_type"), F.col("identifier")))
    reps = (comp.filter(F.col("identifier_type") != _CUSTOMER_NODE)
            .groupBy("component").agg(F.min("_key").alias("_rep")))
    # previous customer ids per component, with the number of identifiers they hold there
    virt = (comp.filter(F.col("identifier_type") == _CUSTOMER_NODE)
            .select("component", F.col("identifier").alias("prev_id")))
    if customer_sizes is not None:
        virt = virt.join(customer_sizes.select(F.col("customer_id").alias("prev_id"), F.col("n").cast("long").alias("_n")),
                         "prev_id", "left")
    else:
        virt = virt.withColumn("_n", F.lit(None).cast("long"))
    virt = virt.select("component", "prev_id", F.coalesce("_n", F.lit(1).cast("long")).alias("_n"))
    if previous is not None:
        held = (comp.filter(F.col("identifier_type") != _CUSTOMER_NODE)
                .join(previous.select("identifier_type", "identifier", F.col("customer_id").alias("prev_id")),
                      ["identifier_type", "identifier"])
                .groupBy("component", "prev_id").agg(F.count(F.lit(1)).alias("_n")))
        cand = held.unionByName(virt)
    else:
        cand = virt
    # a virtual node stands for all identifiers of that previous customer
    cand = cand.groupBy("component", "prev_id").agg(F.max("_n").alias("_n"))
    cand = cand.join(reps, "component")
    # each previous id goes to the component holding most of its identifiers (split rule)
    best_comp = cand.withColumn("_r", F.row_number().over(
        Window.partitionBy("prev_id").orderBy(F.desc("_n"), F.asc("_rep")))).filter("_r = 1")
    # each component keeps the previous id holding most of its identifiers (merge rule)
    kept = (best_comp.withColumn("_r", F.row_number().over(
        Window.partitionBy("component").orderBy(F.desc("_n"), F.asc("prev_id")))).filter("_r = 1")
        .select("component", F.col("prev_id").alias("kept_id")))
    named = reps.join(kept, "component", "left")
    fresh = derive_customer_id(F.col("_rep"), prefix, key)
    named = named.withColumn("_fresh", fresh)
    # a fresh id equal to an id kept by another component (split of a component named from
    # this representative) gets a second, distinct derivation
    taken = kept.select(F.col("kept_id").alias("_fresh"), F.col("component").alias("_holder"))
    named = named.join(taken, "_fresh", "left")
    clash = F.col("_holder").isNotNull() & (F.col("_holder") != F.col("component"))
    split_id = derive_customer_id(F.concat(F.col("_rep"), F.lit("|split")), prefix, key)
    named = named.withColumn("customer_id", F.coalesce(
        F.col("kept_id"), F.when(clash, split_id).otherwise(F.col("_fresh"))))
    return (comp.filter(F.col("identifier_type") != _CUSTOMER_NODE)
            .join(named.select("component", "customer_id"), "component")
            .select("identifier_type", "identifier", "customer_id"))


def resolve(edges: DataFrame, nodes: DataFrame, previous: DataFrame | None = None, prefix: str = "c_",
            max_iterations: int = 50, checkpoint_interval: int = 1,
            engine: str = "native", customer_sizes: DataFrame | None = None, *,
            key: str) -> tuple[DataFrame, int]:
    """Components of (nodes, edges) named with stable customer ids.

    Args:
        edges: src_type, src, dst_type, dst (already without excluded identifiers).
        nodes: identifier_type, identifier (every node, isolated ones included).
        previous: previous identity map, or None.
        key: the PII secret keying new customer ids (:func:`derive_customer_id`).

    Returns:
        (identity map: identifier_type, identifier, customer_id; rounds taken (0 for graphframes)).
    """
    if not isinstance(key, str) or not key:
        raise ValueError("resolve needs a non-empty key string (the PII secret, seglake.core.pii.key)")
    node_id = F.xxhash64("identifier_type", "identifier")
    all_nodes = nodes.select("identifier_type", "identifier").unionByName(
        edges.select(F.col("src_type").alias("identifier_type"), F.col("src").alias("identifier"))).unionByName(
        edges.select(F.col("dst_type").alias("identifier_type"), F.col("dst").alias("identifier"))).distinct()
    # read three times (collision check, self-loops, naming): materialized once
    all_nodes = all_nodes.withColumn("nid", node_id).localCheckpoint()
    # 64-bit ids: a collision would link two strangers, so check (one small aggregate)
    collisions = all_nodes.groupBy("nid").count().filter("count > 1").limit(1).count()
    if collisions:
        log.warning("identity: 64-bit node id collision; falling back to string node ids")
        all_nodes = all_nodes.withColumn("nid", _node_key(F.col("identifier_type"), F.col("identifier")))
        node_id_of = _node_key
    else:
        def node_id_of(t: Column, i: Column) -> Column:
            return F.xxhash64(t, i)
    e = edges.select(node_id_of(F.col("src_type"), F.col("src")).alias("src"),
                     node_id_of(F.col("dst_type"), F.col("dst")).alias("dst"))
    loops = all_nodes.select(F.col("nid").alias("src"), F.col("nid").alias("dst"))
    graph = e.unionByName(loops)
    if engine == "native":
        cc, rounds = connected_components_with_rounds(graph, max_iterations, checkpoint_interval)
    elif engine == "graphframes":
        cc, rounds = graphframes_components(graph, max_iterations), 0
    else:
        raise ValueError(f"identity.engine must be 'native' or 'graphframes', got {engine!r}")
    # one row per identifier; assign_customer_ids reads it four times (representatives, previous
    # ids, virtual nodes, the final map): materialized once instead of re-running the rounds' plan
    comps = (all_nodes.join(cc, all_nodes["nid"] == cc["id"])
             .select("identifier_type", "identifier", "component").localCheckpoint())
    return assign_customer_ids(comps, previous, prefix, customer_sizes, key=key), rounds
