"""Who is erased: the identifiers of a request expanded to everything that identifies the person.

1. The given identifiers and their keyed hashes.
2. Closure over identity's own graph, round by round until nothing new: ``silver.identity_map``
   (every customer holding a known identifier, and every identifier of those customers) and
   ``silver.identity_edges`` (both ends of every edge touching a known identifier, so an
   identifier linked only there is found too). Identifiers the guard excluded
   (``silver.identity_excluded``: a kiosk device shared by many people) are never followed:
   they would pull in other people.
3. One hop over ``silver.events`` (consent=false events included, which identity does not
   link): the identifiers seen in the same event as a known one, unless the identity map gives
   them to another customer.
4. Earlier customer ids: the last ``erase.map_history_versions`` versions of the identity map
   are searched for customer ids the person held before (a merge or split renamed them) and
   that no one holds now; gold rows of past as-of dates still carry them.

Every step reads one person's rows (a handful) and collects them; no step collects events.
"""
from __future__ import annotations

import logging
from functools import reduce
from typing import Iterable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.config import Config
from seglake.core.contracts import (HASHED_IN_SILVER, IDENTIFIERS, IDENTITY_EDGES, IDENTITY_EXCLUDED, IDENTITY_MAP,
                                    SILVER_EVENTS)
from seglake.core.erasure import hash_values
from seglake.stages.erase.match import Person, distinctive

log = logging.getLogger(__name__)

#: identifier types stored in clear in silver and the identity tables (the others are hashed)
RAW_TYPES = frozenset(t for t, _ in IDENTIFIERS if t not in HASHED_IN_SILVER)
_MAX_ROUNDS = 50


class TooManyIdentifiers(ValueError):
    """The expansion reached more identifiers than ``erase.max_identifiers``."""


def _excluded(spark: SparkSession, cfg: Config) -> set[str]:
    if not tables.exists(spark, cfg, IDENTITY_EXCLUDED):
        return set()
    # the guard's shared identifiers: few (bounded by identity.max_persons_per_identifier)
    return {r["identifier"] for r in tables.read(spark, cfg, IDENTITY_EXCLUDED).select("identifier")
            .distinct().collect() if r["identifier"]}


def _check_size(n: int, limit: int) -> None:
    if limit and n > limit:
        raise TooManyIdentifiers(
            f"erase: the identity graph links the request to more than {limit} identifiers "
            f"(erase.max_identifiers); nothing was erased. Check silver.identity_map for an over-linked "
            f"customer, or raise erase.max_identifiers if this person really has that many.")


def _graph_round(spark: SparkSession, cfg: Config, frontier: list[str], cids: set[str]) -> tuple[set, set]:
    """(new customer ids, (type, identifier) pairs) reachable in one step from ``frontier``."""
    found: set[tuple[str, str]] = set()
    new_cids: set[str] = set()
    # every collect below returns one person's customer ids, identifiers or edges: small
    if tables.exists(spark, cfg, IDENTITY_MAP):
        idmap = tables.read(spark, cfg, IDENTITY_MAP)
        new_cids = {r["customer_id"] for r in idmap.where(F.col("identifier").isin(frontier))
                    .select("customer_id").distinct().collect() if r["customer_id"]} - cids
        if new_cids:
            found |= {(r["identifier_type"], r["identifier"]) for r in
                      idmap.where(F.col("customer_id").isin(sorted(new_cids)))
                      .select("identifier_type", "identifier").distinct().collect()}
    if tables.exists(spark, cfg, IDENTITY_EDGES):
        edges = tables.read(spark, cfg, IDENTITY_EDGES)
        for r in (edges.where(F.col("src").isin(frontier) | F.col("dst").isin(frontier))
                  .select("src_type", "src", "dst_type", "dst").distinct().collect()):
            found |= {(r["src_type"], r["src"]), (r["dst_type"], r["dst"])}
    return new_cids, found


def _event_neighbours(spark: SparkSession, cfg: Config, known: list[str]) -> set[tuple[str, str]]:
    """(type, identifier) of every identifier seen in an event with one of ``known``."""
    if not known or not tables.exists(spark, cfg, SILVER_EVENTS):
        return set()
    events = tables.read(spark, cfg, SILVER_EVENTS)
    cols = [c for _, c in IDENTIFIERS if c in events.columns]
    if not cols:
        return set()
    hit = reduce(lambda a, b: a | b, [F.col(c).isin(known) for c in cols])
    rows = events.where(hit).select(*cols).distinct().collect()  # the person's identifier combinations: small
    types = {c: t for t, c in IDENTIFIERS}
    return {(types[c], r[c]) for r in rows for c in cols if r[c]}


def _owned_by_others(spark: SparkSession, cfg: Config, candidates: Iterable[str], cids: set[str]) -> set[str]:
    """Those of ``candidates`` the identity map gives to a customer other than ``cids``."""
    candidates = sorted(set(candidates))
    if not candidates or not tables.exists(spark, cfg, IDENTITY_MAP):
        return set()
    rows = (tables.read(spark, cfg, IDENTITY_MAP).where(F.col("identifier").isin(candidates))
            .select("identifier", "customer_id").distinct().collect())  # the person's candidates: small
    return {r["identifier"] for r in rows if r["customer_id"] not in cids}


