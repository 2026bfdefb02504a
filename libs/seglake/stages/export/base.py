"""The one contract every activation destination implements (webhook, PostgreSQL, files).

The export job hands a destination a DataFrame of due outbox messages (:data:`MESSAGE_COLUMNS`)
and gets back one outcome row per message (:data:`OUTCOME_DDL`). A destination never writes
the outbox itself: the job records the outcomes (a MERGE on ``idempotency_key``), so a run
killed anywhere resends at most the messages whose outcome was not recorded yet, under the
same idempotency key; a destination that honours the key (a webhook receiver that dedupes, an
upsert on the CRM table's primary key, a file rewritten whole) then applies each message once.

Outcome statuses:

* ``delivered`` -- the destination accepted it;
* ``retry``     -- a transient failure (5xx, 429, timeout, connection error): the next run tries
  again, until the destination's ``max_attempts`` over all runs is spent (then ``dead``);
* ``dead``      -- delivery is impossible (a 4xx other than 429, or attempts spent): the job
  copies it to ``ops.dead_letter`` with its last error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pyspark.sql import DataFrame, SparkSession

from seglake.core.config import ConfigError

#: the columns of a message handed to :meth:`Destination.deliver` (one outbox row)
MESSAGE_COLUMNS: tuple[str, ...] = (
    "idempotency_key",   # sha256 hex of destination|customer|kind|name|change|version
    "destination",       # the destination's name in conf/destinations.yaml
    "customer_id",
    "kind",              # segment | trigger
    "name",              # the segment or trigger name
    "change",            # entered | exited (segments) | fired (triggers)
    "version",           # the as-of date (segments) or the deciding event_key (triggers)
    "channel",           # the destination's channel (email, push, crm, ...): what caps count
    "scheduled_at",      # TIMESTAMP (UTC) the message is due
    "payload",           # JSON text sent as is
    "attempts",          # INT attempts made by earlier runs
)

MESSAGE_DDL = ("idempotency_key STRING, destination STRING, customer_id STRING, kind STRING, name STRING, "
               "change STRING, version STRING, channel STRING, scheduled_at TIMESTAMP, payload STRING, "
               "attempts INT")

#: one row per message handed to ``deliver``: ``attempts`` is the total over all runs (earlier
#: runs' ``attempts`` + this run's), ``response`` a short text of the last answer (e.g. "HTTP 200"),
#: ``error`` the last failure (None when delivered)
OUTCOME_DDL = "idempotency_key STRING, status STRING, attempts INT, response STRING, error STRING"

STATUSES = ("delivered", "retry", "dead")


class DestinationConfigError(ConfigError):
    """A destination's entry in conf/destinations.yaml is wrong; the message names the entry and key."""


@dataclass(frozen=True)
class Outcome:
    """What became of one message (the Python side of :data:`OUTCOME_DDL`)."""
    idempotency_key: str
    status: str
    attempts: int
    response: str | None = None
    error: str | None = None

    def as_row(self) -> tuple:
        return (self.idempotency_key, self.status, int(self.attempts), self.response, self.error)


class Destination(Protocol):
    """A configured destination (one entry of conf/destinations.yaml)."""

    name: str
    kind: str        # webhook | postgres | files
    channel: str

    def deliver(self, spark: SparkSession, messages: DataFrame, run_id: str) -> DataFrame:
        """Send ``messages`` (:data:`MESSAGE_COLUMNS`); one :data:`OUTCOME_DDL` row per message."""
        ...

    def erase(self, spark: SparkSession, customer_ids: list[str], run_id: str) -> dict:
        """Remove these customers from what the destination holds (CRM rows, extracts) or send its
        deletion call; returns counts for the job's summary. ``customer_ids`` is bounded by erasure and
        consent requests, not by events."""
        ...
