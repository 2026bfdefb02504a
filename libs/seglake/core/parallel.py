"""Small Spark actions side by side in threads of one driver.

At small sizes a stage's time is mostly driver-side work per Spark job (planning, the Delta log,
scheduling); independent pieces of work (one table each, one model target each) overlap well in
threads: one's waits are the other's working time. Spark runs jobs from several threads of one
SparkContext; what is per session (SQL settings such as a Delta commit's ``userMetadata``) is
kept apart with :func:`isolated_session`.
"""
from __future__ import annotations

import contextvars
import logging
import threading
from typing import Any, Callable, Iterable, TypeVar

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: SQL settings a thread's own session never inherits (each sets its own)
NOT_INHERITED = frozenset({"spark.databricks.delta.commitInfo.userMetadata"})


def map_in_threads(items: Iterable[T], work: Callable[[T], R], workers: int, label: str = "work") -> list[R]:
    """``[work(item) for item in items]``, at most ``workers`` at a time, results in the order given.

    Each thread runs in a copy of the caller's context (its :mod:`contextvars`: the run journal of
    :func:`seglake.core.tables.recording`) and, through ``pyspark.InheritableThread``, with the
    caller's Spark job properties. After the first failure no further item starts (as a crash
    there would leave it); the items already running end, then the failure of the earliest item
    in the order given is raised, a :class:`BaseException` such as a fault point's ``Aborted`` too.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [work(item) for item in items]
    from pyspark import InheritableThread

    results: dict[int, Any] = {}
    errors: dict[int, BaseException] = {}
    lock = threading.Lock()
    pending = iter(enumerate(items))

    def worker(context: contextvars.Context) -> None:
        while True:
            with lock:
                if errors:
                    return
                nxt = next(pending, None)
            if nxt is None:
                return
            index, item = nxt
            try:
                results[index] = context.run(work, item)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
                with lock:
                    errors[index] = exc

    threads = [InheritableThread(target=worker, args=(contextvars.copy_context(),), name=f"{label}-{i}")
               for i in range(min(workers, len(items)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[min(errors)]
    return [results[i] for i in range(len(items))]


def isolated_session(spark: SparkSession) -> SparkSession:
    """A session of the same SparkContext (same tables, caches, jobs) whose SQL settings are its
    own: it starts with every setting the caller's session has (its time zone, shuffle partitions,
    ...) but :data:`NOT_INHERITED`, and a setting changed in one is not seen by the other."""
    mine = spark.newSession()
    theirs = mine.conf.getAll
    for key, value in spark.conf.getAll.items():
        if key in NOT_INHERITED or theirs.get(key) == value:
            continue
        try:
            mine.conf.set(key, value)
        except Exception as exc:  # noqa: BLE001 - a static setting: the same for every session anyway
            log.debug("isolated session: %s not copied: %s", key, exc)
    return mine
