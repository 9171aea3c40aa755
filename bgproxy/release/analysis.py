"""The automatic rollback: every replica looks at its live figures every second, and a breach is written through the
store's precondition, so with several replicas the first to see it writes it and the others' attempts become
no-ops (`analysis.judge` finds nothing to judge in the newer state). The verdict itself is pure (`core.analysis`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ..core.analysis import Breach, Thresholds, judge, judged
from ..core.model import State
from ..log import log
from ..metrics import Metrics
from ..state import StateHolder
from ..stores import StoreError
from .live import LiveFigures

logger = logging.getLogger("bgproxy.release")
INTERVAL = 1.0  # seconds between two looks at the figures: a breach is acted on within about this much


class AutoRollback:
    def __init__(self, holder: StateHolder, live: LiveFigures, metrics: Metrics, thresholds: Thresholds) -> None:
        self.holder = holder
        self.live = live
        self.metrics = metrics
        self.thresholds = thresholds
        self.looks = 0  # how many times the figures were looked at (tests wait on it)
        self._task: asyncio.Task[None] | None = None
        self._unwritten: int | None = None  # revision of a breach the store refused: warned about once

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bgproxy-auto-rollback")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug of ours must not stop the guard of every release on this replica for good
                logger.exception("auto_rollback_failed")
            await asyncio.sleep(INTERVAL)

    async def tick(self) -> Breach | None:
        """One look: if the judged colour breaches, roll it back. Returns the breach this replica wrote, if any."""
        self.looks += 1
        state = self.holder.current
        t = self.thresholds
        if not self.holder.loaded or judged(state, now=time.time(), watch=t.watch) is None:
            return None  # the common case: nothing to judge, the figures are not even read
        figures = self.live.figures()
        if judge(state, figures, t, now=time.time())[1] is None:
            return None
        wrote: list[tuple[State, Breach]] = []

        def roll_back(base: State) -> State:
            if base is not state:
                return base  # changed meanwhile (another replica rolled back, a person acted): look again next time
            new, breach = judge(base, figures, t, now=time.time())
            if breach is not None:
                wrote.append((new, breach))
            return new

        try:
            after = await self.holder.change(roll_back)
        except StoreError as exc:
            level = logging.WARNING if self._unwritten != state.revision else logging.DEBUG  # once, not every look
            self._unwritten = state.revision
            log(logger, "auto_rollback_not_written", level=level, error=str(exc), retry_in=INTERVAL)
            return None
        if not wrote or after != wrote[-1][0]:
            return None  # another replica was first
        breach = wrote[-1][1]
        self.metrics.auto_rollbacks.labels(breach.color.value, breach.kind).inc()
        log(
            logger,
            "auto_rollback",
            level=logging.WARNING,
            color=breach.color.value,
            figure=breach.kind,
            active=after.active.value,
            revision=after.revision,
            reason=breach.reason,
        )
        return breach
