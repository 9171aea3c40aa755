"""The pure rules that turn a ConfigMap's data into a state and back (bgproxy.stores.configmap.codec), as tables.

No API server here: each row is data, the last state this replica saw, and what the data must mean.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from bgproxy.core.analysis import Breach, roll_back
from bgproxy.core.model import MAX_REASON, Color, Hold, Rollout, State
from bgproxy.stores.configmap.codec import (
    EDITED,
    KEY_ACTIVE,
    KEY_HOLD,
    KEY_REASON,
    KEY_RELEASE,
    KEY_STATE,
    KEY_WEIGHT,
    configmap_data,
    configmap_patch,
    read_configmap,
)

NOW = 1000.0


def st(
    active: str,
    revision: int,
    previous: str | None = None,
    source: str = "admin",
    reason: str = "",
    weight: int = 0,
    rollout: Rollout | None = None,
) -> State:
    prev = Color(previous) if previous else None
    return State(Color(active), prev, revision, 50.0, source, reason, weight=weight, rollout=rollout)


def blob(state: State) -> str:
    return configmap_data(state)["state"]


def edited(active: str, previous: str | None, revision: int, reason: str = EDITED, weight: int = 0) -> State:
    prev = Color(previous) if previous else None
    return State(Color(active), prev, revision, NOW, "configmap", reason, weight=weight)


def flipped(active: str, previous: str, revision: int, reason: str = EDITED, weight: int = 0) -> State:
    """An edit of `active`: a flip, which starts the automatic rollback's watch of the new colour, as any promote."""
    return replace(edited(active, previous, revision, reason, weight), promoted_at=NOW)


BLUE3 = st("blue", 3, "green", reason="deploy")
SHIFT20 = st("blue", 5, "green", reason="canary", weight=20)  # a manual shift: 20% to green
STEPPING = st("blue", 6, "green", "rollout", "step 2 of 3", 50, Rollout((10, 50, 100), 60.0, 1, 40.0))
REL42 = replace(BLUE3, release="v42")
CANARY = replace(SHIFT20, release="v43")  # 20% to green, which runs v43
BREACH = "green: 5xx share 31.0% (31 of 100) over the last 30s is above ANALYSIS_MAX_ERROR_RATE 5.0%"
# What the automatic rollback (core.analysis.roll_back) makes of them: traffic off green, the request held.
HELD_CANARY = replace(
    CANARY, revision=6, source="analysis", reason=BREACH, weight=0, hold=Hold(Color.BLUE, 20, "v43", BREACH, 60.0)
)
PROMOTED = State(Color.GREEN, Color.BLUE, 7, 55.0, "auto", "auto-promotion", release="v43", promoted_at=55.0)
HELD_PROMOTE = replace(
    PROMOTED,
    active=Color.BLUE,
    previous=Color.GREEN,
    revision=8,
    source="analysis",
    reason=BREACH,
    promoted_at=None,
    hold=Hold(Color.GREEN, 0, "v43", BREACH, 60.0),
)


