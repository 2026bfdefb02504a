"""Absorbing Markov chain algebra on the driver (numpy): the first-order matrices are tiny
(states x states per segment/channel), so they are collected and solved here.

:class:`Chain` holds ``Q`` (transient -> transient) and ``R`` (transient -> absorbing) and
computes the fundamental matrix ``N = (I - Q)^-1``, absorption ``B = N R``, expected steps
``t = N 1`` and removal effects; :func:`chain_metrics` turns one chain into metric rows and
:func:`matrix_metrics` does so for every (segment, channel) matrix of ``gold.transition_matrix``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from seglake.stages.journeys.states import PATH_SEP, StateSpec


@dataclass
class Chain:
    """An absorbing Markov chain over named states (driver-side, small)."""

    transient: list[str]
    absorbing: list[str]
    Q: np.ndarray  # transient -> transient
    R: np.ndarray  # transient -> absorbing

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, str, float]], transient: Sequence[str],
                  absorbing: Sequence[str]) -> "Chain":
        """Build from (from_state, to_state, probability) rows.

        States of ``transient`` without any outgoing row (never observed) move to the last
        absorbing state (exit) with probability 1, so the chain stays absorbing.
        Unknown states raise ValueError.
        """
        transient, absorbing = list(transient), list(absorbing)
        ti = {s: i for i, s in enumerate(transient)}
        ai = {s: i for i, s in enumerate(absorbing)}
        Q = np.zeros((len(transient), len(transient)))
        R = np.zeros((len(transient), len(absorbing)))
        for frm, to, p in rows:
            if frm not in ti:
                raise ValueError(f"chain: from_state {frm!r} is not a transient state {transient}")
            if to in ti:
                Q[ti[frm], ti[to]] += p
            elif to in ai:
                R[ti[frm], ai[to]] += p
            else:
                raise ValueError(f"chain: to_state {to!r} is not a known state")
        empty = (Q.sum(axis=1) + R.sum(axis=1)) == 0
        R[empty, -1] = 1.0
        return cls(transient, absorbing, Q, R)

    def fundamental(self) -> np.ndarray:
        """N = (I - Q)^-1: expected visits to each transient state."""
        return np.linalg.inv(np.eye(len(self.transient)) - self.Q)

    def absorption(self) -> np.ndarray:
        """B = N R: probability of ending in each absorbing state, from each transient state."""
        return np.linalg.solve(np.eye(len(self.transient)) - self.Q, self.R)

    def expected_steps(self) -> np.ndarray:
        """t = N 1: expected number of transitions until absorption, from each transient state."""
        return np.linalg.solve(np.eye(len(self.transient)) - self.Q, np.ones(len(self.transient)))

    def p_absorb(self, start: str, target: str) -> float:
        return float(self.absorption()[self.transient.index(start), self.absorbing.index(target)])

    def without(self, state: str, sink: str) -> "Chain":
        """The chain with ``state`` removed: every transition into it goes to ``sink`` instead."""
        i = self.transient.index(state)
        Q, R = self.Q.copy(), self.R.copy()
        R[:, self.absorbing.index(sink)] += Q[:, i]
        Q[:, i] = 0.0
        return Chain(self.transient, self.absorbing, Q, R)

    def removal_effects(self, start: str, target: str, sink: str) -> dict[str, float]:
        """Removal effect of every transient state but ``start``: 1 - P(target | removed) / P(target).

        0 for every state when the chain never reaches ``target``.
        """
        base = self.p_absorb(start, target)
        out = {}
        for state in self.transient:
            if state == start:
                continue
            out[state] = 0.0 if base <= 0 else 1.0 - self.without(state, sink).p_absorb(start, target) / base
        return out


def chain_metrics(chain: Chain, start: str, conversion: str, exit_state: str) -> list[dict]:
    """Absorbing-chain metrics of one matrix as rows ``metric, subject_type, subject, value, rank``.

    Metrics: ``conversion_probability`` and ``expected_steps`` per transient state,
    ``expected_visits`` (N[start, s]), ``dropoff_mass`` (N[start, s] * P(s -> exit): the
    share of journeys that exit right after s; they sum to P(exit | start)), ranked,
    ``removal_effect`` and ``attributed_share`` (removal effects normalised to sum 1) per state.
    """
    B = chain.absorption()
    t = chain.expected_steps()
    N = chain.fundamental()
    ci, ei = chain.absorbing.index(conversion), chain.absorbing.index(exit_state)
    si = chain.transient.index(start)
    rows: list[dict] = []

    def add(metric: str, subject_type: str, subject: str, value: float, rank: int | None = None) -> None:
        rows.append({"metric": metric, "subject_type": subject_type, "subject": subject,
                     "value": float(value), "rank": rank})

    for i, s in enumerate(chain.transient):
        add("conversion_probability", "state", s, B[i, ci])
        add("expected_steps", "state", s, t[i])
        add("expected_visits", "state", s, N[si, i])
    drop = {s: N[si, i] * chain.R[i, ei] for i, s in enumerate(chain.transient)}
    for r, (s, v) in enumerate(sorted(drop.items(), key=lambda kv: (-kv[1], kv[0])), start=1):
        add("dropoff_mass", "transition", f"{s}{PATH_SEP}{exit_state}", v, r)
    effects = chain.removal_effects(start, conversion, exit_state)
    total = sum(max(v, 0.0) for v in effects.values())
    for r, (s, v) in enumerate(sorted(effects.items(), key=lambda kv: (-kv[1], kv[0])), start=1):
        add("removal_effect", "state", s, v, r)
        add("attributed_share", "state", s, (max(v, 0.0) / total) if total > 0 else 0.0, r)
    return rows


def matrix_metrics(first_order: Iterable[Any], spec: StateSpec) -> list[dict]:
    """Absorbing-chain metrics for every (segment, channel) first-order matrix.

    Args:
        first_order: rows with ``segment, channel, from_state, to_state, probability`` of
            order 1 (collected: groups x states^2, small).
        spec: the states spec.
    """
    groups: dict[tuple[str, str], list[tuple[str, str, float]]] = {}
    for r in first_order:
        groups.setdefault((r["segment"], r["channel"]), []).append(
            (r["from_state"], r["to_state"], float(r["probability"])))
    out = []
    for (segment, channel), rows in sorted(groups.items()):
        chain = Chain.from_rows(rows, spec.transient, spec.absorbing)
        for m in chain_metrics(chain, spec.start, spec.conversion, spec.exit):
            out.append({"segment": segment, "channel": channel, **m})
    return out
