"""The ``seglake run identity`` job: build or update silver.identity_map, full or incremental.

:func:`run` links the identifiers of consented silver.events (only the events ingested since
the last run when possible, see ``ops.identity_runs``), rebuilding from the stored edges when
the guard excludes new identifiers, and writes silver.identity_map, silver.identity_edges and
silver.identity_excluded; :func:`_log_run` records the run and :func:`_finish` its summary.
A run that stopped between those writes is detected by the next (:func:`_interrupted`), which
then rebuilds in full instead of updating a mixed state.
New customer ids are keyed by the PII secret (:func:`seglake.core.pii.key`, the environment
variable named by ``clean.pii_salt_env``), so prod refuses to run without it.
"""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from seglake.core import pii
from seglake.core.contracts import (CONSENT_RULE, IDENTITY_EDGES, IDENTITY_EXCLUDED, IDENTITY_MAP, IDENTITY_RUNS,
                                    SILVER_EVENTS, profiling_events)
from seglake.stages.identity.graph import (_CUSTOMER_NODE, drop_excluded, excluded_identifiers, identifier_tuples,
                                           identity_edges, identity_nodes, resolve)

log = logging.getLogger(__name__)

#: an incremental run also links the events of the batches cleaned from this long before the last
#: run on (a batch cleaned again keeps its old ingest time; margin for clocks of other drivers)
RELINK_MARGIN = timedelta(days=1)

MAP_TABLE = IDENTITY_MAP
EDGES_TABLE = IDENTITY_EDGES
EXCLUDED_TABLE = IDENTITY_EXCLUDED
RUNS_TABLE = IDENTITY_RUNS


def _last_run(spark: SparkSession, cfg) -> dict | None:
    from seglake.core import tables
    if not tables.exists(spark, cfg, RUNS_TABLE):
        return None
    # one row: the latest run (the runs table has one row per identity run: small)
    row = tables.read(spark, cfg, RUNS_TABLE).orderBy(F.desc("finished_at"), F.desc("run_id")).first()
    return row.asDict() if row else None


