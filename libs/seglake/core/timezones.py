"""Time zones: seglake's calendar zone and the zones of naive source timestamps.

* ``time.zone`` (default UTC) is the calendar of every day seglake computes: ``event_date``, the
  as-of date and every day window of features, segments, propensity and journeys. Spark derives
  days from timestamps in the *session* time zone, so each job runs with the session time zone
  set to ``time.zone`` (:func:`job_zone`, used by the runner) and gives the caller's setting back
  afterwards: a notebook's own ``spark.sql.session.timeZone`` is left as its user set it.
* ``time.naive_zones`` names the zone of timestamps written without an offset, per canonical
  source (``{offline: Europe/Berlin}``) with an optional ``default``; unlisted sources: UTC.
  Timestamps with an offset or epoch milliseconds are instants already and are never shifted.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterable, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from seglake.core.config import Config, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

SESSION_TZ = "spark.sql.session.timeZone"
UTC = "UTC"


def check_zone(name: object, key: str) -> str:
    """``name`` if it is an IANA region (``Europe/Berlin``) or ``UTC``; else a ConfigError naming ``key``."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{key} must be a time zone name such as UTC or Europe/Berlin, got {name!r}.")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{key}: unknown time zone {name!r} (use an IANA name such as UTC, "
                          "Europe/Berlin or America/New_York).") from None
    return name


def calendar_zone(cfg: Config) -> str:
    """``time.zone``, checked."""
    return check_zone(cfg.get("time.zone", UTC), "time.zone")


def naive_zones(cfg: Config, sources: Iterable[str]) -> dict[str, str]:
    """``time.naive_zones`` checked against the canonical ``sources`` (plus ``other`` and
    ``default``): {source or "default": zone}, without entries that are UTC anyway."""
    zones = cfg.get("time.naive_zones") or {}
    known = set(sources) | {"other", "default"}
    out = {}
    for source, zone in zones.items():
        if source not in known:
            raise ConfigError(f"time.naive_zones: unknown source {source!r}; use one of {sorted(known)} "
                              "(the canonical sources of standardize.yaml).")
        check_zone(zone, f"time.naive_zones.{source}")
        if zone != UTC:
            out[str(source)] = zone
    return out


@contextmanager
def job_zone(spark: "SparkSession", cfg: Config) -> Iterator[str]:
    """Run the block with the session time zone set to ``time.zone``; the caller's setting is
    restored afterwards, whatever happens."""
    zone = calendar_zone(cfg)
    previous = spark.conf.get(SESSION_TZ, None)
    if previous != zone:
        log.debug("session time zone %s -> %s for this job", previous, zone)
        spark.conf.set(SESSION_TZ, zone)
    try:
        yield zone
    finally:
        if previous is not None and previous != zone:
            spark.conf.set(SESSION_TZ, previous)