def waits(base: State, release: str | None, reason: str = EDITED) -> State:
    """`base` after an edit of `release` alone: recorded on the standby colour, waiting for a promotion, no hold."""
    return replace(
        base,
        revision=base.revision + 1,
        updated_at=NOW,
        source="configmap",
        reason=reason,
        forced=False,
        release=release,
        release_pending=release is not None,
        hold=None,
    )


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
    ("kubectl edit, no blob", {"active": "green"}, st("blue", 4), flipped("green", "blue", 5), True, 0),
    ("no blob, same colour", {"active": "blue"}, st("blue", 4), st("blue", 4), True, 0),
    ("blob agrees", {"active": "blue", "state": blob(BLUE3)}, None, BLUE3, False, 0),
    ("blob agrees, last older", {"active": "blue", "state": blob(BLUE3)}, st("green", 2), BLUE3, False, 0),
    ("active edited", {"active": "green", "state": blob(BLUE3)}, BLUE3, flipped("green", "blue", 4), True, 0),
    (
        "stale reason key is not the edit's",
        {"active": "green", "state": blob(BLUE3), "reason": "deploy"},
        BLUE3,
        flipped("green", "blue", 4),
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
        flipped("blue", "green", 5),
        True,
        0,
    ),
    ("corrupt blob, edit", {"active": "green", "state": "{"}, st("blue", 4), flipped("green", "blue", 5), True, 1),
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
        flipped("green", "blue", 5, "r42"),
        True,
        0,
    ),
    (
        "an edit's reason is cut to MAX_REASON",
        {"active": "green", "reason": "x" * (MAX_REASON + 10)},
        st("blue", 4),
        flipped("green", "blue", 5, "x" * MAX_REASON),
        True,
        0,
    ),
    (
        "a blank reason is the default one",
        {"active": "green", "reason": "   "},
        st("blue", 4),
        flipped("green", "blue", 5),
        True,
        0,
    ),
    # --- the `weight` key: owned by people and Git like `active`; absent is 0 ---------------------------------
    ("weight key agrees", {"active": "blue", "weight": "0", "state": blob(BLUE3)}, BLUE3, BLUE3, False, 0),
    ("shift: weight key agrees", {"active": "blue", "weight": "20", "state": blob(SHIFT20)}, None, SHIFT20, False, 0),
    (
        "weight edited: a shift, previous kept",
        {"active": "blue", "weight": "20", "state": blob(BLUE3)},
        BLUE3,
        edited("blue", "green", 4, weight=20),
        True,
        0,
    ),
    (
        "weight edited with a reason",
        {"active": "blue", "weight": "20", "reason": "canary 42", "state": blob(BLUE3)},
        BLUE3,
        edited("blue", "green", 4, "canary 42", weight=20),
        True,
        0,
    ),
    (
        "weight key removed during a shift: absent is 0",
        {"active": "blue", "state": blob(SHIFT20)},
        SHIFT20,
        edited("blue", "green", 6),
        True,
        0,
    ),
    (
        "active and weight edited at once: one change",
        {"active": "green", "weight": "10", "state": blob(BLUE3)},
        BLUE3,
        flipped("green", "blue", 4, weight=10),
        True,
        0,
    ),
    (
        "promote through the keys: the new colour with weight 0",
        {"active": "green", "weight": "0", "state": blob(SHIFT20)},
        SHIFT20,
        flipped("green", "blue", 6),
        True,
        0,
    ),
    (
        "a stepped promotion's own weight is no edit",
        {"active": "blue", "weight": "50", "state": blob(STEPPING)},
        st("blue", 5, "green", weight=10),
        STEPPING,
        False,
        0,
    ),
    (
        "weight edited during a stepped promotion ends it",
        {"active": "blue", "weight": "30", "state": blob(STEPPING)},
        STEPPING,
        edited("blue", "green", 7, weight=30),
        True,
        0,
    ),
    (
        "weight 0 during a stepped promotion: all back to the active colour",
        {"active": "blue", "weight": "0", "state": blob(STEPPING)},
        STEPPING,
        edited("blue", "green", 7),
        True,
        0,
    ),
    (
        "active edited during a stepped promotion: the keys say what traffic does",
        {"active": "green", "weight": "50", "state": blob(STEPPING)},
        STEPPING,
        flipped("green", "blue", 7, weight=50),
        True,
        0,
    ),
    (
        "weight edit applied, not written back yet",
        {"active": "blue", "weight": "20", "state": blob(BLUE3)},
        edited("blue", "green", 4, weight=20),
        edited("blue", "green", 4, weight=20),
        True,
        0,
    ),
    (
        "second weight edit before the write-back",
        {"active": "blue", "weight": "40", "state": blob(BLUE3)},
        edited("blue", "green", 4, weight=20),
        edited("blue", "green", 5, weight=40),
        True,
        0,
    ),
    (
        "blob newer than last, its weight agrees",
        {"active": "blue", "weight": "50", "state": blob(STEPPING)},
        BLUE3,
        STEPPING,
        False,
        0,
    ),
    (
        "first read, no blob, a weight",
        {"active": "green", "weight": "30"},
        None,
        edited("green", None, 1, weight=30),
        True,
        0,
    ),
    ("no blob, weight agrees", {"active": "blue", "weight": "20"}, SHIFT20, SHIFT20, True, 0),
    ("weight with blanks", {"active": "blue", "weight": " 20\n", "state": blob(SHIFT20)}, None, SHIFT20, False, 0),
    ("weight with leading zeros", {"active": "blue", "weight": "020", "state": blob(SHIFT20)}, None, SHIFT20, False, 0),
    (
        "weight 100",
        {"active": "blue", "weight": "100", "state": blob(BLUE3)},
        BLUE3,
        edited("blue", "green", 4, weight=100),
        True,
        0,
    ),
    ("weight not a number", {"active": "blue", "weight": "abc", "state": blob(BLUE3)}, BLUE3, None, False, 1),
    ("weight above 100", {"active": "blue", "weight": "101", "state": blob(BLUE3)}, BLUE3, None, False, 1),
    ("weight negative", {"active": "blue", "weight": "-1", "state": blob(BLUE3)}, BLUE3, None, False, 1),
    ("weight not whole", {"active": "blue", "weight": "5.5", "state": blob(BLUE3)}, BLUE3, None, False, 1),
    ("weight with a sign", {"active": "blue", "weight": "+5", "state": blob(BLUE3)}, BLUE3, None, False, 1),
    ("weight as a percent", {"active": "blue", "weight": "20%", "state": blob(BLUE3)}, BLUE3, None, False, 1),
    ("weight in exponent form", {"active": "blue", "weight": "1e1", "state": blob(BLUE3)}, BLUE3, None, False, 1),
    ("weight empty", {"active": "blue", "weight": "", "state": blob(BLUE3)}, BLUE3, None, False, 1),
    (
        "weight in non-ASCII digits",
        {"active": "blue", "weight": "\uff12\uff10", "state": blob(BLUE3)},
        BLUE3,
        None,
        False,
        1,
    ),
    ("weight of four digits", {"active": "blue", "weight": "0100", "state": blob(BLUE3)}, BLUE3, None, False, 1),
    (
        "invalid weight with a valid active edit: nothing applied",
        {"active": "green", "weight": "abc", "state": blob(BLUE3)},
        BLUE3,
        None,
        False,
        1,
    ),
    (
        "invalid weight during a stepped promotion: it goes on",
        {"active": "blue", "weight": "5.5", "state": blob(STEPPING)},
        STEPPING,
        None,
        False,
        1,
    ),
    ("invalid weight and colour: both named", {"active": "red", "weight": "abc"}, BLUE3, None, False, 2),
    # --- the `release` key: owned by people and Git; a new one alone waits on the standby colour (set_release) ---
    ("release key agrees", {"active": "blue", "release": "v42", "state": blob(REL42)}, None, REL42, False, 0),
    (
        "release with blanks agrees",
        {"active": "blue", "release": " v42\n", "state": blob(REL42)},
        None,
        REL42,
        False,
        0,
    ),
    (
        "release edited: it waits on the standby colour for a promotion, traffic stays",
        {"active": "blue", "release": "v43", "state": blob(REL42)},
        REL42,
        waits(REL42, "v43"),
        True,
        0,
    ),
    (
        "release first given",
        {"active": "blue", "release": "v43", "state": blob(BLUE3)},
        BLUE3,
        waits(BLUE3, "v43"),
        True,
        0,
    ),
    (
        "release edited with a reason",
        {"active": "blue", "release": "v43", "reason": "ship 43", "state": blob(REL42)},
        REL42,
        waits(REL42, "v43", "ship 43"),
        True,
        0,
    ),
    (
        "release edited during a shift: recorded, no wait (traffic is split)",
        {"active": "blue", "weight": "20", "release": "v44", "state": blob(CANARY)},
        CANARY,
        replace(waits(CANARY, "v44"), release_pending=False),
        True,
        0,
    ),
    (
        "release key removed: no release",
        {"active": "blue", "state": blob(REL42)},
        REL42,
        replace(waits(REL42, None), release_pending=False),
        True,
        0,
    ),
    (
        "release and weight edited at once: one change, the canary starts",
        {"active": "blue", "weight": "20", "release": "v43", "state": blob(REL42)},
        REL42,
        replace(edited("blue", "green", 4, weight=20), release="v43"),
        True,
        0,
    ),
    (
        "release and weight 0 at once: the canary ended, the new release waits",
        {"active": "blue", "weight": "0", "release": "v44", "state": blob(CANARY)},
        CANARY,
        replace(edited("blue", "green", 6), release="v44", release_pending=True),
        True,
        0,
    ),
    (
        "release and active edited at once: it goes live, nothing waits",
        {"active": "green", "release": "v43", "state": blob(REL42)},
        REL42,
        replace(flipped("green", "blue", 4), release="v43"),
        True,
        0,
    ),
    ("release empty", {"active": "blue", "release": "", "state": blob(REL42)}, REL42, None, False, 1),
    ("release blank", {"active": "blue", "release": "  ", "state": blob(REL42)}, REL42, None, False, 1),
    ("release with a space", {"active": "blue", "release": "v 43", "state": blob(REL42)}, REL42, None, False, 1),
    ("release not ASCII", {"active": "blue", "release": "v\u00e943", "state": blob(REL42)}, REL42, None, False, 1),
    ("release too long", {"active": "blue", "release": "v" * 254, "state": blob(REL42)}, REL42, None, False, 1),
    (
        "invalid release with a valid active edit: nothing applied",
        {"active": "green", "release": "v 43", "state": blob(REL42)},
        REL42,
        None,
        False,
        1,
    ),
    # --- a hold: the people's keys still ask for what an automatic rollback refused -------------------------
    (
        "held canary: the unchanged keys (a re-sync of Git) change nothing",
        {"active": "blue", "weight": "20", "release": "v43", "state": blob(HELD_CANARY)},
        HELD_CANARY,
        HELD_CANARY,
        False,
        0,
    ),
    (
        "held canary, first read",
        {"active": "blue", "weight": "20", "release": "v43", "state": blob(HELD_CANARY)},
        None,
        HELD_CANARY,
        False,
        0,
    ),
    (
        "held canary, read after the canary: the hold is newer",
        {"active": "blue", "weight": "20", "release": "v43", "state": blob(HELD_CANARY)},
        CANARY,
        HELD_CANARY,
        False,
        0,
    ),
    (
        "held canary, a reason re-applied alone: no edit",
        {"active": "blue", "weight": "20", "release": "v43", "reason": "sync", "state": blob(HELD_CANARY)},
        HELD_CANARY,
        HELD_CANARY,
        False,
        0,
    ),
    (
        "held canary, no blob: held by the last state, the blob written back",
        {"active": "blue", "weight": "20", "release": "v43"},
        HELD_CANARY,
        HELD_CANARY,
        True,
        0,
    ),
    (
        "held after a promote: the keys still ask for the refused colour",
        {"active": "green", "weight": "0", "release": "v43", "state": blob(HELD_PROMOTE)},
        HELD_PROMOTE,
        HELD_PROMOTE,
        False,
        0,
    ),
    (
        "held canary, release edited: the hold is cleared, the new release waits with no traffic",
        {"active": "blue", "weight": "20", "release": "v44", "state": blob(HELD_CANARY)},
        HELD_CANARY,
        waits(HELD_CANARY, "v44"),
        True,
        0,
    ),
    (
        "held after a promote, release edited: it waits on the standby colour, traffic stays on the old one",
        {"active": "green", "weight": "0", "release": "v44", "state": blob(HELD_PROMOTE)},
        HELD_PROMOTE,
        waits(HELD_PROMOTE, "v44"),
        True,
        0,
    ),
    (
        "held canary, weight edited: applied as it says, the hold cleared",
        {"active": "blue", "weight": "10", "release": "v43", "state": blob(HELD_CANARY)},
        HELD_CANARY,
        replace(edited("blue", "green", 7, weight=10), release="v43"),
        True,
        0,
    ),
    (
        "held canary, weight 0 committed: the rollback accepted, the hold cleared",
        {"active": "blue", "weight": "0", "release": "v43", "state": blob(HELD_CANARY)},
        HELD_CANARY,
        replace(edited("blue", "green", 7), release="v43"),
        True,
        0,
    ),
    (
        "held after a promote, the old colour committed: the rollback accepted, the hold cleared",
        {"active": "blue", "weight": "0", "release": "v43", "state": blob(HELD_PROMOTE)},
        HELD_PROMOTE,
        replace(edited("blue", "green", 9), release="v43"),
        True,
        0,
    ),
    (
        "held canary, active edited: a flip, the hold cleared",
        {"active": "green", "weight": "0", "release": "v43", "state": blob(HELD_CANARY)},
        HELD_CANARY,
        replace(flipped("green", "blue", 7), release="v43"),
        True,
        0,
    ),
    (
        "held canary, an invalid weight: ignored, still held",
        {"active": "blue", "weight": "2O", "release": "v43", "state": blob(HELD_CANARY)},
        HELD_CANARY,
        None,
        False,
        1,
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
    ("weight not a number", {"active": "blue", "weight": "abc"}, "key 'weight': expected a whole number from 0 to 100"),
    ("weight above 100", {"active": "blue", "weight": "101"}, "got '101'"),
    ("weight cut in the message", {"active": "blue", "weight": "9" * 500}, "got '9999"),
    ("release with a space", {"active": "blue", "release": "v 43"}, "key 'release': expected a label such as v43"),
    ("release cut in the message", {"active": "blue", "release": "v" * 500}, "got 'vvvv"),
]


