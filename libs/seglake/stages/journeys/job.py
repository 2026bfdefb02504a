"""The ``seglake run journeys`` job: read the window's sessionized events, build the
transition matrices, metrics and paths, and write the three gold tables.

Flow (:func:`run`): silver.enriched_events (consented, sessionized events with customer ids,
window ``[as_of - window_days, as_of)``) -> journey states (``conf/states.yaml``)
-> transitions counted in Spark -> ``gold.transition_matrix``; driver-side absorbing-chain
metrics, channel attribution, funnel, PageRank and motif counts -> ``gold.journey_metrics``;
full and k-step paths -> ``gold.journey_paths``. Segments come from the latest
``gold.segment_membership`` at or before the as-of date.
"""
from __future__ import annotations

import logging
import time
from datetime import date, timedelta
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.contracts import JOURNEY_METRICS, JOURNEY_PATHS, SEGMENT_MEMBERSHIP, TRANSITION_MATRIX
from seglake.stages import enriched
from seglake.stages.journeys import graph as G
from seglake.stages.journeys.attribution import channel_attribution
from seglake.stages.journeys.chain import matrix_metrics
from seglake.stages.journeys.matrices import (build_journeys, channel_path_transitions, channel_touchpoints,
                                              journey_transitions, transition_counts, transition_matrix)
from seglake.stages.journeys.paths import funnel_counts, funnel_metrics, journey_summaries, kstep_paths, top_paths
from seglake.stages.journeys.states import ALL, EVENT_ORDER, PATH_SEP, assign_states, load_states

log = logging.getLogger(__name__)

#: the stage runner resolves ``--as-of`` (default: the day after the last event) before run()
USES_AS_OF = True

MATRIX_TABLE = TRANSITION_MATRIX
METRICS_TABLE = JOURNEY_METRICS
PATHS_TABLE = JOURNEY_PATHS
SORT_AGG = "spark.sql.execution.replaceHashWithSortAgg"
METRICS_SCHEMA = ("segment string, channel string, metric string, subject_type string, subject string, "
                  "value double, rank int")


def _membership(spark, cfg, as_of: date) -> DataFrame | None:
    """customer_id, segment of gold.segment_membership at ``as_of`` (else the latest before), or None."""
    if not cfg.get("journeys.per_segment", True) or not tables.exists(spark, cfg, SEGMENT_MEMBERSHIP):
        return None
    members = tables.read(spark, cfg, SEGMENT_MEMBERSHIP)
    latest = (members.where(F.col("as_of_date") <= F.lit(as_of))
              .agg(F.max("as_of_date").alias("d")).first()["d"])  # one scalar
    if latest is None:
        return None
    if latest != as_of:
        log.warning("journeys: no segment membership at %s, using the one of %s", as_of, latest)
    return members.where(F.col("as_of_date") == F.lit(latest)).select("customer_id", "segment").distinct()


def sessionized_events(spark, cfg, window_start: date, as_of: date) -> DataFrame:
    """Consented events of the window with customer ids and sessions (the stage's input), from
    silver.enriched_events: sessions are those of the customer's whole history, so a session that
    began before the window keeps its key and its events keep their order. That order is the one
    sessionize gave them (event_ts, then event_key), stored as session_seq and event_seq: every
    journeys window orders by ``EVENT_ORDER`` (event_ts, session_seq, event_seq), total per customer,
    so events with equal timestamps are ordered the same on every run and any partitioning.

    Returns:
        ``customer_id, session_key, event_ts, session_seq, event_seq, event_type, channel, page_url``.
    """
    return enriched.read(spark, cfg, start=window_start, end=as_of,
                         columns=("session_key", *EVENT_ORDER, "event_type", "channel", "page_url"))


def add_arguments(parser) -> None:  # noqa: D103 - argparse hook
    parser.add_argument("--no-graph", action="store_true",
                        help="skip the journey graph (PageRank and motif counts)")


