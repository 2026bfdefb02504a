"""What a job receives: the session, the config, the run id, the as-of date, its arguments."""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from seglake.core import counts, tables
from seglake.core.config import Config
from seglake.core.contracts import SILVER_EVENTS


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


@dataclass
class JobContext:
    """Everything a job's ``run(ctx)`` needs. Tests build one with their own session."""

    spark: SparkSession
    cfg: Config
    run_id: str = field(default_factory=new_run_id)
    as_of: date | None = None
    args: dict[str, Any] = field(default_factory=dict)
    #: the run's outcome for ``ops.run_log``: a stage sets ``"noop"`` when there was nothing to do
    status: str = "success"
    #: jobs whose ``ops.run_log`` row this run already wrote (run again with the same context, a
    #: job's row is replaced, not appended twice: (run_id, job) is the table's key)
    recorded_jobs: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        #: whether the caller passed the as-of (``--as-of``), as opposed to one resolved later from
        #: the data and kept for the next jobs of a chain: ingest bounds its files by a given one only
        self.as_of_given = self.as_of is not None

    def log(self, name: str) -> logging.Logger:
        return logging.getLogger(f"seglake.{name}")

    def resolve_as_of(self) -> date:
        """``--as-of`` when given, else the day after the last event day in silver.events.

        (The as-of date is exclusive: features for as_of D use events before D.)
        """
        if self.as_of is not None:
            return self.as_of
        version = tables.version(self.spark, self.cfg, SILVER_EVENTS)
        events = tables.read(self.spark, self.cfg, SILVER_EVENTS, version=version)   # a missing table: its error
        # each job of a chain run one by one asks again: one aggregate per version of silver.events
        last = counts.of_version(self.spark, self.cfg.table_path(SILVER_EVENTS), version, "last_event_date",
                                 lambda: events.agg(F.max("event_date").alias("d")).first()["d"])
        if last is None:
            raise ValueError("silver.events is empty: nothing to compute an as-of date from; pass --as-of")
        self.as_of = last + timedelta(days=1)
        return self.as_of
