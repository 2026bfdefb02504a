"""Erasure on request: remove a person from every table and file derived from them.

``seglake run erase --identifier X [--identifier Y] [--file F]``

1. **Who** (:mod:`.person`): the identifiers given (email, phone, user_id, anonymous_id,
   device_id; raw as the person gave them) and their keyed hashes, expanded through identity's
   graph (``silver.identity_map`` and ``silver.identity_edges``, never through an identifier
   the guard excluded), one hop over ``silver.events`` (consent=false events included) and the
   recent versions of the identity map (earlier customer ids no one else holds).
2. **Under the exclusive lease** (:func:`seglake.core.leases.exclusive`): running writer jobs
   finish first and new ones wait; the log says when erase has to wait.
3. **Ledger first**: ``ops.erasure_requests`` gets the request's row (hashes only, ``pending``),
   so a run killed halfway leaves the person suppressed and its rerun finds them again.
4. **Every Delta table** under the lakehouse but the identity tables (found by listing, not by a
   hand list) is searched by its schema (:mod:`.match`): every string value, in arrays, maps
   and structs too, compared with the person's raw identifiers, hashes and customer ids; raw
   lines and JSON text searched for them; malformed raw lines searched for tokens whose hash is
   the person's. Matching rows are removed by a MERGE whose condition names only columns (the
   transaction log keeps no value; its userMetadata holds the request key and the row count, so
   a rerun after a crash counts what this run removed), deletion vectors are purged.
5. **Files** (:mod:`.artifacts`): the HTML report and Great Expectations results/Data Docs that
   hold the person are deleted (regenerate them), MLflow artifacts holding them are deleted and
   their runs reported, MLflow params/tags and anything else are reported; then **activation**
   (CRM rows, audiences, destinations' deletion calls).
6. **The identity tables** last (edges, then the map): until then a rerun after a crash finds the
   person's customer ids in them (and in the map's older versions).
7. **VACUUM** (:mod:`.vacuuming`) with ``erase.retention_hours`` every table
   (``erase.vacuum_all_tables``; else only those changed, by this run or a killed earlier run of
   the same request) that holds a file its current version does not reference: with 0, the
   files of older versions are gone at once, so time travel cannot bring the person back.
8. **Ledger done**: the row gets tables touched, rows removed (by every run of the request),
   customer count (recorded with the pending row), retention.

The summary reports counts per table and file paths; identifiers are never logged or reported.
Landing files are not erased (README: privacy); :func:`seglake.core.erasure.erased_filter`
suppresses their records of an erased person when they are ingested or cleaned again.
"""
from __future__ import annotations

from seglake.stages.erase.job import (add_arguments, delete_rows, discover_tables, erasure_order,
                                      identifiers_from_args, run)
from seglake.stages.erase.match import Person, column_conditions, distinctive, search_pattern, table_condition
from seglake.stages.erase.person import TooManyIdentifiers, expand_person

__all__ = [
    "Person", "TooManyIdentifiers", "add_arguments", "column_conditions", "delete_rows", "discover_tables",
    "distinctive", "erasure_order", "expand_person", "identifiers_from_args", "run", "search_pattern",
    "table_condition",
]
