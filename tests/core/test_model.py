"""The state's values with weights: round trips through the stored form, and the checks of weights, steps and
intervals at their boundaries (the same checks guard the admin API and a stored state)."""

from __future__ import annotations

import math

import pytest

from bgproxy.core.model import (
    MAX_INTERVAL,
    MAX_STEPS,
    MAX_WEIGHT,
    MIN_INTERVAL,
    Color,
    InvalidPlan,
    Rollout,
    State,
    check_interval,
    check_steps,
    check_weight,
)

BLUE, GREEN = Color.BLUE, Color.GREEN
PLAN = Rollout(steps=(10, 50, 100), interval=60.0, step=1, step_started_at=1000.5)


def split(weight: int = 0, rollout: Rollout | None = None) -> State:
    return State(BLUE, GREEN, 7, 1000.5, "admin", "r", forced=True, weight=weight, rollout=rollout)


# --- round trips ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "s",
    [
        split(),
        split(weight=20),
        split(weight=100),
        split(weight=50, rollout=PLAN),
        split(weight=10, rollout=Rollout((10,), 1.0, 0, 0.0, paused=True)),
        split(weight=20, rollout=Rollout(tuple(range(1, MAX_STEPS + 1)), MAX_INTERVAL, MAX_STEPS - 1, 5.0)),
    ],
    ids=["plain", "shift", "all-standby", "rollout", "paused-one-step", "longest-plan"],
)
def test_state_round_trips_through_its_stored_form(s: State) -> None:
    data = s.to_dict()
    assert State.from_dict(data) == s
    # what a store writes is JSON: lists, not tuples
    assert data["weight"] == s.weight
    assert data["rollout"] == (None if s.rollout is None else {**s.rollout.to_dict(), "steps": list(s.rollout.steps)})


def test_rollout_to_dict_is_the_documented_shape() -> None:
    assert PLAN.to_dict() == {
        "steps": [10, 50, 100],
        "interval": 60.0,
        "step": 1,
        "step_started_at": 1000.5,
        "paused": False,
    }
    assert Rollout.from_dict(PLAN.to_dict()) == PLAN


def test_rollout_due_at_and_last() -> None:
    assert PLAN.due_at == 1060.5
    assert not PLAN.last
    assert Rollout((10, 50, 100), 60.0, 2, 0.0).last
    assert Rollout((100,), 60.0, 0, 0.0).last


def test_a_state_stored_before_weights_reads_as_weight_0_without_rollout() -> None:
    s = State.from_dict({"active": "green", "previous": "blue", "revision": 3})
    assert (s.weight, s.rollout, s.split) == (0, None, False)


def test_stored_numbers_come_back_as_their_types() -> None:
    s = State.from_dict(
        {"active": "blue", "weight": 20, "rollout": {"steps": [20], "interval": 60, "step": 0, "step_started_at": 5}}
    )
    assert s.rollout is not None
    assert isinstance(s.rollout.interval, float) and isinstance(s.rollout.step_started_at, float)
    assert s.rollout.steps == (20,) and s.rollout.paused is False


@pytest.mark.parametrize(
    ("s", "standby", "is_split"),
    [
        (split(), GREEN, False),
        (split(weight=1), GREEN, True),
        (split(weight=100), GREEN, True),
        (split(weight=50, rollout=PLAN), GREEN, True),
        (State(GREEN, BLUE, 1, 0.0, "admin", ""), BLUE, False),
    ],
)
def test_standby_and_split(s: State, standby: Color, is_split: bool) -> None:
    assert (s.standby, s.split) == (standby, is_split)


# --- bad stored values name the field ---------------------------------------------------------------------------------

GOOD_ROLLOUT = {"steps": [10, 50], "interval": 60, "step": 0, "step_started_at": 1.0, "paused": False}


