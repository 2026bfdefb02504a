"""Identity resolution: every identifier of silver.events -> one ``customer_id``.

Identifiers seen together in one event (user_id, anonymous_id, device_id, hashed email,
hashed phone) are linked; the connected components of that graph are the customers.

* **Graph**: every distinct combination of identifiers in (consented) events gives the
  pairs of its non-null identifiers as undirected edges (a clique of at most 5 nodes).
* **Giant-component guard**: a non-user identifier seen together with more than
  ``identity.max_persons_per_identifier`` distinct user_ids (a shared device, a family
  email, a test cookie) is excluded from linking and reported in
  ``silver.identity_excluded``; it gets no customer_id of its own.
* **Connected components**: :func:`connected_components` runs natively on DataFrames
  (large-star / small-star, Kiveris et al. 2014: O(log n) rounds, built-in functions only,
  the edge set checkpointed every round, convergence = the edge set's checksum stops
  changing). ``identity.engine: graphframes`` uses GraphFrames' connectedComponents
  instead when its JVM jar is on the classpath.
* **Stable customer_id**: a new component is named ``<prefix> + sha-256(smallest user_id
  of the component)[:20]`` (components without any user_id: the smallest identifier, by
  type rank anonymous_id < device_id < email < phone). When a previous map exists, a
  component keeps the previous customer_id of its identifiers. *Merge* (one new component
  holds identifiers of several previous customers): the previous customer holding the most
  identifiers keeps its id (ties: the smallest id) and the others are retired (their
  identifiers are remapped; the mapping old -> new is in the run summary). *Split* (a
  previous customer's identifiers end up in several components, e.g. after the guard
  excluded a new shared identifier): the part holding most of them keeps the id, the other
  parts get new ids.
* **Incremental**: the run remembers the highest ``_ingested_at`` of silver.events it has
  linked (``ops.identity_runs``) and the distinct edges (``silver.identity_edges``). A
  later run links only the new edges, attached to the previous customers by virtual
  ``customer`` nodes; if the guard's excluded set changes, it rebuilds everything from the
  stored edges (no events rescan).

Tables: silver.identity_map (identifier_type, identifier, customer_id, _run_id),
silver.identity_edges, silver.identity_excluded, ops.identity_runs.
"""
from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from seglake.core.contracts import (CONSENT_RULE, IDENTIFIERS, IDENTITY_EDGES, IDENTITY_EXCLUDED, IDENTITY_MAP,
                                    IDENTITY_RUNS, SILVER_EVENTS, profiling_events,
                                    require_columns)

log = logging.getLogger(__name__)

_RANK = {t: i + 1 for i, (t, _) in enumerate(IDENTIFIERS)}
_CUSTOMER_NODE = "customer"  # virtual node type used by incremental runs (rank 0)

MAP_TABLE = IDENTITY_MAP
EDGES_TABLE = IDENTITY_EDGES
EXCLUDED_TABLE = IDENTITY_EXCLUDED
RUNS_TABLE = IDENTITY_RUNS


class ConvergenceError(RuntimeError):
    """Connected components did not converge within the allowed rounds."""


# --------------------------------------------------------------------------- helpers
def _rank_col(type_col: Column) -> Column:
    expr = F.lit(9)
    for t, rank in sorted(_RANK.items(), key=lambda kv: -kv[1]):
        expr = F.when(type_col == t, F.lit(rank)).otherwise(expr)
    return F.when(type_col == _CUSTOMER_NODE, F.lit(0)).otherwise(expr)


def _node_key(type_col: Column, id_col: Column) -> Column:
    """A string that orders nodes by type rank, then identifier (smallest user_id first)."""
    return F.concat(_rank_col(type_col).cast("string"), F.lit("|"), type_col, F.lit("|"), id_col)


def derive_customer_id(rep_key: Column, prefix: str) -> Column:
    """``prefix`` + first 20 hex characters of sha-256 of a component's representative key."""
    return F.concat(F.lit(prefix), F.substring(F.sha2(rep_key, 256), 1, 20))


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


