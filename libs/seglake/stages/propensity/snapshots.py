"""Point-in-time feature snapshots: what seglake knew at each snapshot date.

One code path builds the training, evaluation and scoring snapshots
(:func:`snapshot_features`): features are always computed with
:func:`seglake.stages.features.compute_features` (never mixed with stored gold rows) from events
that carry the customer ids of one identity map. What differs is the knowledge cut:

* **scoring** (the run's as-of): everything known now — the enriched events, today's map;
* a **past snapshot** at date D: the events with event time before D **and** ingested by the
  knowledge instant K(D) (silver ``_ingested_at``), their customers resolved with the
  silver.identity_map (and identity_excluded) version that was current at K(D). A late
  event ingested after K(D), or a merge made by a later identity run, does not change the
  snapshot at D.

K(D) = max(D 00:00, T0), T0 = the end of the first ingestion (its ``_ingested_at``: one value per
ingest write) — for the map, max(D, the commit time of its first version). For history loaded
in one backfill after the fact, every earlier D sees that backfill (nothing was known at D;
the backfill is the earliest knowledge there is), and what arrives after it is late; for a
pipeline running since before D, K(D) = D. Snapshots whose cut equals "everything" use the
enriched events directly (the same events, already sessionized); the others are built from
silver.events with :func:`seglake.core.contracts.customer_events` and
:func:`seglake.stages.enriched.build`, as the enriched table itself is.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from typing import Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.contracts import IDENTITY_EXCLUDED, IDENTITY_MAP, SILVER_EVENTS, customer_events, exclude_withdrawn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cut:
    """A snapshot's knowledge: events ingested before ``ingested_before_us`` (None: all), the
    identity map and exclusion versions (None: current)."""

    ingested_before_us: int | None
    map_version: int | None
    excluded_version: int | None

    @property
    def everything(self) -> bool:
        return self.ingested_before_us is None and self.map_version is None and self.excluded_version is None

    def describe(self) -> str:
        if self.everything:
            return "all known now"
        return (f"ingested before {self.ingested_before_us} us, identity_map v{self.map_version}, "
                f"identity_excluded v{self.excluded_version}")


def _history(spark: SparkSession, cfg, table: str) -> list[tuple[int, int]]:
    """(version, commit instant in epoch microseconds) of every commit, oldest first (small)."""
    from delta.tables import DeltaTable

    if not tables.exists(spark, cfg, table):
        return []
    rows = (DeltaTable.forPath(spark, cfg.table_path(table)).history()
            .select("version", F.unix_micros("timestamp").alias("us")).collect())  # one row per commit
    return sorted((int(r["version"]), int(r["us"])) for r in rows)


def _version_at(history: list[tuple[int, int]], instant_us: int) -> int | None:
    """The version current at max(instant, first commit); None when it is the latest one."""
    if not history:
        return None
    first_us = history[0][1]
    at = max(instant_us, first_us)
    version = max(v for v, us in history if us <= at)
    return None if version == history[-1][0] else version


class Knowledge:
    """When things became known: ingestion times of silver.events and the identity commits."""

    def __init__(self, spark: SparkSession, cfg):
        self.spark = spark
        # ingest stamps one _ingested_at per write (current_timestamp of the batch): the first
        # batch ends at the earliest value
        span = (tables.read(spark, cfg, SILVER_EVENTS)
                .agg(F.min(F.unix_micros("_ingested_at")).alias("first"),
                     F.max(F.unix_micros("_ingested_at")).alias("last")).first())   # one row
        self.first_batch_end_us, self.last_us = span["first"], span["last"]
        self.map_history = _history(spark, cfg, IDENTITY_MAP)
        self.excluded_history = _history(spark, cfg, IDENTITY_EXCLUDED)

    def day_us(self, day: date) -> int:
        """00:00 of ``day`` in the session's (seglake's) time zone, epoch microseconds."""
        return int(self.spark.range(1).select(F.unix_micros(F.lit(day).cast("timestamp"))).first()[0])

    def cut(self, day: date) -> Cut:
        """The knowledge of a past snapshot at ``day`` (module docstring)."""
        d_us = self.day_us(day)
        ingested = None
        if self.first_batch_end_us is not None and self.last_us is not None:
            k = max(d_us, self.first_batch_end_us)
            ingested = None if k >= self.last_us else k + 1     # "by K" inclusive: before K + 1 us
        return Cut(ingested, _version_at(self.map_history, d_us),
                   _version_at(self.excluded_history, d_us) if self.excluded_history else None)


def _files_exist(spark: SparkSession, df: DataFrame) -> bool:
    """Are all the data files of ``df`` (a time-travel read) still there? VACUUM (maintain, and
    erase at once) removes old versions' files: such a version must not be read."""
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    for name in df.inputFiles():  # the snapshot's files: a handful for the identity tables
        path = jvm.org.apache.hadoop.fs.Path(name)
        if not path.getFileSystem(conf).exists(path):
            return False
    return True