def run(ctx) -> dict:
    """``seglake run journeys``: transition matrices, journey metrics, paths (see module doc)."""
    spark, cfg = ctx.spark, ctx.cfg
    jcfg = cfg["journeys"]
    spec = load_states(cfg.conf_file(jcfg["states_file"]))
    max_order = int(jcfg["max_order"])
    as_of = ctx.resolve_as_of()
    window_start = as_of - timedelta(days=int(jcfg["window_days"]))
    stamp = [F.lit(window_start).cast("date").alias("window_start"),
             F.lit(as_of).cast("date").alias("window_end"),
             F.lit(as_of).cast("date").alias("as_of_date")]
    slice_ = f"as_of_date = '{as_of.isoformat()}'"

    # the window's sessionized events, read by the journeys, the channel touchpoints and the page
    # graph: each scans only the columns it needs from the (columnar) Delta table, which costs less
    # than writing every event with all of them to the disk cache first (measured at 10M events)
    events = assign_states(sessionized_events(spark, cfg, window_start, as_of), spec, keep_unmapped=True)
    membership = _membership(spark, cfg, as_of)
    # the journey summaries aggregate input already sorted by journey (build_journeys' windows):
    # a sort aggregate then needs no sort of its own, where a hash aggregate of millions of
    # journeys falls back to sorting them again (restored when the job ends)
    sort_agg = spark.conf.get(SORT_AGG, "false")
    spark.conf.set(SORT_AGG, "true")
    seconds: dict[str, float] = {}       # wall time of each part, logged and in the summary
    started = time.perf_counter()

    def done(part: str, what: str) -> None:
        nonlocal started
        seconds[part] = round(time.perf_counter() - started, 1)
        log.info("journeys: %s in %.1f s", what, seconds[part])
        started = time.perf_counter()

    try:
        # The events are shuffled by customer alone: the journey windows (customer, session, ...)
        # need no other shuffle, and their output stays sorted by customer, so joining each
        # customer's segment set to it is a merge join without another shuffle or sort
        # (journey_transitions). The transitions then carry the segment set, and the counts group
        # by (order, channel, from, to, segment set): a few thousand groups, whatever the number
        # of customers. The matrices and the summaries each compute the journeys (scan, shuffle,
        # window sorts): a persisted copy would lose its partitioning under adaptive execution,
        # so both readers would shuffle and sort it again.
        journeys = build_journeys(events.repartition("customer_id"), spec)
        transitions = journey_transitions(journeys, spec, max_order, membership)
        # small (states x channels x segment sets), read by three aggregations: computed once
        counts = transition_counts(transitions).persist()
        matrix = transition_matrix(counts).persist()
        tables.overwrite(matrix.select("order", "segment", "channel", "from_state", "to_state", "count",
                                       "probability", *stamp),
                         cfg, MATRIX_TABLE, partition_by=["as_of_date"], replace_where=slice_)
        done("matrices", "transition matrices of orders 1..%d written" % max_order)
        # ---- driver-side algebra on small collected matrices
        first = (matrix.where(F.col("order") == 1)
                 .select("segment", "channel", "from_state", "to_state", "probability").collect())
        if not first:
            raise ValueError(f"journeys: no journey events in the window [{window_start}, {as_of}): "
                             "nothing to analyse (check --as-of and journeys.window_days)")
        metrics = matrix_metrics(first, spec)
        channel_rows = [(r["from_state"], r["to_state"], r["count"]) for r in
                        channel_path_transitions(channel_touchpoints(events, spec), spec).collect()]
        metrics += [{"segment": ALL, "channel": ALL, **m} for m in channel_attribution(channel_rows, spec)]
        done("channels", "chain metrics and channel attribution")
        graph = not ctx.args.get("no_graph")
        # with the graph, the summaries also count the motif's matches per journey (from the states
        # they collect anyway: no second pass over the journeys, no self-joins of every edge)
        summaries = journey_summaries(journeys, spec, int(jcfg["path_max_states"]),
                                      motif=spec.motif if graph else None).persist()
        steps = {r["funnel_step"]: r["journeys"] for r in funnel_counts(summaries).collect()}
        metrics += [{"segment": ALL, "channel": ALL, **m} for m in funnel_metrics(steps, spec)]
        # ---- paths
        full = top_paths(summaries, int(jcfg["top_paths"])).select(
            F.lit("full").alias("path_kind"), F.lit(None).cast("int").alias("k"), "path", "journeys", "share", "rank")
        k = min(int(jcfg["kstep_paths"]), max_order)
        kstep = kstep_paths(matrix, k, int(jcfg["top_paths"])).select(
            F.lit("kstep").alias("path_kind"), F.lit(k).alias("k"), "path", "journeys", "share", "rank")
        tables.overwrite(full.unionByName(kstep).select("*", *stamp), cfg, PATHS_TABLE,
                         partition_by=["as_of_date"], replace_where=slice_)
        done("paths", "journey summaries, funnel and paths")
        # ---- journey graph (native DataFrame implementation, see seglake.stages.journeys.graph)
        top_page = None
        if graph:
            edges = (G.state_edges(matrix) if jcfg["graph_vertices"] == "state" else G.page_edges(events))
            ranks = G.pagerank(edges, float(jcfg["pagerank_damping"]), int(jcfg["pagerank_max_iter"]),
                               float(jcfg["pagerank_tol"]),
                               driver_max_edges=int(jcfg["pagerank_driver_max_edges"]))
            kind = "state" if jcfg["graph_vertices"] == "state" else "page"
            for r in ranks.where(F.col("rank") <= int(jcfg["pagerank_top"])).collect():  # top N: small
                metrics.append({"segment": ALL, "channel": ALL, "metric": "pagerank", "subject_type": kind,
                                "subject": r["vertex"], "value": float(r["pagerank"]), "rank": int(r["rank"])})
                top_page = r["vertex"] if r["rank"] == 1 else top_page
            motif_name = PATH_SEP.join(spec.motif)
            per_customer = (summaries.where(F.col("motif_matches") > 0).groupBy("customer_id")
                            .agg(F.sum("motif_matches").alias("n")))
            for r in G.motif_totals(per_customer, motif_name, membership).collect():  # one row per segment
                for metric, value in (("motif_matches", r["matches"]), ("motif_customers", r["customers"])):
                    metrics.append({"segment": r["segment"], "channel": ALL, "metric": metric,
                                    "subject_type": "motif", "subject": motif_name,
                                    "value": float(value), "rank": None})
            done("graph", "PageRank and motif counts")
        mdf = spark.createDataFrame([tuple(m.get(c) for c in ("segment", "channel", "metric", "subject_type",
                                                               "subject", "value", "rank")) for m in metrics],
                                    METRICS_SCHEMA)
        tables.overwrite(mdf.select("*", *stamp), cfg, METRICS_TABLE, partition_by=["as_of_date"],
                         replace_where=slice_)
        n_journeys = sum(steps.values())
        overall = {(m["metric"], m["subject_type"], m["subject"]): m["value"] for m in metrics
                   if m["segment"] == ALL and m["channel"] == ALL}
        drop = min((m for m in metrics if m["metric"] == "dropoff_mass" and m["segment"] == ALL
                    and m["channel"] == ALL), key=lambda m: m["rank"])
        channels = [m for m in metrics if m["metric"] == "attributed_share" and m["subject_type"] == "channel"]
        top_channel = min(channels, key=lambda m: m["rank"]) if channels else None
        summary: dict[str, Any] = {
            "journeys": n_journeys,
            "p_conversion": round(overall.get(("conversion_probability", "state", spec.start), 0.0), 4),
            "top_dropoff": f"{drop['subject']} ({drop['value']:.3f})",
            "top_channel": (f"{top_channel['subject']} ({top_channel['value']:.2f})" if top_channel else None),
            "matrix_rows": matrix.count(),
            "segments": (membership.select("segment").distinct().count() if membership is not None else 0),
            "window": f"{window_start}..{as_of}",
        }
        if top_page is not None:
            summary["top_page"] = top_page
        motif_key = ("motif_matches", "motif", PATH_SEP.join(spec.motif))
        if motif_key in overall:
            summary["motif_" + PATH_SEP.join(spec.motif)] = int(overall[motif_key])
        summary.update({f"seconds_{part}": v for part, v in seconds.items()})
        return summary
    finally:
        spark.conf.set(SORT_AGG, sort_agg)
        for df in (locals().get("counts"), locals().get("matrix"), locals().get("summaries")):
            if df is not None:
                df.unpersist()
