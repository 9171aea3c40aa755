"""What `bgproxy status` prints: the admin API's `/state` (a JSON dict) turned into a few lines a person reads at a
glance, the way `kubectl argo rollouts get rollout` does.

Pure: no I/O and no clock (the caller passes `now`), so every case is a table test. The state comes from another
process, maybe another version of bgproxy: optional fields may be absent, and every string from it is shown with
its control characters escaped, so that a reason set through the ConfigMap cannot drive the terminal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from .core.model import Color

MAX_TEXT = 200  # characters of a reason or a message shown; `--json` has all of it
NONE = "-"  # an empty cell: ASCII, as everything here, so that any terminal encoding shows it
SEPARATOR = "---"  # between two frames of `--watch` when it cannot redraw (not a terminal)
LABEL_WIDTH = 14  # the left column: "Auto-promote" and two spaces

# ANSI SGR codes (ECMA-48); used only when the caller says the output is a terminal that wants colours
_CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "blue": "34"}
_COLOUR_CODES = {Color.BLUE: "blue", Color.GREEN: "green"}


class Paint:
    """Wraps text in ANSI colour codes, or leaves it alone when colours are off."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def __call__(self, text: str, *styles: str) -> str:
        if not self.on or not styles or not text:
            return text
        return "\x1b[" + ";".join(_CODES[s] for s in styles) + "m" + text + "\x1b[0m"

    def colour(self, name: str, *styles: str) -> str:
        """A colour's name in its own colour (blue in blue), when it is one."""
        code = _COLOUR_CODES.get(name)  # type: ignore[call-overload]  # a str finds its StrEnum member
        return self(name, *styles, *([code] if code else []))


def summary(state: Mapping[str, Any], *, now: float, colour: bool = False) -> list[str]:
    """The state as lines: what is live and where traffic goes, the promotion under way, what waits or is held,
    who changed it last, then a table of each colour's health and live figures.

    Raises KeyError, TypeError or ValueError when `state` is not bgproxy's /state (the caller says so in words).
    """
    paint = Paint(colour)
    active = Color(state["active"])
    standby = active.other
    weight = int(state.get("weight") or 0)
    backends: Mapping[str, Mapping[str, Any]] = state["backends"]
    lines = [
        _row("Active", f"{paint.colour(active, 'bold')} (standby: {paint.colour(standby)})"),
        _row("Traffic", _traffic(active, weight, paint)),
        *_promotion(state, standby, now=now, paint=paint, standby_up=bool(backends[standby].get("healthy", True))),
    ]
    if state.get("release"):
        pending = ", waiting for a promotion" if state.get("release_pending") else ""
        lines.append(_row("Release", _clean(state["release"]) + pending))
    if state.get("auto_promote"):
        lines.append(_row("Auto-promote", _auto_promote(state["auto_promote"], standby, now=now, paint=paint)))
    if state.get("hold"):
        lines.extend(_hold(state["hold"], active, weight, now=now, paint=paint))
    if state.get("store"):
        lines.append(_row("Store", _store(state["store"], paint)))
    lines.extend(_last_change(state, now=now, paint=paint))
    lines.append("")
    lines.extend(_table(backends, active, weight, now=now, paint=paint))
    return lines


def watch_header(url: str, *, now: float, interval: float, colour: bool = False) -> str:
    """The first line of each `--watch` frame: where from, when, how often."""
    paint = Paint(colour)
    return paint(f"{_clean(url)}  {_clock(now, now)}  (every {interval:g}s; Ctrl-C to stop)", "dim")


def unreachable(
    message: str,
    *,
    since: float,
    now: float,
    interval: float,
    last: tuple[Mapping[str, Any], float] | None,
    colour: bool = False,
) -> list[str]:
    """A `--watch` frame while the admin API cannot be read: what went wrong, for how long, and what it last said
    (it keeps trying: a proxy restarting during a release comes back)."""
    paint = Paint(colour)
    lines = [
        paint("UNREACHABLE", "red", "bold") + f" for {_duration(now - since)}: {_clip(message)}",
        f"retrying every {interval:g}s",
    ]
    if last is not None:
        state, at = last
        lines.append(
            f"last answer {_duration(now - at)} ago: {_clean(str(state.get('active')))} active, "
            f"weight {_clean(str(state.get('weight')))}, revision {_clean(str(state.get('revision')))}"
        )
    return lines


# --- the lines ------------------------------------------------------------------------------------------------------


def _row(label: str, text: str) -> str:
    return f"{label:<{LABEL_WIDTH}}{text}"