# --------------------------------------------------------------------------- connected components
def _large_star(e: DataFrame) -> DataFrame:
    both = e.select(F.col("src").alias("u"), F.col("dst").alias("v")).unionByName(
        e.select(F.col("dst").alias("u"), F.col("src").alias("v")))
    m = F.least(F.min("v").over(Window.partitionBy("u")), F.col("u"))
    # no distinct here: the small-star that follows is indifferent to duplicates and ends in one
    return (both.withColumn("m", m).filter(F.col("v") > F.col("u"))
            .select(F.col("v").alias("src"), F.col("m").alias("dst")))


def _small_star(e: DataFrame) -> DataFrame:
    o = e.select(F.greatest("src", "dst").alias("u"), F.least("src", "dst").alias("v"))
    o = o.withColumn("m", F.min("v").over(Window.partitionBy("u")))
    pairs = F.array(F.struct(F.col("u").alias("src"), F.col("m").alias("dst")),
                    F.struct(F.col("v").alias("src"), F.col("m").alias("dst")))
    return (o.select(F.explode(pairs).alias("p")).select("p.*")
            .filter(F.col("src") != F.col("dst")).distinct())


def _checksum(e: DataFrame) -> tuple[int, Any]:
    # One aggregate row per round (small): edge count and an order-free checksum of the set.
    row = e.agg(F.count(F.lit(1)).alias("n"),
                F.sum(F.xxhash64("src", "dst").cast("decimal(38,0)")).alias("h")).first()
    return int(row["n"]), row["h"]


def connected_components_with_rounds(edges: DataFrame, max_iterations: int = 50,
                                     checkpoint_interval: int = 1) -> tuple[DataFrame, int]:
    """:func:`connected_components` plus the number of rounds it took."""
    require_columns(edges, ["src", "dst"], "edges")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    if checkpoint_interval < 1:
        raise ValueError(f"checkpoint_interval must be >= 1, got {checkpoint_interval}")
    e0 = edges.select("src", "dst")
    nodes = e0.select(F.col("src").alias("id")).unionByName(e0.select(F.col("dst").alias("id"))).distinct()
    e = (e0.filter(F.col("src") != F.col("dst"))
         .select(F.greatest("src", "dst").alias("src"), F.least("src", "dst").alias("dst")).distinct())
    # lazy local checkpoints: the checksum job of each round materializes them (one job a round)
    e = e.localCheckpoint(eager=False)
    previous = _checksum(e)
    rounds = 0
    cached: list[DataFrame] = []
    while True:
        rounds += 1
        if rounds > max_iterations:
            raise ConvergenceError(
                f"connected components did not converge in {max_iterations} rounds "
                "(identity.max_iterations); raise it or check the guard")
        e = _small_star(_large_star(e))
        if rounds % checkpoint_interval == 0:
            e = e.localCheckpoint(eager=False)  # cuts the plan; edges only (small next to events)
        else:
            e = e.persist()
            cached.append(e)
        current = _checksum(e)
        if current == previous:
            break
        previous = current
    # Converged: a star forest, every non-root node -> its component's minimum.
    stars = e.groupBy("src").agg(F.min("dst").alias("root"))
    result = (nodes.join(stars, nodes["id"] == stars["src"], "left")
              .select(F.col("id"), F.coalesce(F.col("root"), F.col("id")).alias("component")))
    for df in cached:
        df.unpersist()
    return result, rounds


def connected_components(edges: DataFrame, max_iterations: int = 50,
                         checkpoint_interval: int = 1) -> DataFrame:
    """Connected components of an undirected graph, natively on DataFrames.

    Large-star / small-star rounds until the edge set stops changing. Node ids may be of any
    orderable type (long is fastest). A self-loop ``(a, a)`` adds an isolated node.

    Args:
        edges: src, dst (one row per undirected edge, either orientation, duplicates ok).
        max_iterations: rounds before :class:`ConvergenceError`.
        checkpoint_interval: local-checkpoint the edge set every this many rounds.

    Returns:
        id, component (= the smallest id of the component), one row per node.
    """
    return connected_components_with_rounds(edges, max_iterations, checkpoint_interval)[0]


