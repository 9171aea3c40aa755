"""What `bgproxy status` prints, as tables: a /state dict in, the lines a person reads out (bgproxy/cli_status.py)."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from bgproxy import cli_status
from bgproxy.cli_status import frame, summary, unreachable, watch_header

NOW = 1_796_187_870.0  # 2026-12-02 05:04:30 UTC
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def backend(**fields: Any) -> dict[str, Any]:
    b: dict[str, Any] = {
        "url": "http://blue:8080",
        "healthy": True,
        "inflight": 0,
        "requests": 0,
        "rps": 0.0,
        "error_rate": 0.0,
        "p50": None,
        "p99": None,
        "drained_since": None,
    }
    b.update(fields)
    return b


def state(**fields: Any) -> dict[str, Any]:
    """A /state as bgproxy answers it: blue active, nothing under way, `fields` replaced (dotted: `blue.p99`)."""
    s: dict[str, Any] = {
        "active": "blue",
        "standby": "green",
        "previous": None,
        "revision": 0,
        "updated_at": NOW - 42,
        "source": "initial",
        "reason": "",
        "forced": False,
        "weight": 0,
        "rollout": None,
        "release": None,
        "release_pending": False,
        "promoted_at": None,
        "hold": None,
        "auto_promote": None,
        "store": {"backend": "memory"},
        "backends": {"blue": backend(), "green": backend(url="http://green:8080")},
    }
    for key, value in fields.items():
        if "." in key:
            color, field = key.split(".")
            s["backends"][color][field] = value
        else:
            s[key] = value
    return s


def text(s: dict[str, Any], **kw: Any) -> str:
    return "\n".join(summary(s, now=NOW, **kw))


def test_a_quiet_state_reads_at_a_glance() -> None:
    assert summary(state(**{"blue.requests": 120, "blue.rps": 4.0, "blue.p99": 0.0123}), now=NOW) == [
        "Active        blue (standby: green)",
        "Traffic       blue 100%",
        "Promotion     -",
        "Store         memory",
        "Last change   revision 0 by initial, 42s ago (2026-12-02 05:03:48 UTC)",
        "",
        "COLOUR  ROLE     TRAFFIC  HEALTH   INFLIGHT  REQ/S   5XX   P99  DRAINED",
        "blue    active      100%  healthy         0    4.0  0.0%  12ms  -",
        "green   standby       0%  healthy         0    0.0     -     -  not yet",
        "REQ/S, 5XX and P99: this replica, over its analysis window",
    ]


ROLLOUT = {"steps": [10, 50, 100], "interval": 60.0, "step": 1, "step_started_at": NOW - 18, "paused": False}

# (case, /state fields, lines that must be printed as they are)
CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "stepped promotion: the plan, the current step, the next one and when",
        {"weight": 50, "rollout": ROLLOUT, "source": "rollout", "reason": "step 2 of 3: 50% (10, 50, 100 every 60s)"},
        [
            "Traffic       blue 50%, green 50%",
            "Promotion     step 2 of 3: 10% -> [50%] -> 100%",
            "              next: 100% in 42s (05:05:12 UTC)",
            '              "step 2 of 3: 50% (10, 50, 100 every 60s)"',
            "green   standby      50%  healthy         0    0.0    -    -  -",
        ],
    ),
    (
        "last step: the standby colour goes live next",
        {"weight": 100, "rollout": {**ROLLOUT, "step": 2}},
        [
            "Traffic       green 100% (not yet active)",
            "Promotion     step 3 of 3: 10% -> 50% -> [100%]",
            "              next: green goes live in 42s (05:05:12 UTC)",
        ],
    ),
    (
        "paused: no next time, and how to go on",
        {"weight": 10, "rollout": {**ROLLOUT, "step": 0, "paused": True}},
        ["Promotion     step 1 of 3: [10%] -> 50% -> 100%  PAUSED", "              `bgproxy resume` goes on"],
    ),
    (
        "a step past due while the standby colour is down is held",
        {"weight": 50, "rollout": {**ROLLOUT, "step_started_at": NOW - 90}, "green.healthy": False},
        [
            "              next: 100% held until green is healthy again",
            "green   standby      50%  DOWN            0    0.0    -    -  -",
        ],
    ),
    (
        "a step past due with the standby colour up is about to be taken",
        {"weight": 50, "rollout": {**ROLLOUT, "step_started_at": NOW - 90}},
        ["              next: 100% due now"],
    ),
    (
        "a weight set by hand holds",
        {"weight": 20, "source": "configmap"},
        [
            "Traffic       blue 80%, green 20%",
            "Promotion     none: the weight holds until changed (shift, promote, abort)",
        ],
    ),
    (
        "a release waiting, and the auto-promotion counting down",
        {
            "release": "v43",
            "release_pending": True,
            "auto_promote": {"release": "v43", "waiting_since": NOW - 20, "due_at": NOW + 100, "blocked_by": None},
        },
        [
            "Release       v43, waiting for a promotion",
            "Auto-promote  v43 on green in 1m40s (05:06:10 UTC), if it stays healthy",
        ],
    ),
    (
        "an auto-promotion blocked says by what",
        {
            "auto_promote": {
                "release": "v43",
                "waiting_since": NOW - 75,
                "due_at": None,
                "blocked_by": "check GET /ready answered 503",
            }
        },
        ["Auto-promote  v43 on green blocked: check GET /ready answered 503 (waiting 1m15s)"],
    ),
    (
        "an auto-promotion before its first checks",
        {"auto_promote": {"release": None, "waiting_since": NOW - 1, "due_at": None, "blocked_by": None}},
        ["Auto-promote  the new release on green: first checks running (waiting 1s)"],
    ),
    (
        "a hold: where traffic stays, what the store asks for, and why not",
        {
            "active": "blue",
            "previous": "green",
            "source": "analysis",
            "hold": {
                "active": "green",
                "weight": 0,
                "release": "v44",
                "reason": "error rate 12.0% above 5.0% over 30s",
                "since": NOW - 3600 * 2 - 65,
            },
        },
        [
            "Hold          HELD by an automatic rollback 2h01m ago",
            "              traffic stays on blue at weight 0; the store asks for green active at weight 0, release v44",
            "              why: error rate 12.0% above 5.0% over 30s",
            "Last change   revision 0 by analysis, 42s ago (2026-12-02 05:03:48 UTC)",
        ],
    ),
    (
        "a forced change says so",
        {"forced": True, "source": "admin", "revision": 7, "updated_at": NOW - 86400 * 3},
        ["Last change   revision 7 by admin, 3d00h ago (2026-11-29 05:04:30 UTC), forced"],
    ),
    (
        "green active: roles and shares follow",
        {"active": "green", "standby": "blue", "weight": 0, "blue.drained_since": NOW - 130},
        [
            "Active        green (standby: blue)",
            "blue    standby       0%  healthy         0    0.0    -    -  2m10s ago",
            "green   active      100%  healthy         0    0.0    -    -  -",
        ],
    ),
    (
        "the ConfigMap store, its watch lost",
        {"store": {"backend": "configmap", "name": "bgproxy-state", "namespace": "prod", "connected": False}},
        ["Store         configmap prod/bgproxy-state, watch LOST (serving the last state; reconnecting)"],
    ),
    (
        "the ConfigMap store, watching",
        {"store": {"backend": "configmap", "name": "bgproxy-state", "namespace": "prod", "connected": True}},
        ["Store         configmap prod/bgproxy-state, watch connected"],
    ),
    (
        "the file store names its file",
        {"store": {"backend": "file", "path": "/var/lib/bgproxy/state.json"}},
        ["Store         file /var/lib/bgproxy/state.json"],
    ),
    (
        "figures: rates, the 5xx share of what was answered, latencies in the unit that reads",
        {
            "blue.inflight": 12,
            "blue.requests": 9000,
            "blue.rps": 300.4,
            "blue.error_rate": 0.0213,
            "blue.p99": 1.5,
            "green.requests": 3,
            "green.rps": 0.1,
            "green.p99": 0.0004,
        },
        [
            "blue    active      100%  healthy        12    300  2.1%  1.50s  -",
            "green   standby       0%  healthy         0    0.1  0.0%  0.4ms  not yet",
        ],
    ),
    (
        "figures off (ANALYSIS_ENABLED=false): dashes, and why",
        {f"{c}.{f}": None for c in ("blue", "green") for f in ("requests", "rps", "error_rate", "p99")},
        [
            "blue    active      100%  healthy         0      -    -    -  -",
            "REQ/S, 5XX and P99 are off on this replica (ANALYSIS_ENABLED=false)",
        ],
    ),
    (
        "text from the store cannot drive the terminal: control characters are shown escaped",
        {"reason": "ok\x1b]0;pwned\x07\nnext line", "release": "v1\x1b[2J"},
        ['              "ok\\x1b]0;pwned\\x07\\nnext line"', "Release       v1\\x1b[2J"],
    ),
    (
        "a long reason is clipped (--json has all of it)",
        {"reason": "x" * 500},
        ['              "' + "x" * (cli_status.MAX_TEXT - 3) + '..."'],
    ),
]


@pytest.mark.parametrize(("fields", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_summary_lines(fields: dict[str, Any], expected: list[str]) -> None:
    lines = summary(state(**fields), now=NOW)
    missing = [line for line in expected if line not in lines]
    assert not missing, "\n".join(["missing:", *missing, "printed:", *lines])


def test_lines_are_absent_when_there_is_nothing_to_say() -> None:
    printed = text(state())
    for label in ("Release", "Auto-promote", "Hold"):
        assert label not in printed


def test_an_older_bgproxy_without_the_newer_fields_still_reads() -> None:
    """`status` may talk to another version: fields it does not know yet are simply not shown."""
    s = state()
    for key in ("hold", "auto_promote", "store", "release", "release_pending", "promoted_at"):
        del s[key]
    for b in s["backends"].values():
        for key in ("drained_since", "rps", "error_rate", "p50", "p99", "requests"):
            del b[key]
    lines = summary(s, now=NOW)
    assert lines[0] == "Active        blue (standby: green)"
    assert "blue    active      100%  healthy         0      -    -    -  -" in lines


@pytest.mark.parametrize(
    "answer",
    [{"error": "not found"}, state(active="red"), {"active": "blue"}, state(backends={"blue": {}}), state(weight="x")],
    ids=["an error body", "an unknown colour", "no backends", "a colour missing", "a weight not a number"],
)
def test_something_else_than_a_state_raises(answer: dict[str, Any]) -> None:
    """The CLI turns these into one line: the answer is not bgproxy's /state."""
    with pytest.raises((KeyError, TypeError, ValueError)):
        summary(answer, now=NOW)