@pytest.mark.parametrize(("data", "says"), [r[1:] for r in PROBLEMS], ids=[r[0] for r in PROBLEMS])
def test_problems_name_the_key(data: dict[str, str], says: str) -> None:
    (problem,) = read_configmap(data, st("blue", 1), now=NOW).problems
    assert says in problem


def test_data_round_trips() -> None:
    state = st("green", 9, "blue", reason="release 42")
    data = configmap_data(state)
    assert data["active"] == "green" and data["reason"] == "release 42" and data["weight"] == "0"
    assert "standby" not in json.loads(data["state"])
    assert read_configmap(data, None, now=NOW).state == state


@pytest.mark.parametrize("state", [SHIFT20, STEPPING, st("green", 2, "blue", weight=100)], ids=["shift", "step", "100"])
def test_weights_and_plans_round_trip(state: State) -> None:
    data = configmap_data(state)
    assert data[KEY_WEIGHT] == str(state.weight)  # every state writes its weight: an edit is a difference
    reading = read_configmap(data, None, now=NOW)
    assert (reading.state, reading.normalise, reading.problems) == (state, False, ())


@pytest.mark.parametrize(
    ("data", "last"),
    [
        ({"active": "blue", "weight": " 30 ", "state": blob(BLUE3)}, BLUE3),
        ({"active": "Green", "weight": "030", "state": blob(STEPPING)}, STEPPING),
        ({"active": "blue", "weight": "20"}, None),
    ],
    ids=["weight with blanks", "both edited, lenient forms", "no blob"],
)
def test_an_edit_is_written_back_normalised_and_then_holds(data: dict[str, str], last: State | None) -> None:
    """What an edit means is written back in plain form, with its own blob; reading that back is no further edit,
    and the revision only ever rises."""
    first = read_configmap(data, last, now=NOW)
    assert first.state is not None and first.normalise
    written = {**data, **configmap_data(first.state)}  # the store merges its keys into the ConfigMap
    assert written[KEY_WEIGHT] == str(int(data[KEY_WEIGHT].strip()))
    assert written[KEY_ACTIVE] == data[KEY_ACTIVE].strip().lower()
    again = read_configmap(written, first.state, now=NOW + 1)
    assert (again.state, again.normalise, again.problems) == (first.state, False, ())
    assert first.state.revision == (last.revision if last else 0) + 1


