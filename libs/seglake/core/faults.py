"""Named fault points for the reliability suite (``tests/reliability/``).

A writing job calls :func:`point` at the boundaries that matter for crash safety: the table
layer before and after every Delta commit (``before_commit:<table>``,
``after_commit:<table>``), and jobs at their own steps (``ingest.after_bronze``, ...). With
the environment variable ``SEGLAKE_FAULT=<name>`` (or ``<name>@<n>``: at its n-th time in the
process) the process kills itself with SIGKILL there — what ``kill -9`` or a lost node does:
no ``finally`` block, no cleanup. Unset (always, outside tests), a point costs one
dictionary lookup.

In a test's own process, :func:`abort_at` arms a point instead: reaching it raises
:class:`Aborted`, a ``BaseException`` that no seglake code catches. The lakehouse is then left
as a kill there leaves it (a point sits between commits, never inside one); only ``finally``
blocks run, and the only one that writes is the job lease's release.

``SEGLAKE_PAUSE=<name>=<path>`` makes the process wait at point ``<name>`` until the file
``<path>`` exists (ten minutes at most): the concurrency tests hold a job at a known step while
another one starts.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections import Counter
from typing import Iterator

log = logging.getLogger(__name__)

ENV = "SEGLAKE_FAULT"
PAUSE_ENV = "SEGLAKE_PAUSE"
_hits: Counter = Counter()
_armed: list[str] = []      # abort_at's point (at most one)


class Aborted(BaseException):
    """Raised at the point armed by :func:`abort_at` (a crash simulated in the test process)."""


@contextlib.contextmanager
def abort_at(spec: str) -> Iterator[None]:
    """Within the block, reaching point ``spec`` (``<name>`` or ``<name>@<n>``) raises :class:`Aborted`."""
    _armed[:] = [spec]
    _hits.clear()
    try:
        yield
    finally:
        _armed.clear()
        _hits.clear()


def point(name: str) -> None:
    """Kill this process here when ``SEGLAKE_FAULT`` names this point (see the module doc)."""
    pause = os.environ.get(PAUSE_ENV)
    if pause:
        _pause(name, pause)
    spec = _armed[0] if _armed else os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition("@")
    if target != name:
        return
    _hits[name] += 1
    if _hits[name] >= int(nth or 1) and _armed:
        _armed.clear()
        raise Aborted(name)
    if _hits[name] >= int(nth or 1):
        log.warning("fault point %s reached (%s): killing this process (SIGKILL)", name, spec)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def _pause(name: str, spec: str) -> None:
    target, _, path = spec.partition("=")
    if target != name or not path:
        return
    log.warning("fault point %s: pausing until %s exists", name, path)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    deadline = time.monotonic() + 600
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.2)
    log.warning("fault point %s: going on", name)
