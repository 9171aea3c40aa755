"""The timer of a stepped promotion. Every replica runs one and no replica is special: the plan lives in the store,
whichever replica's timer fires first takes the step through the store's precondition, and the others' attempts
become no-ops (`rollout.advance` finds nothing due in the newer state). A replica that restarts reads the plan and
goes on; a store that cannot be written holds the step until it can.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from ..core import rollout
from ..core.model import Color, State
from ..log import log
from ..state import StateHolder
from ..stores import StoreError
from .clock import StateClock

logger = logging.getLogger("bgproxy.release")
RETRY = 1.0  # seconds: a step that could not be written (store away, standby down) is tried again this often


class StepTimer(StateClock):
    def __init__(self, holder: StateHolder, healthy: Mapping[Color, bool]) -> None:
        super().__init__(holder, name="step-timer", logger=logger, retry=RETRY)
        self.healthy = healthy
        self._held: tuple[int, int] | None = None  # (revision, step) of a due step held back: warned about once

    async def tick(self) -> float | None:
        """One attempt: take the step if it is due. Returns how long to wait before the next look (None: until the
        state changes)."""
        current = self.holder.current
        plan = current.rollout
        if plan is None or plan.paused or not self.holder.loaded:
            return None
        wait = plan.due_at - time.time()
        if wait > 0:
            return wait
        taken: list[State] = []

        def advance(state: State) -> State:
            new = rollout.advance(state, now=time.time(), healthy=self.healthy)
            if new is not state:
                taken.append(new)
            return new

        try:
            after = await self.holder.change(advance)
        except StoreError as exc:
            held = (current.revision, plan.step)
            level = logging.WARNING if held != self._held else logging.DEBUG  # once per held step, not every retry
            self._held = held
            log(logger, "step_not_written", level=level, error=str(exc), retry_in=RETRY)
            return RETRY
        if taken and after == taken[-1]:  # this replica wrote it (else another one was first)
            step = after.rollout.step + 1 if after.rollout is not None else "promote"
            log(logger, "step_taken", revision=after.revision, step=step, weight=after.weight)
        if after.rollout is not None and after.rollout.step == plan.step and after.revision == current.revision:
            # Due but not taken: the standby colour is failing its health checks. Hold, and look again.
            held = (after.revision, plan.step)
            level = logging.WARNING if held != self._held else logging.DEBUG
            self._held = held
            log(logger, "step_held", level=level, standby=after.standby.value, step=plan.step + 1, why="standby down")
            return RETRY
        return 0.0 if after.rollout is not None else None
