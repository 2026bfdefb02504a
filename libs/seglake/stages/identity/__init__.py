"""Identity resolution: every identifier of silver.events -> one ``customer_id``.

Identifiers seen together in one event (user_id, anonymous_id, device_id, hashed email,
hashed phone) are linked; the connected components of that graph are the customers.

* **Graph**: every distinct combination of identifiers in (consented) events gives the
  pairs of its non-null identifiers as undirected edges (a clique of at most 5 nodes).
* **Giant-component guard**: a non-user identifier seen together with more than
  ``identity.max_persons_per_identifier`` distinct user_ids (a shared device, a family
  email, a test cookie) is excluded from linking and reported in
  ``silver.identity_excluded``; it gets no customer_id of its own.
* **Connected components**: :func:`connected_components` runs natively on DataFrames
  (large-star / small-star, Kiveris et al. 2014: O(log n) rounds, built-in functions only,
  the edge set checkpointed every round, convergence = the edge set's checksum stops
  changing). ``identity.engine: graphframes`` uses GraphFrames' connectedComponents
  instead when its JVM jar is on the classpath.
* **Stable customer_id**: a new component is named ``<prefix> + HMAC-SHA256(key,
  representative)[:20]`` (hex), keyed by the PII secret (:func:`seglake.core.pii.key`, the
  same key as the identifier hashes), so a customer_id cannot be recomputed from a user_id
  without the key; the representative is the node key (``1|user_id|<id>``) of the smallest
  user_id of the component (components without any user_id: the smallest identifier, by
  type rank anonymous_id < device_id < email < phone). Same key and data, same ids; a new
  key gives new ids with the same grouping. When a previous map exists, a
  component keeps the previous customer_id of its identifiers. *Merge* (one new component
  holds identifiers of several previous customers): the previous customer holding the most
  identifiers keeps its id (ties: the smallest id) and the others are retired (their
  identifiers are remapped; the mapping old -> new is in the run summary). *Split* (a
  previous customer's identifiers end up in several components, e.g. after the guard
  excluded a new shared identifier): the part holding most of them keeps the id, the other
  parts get new ids.
* **Incremental**: the run remembers the highest ``_ingested_at`` of silver.events it has
  linked (``ops.identity_runs``) and the distinct edges (``silver.identity_edges``). A
  later run links only the new edges, attached to the previous customers by virtual
  ``customer`` nodes; if the guard's excluded set changes, it rebuilds everything from the
  stored edges (no events rescan).

Tables: silver.identity_map (identifier_type, identifier, customer_id, _run_id),
silver.identity_edges, silver.identity_excluded, ops.identity_runs.

The package: :mod:`~seglake.stages.identity.components` (connected components),
:mod:`~seglake.stages.identity.graph` (nodes, edges, the guard and the customer ids) and
:mod:`~seglake.stages.identity.job` (the job: ``run``, ``add_arguments``, the table names).
"""
from __future__ import annotations

from seglake.stages.identity.components import (ConvergenceError, connected_components,
                                               connected_components_with_rounds, graphframes_components)
from seglake.stages.identity.graph import (assign_customer_ids, derive_customer_id, drop_excluded,
                                          excluded_identifiers, guard_counts, identifier_tuples, identity_edges,
                                          identity_nodes, resolve)
from seglake.stages.identity.job import EDGES_TABLE, EXCLUDED_TABLE, MAP_TABLE, RUNS_TABLE, add_arguments, run

__all__ = [
    # job
    "run", "add_arguments", "MAP_TABLE", "EDGES_TABLE", "EXCLUDED_TABLE", "RUNS_TABLE",
    # connected components
    "ConvergenceError", "connected_components", "connected_components_with_rounds", "graphframes_components",
    # the identity graph and customer ids
    "identifier_tuples", "identity_nodes", "identity_edges", "guard_counts", "excluded_identifiers",
    "drop_excluded", "derive_customer_id", "assign_customer_ids", "resolve",
]
