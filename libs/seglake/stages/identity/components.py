"""Connected components of an undirected graph, natively on DataFrames or with GraphFrames.

:func:`connected_components` (and :func:`connected_components_with_rounds`) runs the
large-star / small-star algorithm of Kiveris et al. (2014) with built-in functions only,
checkpointing the edge set and stopping when its checksum no longer changes
(:class:`ConvergenceError` past the allowed rounds); :func:`graphframes_components` gives
the same output with GraphFrames' connectedComponents when its JVM jar is on the classpath.
"""
from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from seglake.core.contracts import require_columns


class ConvergenceError(RuntimeError):
    """Connected components did not converge within the allowed rounds."""


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