def readable(spark: SparkSession, cfg, cut: Cut) -> Cut:
    """``cut``, or the same cut with the current identity tables when its versions can no longer be
    read (vacuumed: an erasure removes old versions on purpose; they are never resurrected)."""
    for table, v in ((IDENTITY_MAP, cut.map_version), (IDENTITY_EXCLUDED, cut.excluded_version)):
        if v is None:
            continue
        try:
            ok = _files_exist(spark, tables.read(spark, cfg, table, version=v))
        except Exception:  # noqa: BLE001 - a version whose log is gone is unreadable too
            ok = False
        if not ok:
            log.warning("propensity: %s version %s is vacuumed; the snapshot uses the current identity tables",
                        table, v)
            return Cut(cut.ingested_before_us, None, None)
    return cut


def _events_known(ctx, cut: Cut, end: date, consent_at: date) -> DataFrame:
    """Enriched-shaped events before ``end`` under ``cut`` (silver -> customers -> sessions)."""
    from seglake.stages import enriched

    where = None
    if cut.ingested_before_us is not None:
        where = F.coalesce(F.unix_micros("_ingested_at"), F.lit(0)) < F.lit(cut.ingested_before_us)
    raw = customer_events(ctx.spark, ctx.cfg, end=end, columns=enriched.EVENT_COLUMNS, withdrawals=False,
                          where=where, identity_version=cut.map_version, excluded_version=cut.excluded_version)
    built = enriched.build(raw, ctx.cfg)
    return exclude_withdrawn(ctx.spark, ctx.cfg, built, consent_at)


def snapshot_features(ctx, past_dates: Sequence[date], scoring_date: date, events: DataFrame,
                      knowledge: Knowledge | None = None) -> tuple[DataFrame, dict[date, str]]:
    """Features of every past snapshot date under its knowledge cut and of ``scoring_date`` with
    everything known, in one frame (:data:`seglake.stages.features.FEATURE_COLUMNS`); and, per
    date, a description of the cut (for the MLflow run).

    ``events`` are the enriched events the run reads (consent judged at ``scoring_date``): the
    source of every snapshot whose cut is "everything". The dates that share a cut are computed
    in one pass over that cut's events (:func:`seglake.stages.features.compute_features` with a
    list of dates).
    """
    from seglake.stages import features as feat

    know = knowledge or Knowledge(ctx.spark, ctx.cfg)
    params = feat.FeatureParams.from_config(ctx.cfg)
    groups: dict[Cut, list[date]] = {}
    for d in sorted(set(past_dates)):
        groups.setdefault(readable(ctx.spark, ctx.cfg, know.cut(d)), []).append(d)
    groups.setdefault(Cut(None, None, None), []).append(scoring_date)
    frames, described = [], {}
    for cut, days in groups.items():
        end = max(days)
        source = (events.filter(F.col("event_ts") < F.lit(end).cast("timestamp")) if cut.everything
                  else _events_known(ctx, cut, end, scoring_date))
        for d in days:
            described[d] = cut.describe()
        # the dates of a cut in one pass over its events (one aggregation keyed by date)
        frames.append(feat.compute_features(source, days, params).select(*feat.FEATURE_COLUMNS))
    if len(groups) > 1:
        log.info("propensity: point-in-time snapshots: %s",
                 "; ".join(f"{d}: {described[d]}" for d in sorted(described)))
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out, described