def _more(text: str) -> str:
    """A continuation line under the previous row's text."""
    return " " * LABEL_WIDTH + text


def _traffic(active: Color, weight: int, paint: Paint) -> str:
    if weight == 0:
        return f"{paint.colour(active)} 100%"
    if weight == 100:
        return f"{paint.colour(active.other)} 100% (not yet active)"
    return f"{paint.colour(active)} {100 - weight}%, {paint.colour(active.other)} {weight}%"


def _promotion(state: Mapping[str, Any], standby: Color, *, now: float, paint: Paint, standby_up: bool) -> list[str]:
    rollout = state.get("rollout")
    if not rollout:
        if state.get("weight"):
            return [_row("Promotion", "none: the weight holds until changed (shift, promote, abort)")]
        return [_row("Promotion", NONE)]
    steps: Sequence[int] = rollout["steps"]
    step = int(rollout["step"])
    plan = " -> ".join(f"[{w}%]" if i == step else f"{w}%" for i, w in enumerate(steps))
    head = f"step {step + 1} of {len(steps)}: {plan}"
    if rollout.get("paused"):
        return [_row("Promotion", f"{head}  {paint('PAUSED', 'yellow', 'bold')}"), _more("`bgproxy resume` goes on")]
    due = float(rollout["step_started_at"]) + float(rollout["interval"])
    what = f"{steps[step + 1]}%" if step + 1 < len(steps) else f"{paint.colour(standby)} goes live"
    if due > now:
        when = f"in {_duration(due - now)} ({_clock(due, now)})"
    elif not standby_up:
        when = paint(f"held until {standby} is healthy again", "red")
    else:
        when = "due now"
    return [_row("Promotion", head), _more(f"next: {what} {when}")]


def _auto_promote(wait: Mapping[str, Any], standby: Color, *, now: float, paint: Paint) -> str:
    release = _clean(str(wait.get("release") or "the new release"))
    what = f"{release} on {paint.colour(standby)}"
    waiting = f"waiting {_duration(now - float(wait['waiting_since']))}"
    if wait.get("blocked_by"):
        return f"{what} {paint('blocked', 'yellow')}: {_clip(wait['blocked_by'])} ({waiting})"
    if wait.get("due_at") is None:
        return f"{what}: first checks running ({waiting})"
    due = float(wait["due_at"])
    return f"{what} in {_duration(due - now)} ({_clock(due, now)}), if it stays healthy"


def _hold(hold: Mapping[str, Any], active: Color, weight: int, *, now: float, paint: Paint) -> list[str]:
    asks = f"{_clean(str(hold['active']))} active at weight {_clean(str(hold['weight']))}"
    if hold.get("release"):
        asks += f", release {_clean(hold['release'])}"
    return [
        _row(
            "Hold",
            f"{paint('HELD', 'red', 'bold')} by an automatic rollback {_duration(now - float(hold['since']))} ago",
        ),
        _more(f"traffic stays on {paint.colour(active)} at weight {weight}; the store asks for {asks}"),
        _more(f"why: {_clip(hold.get('reason') or NONE)}"),
    ]


def _store(store: Mapping[str, Any], paint: Paint) -> str:
    backend = _clean(str(store.get("backend")))
    if backend == "configmap":
        where = f"configmap {_clean(str(store.get('namespace')))}/{_clean(str(store.get('name')))}"
        if store.get("connected") is False:
            return f"{where}, {paint('watch LOST', 'red', 'bold')} (serving the last state; reconnecting)"
        return f"{where}, watch connected"
    if backend == "file" and store.get("path"):
        return f"file {_clean(str(store['path']))}"
    return backend


def _last_change(state: Mapping[str, Any], *, now: float, paint: Paint) -> list[str]:
    at = float(state["updated_at"])
    forced = ", " + paint("forced", "yellow", "bold") if state.get("forced") else ""
    head = (
        f"revision {_clean(str(state.get('revision')))} by {_clean(str(state.get('source')))}, "
        f"{_duration(now - at)} ago ({_clock(at, now, date=True)}){forced}"
    )
    lines = [_row("Last change", head)]
    if state.get("reason"):
        lines.append(_more(f'"{_clip(state["reason"])}"'))
    return lines


# --- the table ------------------------------------------------------------------------------------------------------

_HEADINGS = ("COLOUR", "ROLE", "TRAFFIC", "HEALTH", "INFLIGHT", "REQ/S", "5XX", "P99", "DRAINED")
_RIGHT = {"TRAFFIC", "INFLIGHT", "REQ/S", "5XX", "P99"}  # numbers line up on the right


