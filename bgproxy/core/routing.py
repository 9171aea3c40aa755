"""The pure routing core: which colour serves a request, and what a flip does to the state.

No I/O and no asyncio here (an import-linter contract checks it): every function takes values and returns
values, so the rules of blue/green are tested with plain tables and the I/O layers only carry them out.
"""

from __future__ import annotations

import enum
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

Source = Literal["initial", "admin", "file", "configmap", "restore"]
MAX_REASON = 1024  # characters of a flip's reason, wherever it comes from (admin API, ConfigMap)


class Color(enum.StrEnum):
    BLUE = "blue"
    GREEN = "green"

    @property
    def other(self) -> Color:
        return Color.GREEN if self is Color.BLUE else Color.BLUE

    @classmethod
    def parse(cls, value: object) -> Color:
        """A colour from user input; the error names the accepted values (and echoes at most a clip of the input)."""
        if isinstance(value, str):
            try:
                return cls(value.strip().lower())
            except ValueError:
                pass
        raise InvalidColor(f"unknown colour {reprlib.repr(value)}: expected 'blue' or 'green'")


class RoutingError(Exception):
    """A flip that cannot be made; the message says why, for the person who asked."""


class InvalidColor(RoutingError, ValueError):
    pass


class NothingToRollBack(RoutingError):
    pass


class TargetDown(RoutingError):
    """The colour asked for is failing its health checks; `force` overrides."""


@dataclass(frozen=True, slots=True)
class State:
    """The whole routing state; replaced as one object on every flip, never mutated."""

    active: Color
    previous: Color | None
    revision: int
    updated_at: float
    source: str
    reason: str
    forced: bool = False

    @property
    def standby(self) -> Color:
        return self.active.other

    def to_dict(self) -> dict[str, object]:
        return {
            "active": self.active.value,
            "standby": self.standby.value,
            "previous": self.previous.value if self.previous else None,
            "revision": self.revision,
            "updated_at": self.updated_at,
            "source": self.source,
            "reason": self.reason,
            "forced": self.forced,
        }

    @classmethod
    def from_dict(cls, data: object) -> State:
        """Parse a stored state; raises ValueError naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        try:
            active = _color_field(data["active"], "active")
            prev_raw = data.get("previous")
            previous = None if prev_raw is None else _color_field(prev_raw, "previous")
            revision = data.get("revision", 0)
            if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
                raise ValueError(f"'revision' must be a non-negative integer, got {revision!r}")
            updated_at = data.get("updated_at", 0.0)
            if not isinstance(updated_at, int | float) or isinstance(updated_at, bool):
                raise ValueError(f"'updated_at' must be a number, got {updated_at!r}")
            source, reason = data.get("source", "restore"), data.get("reason", "")
            if not isinstance(source, str) or not isinstance(reason, str):
                raise ValueError("'source' and 'reason' must be strings")
            forced = data.get("forced", False)
            if not isinstance(forced, bool):
                raise ValueError(f"'forced' must be true or false, got {forced!r}")
        except KeyError as exc:
            raise ValueError(f"missing key {exc.args[0]!r}") from None
        return cls(active, previous, revision, float(updated_at), source, reason, forced)


def _color_field(value: object, field: str) -> Color:
    try:
        return Color.parse(value)
    except InvalidColor as exc:
        raise ValueError(f"{field!r}: {exc}") from None


def initial_state(active: Color, *, now: float) -> State:
    return State(active=active, previous=None, revision=0, updated_at=now, source="initial", reason="")


Health = Mapping[Color, bool]


def switch(
    state: State,
    to: Color,
    *,
    source: str,
    reason: str,
    now: float,
    healthy: Health | None = None,
    force: bool = False,
) -> State:
    """Make `to` active. Switching to the colour already active changes nothing (idempotent for GitOps).

    With `healthy` given, a colour that is down is refused unless `force`: a switch must not cause an outage.
    """
    if to is state.active:
        return state
    if healthy is not None and not healthy.get(to, True) and not force:
        raise TargetDown(f'{to.value} is failing its health checks; fix it, or send "force": true to switch anyway')
    return replace(
        state,
        active=to,
        previous=state.active,
        revision=state.revision + 1,
        updated_at=now,
        source=source,
        reason=reason,
        forced=force and healthy is not None and not healthy.get(to, True),
    )


def promote(
    state: State, *, source: str, reason: str, now: float, healthy: Health | None = None, force: bool = False
) -> State:
    """The standby colour goes live: always a real flip."""
    return switch(state, state.standby, source=source, reason=reason, now=now, healthy=healthy, force=force)


def rollback(
    state: State, *, source: str, reason: str, now: float, healthy: Health | None = None, force: bool = False
) -> State:
    """Go back to the colour that was active before the last flip."""
    if state.previous is None or state.previous is state.active:
        raise NothingToRollBack(f"nothing to roll back to: {state.active.value} has been active since the start")
    return switch(state, state.previous, source=source, reason=reason, now=now, healthy=healthy, force=force)


def choose(state: State, preview: str | None) -> Color:
    """The colour for one request. `preview` is the preview header's or cookie's value, if any.

    `blue`/`green` pin that colour; any other non-empty value means "the one that is not live".
    """
    if not preview:
        return state.active
    if preview == "blue":
        return Color.BLUE
    if preview == "green":
        return Color.GREEN
    low = preview.strip().lower()
    if low == "blue":
        return Color.BLUE
    if low == "green":
        return Color.GREEN
    return state.standby if low else state.active
