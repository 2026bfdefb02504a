"""Segment definitions as data: the validated ``Segment`` and ``Threshold`` records and
``SegmentConfigError``, the one error every configuration problem (YAML structure, threshold
types, rules rejected by Spark) is reported with. A leaf module: the other modules of the
package import these names, it imports none of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class SegmentConfigError(ValueError):
    """One or more problems in the segment definitions; ``problems`` lists them."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        if len(problems) == 1:
            message = f"{source} {problems[0]}; nothing was written."
        else:
            message = (f"{source} has {len(problems)} problems (nothing was written): "
                       + "; ".join(problems) + ".")
        super().__init__(message)


# --------------------------------------------------------------------------- definitions
@dataclass(frozen=True)
class Threshold:
    """A typed rule parameter. ``of`` is the feature column of a ``quantile`` threshold."""

    name: str
    type: str
    value: Any
    line: int
    of: str | None = None


@dataclass(frozen=True)
class Segment:
    """One validated segment definition (``line``: the YAML line of its entry)."""

    name: str
    description: str
    rule: str | None
    sequence: str | None
    thresholds: dict[str, Threshold]
    family: str | None
    priority: int | None
    line: int
    rule_line: int
    enabled: bool = True

    def where(self) -> str:
        return f"line {self.line}, segment '{self.name}'"
