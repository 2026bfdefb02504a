"""Synthetic behavioural events with planted ground truth (``seglake generate``).

Two steps, both in Spark:

1. **Simulation** (``mapInPandas`` over ``spark.range(customers)``, :mod:`.simulation` and
   :mod:`.journey`): each person gets an archetype, identifiers, and a sequence of sessions
   whose journey events follow the archetype's Markov chain (``CHAINS``, :mod:`.model`). A
   per-person simulation is sequential (state by state, with re-draws until the archetype's
   planted fact holds), which higher-order column functions cannot express readably;
   ``mapInPandas`` streams one batch of persons at a time (memory bounded by the batch, not
   by the event count) and seeds Python's ``random.Random`` per (seed, person), so the output
   does not depend on partitioning. The simulation emits only numbers; the result is written
   as ``ground_truth/events.parquet``.
2. **Rendering** (built-in column functions only, :mod:`.render`): raw spelling variants,
   timestamp formats and offsets, duplicates and malformed records are chosen with hash-based
   randoms (``xxhash64`` of seed, purpose and event) and written as JSON lines, CSV and
   Parquet under ``landing/<format>/<yyyy-mm-dd>/``, plus persons / identifiers / transitions
   Parquet files (:mod:`.truth`) and ``counts.json`` (:mod:`.driver`). All counts are exact
   (aggregated from what is written).
"""
from __future__ import annotations

from seglake.devtools.generate.driver import generate
from seglake.devtools.generate.model import (
    ARCH_NAMES, ARCHETYPES, BAD_TS, CATEGORIES, CH, CHAINS, CHANNELS, CURRENCIES,
    CURRENCY_SPELLINGS, DAY_MS, DEVICE_KINDS, DEVICE_SPELLINGS, DUPLICATE_KINDS, ET, GENERATOR_VERSION,
    EVENT_ALIASES, EVENT_TYPES, EXACT_DUP_SHARE, EXPERIMENT, FEATURES, KIOSK_BASE, LUXURY,
    MALFORMED_KINDS, MALFORMED_SHARE, MIN_SESSION_GAP_MS, MISSING_DURATION_SHARE,
    NO_EVENT_ID_SHARE, NOID_DUP_SHARE, NULL_DEVICE_TYPE_SHARE, OFFSETS, PRODUCTS_PER_CATEGORY,
    RESENT_SHARE, SHARED_DEVICE_PREFIX, SOURCES, SRC, ST, STATES, UNKNOWN_TYPES,
)
from seglake.devtools.generate.render import sim_to_truth, truth_to_records
from seglake.devtools.generate.truth import identifiers_truth, persons_truth, transitions_truth

__all__ = [
    "generate",
    "sim_to_truth", "truth_to_records",
    "persons_truth", "identifiers_truth", "transitions_truth",
    "ARCH_NAMES", "ARCHETYPES", "BAD_TS", "CATEGORIES", "CH", "CHAINS", "CHANNELS", "CURRENCIES",
    "CURRENCY_SPELLINGS", "DAY_MS", "DEVICE_KINDS", "DEVICE_SPELLINGS", "DUPLICATE_KINDS", "ET",
    "GENERATOR_VERSION",
    "EVENT_ALIASES", "EVENT_TYPES", "EXACT_DUP_SHARE", "EXPERIMENT", "FEATURES", "KIOSK_BASE",
    "LUXURY", "MALFORMED_KINDS", "MALFORMED_SHARE", "MIN_SESSION_GAP_MS", "MISSING_DURATION_SHARE",
    "NO_EVENT_ID_SHARE", "NOID_DUP_SHARE", "NULL_DEVICE_TYPE_SHARE", "OFFSETS",
    "PRODUCTS_PER_CATEGORY", "RESENT_SHARE", "SHARED_DEVICE_PREFIX", "SOURCES", "SRC", "ST",
    "STATES", "UNKNOWN_TYPES",
]