def graphframes_components(edges: DataFrame, max_iterations: int = 50) -> DataFrame:
    """GraphFrames' connectedComponents on the same (src, dst) edges; same output columns.

    Raises:
        RuntimeError: graphframes-py is not installed or its JVM jar is not on the classpath.
    """
    require_columns(edges, ["src", "dst"], "edges")
    try:
        from graphframes import GraphFrame
    except ImportError as exc:
        raise RuntimeError("identity.engine is 'graphframes' but the graphframes package is not installed; "
                           "use identity.engine: native") from exc
    e0 = edges.select("src", "dst")
    vertices = e0.select(F.col("src").alias("id")).unionByName(e0.select(F.col("dst").alias("id"))).distinct()
    try:
        g = GraphFrame(vertices, e0.filter(F.col("src") != F.col("dst")))
        out = g.connectedComponents(maxIter=max_iterations)
    except Exception as exc:  # py4j: class org.graphframes.* not found when the jar is missing
        if "graphframes" in str(exc).lower() or "ClassNotFound" in str(exc):
            raise RuntimeError(
                "identity.engine is 'graphframes' but the GraphFrames JVM jar "
                "(io.graphframes:graphframes-spark4_2.13) is not on Spark's classpath; add it with "
                "--packages/spark.jars or use identity.engine: native") from None
        raise
    # GraphFrames labels components by some vertex id; relabel by the minimum for parity.
    w = Window.partitionBy("component")
    return out.select("id", F.min("id").over(w).alias("component"))


