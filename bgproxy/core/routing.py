"""The pure routing rules: which colour serves a request, and what a flip, a shift or an abort does to the state.

No I/O and no asyncio here (an import-linter contract checks it): every function takes values and returns
values, so the rules of blue/green are tested with plain tables and the I/O layers only carry them out. A function
that changes nothing returns the very state it was given, so the caller writes nothing.
"""

from __future__ import annotations

from dataclasses import replace

from .model import (
    Color,
    Health,
    NothingRunning,
    NothingToRollBack,
    State,
    TargetDown,
    check_release,
    check_weight,
)


def preview_color(state: State, preview: str | None) -> Color | None:
    """The colour a preview value asks for, or None when it asks for none (absent, or blank).

    `blue`/`green` pin that colour; any other non-blank value means "the one that is not live".
    """
    if not preview:
        return None
    if preview == "blue":
        return Color.BLUE
    if preview == "green":
        return Color.GREEN
    low = preview.strip().lower()
    if low == "blue":
        return Color.BLUE
    if low == "green":
        return Color.GREEN
    return state.standby if low else None


def choose(state: State, preview: str | None, bucket: int = 0) -> Color:
    """The colour for one request. `preview` is the preview header's or cookie's value, if any; `bucket` (0-99)
    is the request's sticky bucket, which matters only while the weight splits traffic.

    A preview wins; otherwise the standby colour serves the buckets below the weight: raising the weight never
    moves a client back.
    """
    asked = preview_color(state, preview)
    if asked is not None:
        return asked
    return state.standby if bucket < state.weight else state.active


def gate(healthy: Health | None, to: Color, *, force: bool, doing: str) -> bool:
    """Whether sending traffic to `to` is forced past its failing health checks; refuses it unless `force`."""
    if healthy is None or healthy.get(to, True):
        return False
    if not force:
        raise TargetDown(f'{to.value} is failing its health checks; fix it, or send "force": true to {doing} anyway')
    return True


def revised(new: State, *, now: float, source: str, reason: str, forced: bool = False) -> State:
    """`new` as the next revision of a change a person (or Git) made: it clears a hold and ends the wait of an
    auto-promotion (its `release_pending`)."""
    return replace(
        new,
        revision=new.revision + 1,
        updated_at=now,
        source=source,
        reason=reason,
        forced=forced,
        hold=None,
        release_pending=False,
    )


def switch(
    state: State,
    to: Color,
    *,
    source: str,
    reason: str,
    now: float,
    healthy: Health | None = None,
    force: bool = False,
    promotion: bool = True,
) -> State:
    """Make `to` active with all ordinary traffic. Changes nothing when it already is (idempotent for GitOps).

    Switching to the active colour while traffic is split (or held) sends it all there, ends a stepped promotion
    and clears the hold. With `healthy` given, a colour that is down is refused unless `force`: a switch must not
    cause an outage. A `promotion` (anything but a rollback) starts the watch of the automatic rollback.
    """
    if to is state.active:
        if not state.split and state.hold is None:
            return state
        return revised(replace(state, weight=0, rollout=None), now=now, source=source, reason=reason)
    forced = gate(healthy, to, force=force, doing="switch")
    flipped = replace(
        state,
        active=to,
        previous=state.active,
        weight=0,
        rollout=None,
        promoted_at=now if promotion else None,
    )
    return revised(flipped, now=now, source=source, reason=reason, forced=forced)


def promote(
    state: State, *, source: str, reason: str, now: float, healthy: Health | None = None, force: bool = False
) -> State:
    """The standby colour goes live with all ordinary traffic: always a real flip (it ends a stepped promotion)."""
    return switch(state, state.standby, source=source, reason=reason, now=now, healthy=healthy, force=force)


def rollback(
    state: State, *, source: str, reason: str, now: float, healthy: Health | None = None, force: bool = False
) -> State:
    """Go back to the colour that was active before the last flip; while traffic is split, `abort` instead."""
    if state.split:
        return abort(state, source=source, reason=reason, now=now)
    if state.previous is None or state.previous is state.active:
        raise NothingToRollBack(f"nothing to roll back to: {state.active.value} has been active since the start")
    return switch(
        state, state.previous, source=source, reason=reason, now=now, healthy=healthy, force=force, promotion=False
    )


def shift(
    state: State,
    weight: object,
    *,
    source: str,
    reason: str,
    now: float,
    healthy: Health | None = None,
    force: bool = False,
) -> State:
    """Send `weight` percent of ordinary traffic to the standby colour. A manual shift ends a stepped promotion.

    `weight` is checked here (an object, so that a compiled build refuses `True` or `20.5` just as pure Python does,
    instead of converting it at the call)."""
    weight = check_weight(weight)
    if weight == state.weight and state.rollout is None and state.hold is None:
        return state
    # Only more traffic to a colour that is down needs force: moving traffic off it is always allowed.
    more = weight > state.weight
    forced = gate(healthy, state.standby, force=force, doing="shift traffic to it") if more else False
    return revised(replace(state, weight=weight, rollout=None), now=now, source=source, reason=reason, forced=forced)


def abort(state: State, *, source: str, reason: str, now: float) -> State:
    """All ordinary traffic back to the active colour at once, and the stepped promotion (if any) ended. With no
    traffic split, it ends an auto-promotion's wait for the release on the standby colour."""
    if not state.split and not state.release_pending:
        raise NothingRunning(
            f"nothing to abort: no shift or stepped promotion is running, {state.active.value} serves all traffic"
        )
    return revised(replace(state, weight=0, rollout=None), now=now, source=source, reason=reason)


def set_release(state: State, release: str | None, *, source: str, reason: str, now: float) -> State:
    """Record the release now deployed on the standby colour. A new one clears a hold, and while no traffic is split
    it waits for a promotion (`release_pending`: auto-promotion may do it). The same one again changes nothing."""
    release = check_release(release)
    if release == state.release:
        return state
    new = revised(replace(state, release=release), now=now, source=source, reason=reason)
    return replace(new, release_pending=release is not None and not state.split)


def event(old: State, new: State) -> str:
    """What a change was, in the words of the history and of webhooks."""
    if new.source == "analysis":
        return "auto-rollback"
    if (new.source == "auto" and new.active is not old.active) or (new.source == "auto" and new.rollout is not None):
        return "auto-promote"
    if new.release != old.release and (new.active, new.weight, new.rollout) == (old.active, old.weight, old.rollout):
        return "release"
    if new.active is not old.active:
        return "promoted" if old.rollout is not None and new.source == "rollout" else "switch"
    if new.rollout is not None:
        if old.rollout is None or new.rollout.step != old.rollout.step or new.rollout.steps != old.rollout.steps:
            return "step"
        if new.rollout.paused != old.rollout.paused:
            return "paused" if new.rollout.paused else "resumed"
        return "step"
    if (old.split and not new.split) or (old.release_pending and not new.release_pending and not new.split):
        return "aborted"
    return "shift"