def test_colours_only_when_asked() -> None:
    s = state(weight=10, rollout={**ROLLOUT, "step": 0, "paused": True}, **{"green.healthy": False})
    plain, coloured = text(s), text(s, colour=True)
    assert "\x1b" not in plain
    assert ANSI.sub("", coloured) == plain  # the same words, only painted
    assert "Active        \x1b[1;34mblue\x1b[0m (standby: \x1b[32mgreen\x1b[0m)" in coloured
    assert "\x1b[31;1mDOWN\x1b[0m" in coloured and "\x1b[33;1mPAUSED\x1b[0m" in coloured
    # the table's columns line up the same with and without the codes
    table = [line for line in coloured.splitlines() if ANSI.sub("", line).startswith(("blue ", "green "))]
    assert [ANSI.sub("", line) for line in table] == [
        line for line in plain.splitlines() if line.startswith(("blue ", "green "))
    ]


def test_the_state_is_not_changed() -> None:
    s = state(weight=50, rollout=ROLLOUT)
    before = copy.deepcopy(s)
    summary(s, now=NOW, colour=True)
    assert s == before


@pytest.mark.parametrize(
    ("seconds", "said"),
    [(0, "0s"), (0.9, "0s"), (-3, "0s"), (59, "59s"), (60, "1m00s"), (3599, "59m59s"), (3600, "1h00m"),
     (86399, "23h59m"), (86400, "1d00h"), (90061, "1d01h")],
)  # fmt: skip
def test_durations(seconds: float, said: str) -> None:
    assert cli_status._duration(seconds) == said


