"""The pure routing core, with tables: which colour serves a request, and what a flip does to the state."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgproxy.core import routing
from bgproxy.core.model import Color, InvalidColor, NothingToRollBack, State, initial_state

BLUE, GREEN = Color.BLUE, Color.GREEN


def state(active: Color = BLUE, previous: Color | None = None, revision: int = 0) -> State:
    return State(active=active, previous=previous, revision=revision, updated_at=1.0, source="initial", reason="")


# --- choose() ------------------------------------------------------------------------------------------------------

# preview value -> colour served when blue is active, colour served when green is active
CHOOSE = [
    (None, BLUE, GREEN),  # no preview: the active colour
    ("", BLUE, GREEN),  # empty header or cookie counts as absent
    ("   ", BLUE, GREEN),  # only whitespace: absent too
    ("blue", BLUE, BLUE),  # a colour name pins that colour, whichever is active
    ("green", GREEN, GREEN),
    ("BLUE", BLUE, BLUE),  # case-insensitive
    ("Green", GREEN, GREEN),
    (" green ", GREEN, GREEN),  # surrounding whitespace ignored
    ("\tblue\t", BLUE, BLUE),
    ("1", GREEN, BLUE),  # any other non-empty value: the standby colour
    ("yes", GREEN, BLUE),
    ("true", GREEN, BLUE),
    ("red", GREEN, BLUE),
    ("blu", GREEN, BLUE),
    ("blue-ish", GREEN, BLUE),
]


@pytest.mark.parametrize(("preview", "when_blue", "when_green"), CHOOSE)
def test_choose(preview: str | None, when_blue: Color, when_green: Color) -> None:
    assert routing.choose(state(BLUE), preview) is when_blue
    assert routing.choose(state(GREEN, previous=BLUE, revision=1), preview) is when_green


# --- Color.parse -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [("blue", BLUE), ("GREEN", GREEN), (" blue\n", BLUE)])
def test_color_parse_accepts_the_two_colours(value: str, expected: Color) -> None:
    assert Color.parse(value) is expected


@pytest.mark.parametrize("value", ["red", "", None, 1, ["blue"], "bluegreen"])
def test_color_parse_rejects_anything_else_naming_the_choices(value: object) -> None:
    with pytest.raises(InvalidColor, match="expected 'blue' or 'green'"):
        Color.parse(value)


def test_color_other_and_standby() -> None:
    assert BLUE.other is GREEN and GREEN.other is BLUE
    assert state(BLUE).standby is GREEN
    assert state(GREEN).standby is BLUE


# --- switch / promote / rollback ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "to", "active", "previous", "revision"),
    [
        (state(BLUE), GREEN, GREEN, BLUE, 1),
        (state(GREEN, BLUE, 7), BLUE, BLUE, GREEN, 8),
        (state(BLUE, GREEN, 2), GREEN, GREEN, BLUE, 3),
    ],
)
def test_switch_flips_and_records(start: State, to: Color, active: Color, previous: Color, revision: int) -> None:
    new = routing.switch(start, to, source="admin", reason="deploy 42", now=99.5)
    assert (new.active, new.previous, new.revision) == (active, previous, revision)
    assert (new.updated_at, new.source, new.reason) == (99.5, "admin", "deploy 42")
    assert new.standby is active.other
    # the old state object is never mutated: a flip replaces it whole
    assert start.active is not new.active and start.revision == revision - 1


@pytest.mark.parametrize("start", [state(BLUE), state(GREEN, BLUE, 5), state(BLUE, GREEN, 3)])
def test_switch_to_the_active_colour_is_a_noop_returning_the_same_object(start: State) -> None:
    assert routing.switch(start, start.active, source="admin", reason="again", now=123.0) is start


@pytest.mark.parametrize(
    ("start", "active", "previous", "revision"),
    [(state(BLUE), GREEN, BLUE, 1), (state(GREEN, BLUE, 4), BLUE, GREEN, 5)],
)
def test_promote_makes_the_standby_active(start: State, active: Color, previous: Color, revision: int) -> None:
    new = routing.promote(start, source="admin", reason="go", now=2.0)
    assert (new.active, new.previous, new.revision, new.source, new.reason) == (
        active,
        previous,
        revision,
        "admin",
        "go",
    )


@pytest.mark.parametrize(
    ("start", "active", "previous", "revision"),
    [(state(GREEN, BLUE, 1), BLUE, GREEN, 2), (state(BLUE, GREEN, 10), GREEN, BLUE, 11)],
)
def test_rollback_goes_back_to_previous(start: State, active: Color, previous: Color, revision: int) -> None:
    new = routing.rollback(start, source="admin", reason="oops", now=3.0)
    assert (new.active, new.previous, new.revision, new.reason) == (active, previous, revision, "oops")


def test_rollback_twice_returns_to_where_it_was() -> None:
    s = routing.switch(state(BLUE), GREEN, source="admin", reason="", now=1.0)
    s = routing.rollback(s, source="admin", reason="", now=2.0)
    s = routing.rollback(s, source="admin", reason="", now=3.0)
    assert (s.active, s.previous, s.revision) == (GREEN, BLUE, 3)


@pytest.mark.parametrize("start", [state(BLUE), state(GREEN), state(BLUE, BLUE, 3)])
def test_rollback_with_nothing_to_roll_back_raises(start: State) -> None:
    with pytest.raises(NothingToRollBack, match="nothing to roll back"):
        routing.rollback(start, source="admin", reason="", now=1.0)


def test_initial_state() -> None:
    s = initial_state(GREEN, now=42.0)
    assert (s.active, s.standby, s.previous, s.revision, s.updated_at, s.source, s.reason) == (
        GREEN,
        BLUE,
        None,
        0,
        42.0,
        "initial",
        "",
    )


# --- State.to_dict / from_dict ---------------------------------------------------------------------------------------


def test_to_dict_has_every_design_key() -> None:
    d = state(GREEN, BLUE, 3).to_dict()
    assert (
        d.items()
        >= {
            "active": "green",
            "standby": "blue",
            "previous": "blue",
            "revision": 3,
            "updated_at": 1.0,
            "source": "initial",
            "reason": "",
        }.items()
    )


@pytest.mark.parametrize("s", [state(), state(GREEN, BLUE, 9), State(BLUE, GREEN, 2, 5.5, "admin", "why not")])
def test_from_dict_round_trips(s: State) -> None:
    assert State.from_dict(s.to_dict()) == s


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"active": "green"}, State(GREEN, None, 0, 0.0, "restore", "")),
        ({"active": " BLUE ", "previous": None, "revision": 4}, State(BLUE, None, 4, 0.0, "restore", "")),
        (
            {"active": "blue", "previous": "green", "revision": 2, "updated_at": 17, "source": "file", "reason": "r"},
            State(BLUE, GREEN, 2, 17.0, "file", "r"),
        ),
    ],
)
def test_from_dict_good_inputs(data: dict[str, object], expected: State) -> None:
    got = State.from_dict(data)
    assert got == expected
    assert isinstance(got.updated_at, float)


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ([], "JSON object"),
        ("blue", "JSON object"),
        (None, "JSON object"),
        ({}, "'active'"),
        ({"previous": "blue"}, "'active'"),
        ({"active": "red"}, "'active'"),
        ({"active": 1}, "'active'"),
        ({"active": "blue", "previous": "purple"}, "'previous'"),
        ({"active": "blue", "revision": -1}, "'revision'"),
        ({"active": "blue", "revision": "3"}, "'revision'"),
        ({"active": "blue", "revision": True}, "'revision'"),
        ({"active": "blue", "revision": 1.5}, "'revision'"),
        ({"active": "blue", "updated_at": "now"}, "'updated_at'"),
        ({"active": "blue", "updated_at": False}, "'updated_at'"),
        ({"active": "blue", "source": 3}, "'source'"),
        ({"active": "blue", "reason": None}, "'reason'"),
    ],
)
def test_from_dict_bad_inputs_name_the_field(data: object, names: str) -> None:
    with pytest.raises(ValueError) as info:
        State.from_dict(data)
    assert names in str(info.value)


# --- properties: any sequence of operations --------------------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("switch"), st.sampled_from([BLUE, GREEN])),
        st.tuples(st.just("promote"), st.none()),
        st.tuples(st.just("rollback"), st.none()),
    ),
    max_size=60,
)


@settings(database=None, deadline=None)
@given(start=st.sampled_from([BLUE, GREEN]), ops=OPS)
def test_any_sequence_of_flips_keeps_the_invariants(start: Color, ops: list[tuple[str, Color | None]]) -> None:
    s = initial_state(start, now=0.0)
    last_flipped_from: Color | None = None
    for i, (op, to) in enumerate(ops):
        before = s
        now = float(i + 1)
        if op == "switch":
            assert to is not None
            s = routing.switch(s, to, source="admin", reason=str(i), now=now)
        elif op == "promote":
            s = routing.promote(s, source="admin", reason=str(i), now=now)
        else:
            try:
                s = routing.rollback(s, source="admin", reason=str(i), now=now)
            except NothingToRollBack:
                assert before.previous is None  # only possible before the first real flip
                assert s is before
                continue
        assert s.active is not s.standby
        if s is before:  # a no-op: nothing changed, not even the revision
            assert op == "switch" and to is before.active
            continue
        # a real flip
        assert s.active is not before.active
        assert s.revision == before.revision + 1
        assert s.previous is before.active
        assert (s.updated_at, s.reason) == (now, str(i))
        last_flipped_from = before.active
    assert s.previous is last_flipped_from
    assert s.active is not s.standby
