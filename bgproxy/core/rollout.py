"""The stepped promotion: the weight becomes each step in turn, held `interval` seconds each; after the last step
the standby colour goes live with weight 0, a normal promote.

Pure: the plan lives in the state (and so in the store), and whichever replica's timer fires first takes a step
through the store's precondition; `advance` returns the state unchanged when nothing is due, so late or repeated
attempts write nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from . import routing
from .model import Health, NothingRunning, Rollout, RoutingError, State, check_interval, check_steps

SOURCE = "rollout"  # the source of the steps the timer takes, and of the promote that ends them
AUTO = "auto"  # the source of an auto-promotion (instant, or the start of its stepped promotion)


def start(
    state: State,
    steps: Sequence[int],
    interval: object,
    *,
    source: str,
    reason: str,
    now: float,
    healthy: Health | None = None,
    force: bool = False,
) -> State:
    """Begin a stepped promotion at its first step. One runs at a time: abort it (or shift) to start another.

    `interval` is checked here (an object, so that a compiled build refuses `True` just as pure Python does, instead
    of converting it at the call)."""
    plan = check_steps(list(steps))
    seconds = check_interval(interval)
    if state.rollout is not None:
        raise RoutingError(
            f"a stepped promotion is already running (step {state.rollout.step + 1} of {len(state.rollout.steps)}); "
            "abort it first, or promote to finish it now"
        )
    forced = routing.gate(healthy, state.standby, force=force, doing="promote")
    started = replace(state, weight=plan[0], rollout=Rollout(plan, seconds, 0, now))
    return routing.revised(started, now=now, source=source, reason=reason, forced=forced)


def advance(state: State, *, now: float, healthy: Health | None = None) -> State:
    """The next step if it is due: the next weight, or after the last step the promote. Unchanged otherwise.

    A standby that is failing its health checks holds the step: no timer sends more traffic to a colour that is
    down (an operator may abort, or force a shift).
    """
    rollout = state.rollout
    if rollout is None or rollout.paused or now < rollout.due_at:
        return state
    if healthy is not None and not healthy.get(state.standby, True):
        return state
    if rollout.last:
        reason = f"stepped promotion complete ({_plan(rollout)})"
        return routing.promote(state, source=SOURCE, reason=reason, now=now)
    step = rollout.step + 1
    return replace(
        state,
        weight=rollout.steps[step],
        rollout=replace(rollout, step=step, step_started_at=now),
        revision=state.revision + 1,
        updated_at=now,
        source=SOURCE,
        reason=f"step {step + 1} of {len(rollout.steps)}: {rollout.steps[step]}% ({_plan(rollout)})",
        forced=False,
    )


def waiting(state: State) -> bool:
    """A new release waits on the standby colour for a promotion (auto-promotion may make it): recorded while no
    traffic was split, and nothing since (a person's change, an automatic rollback) has ended the wait."""
    return state.release_pending and state.hold is None and not state.split


def auto_promote(
    state: State,
    *,
    revision: int,
    steps: Sequence[int] | None,
    interval: float,
    reason: str,
    now: float,
    healthy: Health | None = None,
) -> State:
    """Promote the release that waited since `revision` (stepped when `steps`), source `auto`. Unchanged when it no
    longer waits: another replica promoted it first, or a person or a newer release ended the wait."""
    if not waiting(state) or state.revision != revision:
        return state
    if steps:
        return start(state, steps, interval, source=AUTO, reason=reason, now=now, healthy=healthy)
    return routing.promote(state, source=AUTO, reason=reason, now=now, healthy=healthy)


def pause(state: State, *, source: str, reason: str, now: float) -> State:
    """Hold the current step until `resume`."""
    rollout = state.rollout
    if rollout is None or rollout.paused:
        raise NothingRunning("nothing to pause: " + ("it is paused already" if rollout else _none_running(state)))
    return _changed(state, replace(rollout, paused=True), source=source, reason=reason, now=now)


def resume(state: State, *, source: str, reason: str, now: float) -> State:
    """Continue a paused stepped promotion: the current step holds a full interval again from now, then it goes on."""
    rollout = state.rollout
    if rollout is None or not rollout.paused:
        raise NothingRunning("nothing to resume: " + ("it is not paused" if rollout else _none_running(state)))
    return _changed(state, replace(rollout, paused=False, step_started_at=now), source=source, reason=reason, now=now)


def _changed(state: State, rollout: Rollout, *, source: str, reason: str, now: float) -> State:
    return replace(
        state,
        rollout=rollout,
        revision=state.revision + 1,
        updated_at=now,
        source=source,
        reason=reason,
        forced=False,
    )


def _none_running(state: State) -> str:
    return f"no stepped promotion is running (weight {state.weight})"


def _plan(rollout: Rollout) -> str:
    return f"{', '.join(map(str, rollout.steps))} every {rollout.interval:g}s"
