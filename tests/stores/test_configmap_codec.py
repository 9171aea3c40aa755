"""The pure rules that turn a ConfigMap's data into a state and back (bgproxy.stores.configmap.codec), as tables.

No API server here: each row is data, the last state this replica saw, and what the data must mean.
"""

from __future__ import annotations

import json

import pytest

from bgproxy.core.model import MAX_REASON, Color, State
from bgproxy.stores.configmap.codec import EDITED, KEY_ACTIVE, KEY_REASON, KEY_STATE, configmap_data, read_configmap

NOW = 1000.0


def st(active: str, revision: int, previous: str | None = None, source: str = "admin", reason: str = "") -> State:
    prev = Color(previous) if previous else None
    return State(Color(active), prev, revision, 50.0, source, reason)


def blob(state: State) -> str:
    return configmap_data(state)["state"]


def edited(active: str, previous: str | None, revision: int, reason: str = EDITED) -> State:
    return State(Color(active), Color(previous) if previous else None, revision, NOW, "configmap", reason)


BLUE3 = st("blue", 3, "green", reason="deploy")

READINGS: list[tuple[str, dict[str, str] | None, State | None, State | None, bool, int]] = [
    # (case, data, last, expected state (None: invalid, ignored), normalise?, problems)
    ("no data", None, None, None, False, 1),
    ("missing key", {"reason": "x"}, st("blue", 1), None, False, 1),
    ("unknown colour", {"active": "red"}, st("blue", 1), None, False, 1),
    ("empty colour", {"active": ""}, st("blue", 1), None, False, 1),
    ("unknown colour, corrupt blob: one problem", {"active": "red", "state": "{"}, st("blue", 1), None, False, 1),
    ("first read, no blob", {"active": "green"}, None, edited("green", None, 1), True, 0),
    (
        "a reason given with the edit",
        {"active": "green", "reason": "r42"},
        None,
        edited("green", None, 1, "r42"),
        True,
        0,
    ),
    ("colour is parsed leniently", {"active": " Green "}, None, edited("green", None, 1), True, 0),
    ("kubectl edit, no blob", {"active": "green"}, st("blue", 4), edited("green", "blue", 5), True, 0),
    ("no blob, same colour", {"active": "blue"}, st("blue", 4), st("blue", 4), True, 0),
    ("blob agrees", {"active": "blue", "state": blob(BLUE3)}, None, BLUE3, False, 0),
    ("blob agrees, last older", {"active": "blue", "state": blob(BLUE3)}, st("green", 2), BLUE3, False, 0),
    ("active edited", {"active": "green", "state": blob(BLUE3)}, BLUE3, edited("green", "blue", 4), True, 0),
    (
        "stale reason key is not the edit's",
        {"active": "green", "state": blob(BLUE3), "reason": "deploy"},
        BLUE3,
        edited("green", "blue", 4),
        True,
        0,
    ),
    (
        "edit already applied, not written back yet",
        {"active": "green", "state": blob(BLUE3)},
        edited("green", "blue", 4),
        edited("green", "blue", 4),
        True,
        0,
    ),
    (
        "second edit before the write-back",
        {"active": "blue", "state": blob(BLUE3)},
        edited("green", "blue", 4),
        edited("blue", "green", 5),
        True,
        0,
    ),
    ("corrupt blob, edit", {"active": "green", "state": "{"}, st("blue", 4), edited("green", "blue", 5), True, 1),
    ("corrupt blob, same colour", {"active": "blue", "state": '{"x":1}'}, st("blue", 4), st("blue", 4), True, 1),
    (
        "blob newer than last",
        {"active": "green", "state": blob(st("green", 7))},
        st("blue", 4),
        st("green", 7),
        False,
        0,
    ),
    (
        "an edit's reason is trimmed",
        {"active": "green", "reason": "  r42\n"},
        st("blue", 4),
        edited("green", "blue", 5, "r42"),
        True,
        0,
    ),
    (
        "an edit's reason is cut to MAX_REASON",
        {"active": "green", "reason": "x" * (MAX_REASON + 10)},
        st("blue", 4),
        edited("green", "blue", 5, "x" * MAX_REASON),
        True,
        0,
    ),
    (
        "a blank reason is the default one",
        {"active": "green", "reason": "   "},
        st("blue", 4),
        edited("green", "blue", 5),
        True,
        0,
    ),
]


@pytest.mark.parametrize(
    ("data", "last", "expected", "normalise", "problems"),
    [r[1:] for r in READINGS],
    ids=[r[0] for r in READINGS],
)
def test_read_configmap(
    data: dict[str, str] | None, last: State | None, expected: State | None, normalise: bool, problems: int
) -> None:
    reading = read_configmap(data, last, now=NOW)
    assert reading.state == expected
    assert reading.normalise is normalise
    assert len(reading.problems) == problems


PROBLEMS: list[tuple[str, dict[str, str], str]] = [
    # (case, data, what the logged problem must say)
    ("missing key", {}, "key 'active' is missing: expected blue or green"),
    ("unknown colour", {"active": "red"}, "key 'active': unknown colour 'red'"),
    ("corrupt blob", {"active": "blue", "state": "{"}, "key 'state' is not a bgproxy state"),
]


@pytest.mark.parametrize(("data", "says"), [r[1:] for r in PROBLEMS], ids=[r[0] for r in PROBLEMS])
def test_problems_name_the_key(data: dict[str, str], says: str) -> None:
    (problem,) = read_configmap(data, st("blue", 1), now=NOW).problems
    assert says in problem


def test_data_round_trips() -> None:
    state = st("green", 9, "blue", reason="release 42")
    data = configmap_data(state)
    assert data["active"] == "green" and data["reason"] == "release 42"
    assert "standby" not in json.loads(data["state"])
    assert read_configmap(data, None, now=NOW).state == state


def test_data_holds_exactly_the_keys_bgproxy_writes() -> None:
    # A patch merges these into the ConfigMap: whatever else it holds stays.
    assert set(configmap_data(BLUE3)) == {KEY_ACTIVE, KEY_REASON, KEY_STATE}
    assert json.loads(configmap_data(BLUE3)[KEY_STATE]) == {
        "active": "blue",
        "previous": "green",
        "revision": 3,
        "updated_at": 50.0,
        "source": "admin",
        "reason": "deploy",
        "forced": False,
        "weight": 0,
        "rollout": None,
        "release": None,
        "release_pending": False,
        "promoted_at": None,
        "hold": None,
    }
