"""The automatic rollback's judgement, pure: which colour is judged now, whether its live figures breach the
thresholds (and why, in words a person can act on), and what the rollback does to the state.

While the weight splits traffic the standby colour is judged, and a breach sends the weight back to 0; for
`watch` seconds after a promote the new active colour is judged, and a breach rolls back to the previous one.
Either way the state records a `hold`: what the store still asks for, refused, so that a re-sync of unchanged Git
state does not bring it back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from .model import Color, Hold, State

SOURCE = "analysis"
BreachKind = Literal["error_rate", "latency"]


@dataclass(frozen=True, slots=True)
class Figures:
    """One colour's live figures over the window, as one replica saw them."""

    requests: int = 0
    errors: int = 0  # 5xx, the upstream's and the proxy's own 502/504
    p50: float | None = None  # seconds; None without requests
    p99: float | None = None
    inflight: int = 0
    span: float = 0.0  # seconds the figures cover: the window, or less since the colour began getting traffic

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def rps(self) -> float:
        """Requests per second over the span (at least a second, so a fresh span does not inflate it)."""
        return self.requests / max(self.span, 1.0)


@dataclass(frozen=True, slots=True)
class Thresholds:
    window: float  # seconds the figures cover (ANALYSIS_WINDOW)
    min_requests: int  # no verdict on fewer (ANALYSIS_MIN_REQUESTS)
    max_error_rate: float  # ANALYSIS_MAX_ERROR_RATE
    max_p99: float | None = None  # seconds (ANALYSIS_MAX_P99); None: off
    max_p99_ratio: float | None = None  # times the other colour's p99 (ANALYSIS_MAX_P99_RATIO); None: off
    watch: float = 300.0  # seconds a promoted colour stays judged (ANALYSIS_WATCH)


@dataclass(frozen=True, slots=True)
class Breach:
    color: Color
    kind: BreachKind
    reason: str


def judged(state: State, *, now: float, watch: float) -> Color | None:
    """The colour whose figures decide now, if any."""
    if state.split:
        return state.standby
    if state.promoted_at is not None and state.previous is not None and now - state.promoted_at < watch:
        return state.active
    return None


def verdict(color: Color, mine: Figures, other: Figures, t: Thresholds) -> Breach | None:
    """Whether `color`'s figures breach a threshold; `other` is the other colour's, for the p99 ratio."""
    if mine.requests < t.min_requests:
        return None
    over = f"over the last {t.window:g}s ({mine.requests} requests)"
    if mine.error_rate > t.max_error_rate:
        return Breach(
            color,
            "error_rate",
            f"{color.value}: 5xx share {mine.error_rate:.1%} ({mine.errors} of {mine.requests}) over the last "
            f"{t.window:g}s is above ANALYSIS_MAX_ERROR_RATE {t.max_error_rate:.1%}",
        )
    p99 = mine.p99
    if p99 is not None and t.max_p99 is not None and p99 > t.max_p99:
        return Breach(
            color, "latency", f"{color.value}: p99 {_s(p99)} {over} is above ANALYSIS_MAX_P99 {_s(t.max_p99)}"
        )
    ratio = t.max_p99_ratio
    if p99 is not None and ratio is not None and other.p99 and other.requests >= t.min_requests:
        if p99 > ratio * other.p99:
            return Breach(
                color,
                "latency",
                f"{color.value}: p99 {_s(p99)} {over} is {p99 / other.p99:.1f}x {color.other.value}'s "
                f"{_s(other.p99)}, above ANALYSIS_MAX_P99_RATIO {ratio:g}",
            )
    return None


def judge(state: State, figures: dict[Color, Figures], t: Thresholds, *, now: float) -> tuple[State, Breach | None]:
    """The state after looking at the live figures: unchanged (the very object) unless the judged colour breaches."""
    color = judged(state, now=now, watch=t.watch)
    if color is None:
        return state, None
    breach = verdict(color, figures.get(color, Figures()), figures.get(color.other, Figures()), t)
    if breach is None:
        return state, None
    return roll_back(state, breach, now=now), breach


def roll_back(state: State, breach: Breach, *, now: float) -> State:
    """Traffic off the failing colour at once; the store's request recorded as held."""
    held = replace(
        state,
        revision=state.revision + 1,
        updated_at=now,
        source=SOURCE,
        reason=breach.reason,
        forced=False,
        weight=0,
        rollout=None,
        release_pending=False,
        hold=Hold(state.active, state.weight, state.release, breach.reason, now),
    )
    if state.split:  # a shift or stepped promotion: back to the active colour only
        return held
    assert state.previous is not None  # judged() watches a promoted colour only when there is one to go back to
    return replace(held, active=state.previous, previous=state.active, promoted_at=None)


def _s(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.2f}s"