def test_data_holds_exactly_the_keys_bgproxy_writes() -> None:
    # A patch merges these into the ConfigMap: whatever else it holds stays.
    assert set(configmap_data(BLUE3)) == {KEY_ACTIVE, KEY_WEIGHT, KEY_REASON, KEY_STATE}
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


def merged(data: dict[str, str], patch: dict[str, str | None]) -> dict[str, str]:
    """A merge patch applied, as the API server applies bgproxy's writes: a null removes the key."""
    return {k: v for k, v in {**data, **patch}.items() if v is not None}


@pytest.mark.parametrize("state", [REL42, CANARY, HELD_CANARY, HELD_PROMOTE], ids=lambda s: f"{s.source}-{s.revision}")
def test_releases_and_holds_round_trip(state: State) -> None:
    reading = read_configmap(configmap_data(state), None, now=NOW)
    assert (reading.state, reading.normalise, reading.problems) == (state, False, ())


@pytest.mark.parametrize(
    ("state", "keys"),
    [
        (HELD_CANARY, {KEY_ACTIVE: "blue", KEY_WEIGHT: "20", KEY_RELEASE: "v43"}),
        (HELD_PROMOTE, {KEY_ACTIVE: "green", KEY_WEIGHT: "0", KEY_RELEASE: "v43"}),
    ],
    ids=["canary", "promote"],
)
def test_a_hold_leaves_the_keys_people_own_as_they_asked_and_says_why(state: State, keys: dict[str, str]) -> None:
    data = configmap_data(state)
    assert {k: data[k] for k in keys} == keys  # what Git set, not what traffic does
    assert state.hold is not None and json.loads(data[KEY_HOLD]) == state.hold.to_dict()
    served = json.loads(data[KEY_STATE])
    assert (served["active"], served["weight"]) == ("blue", 0)  # what traffic does is in the blob


