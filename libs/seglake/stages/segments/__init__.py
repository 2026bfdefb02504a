"""Rule-based behavioral segments defined as data (``conf/segments.yaml``).

A segment is a boolean Spark SQL expression over ``gold.customer_features`` (``rule``),
an event-sequence condition evaluated with window functions over profiled silver events
(``sequence``), or both (a customer must satisfy both). Thresholds are typed parameters,
written into a rule as ``${name}`` and substituted as validated SQL literals (integers,
finite numbers, booleans, quoted/escaped strings, or a data-driven quantile cutoff), never
by formatting raw configuration text into SQL.

Segments of one ``family`` are mutually exclusive: a customer qualifying for several keeps
only the one with the lowest ``priority`` number.

``run(ctx)`` (``seglake run segments --as-of DATE``):

1. loads and validates the YAML (structure, names, threshold types) and every rule against
   the features schema with Spark's own parser/analyzer; any problem stops the job with one
   message naming the segment and the YAML line, before anything is written;
2. writes ``gold.segment_membership`` (customer_id, segment, as_of_date, reason = JSON of the
   values that made the rule true; replaceWhere on as_of_date, history kept);
3. writes ``gold.segment_changes`` (entered / exited vs the previous as_of_date present in
   membership);
4. writes ``gold.segment_health`` (size, share, revenue share, conversion rate, change vs the
   previous as_of, alert and too-small flags) and ``gold.segment_overlap`` (pairwise Jaccard).

Layout: :mod:`.model` (definitions and ``SegmentConfigError``), :mod:`.rules` (the rule
language: literals, rendering, Spark validation), :mod:`.validation` (YAML loading and
checks), :mod:`.sequences` (event-sequence kinds), :mod:`.membership` (membership, family
precedence, changes), :mod:`.health` (health and overlap) and :mod:`.job` (``run``).
"""
from __future__ import annotations

from seglake.stages.segments.health import segment_health, segment_overlap
from seglake.stages.segments.job import (CHANGES, FEATURES, HEALTH, MEMBERSHIP, OVERLAP, USES_AS_OF,
                                         add_arguments, run, segments_file)
from seglake.stages.segments.membership import (apply_families, evaluate_segments, resolve_quantiles,
                                                segment_changes)
from seglake.stages.segments.model import Segment, SegmentConfigError, Threshold
from seglake.stages.segments.rules import render_rule, rule_columns, sql_literal, validate_rules
from seglake.stages.segments.sequences import (SEQUENCE_KINDS, SequenceKind, cart_abandonment,
                                               high_intent_abandonment, sequence_evidence)
from seglake.stages.segments.validation import load_segments, parse_segments

__all__ = [
    # job
    "USES_AS_OF", "run", "add_arguments", "segments_file",
    "MEMBERSHIP", "CHANGES", "HEALTH", "OVERLAP", "FEATURES",
    # definitions and YAML validation
    "SegmentConfigError", "Threshold", "Segment", "parse_segments", "load_segments",
    # rule language
    "sql_literal", "render_rule", "rule_columns", "validate_rules",
    # event sequences
    "SequenceKind", "SEQUENCE_KINDS", "cart_abandonment", "high_intent_abandonment", "sequence_evidence",
    # membership and changes
    "resolve_quantiles", "evaluate_segments", "apply_families", "segment_changes",
    # health and overlap
    "segment_overlap", "segment_health",
]
