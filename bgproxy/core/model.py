"""The values of blue/green: colours, the one state object a flip replaces, the stepped-promotion plan it carries,
and the errors a refused change raises. Pure data; the rules that change it are in `routing` and `rollout`.
"""

from __future__ import annotations

import enum
import itertools
import math
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

Source = Literal["initial", "admin", "file", "configmap", "restore", "rollout", "analysis", "auto"]
MAX_REASON = 1024  # characters of a change's reason, wherever it comes from (admin API, ConfigMap)
MAX_WEIGHT = 100  # the weight is a percent of ordinary traffic
MAX_STEPS = 20  # steps of one stepped promotion
MIN_INTERVAL, MAX_INTERVAL = 1.0, 86400.0  # seconds each step holds: at least a second, at most a day
MAX_RELEASE = 253  # characters of a release label (an image tag is at most 128; a digest reference fits too)
RELEASE_PATTERN = r"^[!-~]+$"  # visible ASCII, no spaces: v43, an image tag or digest reference, a Git commit


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
    """A change that cannot be made now; the message says why, for the person who asked (409)."""


class InvalidColor(RoutingError, ValueError):
    """Input that is not a colour (400)."""


class InvalidPlan(RoutingError, ValueError):
    """A weight or a stepped promotion that can never be valid (400)."""


class NothingToRollBack(RoutingError):
    pass


class NothingRunning(RoutingError):
    """Pause, resume or abort with nothing of theirs to act on."""


class TargetDown(RoutingError):
    """The colour asked for is failing its health checks; `force` overrides."""


@dataclass(frozen=True, slots=True)
class Rollout:
    """A stepped promotion in progress: the weight becomes each step in turn, held `interval` seconds each."""

    steps: tuple[int, ...]
    interval: float
    step: int  # index into steps of the step now applied
    step_started_at: float  # wall clock, shared by every replica through the store
    paused: bool = False

    @property
    def due_at(self) -> float:
        """When the next step (or, after the last one, the promote) is due, unless paused."""
        return self.step_started_at + self.interval

    @property
    def last(self) -> bool:
        return self.step == len(self.steps) - 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "interval": self.interval,
            "step": self.step,
            "step_started_at": self.step_started_at,
            "paused": self.paused,
        }

    @classmethod
    def from_dict(cls, data: object) -> Rollout:
        """Parse a stored plan; raises ValueError naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError(f"'rollout' must be an object or null, got {type(data).__name__}")
        steps = check_steps(data.get("steps"))
        interval = check_interval(data.get("interval"))
        step = data.get("step")
        if not _is_int(step) or not 0 <= step < len(steps):
            raise ValueError(f"'rollout.step' must be an index into the steps, got {step!r}")
        started = data.get("step_started_at")
        if not _is_number(started):
            raise ValueError(f"'rollout.step_started_at' must be a number, got {started!r}")
        paused = data.get("paused", False)
        if not isinstance(paused, bool):
            raise ValueError(f"'rollout.paused' must be true or false, got {paused!r}")
        return cls(steps, interval, step, float(started), paused)


@dataclass(frozen=True, slots=True)
class Hold:
    """What the store still asks for and why traffic does not follow it: an automatic rollback refused it.

    Kept until what is asked changes (a new release, an edit of active or weight) or a person flips: a re-sync of
    the unchanged Git state must not bring the refused version back.
    """

    active: Color
    weight: int
    release: str | None
    reason: str
    since: float

    def asks(self, active: Color, weight: int, release: str | None) -> bool:
        """Whether the store asks for exactly what was refused (so traffic stays held)."""
        return (active, weight, release) == (self.active, self.weight, self.release)

    def to_dict(self) -> dict[str, Any]:
        return {
            "active": self.active.value,
            "weight": self.weight,
            "release": self.release,
            "reason": self.reason,
            "since": self.since,
        }

    @classmethod
    def from_dict(cls, data: object) -> Hold:
        if not isinstance(data, dict):
            raise ValueError(f"'hold' must be an object or null, got {type(data).__name__}")
        active = _color_field(data.get("active"), "hold.active")
        weight = check_weight(data.get("weight", 0))
        release = check_release(data.get("release"))
        reason, since = data.get("reason", ""), data.get("since", 0.0)
        if not isinstance(reason, str) or not _is_number(since):
            raise ValueError("'hold.reason' must be a string and 'hold.since' a number")
        return cls(active, weight, release, reason, float(since))


@dataclass(frozen=True, slots=True)
class State:
    """The whole routing state; replaced as one object on every change, never mutated.

    `weight` is the standby colour's share of ordinary traffic (percent); `rollout` the stepped promotion that
    drives it, if any. `release` labels what is deployed on the standby colour (`release_pending` while it waits
    for a promotion, which auto-promotion may do); `promoted_at` starts the watch of a freshly promoted colour;
    `hold` is set while an automatic rollback keeps traffic off what the store asks for.
    """

    active: Color
    previous: Color | None
    revision: int
    updated_at: float
    source: str
    reason: str
    forced: bool = False
    weight: int = 0
    rollout: Rollout | None = None
    release: str | None = None
    release_pending: bool = False
    promoted_at: float | None = None
    hold: Hold | None = None

    @property
    def standby(self) -> Color:
        return self.active.other

    @property
    def split(self) -> bool:
        """Ordinary traffic is shared between the colours (a shift, or a stepped promotion)."""
        return self.weight > 0 or self.rollout is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "active": self.active.value,
            "standby": self.standby.value,
            "previous": self.previous.value if self.previous else None,
            "revision": self.revision,
            "updated_at": self.updated_at,
            "source": self.source,
            "reason": self.reason,
            "forced": self.forced,
            "weight": self.weight,
            "rollout": self.rollout.to_dict() if self.rollout is not None else None,
            "release": self.release,
            "release_pending": self.release_pending,
            "promoted_at": self.promoted_at,
            "hold": self.hold.to_dict() if self.hold is not None else None,
        }

    @classmethod
    def from_dict(cls, data: object) -> State:
        """Parse a stored state; raises ValueError naming the bad field. A state stored before weights has none."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        try:
            active = _color_field(data["active"], "active")
            prev_raw = data.get("previous")
            previous = None if prev_raw is None else _color_field(prev_raw, "previous")
            revision = data.get("revision", 0)
            if not _is_int(revision) or revision < 0:
                raise ValueError(f"'revision' must be a non-negative integer, got {revision!r}")
            updated_at = data.get("updated_at", 0.0)
            if not _is_number(updated_at):
                raise ValueError(f"'updated_at' must be a number, got {updated_at!r}")
            source, reason = data.get("source", "restore"), data.get("reason", "")
            if not isinstance(source, str) or not isinstance(reason, str):
                raise ValueError("'source' and 'reason' must be strings")
            forced = data.get("forced", False)
            if not isinstance(forced, bool):
                raise ValueError(f"'forced' must be true or false, got {forced!r}")
            weight = check_weight(data.get("weight", 0))
            raw_rollout = data.get("rollout")
            rollout = None if raw_rollout is None else Rollout.from_dict(raw_rollout)
            release = check_release(data.get("release"))
            pending = data.get("release_pending", False)
            if not isinstance(pending, bool):
                raise ValueError(f"'release_pending' must be true or false, got {pending!r}")
            promoted_at = data.get("promoted_at")
            if promoted_at is not None and not _is_number(promoted_at):
                raise ValueError(f"'promoted_at' must be a number or null, got {promoted_at!r}")
            raw_hold = data.get("hold")
            hold = None if raw_hold is None else Hold.from_dict(raw_hold)
        except KeyError as exc:
            raise ValueError(f"missing key {exc.args[0]!r}") from None
        return cls(
            active,
            previous,
            revision,
            float(updated_at),
            source,
            reason,
            forced,
            weight,
            rollout,
            release,
            pending,
            None if promoted_at is None else float(promoted_at),
            hold,
        )