@pytest.mark.parametrize(
    ("changes", "names"),
    [
        ({"weight": -1}, "'weight'"),
        ({"weight": 101}, "'weight'"),
        ({"weight": "20"}, "'weight'"),
        ({"weight": 20.5}, "'weight'"),
        ({"weight": 20.0}, "'weight'"),  # stored by bgproxy as an integer; a float is not its writing
        ({"weight": True}, "'weight'"),
        ({"weight": None}, "'weight'"),
        ({"rollout": []}, "'rollout'"),
        ({"rollout": "steps"}, "'rollout'"),
        ({"rollout": 1}, "'rollout'"),
        ({"rollout": {**GOOD_ROLLOUT, "steps": []}}, "'steps'"),
        ({"rollout": {**GOOD_ROLLOUT, "steps": None}}, "'steps'"),
        ({"rollout": {**GOOD_ROLLOUT, "steps": [50, 10]}}, "'steps' must rise"),
        ({"rollout": {**GOOD_ROLLOUT, "steps": [0, 10]}}, "'steps'"),
        ({"rollout": {**GOOD_ROLLOUT, "steps": [10, 101]}}, "'steps'"),
        ({"rollout": {**GOOD_ROLLOUT, "steps": "10,50"}}, "'steps'"),
        ({"rollout": {**GOOD_ROLLOUT, "interval": 0}}, "'interval'"),
        ({"rollout": {**GOOD_ROLLOUT, "interval": "60"}}, "'interval'"),
        ({"rollout": {**GOOD_ROLLOUT, "interval": math.inf}}, "'interval'"),
        ({"rollout": {**GOOD_ROLLOUT, "interval": math.nan}}, "'interval'"),
        ({"rollout": {k: v for k, v in GOOD_ROLLOUT.items() if k != "interval"}}, "'interval'"),
        ({"rollout": {**GOOD_ROLLOUT, "step": 2}}, "'rollout.step'"),
        ({"rollout": {**GOOD_ROLLOUT, "step": -1}}, "'rollout.step'"),
        ({"rollout": {**GOOD_ROLLOUT, "step": 0.0}}, "'rollout.step'"),
        ({"rollout": {**GOOD_ROLLOUT, "step": True}}, "'rollout.step'"),
        ({"rollout": {**GOOD_ROLLOUT, "step": None}}, "'rollout.step'"),
        ({"rollout": {**GOOD_ROLLOUT, "step_started_at": "now"}}, "'rollout.step_started_at'"),
        ({"rollout": {**GOOD_ROLLOUT, "step_started_at": math.inf}}, "'rollout.step_started_at'"),
        ({"rollout": {**GOOD_ROLLOUT, "step_started_at": None}}, "'rollout.step_started_at'"),
        ({"rollout": {**GOOD_ROLLOUT, "paused": "no"}}, "'rollout.paused'"),
        ({"rollout": {**GOOD_ROLLOUT, "paused": 0}}, "'rollout.paused'"),
        ({"forced": "false"}, "'forced'"),
    ],
)
def test_a_bad_stored_value_is_refused_naming_its_field(changes: dict[str, object], names: str) -> None:
    data = {"active": "blue", "previous": None, "revision": 4, "weight": 10, "rollout": None, **changes}
    with pytest.raises(ValueError) as info:
        State.from_dict(data)
    assert names in str(info.value)


def test_a_good_stored_rollout_parses() -> None:
    """The counterpart of the table above: its base is valid, so each row fails for the field it names."""
    s = State.from_dict({"active": "blue", "revision": 4, "weight": 10, "rollout": GOOD_ROLLOUT})
    assert s.rollout == Rollout((10, 50), 60.0, 0, 1.0, paused=False)


# --- the checks at their boundaries -----------------------------------------------------------------------------------


@pytest.mark.parametrize("good", [0, 1, 50, 99, MAX_WEIGHT])
def test_check_weight_accepts_0_to_100(good: int) -> None:
    assert check_weight(good) == good


@pytest.mark.parametrize("bad", [-1, MAX_WEIGHT + 1, 10**9, 20.0, 20.5, "20", True, False, None, [20]])
def test_check_weight_refuses_the_rest_saying_what_it_expects(bad: object) -> None:
    with pytest.raises(InvalidPlan, match=r"'weight' must be an integer from 0 to 100"):
        check_weight(bad)


@pytest.mark.parametrize(
    "good",
    [[1], [100], [10, 50, 100], (5, 25), [1, 2], [99, 100], list(range(1, MAX_STEPS + 1)), list(range(81, 101))],
)
def test_check_steps_accepts_1_to_20_rising_weights(good: list[int]) -> None:
    assert check_steps(good) == tuple(good)


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ([], "non-empty list"),
        (None, "non-empty list"),
        ("10,50", "non-empty list"),
        (10, "non-empty list"),
        ({10: 1}, "non-empty list"),
        (list(range(1, MAX_STEPS + 2)), f"at most {MAX_STEPS} steps"),
        ([0, 50], "from 1 to 100"),
        ([10, 101], "from 1 to 100"),
        ([-5], "from 1 to 100"),
        ([10, 50.0], "from 1 to 100"),
        ([True, 50], "from 1 to 100"),
        (["10"], "from 1 to 100"),
        ([50, 10], "rise strictly"),
        ([10, 10], "rise strictly"),
        ([10, 50, 40, 100], "rise strictly"),
    ],
)
def test_check_steps_refuses_the_rest_saying_why(bad: object, says: str) -> None:
    with pytest.raises(InvalidPlan, match="'steps'") as info:
        check_steps(bad)
    assert says in str(info.value)


@pytest.mark.parametrize("good", [MIN_INTERVAL, 1, 1.5, 60, 3600.25, MAX_INTERVAL])
def test_check_interval_accepts_1s_to_a_day(good: float) -> None:
    assert check_interval(good) == float(good)
    assert isinstance(check_interval(good), float)


@pytest.mark.parametrize(
    "bad", [0, -1, 0.999, MAX_INTERVAL + 0.001, 10**12, math.inf, -math.inf, math.nan, "60", True, None]
)
def test_check_interval_refuses_the_rest_naming_the_range(bad: object) -> None:
    with pytest.raises(InvalidPlan, match=r"'interval' must be a number of seconds from 1 to 86400"):
        check_interval(bad)


def test_an_absurd_value_is_clipped_in_the_message() -> None:
    with pytest.raises(InvalidPlan) as info:
        check_steps(["x" * 10_000])
    assert len(str(info.value)) < 300
    with pytest.raises(InvalidPlan) as info:
        check_weight("y" * 10_000)
    assert len(str(info.value)) < 300
