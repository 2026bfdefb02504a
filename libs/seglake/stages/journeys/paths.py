"""Journey paths and the funnel: one summary row per journey, the most frequent full and
k-step paths, and the ordered funnel's step counts and rates.

:func:`journey_summaries` gives each journey its path string (``start>...>conversion|exit``,
long journeys truncated with ``...``) and the furthest funnel step reached in order;
:func:`top_paths` and :func:`kstep_paths` rank full paths and the k-step paths of the
overall transition matrix (``gold.journey_paths``); :func:`funnel_counts` and
:func:`funnel_metrics` turn the furthest steps into ``funnel_*`` rows of ``gold.journey_metrics``.
"""
from __future__ import annotations

from typing import Sequence

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from seglake.core.contracts import require_columns
from seglake.stages.journeys.states import ALL, PATH_SEP, StateSpec, _journey_partition


def journey_summaries(journeys: DataFrame, spec: StateSpec, max_states: int = 10,
                      motif: Sequence[str] | None = None) -> DataFrame:
    """One row per journey: its path string and the furthest ordered funnel step reached.

    Args:
        journeys: output of :func:`build_journeys`.
        spec: the states spec (funnel steps).
        max_states: longer journeys show their first ``max_states`` states then ``...``.
        motif: a chain of states (e.g. ``spec.motif``): adds ``motif_matches``, how often the
            chain occurs as consecutive states of the journey's full path (start, its states,
            then exit unless it converted) — the matches of the graph motif
            ``(v0)-[e1]->(v1); (v1)-[e2]->(v2)`` on the journey's event-level path graph
            (:func:`seglake.stages.journeys.graph.find_chain`), counted from the states already
            collected here instead of by self-joins of every edge.

    Returns:
        ``customer_id, journey_key, n_states, converted, path, funnel_step`` (0 = none of the
        funnel steps reached in order; i = the first i steps reached in order)
        [, ``motif_matches``].
    """
    require_columns(journeys, [*_journey_partition(spec), "journey_part", "journey_key", "journey_pos", "state"],
                    "journey_summaries")
    # grouped by the journey window's partition keys (journey_key is made of them): input still
    # partitioned and sorted for build_journeys' windows needs no other shuffle, and no sort with
    # spark.sql.execution.replaceHashWithSortAgg (the journeys job sets it while it runs)
    seq = (journeys.groupBy(*_journey_partition(spec), "journey_part")
           .agg(F.first("journey_key").alias("journey_key"),
                F.sort_array(F.collect_list(F.struct("journey_pos", "state"))).alias("_s"))
           .withColumn("_states", F.transform("_s", lambda x: x["state"])))
    n = F.size("_states")
    last = F.element_at("_states", -1)
    converted = last == spec.conversion
    shown = F.concat_ws(PATH_SEP, F.slice("_states", 1, max_states))
    path = F.concat_ws(PATH_SEP, F.lit(spec.start), shown,
                       F.when(n > max_states, F.lit("...")),
                       F.when(~converted, F.lit(spec.exit)))
    steps = F.array(*[F.lit(s) for s in spec.funnel])
    # the funnel's exit step (if configured) is reached by the terminal, so append it
    states = F.when(converted, F.col("_states")).otherwise(F.concat("_states", F.array(F.lit(spec.exit))))
    reached = F.aggregate(states, F.lit(0), lambda acc, s: F.when(
        (acc < len(spec.funnel)) & (s == F.element_at(steps, acc + 1)), acc + 1).otherwise(acc))
    extra = []
    if motif:
        if len(motif) < 2:
            raise ValueError(f"journey_summaries: a motif needs at least two states, got {list(motif)}")
        full = F.concat(F.array(F.lit(spec.start)), F.col("_states"),
                        F.when(converted, F.array().cast("array<string>")).otherwise(F.array(F.lit(spec.exit))))
        size, width = F.size(full), len(motif)

        def match_at(i):     # the chain starts at 1-based position i of the full path
            cond = F.lit(True)
            for j, state in enumerate(motif):
                cond = cond & (F.element_at(full, i + j) == F.lit(state))
            return cond

        starts = F.sequence(F.lit(1), F.greatest(size - width + 1, F.lit(1)))
        extra.append(F.when(size >= width, F.size(F.filter(starts, match_at))).otherwise(F.lit(0))
                     .alias("motif_matches"))
    return seq.select("customer_id", "journey_key", n.alias("n_states"), converted.alias("converted"),
                      path.alias("path"), reached.alias("funnel_step"), *extra)