@pytest.mark.parametrize(
    ("seconds", "said"),
    [(None, "-"), (0.0004, "0.4ms"), (0.0099, "9.9ms"), (0.01, "10ms"), (0.9994, "999ms"), (1.0, "1.00s"),
     (12.345, "12.35s")],
)  # fmt: skip
def test_latencies(seconds: float | None, said: str) -> None:
    assert cli_status._seconds(seconds) == said


def test_a_time_on_another_day_carries_its_date() -> None:
    assert cli_status._clock(NOW + 60, NOW) == "05:05:30 UTC"
    assert cli_status._clock(NOW + 86400, NOW) == "2026-12-03 05:04:30 UTC"


def test_watch_header() -> None:
    assert watch_header("http://127.0.0.1:9090", now=NOW, interval=1.0) == (
        "http://127.0.0.1:9090  05:04:30 UTC  (every 1s; Ctrl-C to stop)"
    )


def test_unreachable_says_for_how_long_and_what_was_last_seen() -> None:
    message = "cannot reach the admin API at http://127.0.0.1:9090: [Errno 111] Connection refused"
    assert unreachable(message, since=NOW - 12, now=NOW, interval=0.5, last=None) == [
        f"UNREACHABLE for 12s: {message}",
        "retrying every 0.5s",
    ]
    last = (state(weight=50, revision=4), NOW - 13)
    lines = unreachable(message, since=NOW - 12, now=NOW, interval=1, last=last, colour=True)
    assert lines[0].startswith("\x1b[31;1mUNREACHABLE\x1b[0m for 12s")
    assert lines[2] == "last answer 13s ago: blue active, weight 50, revision 4"


def test_frames_on_a_terminal_are_drawn_in_place() -> None:
    assert frame(["a", "b"], first=True, redraw=True) == "\x1b[2J\x1b[Ha\x1b[K\nb\x1b[K\n\x1b[J"
    assert frame(["a"], first=False, redraw=True) == "\x1b[Ha\x1b[K\n\x1b[J"  # no full clear: no flicker


def test_frames_elsewhere_follow_each_other_with_a_separator() -> None:
    assert frame(["a", "b"], first=True, redraw=False) == "a\nb\n"
    assert frame(["a"], first=False, redraw=False) == "---\na\n"
