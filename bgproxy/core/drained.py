"""When a colour no longer matters to live traffic: which colours get ordinary traffic, and since when one that
gets none has had nothing live in flight long enough to be scaled down (the drained signal).

Pure: the caller passes the clock readings (monotonic seconds) and the counts the data plane keeps.
"""

from __future__ import annotations

from .model import Color, State


def receives(state: State, color: Color) -> bool:
    """Whether ordinary traffic (no preview) may go to `color`: the active colour always (it is what an abort goes
    back to), the standby colour while the weight splits traffic."""
    return color is state.active or state.split


def drained_at(*, receiving: bool, live: int, quiet_since: float, off_since: float, after: float) -> float | None:
    """When the colour is (or will be) drained, on the caller's clock; None while it cannot be.

    `live` is what the colour serves as live traffic in flight (requests, websockets; not previews), `quiet_since`
    when that last became 0, `off_since` when the colour stopped getting ordinary traffic; `after` the quiet
    seconds asked for (DRAINED_AFTER). A colour that gets ordinary traffic is never drained, whatever it serves.
    """
    if receiving or live:
        return None
    return max(quiet_since, off_since) + after