def _table(
    backends: Mapping[str, Mapping[str, Any]], active: Color, weight: int, *, now: float, paint: Paint
) -> list[str]:
    """One row per colour; each cell is (plain text, its styles), so widths are measured before any colour code."""
    rows: list[list[tuple[str, tuple[str, ...]]]] = []
    for color in Color:
        b = backends[color]
        share = 100 - weight if color is active else weight
        healthy = bool(b.get("healthy", True))
        error_rate = b.get("error_rate")
        rows.append(
            [
                (color.value, ("bold",) if color is active else ()),
                ("active" if color is active else "standby", ()),
                (f"{share}%", ()),
                ("healthy", ()) if healthy else ("DOWN", ("red", "bold")),
                (str(int(b.get("inflight") or 0)), ()),
                (_rps(b.get("rps")), ()),
                (_share(error_rate, b.get("requests")), ("yellow",) if error_rate else ()),
                (_seconds(b.get("p99")), ()),
                (_drained(b.get("drained_since"), serving=share > 0 or color is active, now=now), ()),
            ]
        )
    widths = [max(len(h), *(len(r[i][0]) for r in rows)) for i, h in enumerate(_HEADINGS)]

    def line(cells: Sequence[tuple[str, tuple[str, ...]]]) -> str:
        out = []
        for i, (text, styles) in enumerate(cells):
            if i == 0:  # the colour's name in its colour; the padding outside the codes
                out.append(paint.colour(text, *styles) + " " * (widths[i] - len(text)))
            elif _HEADINGS[i] in _RIGHT:
                out.append(paint(text.rjust(widths[i]), *styles))
            else:
                out.append(paint(text, *styles) + " " * (widths[i] - len(text)))
        return "  ".join(out).rstrip()

    lines = [paint(line([(h, ()) for h in _HEADINGS]), "dim"), *(line(row) for row in rows)]
    if all(backends[c].get("rps") is None for c in Color):
        lines.append(paint("REQ/S, 5XX and P99 are off on this replica (ANALYSIS_ENABLED=false)", "dim"))
    else:
        lines.append(paint("REQ/S, 5XX and P99: this replica, over its analysis window", "dim"))
    return lines


def _rps(value: object) -> str:
    if not isinstance(value, int | float):
        return NONE
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _share(error_rate: object, requests: object) -> str:
    if not isinstance(error_rate, int | float) or not requests:
        return NONE  # no requests in the window: a share of nothing
    return f"{100 * error_rate:.1f}%"


def _seconds(value: object) -> str:
    """A latency: milliseconds below a second, with a decimal below ten."""
    if not isinstance(value, int | float):
        return NONE
    if value < 0.01:
        return f"{value * 1000:.1f}ms"
    if value < 1:
        return f"{value * 1000:.0f}ms"
    return f"{value:.2f}s"


def _drained(since: object, *, serving: bool, now: float) -> str:
    if isinstance(since, int | float):
        return f"{_duration(now - since)} ago"
    return NONE if serving else "not yet"


# --- words for times and text ---------------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    """A span as people say it, to the second under an hour: 42s, 3m05s, 2h04m, 3d02h."""
    s = max(0, math.floor(seconds))  # a clock a little ahead of the server's is not a negative age
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _clock(at: float, now: float, *, date: bool = False) -> str:
    """A moment in UTC (the logs' and the cluster's clock): the time alone when it is today, else with the date."""
    moment = datetime.fromtimestamp(at, tz=UTC)
    if date or moment.date() != datetime.fromtimestamp(now, tz=UTC).date():
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    return moment.strftime("%H:%M:%S UTC")


def _clean(text: str) -> str:
    """Text from the server with control characters (an escape sequence, a newline) shown as escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _clip(text: str) -> str:
    cleaned = _clean(str(text))
    return cleaned if len(cleaned) <= MAX_TEXT else cleaned[: MAX_TEXT - 3] + "..."


def frame(lines: Sequence[str], *, first: bool, redraw: bool) -> str:
    """One `--watch` frame as written: on a terminal, drawn over the previous one in place (cursor home, each line
    cleared to its end, the rest of the screen cleared: no flicker, and the last frame stays after Ctrl-C); elsewhere
    (a pipe, a file, a CI log) appended after a separator line."""
    if redraw:
        return ("\x1b[2J" if first else "") + "\x1b[H" + "".join(f"{line}\x1b[K\n" for line in lines) + "\x1b[J"
    return ("" if first else SEPARATOR + "\n") + "".join(f"{line}\n" for line in lines)