def _version_readable(df: DataFrame, spark: SparkSession) -> bool:
    """Whether every data file of ``df`` (a read of a Delta table version) is still on storage: a
    version older than a VACUUM lost some. Asked on the driver before reading it, so the read does
    not fail in a task (each logging an executor ERROR with its stack trace)."""
    jvm = spark._jvm
    files = [jvm.org.apache.hadoop.fs.Path(name) for name in df.inputFiles()]   # one table's files
    fs = files[0].getFileSystem(spark._jsc.hadoopConfiguration()) if files else None
    return all(fs.exists(f) for f in files)


def _earlier_customer_ids(spark: SparkSession, cfg: Config, identifiers: list[str], cids: set[str],
                          versions: int) -> set[str]:
    """Customer ids the person held in the last ``versions`` older versions of the identity map
    and that no other customer holds now (a split leaves the old id to the bigger part)."""
    if versions <= 0 or not identifiers or not tables.exists(spark, cfg, IDENTITY_MAP):
        return set()
    top = tables.version(spark, cfg, IDENTITY_MAP)
    earlier: set[str] = set()
    # each collect: the customer ids of the person's identifiers in one version (small); the loop
    # scans up to ``versions`` old versions of the map once each: erase is rare, the map bounded
    for v in range(top - 1, max(-1, top - 1 - versions), -1):
        try:
            old = tables.read(spark, cfg, IDENTITY_MAP, version=v)
            if not _version_readable(old, spark):   # its files were vacuumed: none further back
                break
            # the customer ids of the person's identifiers (at most erase.max_identifiers): small
            rows = old.where(F.col("identifier").isin(identifiers)).select("customer_id").distinct().collect()
        except Exception:  # noqa: BLE001 - a version Delta can no longer reconstruct: none further back
            break
        earlier |= {r["customer_id"] for r in rows if r["customer_id"]}
    earlier -= cids
    if earlier:  # an id someone still holds is theirs now
        held = {r["customer_id"] for r in tables.read(spark, cfg, IDENTITY_MAP)
                .where(F.col("customer_id").isin(sorted(earlier))).select("customer_id").distinct().collect()}
        earlier -= held
    return earlier


def expand_person(spark: SparkSession, cfg: Config, given: list[str], key: str, *, max_identifiers: int = 1000,
                  history_versions: int = 20, extra_hashes: Iterable[str] = ()) -> Person:
    """The :class:`Person` named by ``given`` (see the module docstring).

    Args:
        spark: the session.
        cfg: the configuration.
        given: the request's identifiers, raw.
        key: the PII key (:func:`seglake.core.pii.key`).
        max_identifiers: refuse (:class:`TooManyIdentifiers`) beyond this many; 0 = no limit.
        history_versions: older identity map versions searched for earlier customer ids.
        extra_hashes: hashes recorded by an earlier, interrupted run of the same request.
    """
    hashed_given = hash_values(spark, given, key)
    raw: set[str] = set(given)
    hashed: set[str] = set(hashed_given.values()) | set(extra_hashes)
    excluded = _excluded(spark, cfg)
    seen = raw | hashed
    cids: set[str] = set()
    frontier = sorted(seen - excluded)
    rounds = 0
    while frontier:
        rounds += 1
        if rounds > _MAX_ROUNDS:
            raise TooManyIdentifiers(f"erase: the identity expansion did not settle in {_MAX_ROUNDS} rounds")
        new_cids, found = _graph_round(spark, cfg, frontier, cids)
        cids |= new_cids
        new = {(t, v) for t, v in found if v and v not in seen and v not in excluded}
        for t, v in new:
            (raw if t in RAW_TYPES else hashed).add(v)
        seen |= {v for _, v in new}
        _check_size(len(seen), max_identifiers)
        frontier = sorted({v for _, v in new})

    hop = {(t, v) for t, v in _event_neighbours(spark, cfg, sorted(seen - excluded))
           if v not in seen and v not in excluded}
    others = _owned_by_others(spark, cfg, [v for _, v in hop], cids)
    for t, v in hop:
        if v not in others:
            (raw if t in RAW_TYPES else hashed).add(v)
            seen.add(v)
    _check_size(len(seen), max_identifiers)
    cids |= _earlier_customer_ids(spark, cfg, sorted(seen), cids, history_versions)
    # identifiers kept in clear (user_id, anonymous_id, the given ones) are hashed for the ledger
    raw_hashes = hash_values(spark, raw, key)
    hashed |= set(raw_hashes.values())
    weak = sorted(v for v in raw if not distinctive(v))
    log.info("erase: the request expands to %d identifiers and %d customer id(s)", len(seen), len(cids))
    return Person(given=tuple(sorted(set(given))), raw=tuple(sorted(raw)), hashes=tuple(sorted(hashed)),
                  customer_ids=tuple(sorted(cids)), weak=tuple(weak),
                  weak_hashes=tuple(sorted({raw_hashes[v] for v in weak if v in raw_hashes})))
