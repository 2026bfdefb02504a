"""Removal-effect attribution over the channel-level absorbing chain.

The collected channel path transitions (start -> channel -> ... -> conversion | exit, from
:func:`seglake.stages.journeys.matrices.channel_path_transitions`) become a :class:`Chain`
whose transient states are the channels; each channel's removal effect (the relative drop
in P(conversion | start) when the channel is removed) is normalised into attributed shares
and conversions.
"""
from __future__ import annotations

from typing import Iterable

from seglake.stages.journeys.chain import Chain
from seglake.stages.journeys.states import StateSpec


def channel_attribution(rows: Iterable[tuple[str, str, int]], spec: StateSpec) -> list[dict]:
    """Removal-effect attribution over the channel-level chain.

    Args:
        rows: (from_state, to_state, count) of :func:`channel_path_transitions` (collected:
            channels x channels, small).
        spec: the states spec (start / conversion / exit names).

    Returns:
        Metric rows (subject_type ``channel``): ``removal_effect``, ``attributed_share`` and
        ``attributed_conversions`` per channel, plus ``conversion_probability`` of the start.
    """
    rows = [(f, t, float(c)) for f, t, c in rows]
    totals: dict[str, float] = {}
    for f, _, c in rows:
        totals[f] = totals.get(f, 0.0) + c
    channels = sorted({s for f, t, _ in rows for s in (f, t)} - {spec.start, spec.conversion, spec.exit})
    chain = Chain.from_rows([(f, t, c / totals[f]) for f, t, c in rows], [spec.start] + channels,
                            [spec.conversion, spec.exit])
    conversions = sum(c for _, t, c in rows if t == spec.conversion)
    out = [{"metric": "conversion_probability", "subject_type": "channel", "subject": spec.start,
            "value": chain.p_absorb(spec.start, spec.conversion), "rank": None}]
    effects = chain.removal_effects(spec.start, spec.conversion, spec.exit)
    total = sum(max(v, 0.0) for v in effects.values())
    for r, (ch, v) in enumerate(sorted(effects.items(), key=lambda kv: (-kv[1], kv[0])), start=1):
        share = (max(v, 0.0) / total) if total > 0 else 0.0
        out += [{"metric": "removal_effect", "subject_type": "channel", "subject": ch, "value": v, "rank": r},
                {"metric": "attributed_share", "subject_type": "channel", "subject": ch, "value": share, "rank": r},
                {"metric": "attributed_conversions", "subject_type": "channel", "subject": ch,
                 "value": share * conversions, "rank": r}]
    return out