def _ranked(counts: DataFrame, limit: int) -> DataFrame:
    """``path, journeys`` -> the ``limit`` largest with ``share`` (of all) and ``rank`` (ties by path).

    The global ordering runs on the ``limit`` rows only (sort + limit keeps a top-k per
    partition), so no single-partition window over all paths.
    """
    total = counts.agg(F.sum("journeys").alias("_total"))
    top = counts.orderBy(F.desc("journeys"), F.asc("path")).limit(limit)
    return (top.crossJoin(total)
            .select("path", "journeys", (F.col("journeys") / F.col("_total")).alias("share"),
                    F.row_number().over(Window.orderBy(F.desc("journeys"), F.asc("path"))).alias("rank")))


def top_paths(summaries: DataFrame, limit: int = 20) -> DataFrame:
    """The ``limit`` most frequent full journey paths: ``path, journeys, share, rank``."""
    require_columns(summaries, ["path"], "top_paths")
    return _ranked(summaries.groupBy("path").agg(F.count(F.lit(1)).alias("journeys")), limit)


def funnel_counts(summaries: DataFrame) -> DataFrame:
    """``funnel_step, journeys``: journeys whose furthest reached step is exactly this one."""
    return summaries.groupBy("funnel_step").agg(F.count(F.lit(1)).alias("journeys"))


def kstep_paths(matrix: DataFrame, k: int, limit: int = 20) -> DataFrame:
    """The ``limit`` most frequent k-step paths (k transitions, k + 1 states) of the overall matrix.

    They are the order-k rows whose from-state holds a full history of k states.

    Returns:
        ``path, journeys (LONG: occurrences), share, rank``.
    """
    require_columns(matrix, ["order", "segment", "channel", "from_state", "to_state", "count"], "kstep_paths")
    rows = matrix.where((F.col("order") == k) & (F.col("segment") == ALL) & (F.col("channel") == ALL)
                        & (F.size(F.split("from_state", PATH_SEP)) == k))
    counts = rows.select(F.concat_ws(PATH_SEP, "from_state", "to_state").alias("path"),
                         F.col("count").cast("long").alias("journeys"))
    return _ranked(counts, limit)


def funnel_metrics(step_counts: dict[int, int], spec: StateSpec) -> list[dict]:
    """Funnel rows from {furthest step reached: journeys} (collected: len(funnel) + 1 numbers).

    Metrics per step (subject = the step's state, rank = its position, 0 = start):
    ``funnel_journeys`` (journeys reaching the step in order), ``funnel_step_rate``
    (share of the previous step's journeys) and ``funnel_dropoff`` (1 - step rate).
    """
    total = sum(step_counts.values())
    reached = [sum(v for s, v in step_counts.items() if s >= i) for i in range(len(spec.funnel) + 1)]
    rows = [{"metric": "funnel_journeys", "subject_type": "step", "subject": spec.start,
             "value": float(total), "rank": 0}]
    for i, state in enumerate(spec.funnel, start=1):
        prev = reached[i - 1]
        rate = reached[i] / prev if prev else 0.0
        rows += [{"metric": "funnel_journeys", "subject_type": "step", "subject": state,
                  "value": float(reached[i]), "rank": i},
                 {"metric": "funnel_step_rate", "subject_type": "step", "subject": state, "value": rate, "rank": i},
                 {"metric": "funnel_dropoff", "subject_type": "step", "subject": state,
                  "value": 1.0 - rate if prev else 0.0, "rank": i}]
    return rows
