"""Journey analysis: Markov transition matrices, absorbing-chain metrics, removal-effect
attribution, paths and funnel (``seglake run journeys --as-of DATE``).

Flow (``run``): silver.events (consented, window ``[as_of - window_days, as_of)``) ->
customer ids from silver.identity_map -> sessions -> journey states (``conf/states.yaml``)
-> transitions counted in Spark (window functions + aggregations) -> ``gold.transition_matrix``.
The first-order matrices are tiny (states x states per segment/channel), so the absorbing
chain algebra (fundamental matrix ``N = (I - Q)^-1``, absorption ``B = N R``, expected steps
``t = N 1``, removal effects) runs on the driver in numpy -> ``gold.journey_metrics``.
Journey paths and the funnel -> ``gold.journey_paths`` / ``gold.journey_metrics``.
The journey graph (PageRank, motif) lives in :mod:`seglake.stages.journeys.graph`.

Events are ordered by ``EVENT_ORDER`` (event_ts, session_seq, event_seq): the order sessionize
gave them (event_ts, then event_key), total per customer, so equal timestamps give the same
journeys on every run and any partitioning.

A *journey* is the ordered list of mapped events of one session (scope ``session``) or of
one customer over the window (scope ``customer``), split after every conversion. It begins
in the virtual ``start`` state and ends in ``conversion`` (its last event is a conversion) or
``exit`` (anything else). Every event of the journey contributes one transition into its
state; the last one also contributes ``state -> exit`` unless it is a conversion.

k-order transitions: the from-state is the path of the last ``k`` states (``start`` counts as
a state, shorter histories near the start are kept as they are), joined with ``>``:
``start>browse>product_view -> cart``. Every order counts the same transitions, so each
order's rows of probabilities sum to 1.

Modules: :mod:`~seglake.stages.journeys.states` (the states spec and shared names, a leaf),
:mod:`~seglake.stages.journeys.matrices` (journeys, transitions, matrices, channel paths),
:mod:`~seglake.stages.journeys.chain` (absorbing-chain metrics),
:mod:`~seglake.stages.journeys.attribution` (channel removal effects),
:mod:`~seglake.stages.journeys.paths` (paths and funnel),
:mod:`~seglake.stages.journeys.graph` (page/state graph, PageRank, motifs) and
:mod:`~seglake.stages.journeys.job` (the job). This package re-exports their public names.
"""
from __future__ import annotations

from seglake.stages.journeys.attribution import channel_attribution
from seglake.stages.journeys.chain import Chain, chain_metrics, matrix_metrics
from seglake.stages.journeys.job import (METRICS_SCHEMA, METRICS_TABLE, MATRIX_TABLE, PATHS_TABLE, USES_AS_OF,
                                         add_arguments, run, sessionized_events)
from seglake.stages.journeys.matrices import (build_journeys, channel_path_transitions, channel_touchpoints,
                                              journey_transitions, segment_sets, transition_counts,
                                              transition_matrix, with_probabilities)
from seglake.stages.journeys.paths import funnel_counts, funnel_metrics, journey_summaries, kstep_paths, top_paths
from seglake.stages.journeys.states import (ALL, EVENT_ORDER, PATH_SEP, UNKNOWN_CHANNEL, StateSpec, assign_states,
                                            load_states)

__all__ = [
    # states
    "ALL", "EVENT_ORDER", "PATH_SEP", "UNKNOWN_CHANNEL", "StateSpec", "assign_states", "load_states",
    # matrices
    "build_journeys", "channel_path_transitions", "channel_touchpoints", "journey_transitions", "segment_sets",
    "transition_counts", "transition_matrix", "with_probabilities",
    # absorbing chain + attribution
    "Chain", "chain_metrics", "matrix_metrics", "channel_attribution",
    # paths + funnel
    "funnel_counts", "funnel_metrics", "journey_summaries", "kstep_paths", "top_paths",
    # job
    "METRICS_SCHEMA", "METRICS_TABLE", "MATRIX_TABLE", "PATHS_TABLE", "USES_AS_OF", "add_arguments", "run",
    "sessionized_events",
]
