"""Operations tables: ``ops.run_log`` (one row per job run), written for every job by
:mod:`seglake.core.runner`."""
from __future__ import annotations

import json
import logging
from datetime import date, datetime, timezone
from typing import Any, Mapping

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.config import Config
from seglake.core.contracts import RUN_LOG
from seglake.core.spark import literal_row

log = logging.getLogger(__name__)

RUN_LOG_DDL = ("run_id STRING, job STRING, status STRING, started_at TIMESTAMP, finished_at TIMESTAMP, "
               "duration_s DOUBLE, metrics MAP<STRING,STRING>, metrics_json STRING, as_of_date DATE, "
               "rows_in MAP<STRING,BIGINT>, rows_out MAP<STRING,BIGINT>, error STRING")


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": 1, "b": {"c": 2}}`` -> ``{"a": "1", "b.c": "2"}`` (values as strings, None kept)."""
    out: dict[str, str] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, name + "."))
        else:
            out[name] = None if value is None else str(value)
    return out


def _utc(ts: datetime) -> datetime:
    """An aware UTC datetime (a naive one is taken as UTC): PySpark turns a naive datetime into
    an instant with the OS time zone of the driver, an aware one exactly."""
    return ts.astimezone(timezone.utc) if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)


def run_log_row(spark: SparkSession, job: str, run_id: str, metrics: Mapping[str, Any],
                started_at: datetime, status: str, finished_at: datetime | None = None,
                as_of: date | None = None, rows_in: Mapping[str, int] | None = None,
                rows_out: Mapping[str, int] | None = None, error: str | None = None) -> DataFrame:
    """The one-row DataFrame :func:`record_run` writes (exposed for tests)."""
    finished = _utc(finished_at or datetime.now(timezone.utc))
    started = _utc(started_at)
    row = (run_id, job, status, started, finished, (finished - started).total_seconds(),
           flatten_metrics(metrics), json.dumps(metrics, default=str, sort_keys=True), as_of,
           dict(rows_in or {}), dict(rows_out or {}), error)
    return literal_row(spark, row, RUN_LOG_DDL)


def record_run(spark: SparkSession, cfg: Config, job: str, run_id: str, metrics: Mapping[str, Any],
               started_at: datetime, status: str = "success", as_of: date | None = None,
               rows_in: Mapping[str, int] | None = None, rows_out: Mapping[str, int] | None = None,
               error: str | None = None, replace: bool = False) -> None:
    """Write (or rewrite) the ``ops.run_log`` row of one job run.

    Generic for every stage: ``metrics`` is any JSON-able mapping (nested mappings are
    flattened into the ``metrics`` map with dotted keys and kept whole in ``metrics_json``).
    A blind append, or with ``replace`` a MERGE on the key (run_id, job) that rewrites the row
    recorded before (the runner passes it when the same context runs a job again). The append
    is the common path: a MERGE costs a join job, ~1 s per run in local mode. Metrics must not
    contain identifiers or secrets.

    Args:
        spark: the session.
        cfg: the configuration (for the table path).
        job: the job verb, e.g. ``"clean"``.
        run_id: the run id (``ctx.run_id``).
        metrics: what the run produced, e.g. counts.
        started_at: when the run started (aware or naive UTC).
        status: ``success`` | ``failed`` | ``noop`` | ``set_aside`` (clean: a batch set aside).
        as_of: the as-of date the run computed for, if any.
        rows_in: rows of each table version the run read (from the Delta log).
        rows_out: rows each written table received (from the Delta commit metrics).
        error: the error message of a failed run.
        replace: the row of (run_id, job) may exist already: replace it.
    """
    if not job or not run_id:
        raise ValueError("record_run needs a job name and a run id")
    df = run_log_row(spark, job, run_id, metrics, started_at, status, as_of=as_of, rows_in=rows_in,
                     rows_out=rows_out, error=error)
    # schema evolution: run logs written before as_of_date/rows_in/rows_out/error existed gain them
    if replace and tables.exists(spark, cfg, RUN_LOG):
        tables.merge(spark, df, cfg, RUN_LOG, keys=["run_id", "job"], update=True, schema_evolution=True)
    else:
        tables.append(df, cfg, RUN_LOG, merge_schema=True, properties=tables.BOOKKEEPING_PROPERTIES)
    log.info("ops.run_log: %s run %s %s", job, run_id, status)


def last_run(spark: SparkSession, cfg: Config, job: str) -> dict | None:
    """The latest ``ops.run_log`` row of ``job`` as a dict (None if the job never ran; two runs
    started at the same instant: the larger run_id, (run_id, job) being the table's key)."""
    if not tables.exists(spark, cfg, RUN_LOG):
        return None
    row = (tables.read(spark, cfg, RUN_LOG).where(F.col("job") == job)
           .orderBy(F.col("started_at").desc(), F.col("run_id").desc()).limit(1).collect())
    return row[0].asDict() if row else None
