"""Auto-promotion (AUTO_PROMOTE_AFTER): a new release recorded on the standby colour while no traffic was split is
promoted once that colour has been healthy and passed its pre-promotion checks continuously for that long; a failure
restarts the wait. Stepped when AUTO_PROMOTE_STEPS is set.

Every replica runs one and none is special: each watches the standby colour itself, and the first whose wait ends
writes the promotion through the store's precondition; the others then find nothing waiting (`rollout.auto_promote`
changes nothing), so history shows one promotion. A person's change or an automatic rollback ends the wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..core import rollout
from ..core.model import Color, RoutingError, State
from ..log import log
from ..state import StateHolder
from ..stores import StoreError
from .checks import PromoteChecks
from .clock import StateClock

logger = logging.getLogger("bgproxy.release")
POLL = 1.0  # seconds between two looks at the standby colour while a release waits


@dataclass
class Wait:
    """This replica's wait for the release recorded at `revision`."""

    revision: int
    release: str | None
    since: float  # wall clock: when this replica began waiting
    passing_since: float | None = None  # when the current unbroken run of passing looks began
    blocked_by: str | None = None  # what failed at the last look


class AutoPromoter(StateClock):
    def __init__(
        self,
        holder: StateHolder,
        healthy: Mapping[Color, bool],
        checks: PromoteChecks,
        *,
        after: float,
        steps: Sequence[int] | None,
        interval: float,
    ) -> None:
        super().__init__(holder, name="auto-promote", logger=logger, retry=POLL)
        self.healthy = healthy
        self.checks = checks
        self.after = after
        self.steps = steps
        self.interval = interval
        self._wait: Wait | None = None

    def view(self) -> dict[str, object] | None:
        """What /state shows as `auto_promote`: the wait, or None when no release waits."""
        wait = self._current()
        if wait is None:
            return None
        due = wait.passing_since + self.after if wait.passing_since is not None else None
        return {"release": wait.release, "waiting_since": wait.since, "due_at": due, "blocked_by": wait.blocked_by}

    def _current(self) -> Wait | None:
        """The wait for the release now waiting (a new one when the waiting release changed), or None."""
        state = self.holder.current
        if not self.holder.loaded or not rollout.waiting(state):
            self._wait = None
        elif self._wait is None or self._wait.revision != state.revision:
            self._wait = Wait(state.revision, state.release, time.time())
        return self._wait

    async def tick(self) -> float | None:
        """One look at the standby colour, and the promotion once it has passed long enough. Returns how long to wait
        before the next look (None: until the state changes)."""
        wait = self._current()
        if wait is None:
            return None
        standby = self.holder.current.standby
        if wait.passing_since is None and wait.blocked_by is None:
            log(logger, "auto_promote_waiting", release=wait.release, standby=standby.value, after=self.after)
        began = time.time()
        problem = await self._problem(standby)
        if self._current() is not wait:
            return 0.0  # the state changed while the checks ran: look at the new one
        if problem is not None:
            if problem != wait.blocked_by:
                log(logger, "auto_promote_blocked", release=wait.release, standby=standby.value, why=problem)
            wait.passing_since, wait.blocked_by = None, problem
            return POLL
        if wait.passing_since is None:
            wait.passing_since = began
        wait.blocked_by = None
        if began < wait.passing_since + self.after:
            return max(0.0, min(POLL, wait.passing_since + self.after - time.time()))
        return await self._promote(wait, standby)

    async def _problem(self, color: Color) -> str | None:
        if not self.healthy.get(color, True):
            return f"{color.value} is failing its health checks"
        return await self.checks.failure(color)

    async def _promote(self, wait: Wait, standby: Color) -> float | None:
        reason = (
            f"auto-promotion of release {wait.release}: {standby.value} healthy and passing its pre-promotion checks "
            f"for {self.after:g}s"
        )
        taken: list[State] = []

        def decide(state: State) -> State:
            new = rollout.auto_promote(
                state,
                revision=wait.revision,
                steps=self.steps,
                interval=self.interval,
                reason=reason,
                now=time.time(),
                healthy=self.healthy,
            )
            if new is not state:
                taken.append(new)
            return new

        try:
            after = await self.holder.change(decide)
        except RoutingError as exc:  # the standby went down since the look: the wait starts over
            wait.passing_since, wait.blocked_by = None, str(exc)
            return POLL
        except StoreError as exc:
            log(logger, "auto_promote_not_written", level=logging.WARNING, error=str(exc), retry_in=POLL)
            return POLL
        if taken and after == taken[-1]:  # this replica wrote it (else another one was first)
            log(logger, "auto_promoted", release=wait.release, to=standby.value, revision=after.revision)
        return None