def test_a_write_removes_a_hold_and_a_release_that_are_no_more() -> None:
    assert configmap_patch(BLUE3)[KEY_HOLD] is None and configmap_patch(BLUE3)[KEY_RELEASE] is None
    assert KEY_HOLD not in configmap_data(BLUE3) and KEY_RELEASE not in configmap_data(BLUE3)  # creates send no nulls
    patch = configmap_patch(HELD_CANARY)
    assert patch[KEY_HOLD] is not None and patch[KEY_RELEASE] == "v43"
    cleared = waits(HELD_CANARY, "v44")
    assert set(merged(configmap_data(HELD_CANARY), configmap_patch(cleared))) == {
        KEY_ACTIVE,
        KEY_WEIGHT,
        KEY_REASON,
        KEY_STATE,
        KEY_RELEASE,
    }


def test_gitops_a_rollback_is_held_through_resyncs_until_git_changes() -> None:
    """The whole cycle through the codec, with the automatic rollback's own pure function: Git asks for a canary of
    v43; the rollback takes traffic off green and writes only what it owns; re-applying the same manifest is no edit;
    a new release in Git clears the hold and waits on the standby colour."""
    manifest = {KEY_ACTIVE: "blue", KEY_WEIGHT: "20", KEY_RELEASE: "v43"}
    first = read_configmap(manifest, None, now=NOW)
    assert first.state is not None and first.state.weight == 20 and first.normalise
    data = merged(manifest, configmap_patch(first.state))
    breach = Breach(Color.GREEN, "error_rate", BREACH)
    held = roll_back(first.state, breach, now=NOW + 1)
    data = merged(data, configmap_patch(held))
    assert {k: data[k] for k in manifest} == manifest  # the Git-owned keys untouched: no drift in Argo CD
    for _ in range(2):  # a re-sync (kubectl apply, Argo CD's self-heal) of the unchanged manifest
        data = merged(data, manifest)
        again = read_configmap(data, held, now=NOW + 2)
        assert (again.state, again.normalise, again.problems) == (held, False, ())
    data = merged(data, {**manifest, KEY_RELEASE: "v44"})  # a fix, committed
    fixed = read_configmap(data, held, now=NOW + 3)
    assert fixed.state is not None and fixed.normalise
    assert fixed.state.hold is None and fixed.state.release == "v44" and fixed.state.release_pending
    assert (fixed.state.active, fixed.state.weight) == (Color.BLUE, 0)  # no traffic until it is promoted
    data = merged(data, configmap_patch(fixed.state))
    assert KEY_HOLD not in data and data[KEY_WEIGHT] == "0"