def run(ctx) -> dict:
    """``seglake run identity``: build or update silver.identity_map."""
    from seglake.core import tables
    spark, cfg = ctx.spark, ctx.cfg
    icfg = cfg["identity"]
    prefix = icfg["customer_id_prefix"]
    key = pii.key(cfg)  # HMAC key of new customer ids; a missing prod key fails before any work
    max_persons = int(icfg["max_persons_per_identifier"])
    events_all = tables.read(spark, cfg, SILVER_EVENTS)
    events, consent_via = profiling_events(events_all), CONSENT_RULE
    last = _last_run(spark, cfg)
    have_map = tables.exists(spark, cfg, MAP_TABLE) and tables.exists(spark, cfg, EDGES_TABLE)
    incremental = bool(icfg["incremental"]) and last is not None and have_map \
        and last.get("watermark") is not None and "_ingested_at" in events.columns
    if ctx.args.get("full"):
        incremental = False
    interrupted = _interrupted(spark, cfg, last)
    if interrupted:
        log.warning("identity: %s; rebuilding the map in full", interrupted)
        incremental = False
    watermark = events_all.agg(F.max("_ingested_at").alias("w")).first()["w"] \
        if "_ingested_at" in events_all.columns else None
    summary: dict[str, Any] = {}

    if incremental:
        from seglake.stages.clean_batches import batches_of_day, cleaned_since
        is_new = F.col("_ingested_at") > F.lit(last["watermark"])
        # batches cleaned again (clean --as-of D) keep their old _ingested_at: the batches cleaned
        # since a day before the last run are linked again (linking is idempotent: known edges and
        # identifiers change nothing)
        again = cleaned_since(spark, cfg, last["finished_at"] - RELINK_MARGIN) if last.get("finished_at") else []
        if ctx.as_of_given:   # a scheduler's run of day D: the day's events are linked again
            day_batches = batches_of_day(spark, cfg, ctx.as_of - timedelta(days=1))
            log.info("identity: --as-of %s: linking the events of %d batch(es) of files of %s again", ctx.as_of,
                     len(day_batches), ctx.as_of - timedelta(days=1))
            again = sorted(set(again) | set(day_batches))
        if again:
            is_new = is_new | F.col("_batch_id").isin(again)
        new_events = events.filter(is_new)
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
                                        engine=icfg["engine"], customer_sizes=sizes, key=key)
            local_map = local_map.localCheckpoint()
            # customers retired by a merge: all their identifiers move to the winner
            retired = (links.select(F.col("customer_id").alias("old_id"), "identifier_type", "identifier")
                       .join(local_map.withColumnRenamed("customer_id", "new_id"),
                             ["identifier_type", "identifier"])
                       .filter(F.col("old_id") != F.col("new_id")).select("old_id", "new_id").distinct())
            moved = previous.join(retired.withColumnRenamed("old_id", "customer_id"), "customer_id") \
                .select("identifier_type", "identifier", F.col("new_id").alias("customer_id"))
            # the new map's row wins over a moved one (never an arbitrary pick of dropDuplicates)
            changes = local_map.unionByName(moved.join(local_map.select("identifier_type", "identifier"),
                                                       ["identifier_type", "identifier"], "left_anti")) \
                .withColumn("_run_id", F.lit(ctx.run_id))
            n_changes = changes.count()
            with tables.tagged_commits(spark, {_TAG: {"run_id": ctx.run_id}}):
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
                            int(icfg["max_iterations"]), int(icfg["checkpoint_interval"]), icfg["engine"],
                            key=key)
    idmap = idmap.withColumn("_run_id", F.lit(ctx.run_id)).localCheckpoint()
    if previous is not None:
        retired = previous.select("customer_id").distinct().join(idmap.select("customer_id").distinct(),
                                                                 "customer_id", "left_anti").count()
        summary["retired_customer_ids"] = retired
    with tables.tagged_commits(spark, {_TAG: {"run_id": ctx.run_id}}):
        tables.overwrite(idmap, cfg, MAP_TABLE)
        tables.overwrite(edges_all, cfg, EDGES_TABLE)
        tables.overwrite(excluded.withColumn("_run_id", F.lit(ctx.run_id)), cfg, EXCLUDED_TABLE)
    summary = {"mode": "full", **summary, "edges": edges_all.count(), "cc_rounds": rounds}
    if interrupted:
        summary["repaired"] = interrupted
    _log_run(spark, cfg, ctx.run_id, "full", watermark)
    return _finish(spark, cfg, summary, consent_via)


#: userMetadata tag of identity's writes to the map, the edges and the excluded identifiers
_TAG = "identity_write"


def _interrupted(spark: SparkSession, cfg, last: dict | None) -> str | None:
    """Why the tables are not the output of one whole run (None when they are).

    A run writes the map, the edges and the excluded identifiers (each commit tagged with its
    run id), then its ``ops.identity_runs`` row. A run that stopped in between leaves a table
    whose newest identity write is tagged with a run that has no row: an incremental update
    on top of that mixed state could be wrong, so the next run rebuilds in full.
    """
    from seglake.core import tables
    if last is None:
        return None                                   # no finished run: a full build anyway
    runs = tables.read(spark, cfg, RUNS_TABLE)
    for table in (MAP_TABLE, EDGES_TABLE, EXCLUDED_TABLE):
        tag = tables.recorded_metadata(spark, cfg, table, _TAG)
        # a run that changed nothing makes no write: the newest write must be of *a* finished run
        if tag is not None and tag.get("run_id") != last["run_id"] and \
                not runs.where(F.col("run_id") == tag.get("run_id")).limit(1).count():
            return (f"{table} was last written by identity run {tag.get('run_id')}, which did not finish "
                    f"(the last finished run is {last['run_id']})")
    return None


def _log_run(spark: SparkSession, cfg, run_id: str, mode: str, watermark) -> None:
    from datetime import datetime, timezone

    from seglake.core import tables
    row = spark.createDataFrame(
        [(run_id, mode, watermark, datetime.now(timezone.utc))],
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
