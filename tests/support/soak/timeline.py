"""Which colours a response may come from, given when its request started and ended.

Between state changes the replicas agree on one state and every request must be answered by the colour(s) that
state sends ordinary traffic to. A change opens a window (from the moment the change is asked for until every
replica holds the new state) in which both colours are allowed: a request that started before a flip may be
answered by either. A request is allowed the union of what was allowed over its lifetime.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

COLOURS = frozenset({"blue", "green"})


def serving_colours(state: Mapping[str, Any]) -> frozenset[str]:
    """The colours ordinary traffic goes to in `state` (a /state body): the active one, and the standby one
    while a weight between 0 and 100 splits traffic (shifts and stepped promotions)."""
    active = str(state["active"])
    weight = int(state.get("weight") or 0)
    standby = next(iter(COLOURS - {active}))
    if weight <= 0:
        return frozenset({active})
    if weight >= 100:
        return frozenset({standby})
    return COLOURS


@dataclass
class Segment:
    start: float
    end: float | None  # None: still current
    colours: frozenset[str]
    label: str


class Timeline:
    """Segments of time, each with the colours allowed during it; times are `time.monotonic()`."""

    def __init__(self, colours: frozenset[str], label: str = "start") -> None:
        self.segments = [Segment(time.monotonic(), None, colours, label)]

    @property
    def current(self) -> Segment:
        return self.segments[-1]

    def _open(self, colours: frozenset[str], label: str) -> None:
        now = time.monotonic()
        self.current.end = now
        self.segments.append(Segment(now, None, colours, label))

    def changing(self, label: str) -> None:
        """A change was asked for: until `settled`, either colour may answer."""
        self._open(COLOURS, f"changing: {label}")

    def settled(self, colours: frozenset[str], label: str) -> None:
        """Every replica holds the same state again, which sends traffic to `colours`."""
        self._open(colours, label)

    def allowed(self, start: float, end: float) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for seg in reversed(self.segments):
            if seg.end is not None and seg.end < start:
                break
            if seg.start <= end:
                out |= seg.colours
        return out

    def changes(self) -> int:
        return sum(1 for s in self.segments if s.label.startswith("changing"))
