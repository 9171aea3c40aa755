"""Each colour's live figures and drained signal, read against the state: what /state, the automatic rollback and
Prometheus show.

The data plane counts (`core.stats.ColorStats`: the live window, what is in flight); this ties the counts to the
state. A colour's window is marked when the colour begins getting ordinary traffic, so its figures describe that
traffic only, never what it served before (testers' previews, an earlier release's failures). A colour that gets no
ordinary traffic is drained once nothing live has been in flight on it for DRAINED_AFTER (`core.drained`).
"""

from __future__ import annotations

import time
from functools import partial
from time import perf_counter

from ..core.analysis import Figures
from ..core.drained import drained_at, receives
from ..core.model import Color, State
from ..metrics import Metrics
from ..state import StateHolder


class LiveFigures:
    """This replica's figures of each colour; all clocks monotonic (perf_counter), shown as wall-clock times."""

    def __init__(self, holder: StateHolder, metrics: Metrics, *, drained_after: float) -> None:
        self.holder = holder
        self.colors = metrics.colors
        self.kept = all(stats.kept for stats in self.colors.values())  # ANALYSIS_ENABLED
        self.drained_after = drained_after
        now = perf_counter()
        self._wall = time.time() - now  # one offset, so a timestamp shown twice reads the same
        # When each colour last stopped getting ordinary traffic; from the start, for the colour that never had any.
        self.off_since = dict.fromkeys(Color, now)
        for color in Color:
            metrics.drained.labels(color.value).set_function(partial(self._drained_gauge, color))

    def start(self) -> None:
        self.holder.listeners.append(self._changed)

    def stop(self) -> None:
        if self._changed in self.holder.listeners:
            self.holder.listeners.remove(self._changed)

    def _changed(self, old: State, new: State) -> None:
        # Called on the loop right after the swap: no request has chosen its colour from `new` yet.
        now = perf_counter()
        for color in Color:
            before, after = receives(old, color), receives(new, color)
            if after and not before:
                self.colors[color].mark(now)
            elif before and not after:
                self.off_since[color] = now

    def figures(self) -> dict[Color, Figures]:
        now = perf_counter()
        return {color: stats.figures(now) for color, stats in self.colors.items()}

    def drained_since(self, color: Color) -> float | None:
        """When `color` became drained (seconds since the epoch), or None while it is not."""
        stats = self.colors[color]
        at = drained_at(
            receiving=receives(self.holder.current, color),
            live=stats.live,
            quiet_since=stats.ended,
            off_since=self.off_since[color],
            after=self.drained_after,
        )
        if at is None or at > perf_counter():
            return None
        return at + self._wall

    def _drained_gauge(self, color: Color) -> float:
        return 0.0 if self.drained_since(color) is None else 1.0