def check_weight(value: object) -> int:
    """A weight from user or stored input: an integer 0-100."""
    if not _is_int(value) or not 0 <= value <= MAX_WEIGHT:
        raise InvalidPlan(f"'weight' must be an integer from 0 to {MAX_WEIGHT}, got {reprlib.repr(value)}")
    return value


def check_release(value: object) -> str | None:
    """A release label (an image tag, a version): RELEASE_PATTERN, at most MAX_RELEASE characters; None: none."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_RELEASE or not re.fullmatch(RELEASE_PATTERN, value):
        raise InvalidPlan(
            f"'release' must be a label such as v43 or an image tag (1-{MAX_RELEASE} visible ASCII characters, no "
            f"spaces), got {reprlib.repr(value)}"
        )
    return value


def check_steps(value: object) -> tuple[int, ...]:
    """The steps of a stepped promotion: 1 to MAX_STEPS weights, each 1-100, strictly rising."""
    if not isinstance(value, list | tuple) or not value:
        raise InvalidPlan(f"'steps' must be a non-empty list of weights such as [10, 50, 100], got {value!r:.80}")
    if len(value) > MAX_STEPS:
        raise InvalidPlan(f"'steps' may hold at most {MAX_STEPS} steps, got {len(value)}")
    if not all(_is_int(s) and 1 <= s <= MAX_WEIGHT for s in value):
        raise InvalidPlan(f"each of 'steps' must be an integer from 1 to {MAX_WEIGHT}, got {value!r:.80}")
    if any(b <= a for a, b in itertools.pairwise(value)):
        raise InvalidPlan(f"'steps' must rise strictly, got {value!r:.80}")
    return tuple(value)


def check_interval(value: object) -> float:
    """Seconds each step holds."""
    if not _is_number(value) or not MIN_INTERVAL <= value <= MAX_INTERVAL:
        raise InvalidPlan(
            f"'interval' must be a number of seconds from {MIN_INTERVAL:g} to {MAX_INTERVAL:g}, got {value!r:.80}"
        )
    return float(value)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _color_field(value: object, field: str) -> Color:
    try:
        return Color.parse(value)
    except InvalidColor as exc:
        raise ValueError(f"{field!r}: {exc}") from None


def initial_state(active: Color, *, now: float) -> State:
    return State(active=active, previous=None, revision=0, updated_at=now, source="initial", reason="")


Health = Mapping[Color, bool]
