"""The journey graph, natively on DataFrames: weighted edges, PageRank, chain motifs.

Why not GraphFrames: the ``graphframes`` Python package imports, but its JVM jar
(``io.graphframes:graphframes-spark4_2.13``) is not obtainable from the Maven mirror this
project builds against, and every GraphFrame call needs those JVM classes. The two things
the stage needs are small DataFrame programs, so they are written here with joins and
aggregations (they run unchanged on a cluster and on Spark Connect):

* :func:`pagerank` — weighted PageRank by power iteration (same definition as
  ``networkx.pagerank(G, alpha=d, weight="weight")``: transition probabilities proportional
  to edge weights, dangling vertices spread their rank uniformly, ranks sum to 1). The
  edges are aggregated in Spark; a graph of at most ``driver_max_edges`` edges (pages or
  states: a few thousand vertices, whatever the number of events) is then iterated on the
  driver with numpy, a larger one by joins in Spark;
* :func:`find_chain` — the equivalent of ``GraphFrame.find("(a)-[e1]->(b); (b)-[e2]->(c)")``
  with state filters on a, b, c: self-joins of the edge DataFrame on ``e1.dst = e2.src``.
  Every vertex of the event-level journey graph has one in- and one out-edge (a journey is a
  path), so its matches are the chain's occurrences as consecutive states of a journey's path:
  the journeys job counts them from the states the journey summaries collect anyway
  (``journey_summaries(motif=...)``, then :func:`motif_totals`), which gives the same numbers
  (``tests/test_journey_graph.py`` checks both against plain Python) without a self-join of
  every edge.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from seglake.core.contracts import require_columns
from seglake.stages.journeys.states import ALL, EVENT_ORDER, StateSpec, _journey_window

log = logging.getLogger(__name__)

#: default of ``pagerank(driver_max_edges=...)`` (``journeys.pagerank_driver_max_edges``)
DRIVER_MAX_EDGES = 2_000_000
_RANKS_SCHEMA = "vertex string, pagerank double, rank int"


def page_edges(events: DataFrame) -> DataFrame:
    """Weighted page-to-page edges: consecutive page events of the same session.

    Args:
        events: sessionized events with ``customer_id, session_key, event_ts, session_seq, event_seq,
            page_url`` (events without a page_url are skipped, so the edge links the previous
            page seen; pages follow each other in ``EVENT_ORDER``, a total order).

    Returns:
        ``src, dst, weight`` (LONG): how often ``dst`` was the next page after ``src``.
    """
    require_columns(events, ["customer_id", "session_key", *EVENT_ORDER, "page_url"], "page_edges")
    w = Window.partitionBy("customer_id", "session_key").orderBy(*EVENT_ORDER)
    pages = events.where(F.col("page_url").isNotNull() & (F.length("page_url") > 0))
    return (pages.select(F.lag("page_url").over(w).alias("src"), F.col("page_url").alias("dst"))
            .where(F.col("src").isNotNull())
            .groupBy("src", "dst").agg(F.count(F.lit(1)).alias("weight")))


def state_edges(matrix: DataFrame) -> DataFrame:
    """Weighted state-to-state edges from the overall first-order rows of ``gold.transition_matrix``."""
    require_columns(matrix, ["order", "segment", "channel", "from_state", "to_state", "count"], "state_edges")
    return (matrix.where((F.col("order") == 1) & (F.col("segment") == ALL) & (F.col("channel") == ALL))
            .select(F.col("from_state").alias("src"), F.col("to_state").alias("dst"),
                    F.col("count").cast("long").alias("weight")))


def pagerank(edges: DataFrame, damping: float = 0.85, max_iter: int = 50, tol: float = 1e-8,
             check_every: int = 5, driver_max_edges: int = DRIVER_MAX_EDGES) -> DataFrame:
    """Weighted PageRank by power iteration.

    ``r'(v) = (1 - d) / n + d * (sum_u r(u) * w(u, v) / W(u) + D / n)`` where ``W(u)`` is u's
    total out-weight and ``D`` the rank held by vertices without out-edges. Stops when the L1
    change of one iteration is below ``n * tol`` (networkx's rule) or after ``max_iter``
    iterations.

    The edges are aggregated in Spark (parallel edges summed). When there are at most
    ``driver_max_edges`` of them they are fetched with one bounded Arrow collect and iterated
    on the driver with numpy (convergence tested every iteration); otherwise (or when
    ``driver_max_edges <= 0``) the iteration runs on DataFrames, see :func:`_pagerank_spark`.

    Args:
        edges: ``src, dst, weight`` (weights > 0; parallel edges are summed; rows with a null
            ``src`` or ``dst`` are ignored).
        damping: the damping factor d (0 < d < 1).
        max_iter: iteration cap.
        tol: per-vertex tolerance.
        check_every: Spark path only: iterations between convergence tests.
        driver_max_edges: largest aggregated edge count iterated on the driver (0 = always Spark).

    Returns:
        ``vertex, pagerank, rank`` (rank 1 = highest PageRank, ties by vertex ascending);
        empty when there are no edges.
    """
    require_columns(edges, ["src", "dst", "weight"], "pagerank")
    if not 0.0 < damping < 1.0:
        raise ValueError(f"pagerank: damping must be between 0 and 1, got {damping}")
    edges = (edges.where(F.col("src").isNotNull() & F.col("dst").isNotNull() & (F.col("weight") > 0))
             .groupBy(F.col("src").cast("string").alias("src"), F.col("dst").cast("string").alias("dst"))
             .agg(F.sum("weight").cast("double").alias("weight")))
    if driver_max_edges > 0:
        # bounded: at most driver_max_edges + 1 rows, fetched as Arrow columns and turned into
        # vertex indices with Arrow compute (no Python object per edge: a collect() of Row
        # objects cost 15 s for 500k edges at 10M events)
        table = edges.limit(driver_max_edges + 1).toArrow()
        if table.num_rows <= driver_max_edges:
            ranked, iterations = _pagerank_driver(table, damping, max_iter, tol)
            log.info("pagerank: %d edges, %d vertices, %d iterations on the driver",
                     table.num_rows, ranked.num_rows, iterations)
            return edges.sparkSession.createDataFrame(ranked).select(
                "vertex", "pagerank", F.col("rank").cast("int").alias("rank"))
        log.info("pagerank: more than %d edges, iterating in Spark", driver_max_edges)
    return _pagerank_spark(edges, damping, max_iter, tol, check_every)


def _pagerank_driver(edges, damping: float, max_iter: int, tol: float):
    """:func:`pagerank` on the driver: numpy power iteration over aggregated edges.

    Args:
        edges: distinct ``(src, dst, weight)`` with weight > 0, as a ``pyarrow.Table`` with
            columns ``src, dst, weight`` (or a sequence of tuples, converted to one).
        damping, max_iter, tol: as in :func:`pagerank` (convergence tested every iteration).

    Returns:
        ``(pyarrow.Table vertex, pagerank, rank ordered by rank, iterations run)``; the edges
        are iterated sorted by (src, dst): the float sums follow the edge order, and the edges
        arrive in partition order, so unsorted edges could change the last bits of a rank (and
        the order of two nearly equal ranks) from run to run.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if not isinstance(edges, pa.Table):
        cols = list(zip(*edges)) or [(), (), ()]
        edges = pa.table({"src": pa.array(cols[0], pa.string()), "dst": pa.array(cols[1], pa.string()),
                          "weight": pa.array(cols[2], pa.float64())})
    src_s, dst_s = (edges.column(c).combine_chunks().cast(pa.large_string()) for c in ("src", "dst"))
    names = pc.unique(pa.concat_arrays([src_s, dst_s]))
    names = names.take(pc.sort_indices(names))          # vertex index order = vertex name order
    n = len(names)
    if n == 0:
        return pa.table({"vertex": pa.array([], pa.string()), "pagerank": pa.array([], pa.float64()),
                         "rank": pa.array([], pa.int32())}), 0
    src = pc.index_in(src_s, value_set=names).to_numpy().astype(np.int64)
    dst = pc.index_in(dst_s, value_set=names).to_numpy().astype(np.int64)
    w = edges.column("weight").to_numpy().astype(np.float64)
    order = np.lexsort((w, dst, src))
    src, dst, w = src[order], dst[order], w[order]
    w_out = np.bincount(src, weights=w, minlength=n)
    p = w / w_out[src]  # transition probability of each edge (w_out > 0 for every src)
    dangling = w_out == 0
    r = np.full(n, 1.0 / n)
    iterations = 0
    for iterations in range(1, max_iter + 1):
        # sparse mat-vec r @ P as a bincount over the edge list
        new = (1.0 - damping) / n + damping * (np.bincount(dst, weights=r[src] * p, minlength=n)
                                               + r[dangling].sum() / n)
        err = float(np.abs(new - r).sum())
        r = new
        if err < n * tol:
            break
    by_rank = np.lexsort((np.arange(n), -r))              # desc(pagerank), then asc(vertex)
    return pa.table({"vertex": names.take(pa.array(by_rank)).cast(pa.string()),
                     "pagerank": pa.array(r[by_rank]),
                     "rank": pa.array(np.arange(1, n + 1, dtype=np.int32))}), iterations


def _pagerank_spark(edges: DataFrame, damping: float, max_iter: int, tol: float, check_every: int) -> DataFrame:
    """:func:`pagerank` on DataFrames, for graphs too large for the driver.

    The ranks are checkpointed locally every iteration (so the plan stays small);
    convergence is tested every ``check_every`` iterations (one scalar job).

    Args:
        edges: aggregated ``src, dst, weight`` (distinct (src, dst), weight DOUBLE > 0).
        damping, max_iter, tol, check_every: as in :func:`pagerank`.
    """
    spark = edges.sparkSession
    out_w = edges.groupBy("src").agg(F.sum("weight").alias("w_out"))
    links = (edges.join(out_w, "src")
             .select("src", "dst", (F.col("weight") / F.col("w_out")).alias("p"))
             .localCheckpoint())
    vertices = (links.select(F.col("src").alias("vertex")).union(links.select(F.col("dst").alias("vertex")))
                .distinct()
                .join(out_w.select(F.col("src").alias("vertex"), F.lit(False).alias("dangling")), "vertex", "left")
                .select("vertex", F.coalesce("dangling", F.lit(True)).alias("dangling"))
                .localCheckpoint())
    n = vertices.count()
    if n == 0:
        return spark.createDataFrame([], _RANKS_SCHEMA)
    ranks = vertices.select("vertex", "dangling", F.lit(1.0 / n).alias("pagerank")).localCheckpoint()
    for i in range(1, max_iter + 1):
        contrib = (links.join(ranks.select(F.col("vertex").alias("src"), "pagerank"), "src")
                   .groupBy(F.col("dst").alias("vertex")).agg(F.sum(F.col("pagerank") * F.col("p")).alias("c")))
        dangling = ranks.agg(F.coalesce(F.sum(F.when(F.col("dangling"), F.col("pagerank"))), F.lit(0.0))
                             .alias("dmass"))
        new = (ranks.select("vertex", "dangling", F.col("pagerank").alias("old"))
               .join(contrib, "vertex", "left").crossJoin(dangling)
               .select("vertex", "dangling", "old",
                       ((1.0 - damping) / n + damping * (F.coalesce("c", F.lit(0.0)) + F.col("dmass") / n))
                       .alias("pagerank")))
        # checkpoint every iteration: the step reads the previous ranks three times, so an
        # unbroken plan would grow exponentially with the iteration count
        new = new.localCheckpoint()
        ranks = new.drop("old")
        if i % check_every == 0 or i == max_iter:
            err = new.agg(F.sum(F.abs(F.col("pagerank") - F.col("old")))).first()[0]  # one scalar
            if err < n * tol:
                break
    return ranks.select("vertex", "pagerank", F.row_number().over(
        Window.partitionBy().orderBy(F.desc("pagerank"), F.asc("vertex"))).alias("rank"))


def event_edges(journeys: DataFrame, spec: StateSpec) -> DataFrame:
    """The journey graph at event level: one edge per transition of every journey.

    Vertices are ``<journey_key>:<pos>`` (position 0 = the journey's start vertex,
    ``<journey_key>:exit`` = its exit vertex).

    Args:
        journeys: output of :func:`seglake.stages.journeys.build_journeys`.
        spec: the states spec.

    Returns:
        ``customer_id, src, dst, src_state, dst_state``.
    """
    require_columns(journeys, ["customer_id", "journey_key", "journey_part", "journey_pos", "is_last", "state",
                               *EVENT_ORDER], "event_edges")
    w = _journey_window(spec)
    vid = lambda pos: F.concat_ws(":", F.col("journey_key"), pos.cast("string"))  # noqa: E731
    df = journeys.select("customer_id", "journey_key", "journey_pos", "is_last", "state",
                         F.coalesce(F.lag("state").over(w), F.lit(spec.start)).alias("prev_state"))
    into = F.struct(vid(F.col("journey_pos") - 1).alias("src"), vid(F.col("journey_pos")).alias("dst"),
                    F.col("prev_state").alias("src_state"), F.col("state").alias("dst_state"))
    out = F.when(F.col("is_last") & (F.col("state") != spec.conversion),
                 F.struct(vid(F.col("journey_pos")).alias("src"), vid(F.lit("exit")).alias("dst"),
                          F.col("state").alias("src_state"), F.lit(spec.exit).alias("dst_state")))
    return (df.select("customer_id", F.explode(F.filter(F.array(into, out), lambda e: e.isNotNull())).alias("e"))
            .select("customer_id", "e.src", "e.dst", "e.src_state", "e.dst_state"))


def find_chain(edges: DataFrame, states: Sequence[str]) -> DataFrame:
    """Matches of the chain motif ``(v0)-[e1]->(v1); (v1)-[e2]->(v2); ...`` with v_i in state i.

    The GraphFrames equivalent is ``g.find("(a)-[e1]->(b); (b)-[e2]->(c)")`` filtered on the
    vertex states; here it is a self-join of the edges on ``e_i.dst = e_{i+1}.src``.

    Args:
        edges: output of :func:`event_edges`.
        states: at least two states, e.g. ``["product_view", "cart", "exit"]``.

    Returns:
        ``customer_id, v0, v1, ...`` one row per match.
    """
    require_columns(edges, ["customer_id", "src", "dst", "src_state", "dst_state"], "find_chain")
    if len(states) < 2:
        raise ValueError(f"find_chain: a motif needs at least two states, got {list(states)}")
    hops = []
    for i in range(len(states) - 1):
        hops.append(edges.where((F.col("src_state") == states[i]) & (F.col("dst_state") == states[i + 1]))
                    .select(F.col("customer_id"), F.col("src").alias(f"v{i}"), F.col("dst").alias(f"v{i + 1}")))
    match = hops[0]
    for i, hop in enumerate(hops[1:], start=1):
        match = match.join(hop, ["customer_id", f"v{i}"])
    return match


def motif_counts(matches: DataFrame, motif: str, membership: DataFrame | None = None) -> DataFrame:
    """Count motif matches overall (``segment = 'all'``) and per segment.

    Args:
        matches: output of :func:`find_chain` (needs ``customer_id``).
        motif: the motif's name (e.g. ``product_view>cart>exit``).
        membership: ``customer_id, segment`` or None.

    Returns:
        ``segment, motif, matches (LONG), customers (LONG)``.
    """
    return motif_totals(matches.groupBy("customer_id").agg(F.count(F.lit(1)).alias("n")), motif, membership)


def motif_totals(per_customer: DataFrame, motif: str, membership: DataFrame | None = None) -> DataFrame:
    """:func:`motif_counts` from per-customer match counts ``customer_id, n`` (n > 0).

    The journeys job gets them from the journey summaries (``motif_matches`` of
    :func:`seglake.stages.journeys.paths.journey_summaries`, summed per customer).
    """
    require_columns(per_customer, ["customer_id", "n"], "motif_totals")
    overall = per_customer.agg(F.sum("n").alias("matches"), F.count(F.lit(1)).alias("customers")) \
        .withColumn("segment", F.lit(ALL))
    out = overall
    if membership is not None:
        members = membership.select("customer_id", F.col("segment").cast("string")).distinct()
        out = out.unionByName(per_customer.join(members, "customer_id").groupBy("segment")
                              .agg(F.sum("n").alias("matches"), F.count(F.lit(1)).alias("customers")))
    return out.select("segment", F.lit(motif).alias("motif"),
                      F.coalesce(F.col("matches"), F.lit(0)).cast("long").alias("matches"),
                      F.col("customers").cast("long"))