# --------------------------------------------------------------------------- customer ids
def assign_customer_ids(components: DataFrame, previous: DataFrame | None, prefix: str = "c_",
                        customer_sizes: DataFrame | None = None) -> DataFrame:
    """Name components with stable customer ids.

    Args:
        components: identifier_type, identifier, component (any id); may contain virtual
            nodes of type ``customer`` whose identifier is a previous customer_id.
        previous: the previous identity map (identifier_type, identifier, customer_id) or None.
        prefix: customer id prefix.
        customer_sizes: customer_id, n (identifiers held) for the virtual nodes; a virtual
            node without a size counts as 1.

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
    fresh = derive_customer_id(F.col("_rep"), prefix)
    named = named.withColumn("_fresh", fresh)
    # a fresh id equal to an id kept by another component (split of a component named from
    # this representative) gets a second, distinct derivation
    taken = kept.select(F.col("kept_id").alias("_fresh"), F.col("component").alias("_holder"))
    named = named.join(taken, "_fresh", "left")
    clash = F.col("_holder").isNotNull() & (F.col("_holder") != F.col("component"))
    named = named.withColumn("customer_id", F.coalesce(
        F.col("kept_id"),
        F.when(clash, derive_customer_id(F.concat(F.col("_rep"), F.lit("|split")), prefix)).otherwise(F.col("_fresh"))))
    return (comp.filter(F.col("identifier_type") != _CUSTOMER_NODE)
            .join(named.select("component", "customer_id"), "component")
            .select("identifier_type", "identifier", "customer_id"))


def resolve(edges: DataFrame, nodes: DataFrame, previous: DataFrame | None = None, prefix: str = "c_",
            max_iterations: int = 50, checkpoint_interval: int = 1,
            engine: str = "native", customer_sizes: DataFrame | None = None) -> tuple[DataFrame, int]:
    """Components of (nodes, edges) named with stable customer ids.

    Args:
        edges: src_type, src, dst_type, dst (already without excluded identifiers).
        nodes: identifier_type, identifier (every node, isolated ones included).
        previous: previous identity map, or None.

    Returns:
        (identity map: identifier_type, identifier, customer_id; rounds taken (0 for graphframes)).
    """
    node_id = F.xxhash64("identifier_type", "identifier")
    all_nodes = nodes.select("identifier_type", "identifier").unionByName(
        edges.select(F.col("src_type").alias("identifier_type"), F.col("src").alias("identifier"))).unionByName(
        edges.select(F.col("dst_type").alias("identifier_type"), F.col("dst").alias("identifier"))).distinct()
    all_nodes = all_nodes.withColumn("nid", node_id)
    # 64-bit ids: a collision would link two strangers, so check (one small aggregate)
    collisions = all_nodes.groupBy("nid").count().filter("count > 1").limit(1).count()
    if collisions:
        log.warning("identity: 64-bit node id collision; falling back to string node ids")
        all_nodes = all_nodes.withColumn("nid", _node_key(F.col("identifier_type"), F.col("identifier")))
        key = _node_key
    else:
        def key(t: Column, i: Column) -> Column:
            return F.xxhash64(t, i)
    e = edges.select(key(F.col("src_type"), F.col("src")).alias("src"),
                     key(F.col("dst_type"), F.col("dst")).alias("dst"))
    loops = all_nodes.select(F.col("nid").alias("src"), F.col("nid").alias("dst"))
    graph = e.unionByName(loops)
    if engine == "native":
        cc, rounds = connected_components_with_rounds(graph, max_iterations, checkpoint_interval)
    elif engine == "graphframes":
        cc, rounds = graphframes_components(graph, max_iterations), 0
    else:
        raise ValueError(f"identity.engine must be 'native' or 'graphframes', got {engine!r}")
    comps = all_nodes.join(cc, all_nodes["nid"] == cc["id"]).select("identifier_type", "identifier", "component")
    return assign_customer_ids(comps, previous, prefix, customer_sizes), rounds


# --------------------------------------------------------------------------- job
def _last_run(spark: SparkSession, cfg) -> dict | None:
    from seglake.core import tables
    if not tables.exists(spark, cfg, RUNS_TABLE):
        return None
    # one row: the latest run (the runs table has one row per identity run: small)
    row = tables.read(spark, cfg, RUNS_TABLE).orderBy(F.desc("finished_at")).first()
    return row.asDict() if row else None


def run(ctx) -> dict:
    """``seglake run identity``: build or update silver.identity_map."""
    from seglake.core import tables
    spark, cfg = ctx.spark, ctx.cfg
    icfg = cfg["identity"]
    prefix = icfg["customer_id_prefix"]
    max_persons = int(icfg["max_persons_per_identifier"])
    events_all = tables.read(spark, cfg, SILVER_EVENTS)
    events, consent_via = profiling_events(events_all), CONSENT_RULE
    last = _last_run(spark, cfg)
    have_map = tables.exists(spark, cfg, MAP_TABLE) and tables.exists(spark, cfg, EDGES_TABLE)
    incremental = bool(icfg["incremental"]) and last is not None and have_map \
        and last.get("watermark") is not None and "_ingested_at" in events.columns
    if ctx.args.get("full"):
        incremental = False
    watermark = events_all.agg(F.max("_ingested_at").alias("w")).first()["w"] \
        if "_ingested_at" in events_all.columns else None
    summary: dict[str, Any] = {}

    if incremental:
        new_events = events.filter(F.col("_ingested_at") > F.lit(last["watermark"]))
        tuples = identifier_tuples(new_events).localCheckpoint()
        old_edges = tables.read(spark, cfg, EDGES_TABLE)
        new_edges = identity_edges(tuples).join(old_edges, ["src_type", "src", "dst_type", "dst"], "left_anti")
        new_edges = new_edges.localCheckpoint()
        previous = tables.read(spark, cfg, MAP_TABLE).select("identifier_type", "identifier", "customer_id")
        old_ex = (tables.read(spark, cfg, EXCLUDED_TABLE).select("identifier_type", "identifier")
                  if tables.exists(spark, cfg, EXCLUDED_TABLE) else None)
        touched = new_edges.filter(F.col("src_type") == "user_id").select(
            F.col("dst_type").alias("identifier_type"), F.col("dst").alias("identifier")).distinct()
        all_edges = old_edges.unionByName(new_edges)
        ex_touched = excluded_identifiers(
            all_edges.join(F.broadcast(touched.withColumnRenamed("identifier_type", "dst_type")
                                       .withColumnRenamed("identifier", "dst")), ["dst_type", "dst"]),
            max_persons)
        newly = ex_touched.select("identifier_type", "identifier")
        if old_ex is not None:
            newly = newly.join(old_ex, ["identifier_type", "identifier"], "left_anti")
        if newly.limit(1).count() > 0:
            incremental = False
            summary["rebuild_reason"] = "guard excluded new identifiers"
        else:
            excluded = old_ex if old_ex is not None else ex_touched.select("identifier_type", "identifier")
            nodes = identity_nodes(tuples).join(F.broadcast(excluded), ["identifier_type", "identifier"],
                                                "left_anti")
            kept_edges = drop_excluded(new_edges, excluded)
            new_nodes = nodes.join(previous.select("identifier_type", "identifier"),
                                   ["identifier_type", "identifier"], "left_anti")
            if kept_edges.limit(1).count() == 0 and new_nodes.limit(1).count() == 0:
                summary.update({"mode": "incremental", "new_edges": 0, "changed_identifiers": 0})
                _log_run(spark, cfg, ctx.run_id, "incremental", watermark)
                return _finish(spark, cfg, summary, consent_via)
            # attach touched identifiers to their previous customers via virtual nodes
            ends = kept_edges.select(F.col("src_type").alias("identifier_type"), F.col("src").alias("identifier")) \
                .unionByName(kept_edges.select(F.col("dst_type").alias("identifier_type"),
                                               F.col("dst").alias("identifier"))) \
                .unionByName(nodes).distinct()
            links = ends.join(previous, ["identifier_type", "identifier"]).select(
                "identifier_type", "identifier", F.col("customer_id"))
            virt_edges = links.select(F.lit(_CUSTOMER_NODE).alias("src_type"), F.col("customer_id").alias("src"),
                                      F.col("identifier_type").alias("dst_type"), F.col("identifier").alias("dst"))
            graph_edges = kept_edges.unionByName(virt_edges)
            involved = links.select("customer_id").distinct()
            sizes = previous.join(involved, "customer_id").groupBy("customer_id") \
                .agg(F.count(F.lit(1)).alias("n"))
            local_map, rounds = resolve(graph_edges, nodes, previous=None, prefix=prefix,
                                        max_iterations=int(icfg["max_iterations"]),
                                        checkpoint_interval=int(icfg["checkpoint_interval"]),
                                        engine=icfg["engine"], customer_sizes=sizes)
            local_map = local_map.localCheckpoint()
            # customers retired by a merge: all their identifiers move to the winner
            retired = (links.select(F.col("customer_id").alias("old_id"), "identifier_type", "identifier")
                       .join(local_map.withColumnRenamed("customer_id", "new_id"),
                             ["identifier_type", "identifier"])
                       .filter(F.col("old_id") != F.col("new_id")).select("old_id", "new_id").distinct())
            moved = previous.join(retired.withColumnRenamed("old_id", "customer_id"), "customer_id") \
                .select("identifier_type", "identifier", F.col("new_id").alias("customer_id"))
            changes = local_map.unionByName(moved).dropDuplicates(["identifier_type", "identifier"]) \
                .withColumn("_run_id", F.lit(ctx.run_id))
            n_changes = changes.count()
            tables.merge(spark, changes, cfg, MAP_TABLE, ["identifier_type", "identifier"], update=True)
            tables.merge(spark, new_edges, cfg, EDGES_TABLE, ["src_type", "src", "dst_type", "dst"])
            summary.update({"mode": "incremental", "new_edges": new_edges.count(),
                            "changed_identifiers": n_changes, "merged_customers": retired.count(),
                            "cc_rounds": rounds})
            _log_run(spark, cfg, ctx.run_id, "incremental", watermark)
            return _finish(spark, cfg, summary, consent_via)

    # full build (first run, --full, or the guard changed)
    if tables.exists(spark, cfg, EDGES_TABLE) and summary.get("rebuild_reason"):
        edges_all = tables.read(spark, cfg, EDGES_TABLE).unionByName(new_edges).distinct()
        nodes_all = tables.read(spark, cfg, MAP_TABLE).select("identifier_type", "identifier") \
            .unionByName(identity_nodes(tuples)).distinct()
    else:
        tuples = identifier_tuples(events).localCheckpoint()  # distinct id combinations: read twice
        edges_all = identity_edges(tuples)
        nodes_all = identity_nodes(tuples)
    edges_all = edges_all.localCheckpoint()
    excluded = excluded_identifiers(edges_all, max_persons).localCheckpoint()
    nodes = nodes_all.join(F.broadcast(excluded.select("identifier_type", "identifier")),
                           ["identifier_type", "identifier"], "left_anti")
    previous = (tables.read(spark, cfg, MAP_TABLE).select("identifier_type", "identifier", "customer_id")
                .localCheckpoint() if tables.exists(spark, cfg, MAP_TABLE) else None)
    idmap, rounds = resolve(drop_excluded(edges_all, excluded), nodes, previous, prefix,
                            int(icfg["max_iterations"]), int(icfg["checkpoint_interval"]), icfg["engine"])
    idmap = idmap.withColumn("_run_id", F.lit(ctx.run_id)).localCheckpoint()
    if previous is not None:
        retired = previous.select("customer_id").distinct().join(idmap.select("customer_id").distinct(),
                                                                 "customer_id", "left_anti").count()
        summary["retired_customer_ids"] = retired
    tables.overwrite(idmap, cfg, MAP_TABLE)
    tables.overwrite(edges_all, cfg, EDGES_TABLE)
    tables.overwrite(excluded.withColumn("_run_id", F.lit(ctx.run_id)), cfg, EXCLUDED_TABLE)
    summary = {"mode": "full", **summary, "edges": edges_all.count(), "cc_rounds": rounds}
    _log_run(spark, cfg, ctx.run_id, "full", watermark)
    return _finish(spark, cfg, summary, consent_via)


def _log_run(spark: SparkSession, cfg, run_id: str, mode: str, watermark) -> None:
    from datetime import datetime, timezone

    from seglake.core import tables
    row = spark.createDataFrame(
        [(run_id, mode, watermark, datetime.now(timezone.utc).replace(tzinfo=None))],
        "run_id STRING, mode STRING, watermark TIMESTAMP, finished_at TIMESTAMP")
    tables.append(row, cfg, RUNS_TABLE)


def _finish(spark: SparkSession, cfg, summary: dict, consent_via: str) -> dict:
    from seglake.core import tables
    idmap = tables.read(spark, cfg, MAP_TABLE)
    stats = idmap.agg(F.count(F.lit(1)).alias("ids"), F.countDistinct("customer_id").alias("customers")).first()
    n_ex = tables.read(spark, cfg, EXCLUDED_TABLE).count() if tables.exists(spark, cfg, EXCLUDED_TABLE) else 0
    out = {"customers": int(stats["customers"]), "identifiers": int(stats["ids"]), "excluded_identifiers": n_ex}
    out.update(summary)
    out["consent"] = consent_via
    return out


def add_arguments(parser) -> None:
    """``--full``: rebuild the whole map from silver.events instead of an incremental run."""
    parser.add_argument("--full", action="store_true", help="rebuild the identity map from all events")
