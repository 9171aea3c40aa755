"""The routing rules with weights, by table: which colour a bucket gets, what switch/promote/rollback/shift/abort do
while traffic is split, the health gate, and the `event` each kind of change is recorded as."""

from __future__ import annotations

import pytest

from bgproxy.core import rollout, routing
from bgproxy.core.buckets import BUCKETS
from bgproxy.core.model import (
    Color,
    InvalidPlan,
    NothingRunning,
    NothingToRollBack,
    Rollout,
    State,
    TargetDown,
)

BLUE, GREEN = Color.BLUE, Color.GREEN
T = 100.0  # the clock of the states below; changes happen at T + 1


def at(weight: int = 0, *, active: Color = BLUE, rollout: Rollout | None = None, revision: int = 5) -> State:
    return State(active, active.other, revision, T, "admin", "before", forced=False, weight=weight, rollout=rollout)


def plan(step: int = 0, *, steps: tuple[int, ...] = (10, 50, 100), paused: bool = False) -> Rollout:
    return Rollout(steps, 60.0, step, T, paused=paused)


def running(step: int = 0, *, paused: bool = False, active: Color = BLUE) -> State:
    p = plan(step, paused=paused)
    return at(p.steps[step], active=active, rollout=p)


def desc(s: object) -> str | None:
    """A short test id for a state: the weight, and the step of a stepped promotion."""
    if not isinstance(s, State):
        return None
    if s.rollout is None:
        return f"weight{s.weight}"
    return f"step{s.rollout.step}" + ("-paused" if s.rollout.paused else "")


UP = {BLUE: True, GREEN: True}
GREEN_DOWN = {BLUE: True, GREEN: False}
BLUE_DOWN = {BLUE: False, GREEN: True}


# --- choose: the weight and the bucket --------------------------------------------------------------------------------

# (weight, bucket) -> standby?  The standby colour serves the buckets below the weight.
BUCKET_TABLE = [
    (0, 0, False),
    (0, 99, False),
    (1, 0, True),
    (1, 1, False),
    (20, 19, True),
    (20, 20, False),
    (20, 99, False),
    (50, 49, True),
    (50, 50, False),
    (99, 98, True),
    (99, 99, False),
    (100, 0, True),
    (100, 99, True),
]


@pytest.mark.parametrize(("weight", "bucket", "standby"), BUCKET_TABLE)
@pytest.mark.parametrize("active", [BLUE, GREEN])
def test_a_bucket_below_the_weight_goes_to_the_standby_colour(
    active: Color, weight: int, bucket: int, standby: bool
) -> None:
    s = at(weight, active=active)
    assert routing.choose(s, None, bucket) is (active.other if standby else active)
    assert routing.choose(s, "", bucket) is (active.other if standby else active)  # empty preview: absent


@pytest.mark.parametrize("weight", range(0, 101))
def test_exactly_weight_buckets_of_100_go_to_the_standby_colour(weight: int) -> None:
    s = at(weight, active=GREEN)
    served = [routing.choose(s, None, b) for b in range(BUCKETS)]
    assert served.count(BLUE) == weight
    assert served.count(GREEN) == BUCKETS - weight


def test_raising_the_weight_never_moves_a_bucket_back_to_the_active_colour() -> None:
    for bucket in range(BUCKETS):
        on_standby = [routing.choose(at(w), None, bucket) is GREEN for w in range(101)]
        # once on the standby colour at some weight, on it at every higher weight
        first = on_standby.index(True)
        assert first == bucket + 1
        assert all(on_standby[first:]) and not any(on_standby[:first])


@pytest.mark.parametrize("bucket", [0, 19, 20, 99])
@pytest.mark.parametrize(
    ("weight", "preview", "served"),
    [
        (100, "blue", BLUE),  # the active colour by name, though every ordinary request goes green
        (100, "BLUE", BLUE),
        (0, "green", GREEN),  # the standby by name at weight 0
        (0, "1", GREEN),  # the standby by any other value
        (20, "blue", BLUE),
        (20, "green", GREEN),
        (20, "yes", GREEN),
        (100, "1", GREEN),
    ],
)
def test_preview_wins_over_the_weight_both_ways(weight: int, preview: str, served: Color, bucket: int) -> None:
    assert routing.choose(at(weight), preview, bucket) is served


# --- switch / promote / rollback while traffic is split ---------------------------------------------------------------


@pytest.mark.parametrize("s", [at(20), at(100), running(0), running(2, paused=True)], ids=desc)
def test_switch_to_the_standby_while_split_flips_with_all_traffic(s: State) -> None:
    new = routing.switch(s, GREEN, source="admin", reason="go", now=T + 1)
    assert (new.active, new.previous, new.weight, new.rollout) == (GREEN, BLUE, 0, None)
    assert (new.revision, new.updated_at, new.source, new.reason) == (6, T + 1, "admin", "go")
    assert routing.event(s, new) == "switch"


@pytest.mark.parametrize("s", [at(20), at(100), running(1), running(0, paused=True)], ids=desc)
def test_switch_to_the_active_colour_while_split_sends_all_traffic_back(s: State) -> None:
    new = routing.switch(s, BLUE, source="admin", reason="back", now=T + 1)
    assert (new.active, new.previous, new.weight, new.rollout, new.revision) == (BLUE, GREEN, 0, None, 6)
    assert routing.event(s, new) == "aborted"


def test_switch_to_the_active_colour_when_not_split_changes_nothing() -> None:
    s = at(0)
    assert routing.switch(s, BLUE, source="admin", reason="again", now=T + 1) is s


@pytest.mark.parametrize("s", [at(20), running(1)], ids=["shift", "rollout"])
def test_promote_while_split_is_an_instant_promote_ending_the_split(s: State) -> None:
    new = routing.promote(s, source="admin", reason="now", now=T + 1)
    assert (new.active, new.previous, new.weight, new.rollout, new.revision) == (GREEN, BLUE, 0, None, 6)
    assert routing.event(s, new) == "switch"  # an operator's promote; "promoted" is the timer's completion


@pytest.mark.parametrize("s", [at(20), at(100), running(0), running(2, paused=True)], ids=desc)
def test_rollback_while_split_acts_as_abort(s: State) -> None:
    new = routing.rollback(s, source="admin", reason="bad", now=T + 1)
    assert (new.active, new.previous, new.weight, new.rollout, new.revision) == (BLUE, GREEN, 0, None, 6)
    assert new.reason == "bad" and routing.event(s, new) == "aborted"


def test_rollback_while_split_needs_no_previous_colour() -> None:
    s = State(BLUE, None, 1, T, "admin", "", weight=30)
    new = routing.rollback(s, source="admin", reason="", now=T + 1)
    assert (new.active, new.previous, new.weight) == (BLUE, None, 0)
    with pytest.raises(NothingToRollBack):
        routing.rollback(new, source="admin", reason="", now=T + 2)


def test_rollback_while_split_is_not_gated_by_health() -> None:
    """Sending traffic back to the active colour must work even when it looks down: it is the way out."""
    new = routing.rollback(at(50), source="admin", reason="", now=T + 1, healthy=BLUE_DOWN)
    assert (new.weight, new.forced) == (0, False)


# --- shift ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("s", "weight", "event"),
    [
        (at(0), 20, "shift"),
        (at(20), 50, "shift"),
        (at(50), 10, "shift"),
        (at(20), 100, "shift"),
        (at(0), 100, "shift"),
        (running(1), 30, "shift"),  # a manual shift ends the stepped promotion
        (running(1), 50, "shift"),  # even at the step's own weight
        (running(0, paused=True), 10, "shift"),
        (at(20), 0, "aborted"),  # weight back to 0: what abort does, recorded as such
        (running(1), 0, "aborted"),
    ],
    ids=desc,
)
def test_shift_sets_the_weight_and_ends_a_stepped_promotion(s: State, weight: int, event: str) -> None:
    new = routing.shift(s, weight, source="admin", reason="canary", now=T + 1)
    assert (new.active, new.previous, new.weight, new.rollout) == (BLUE, GREEN, weight, None)
    assert (new.revision, new.updated_at, new.source, new.reason, new.forced) == (6, T + 1, "admin", "canary", False)
    assert routing.event(s, new) == event


@pytest.mark.parametrize("weight", [0, 20, 100])
def test_shift_to_the_weight_already_set_changes_nothing(weight: int) -> None:
    s = at(weight)
    assert routing.shift(s, weight, source="admin", reason="again", now=T + 1) is s


@pytest.mark.parametrize("bad", [-1, 101, 20.5, "20", True])
def test_shift_refuses_a_weight_that_is_not_0_to_100(bad: object) -> None:
    with pytest.raises(InvalidPlan, match="'weight'"):
        routing.shift(at(0), bad, source="admin", reason="", now=T + 1)


# --- abort ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("s", [at(1), at(100), running(0), running(2), running(1, paused=True)], ids=desc)
def test_abort_sends_all_ordinary_traffic_back_to_the_active_colour(s: State) -> None:
    forced = State(s.active, s.previous, s.revision, T, "admin", "", forced=True, weight=s.weight, rollout=s.rollout)
    new = routing.abort(forced, source="admin", reason="stop", now=T + 1)
    assert (new.active, new.previous, new.weight, new.rollout, new.forced) == (BLUE, GREEN, 0, None, False)
    assert (new.revision, new.reason) == (6, "stop")
    assert routing.event(s, new) == "aborted"
    for bucket in range(BUCKETS):
        assert routing.choose(new, None, bucket) is BLUE


@pytest.mark.parametrize("s", [at(0), at(0, active=GREEN)])
def test_abort_with_nothing_running_is_refused_naming_the_active_colour(s: State) -> None:
    with pytest.raises(NothingRunning, match=f"nothing to abort.*{s.active.value} serves all traffic"):
        routing.abort(s, source="admin", reason="", now=T + 1)


# --- the health gate --------------------------------------------------------------------------------------------------


def shift20(s: State, **kw: object) -> State:
    return routing.shift(s, 20, source="admin", reason="", now=T + 1, **kw)  # type: ignore[arg-type]


def start(s: State, **kw: object) -> State:
    return rollout.start(s, [10, 50], 1.0, source="admin", reason="", now=T + 1, **kw)  # type: ignore[arg-type]


def promote(s: State, **kw: object) -> State:
    return routing.promote(s, source="admin", reason="", now=T + 1, **kw)  # type: ignore[arg-type]


def switch_green(s: State, **kw: object) -> State:
    return routing.switch(s, GREEN, source="admin", reason="", now=T + 1, **kw)  # type: ignore[arg-type]


SENDS_TO_STANDBY = [shift20, start, promote, switch_green]


@pytest.mark.parametrize("change", SENDS_TO_STANDBY, ids=lambda f: f.__name__)
def test_traffic_to_a_standby_that_is_down_is_refused_unless_forced(change) -> None:  # type: ignore[no-untyped-def]
    s = at(0)
    with pytest.raises(TargetDown, match=r'green is failing its health checks.*"force": true'):
        change(s, healthy=GREEN_DOWN)
    forced = change(s, healthy=GREEN_DOWN, force=True)
    assert forced.forced is True and forced.revision == 6


@pytest.mark.parametrize("change", SENDS_TO_STANDBY, ids=lambda f: f.__name__)
@pytest.mark.parametrize("healthy", [None, UP, BLUE_DOWN])
def test_force_is_recorded_only_when_it_overrode_something(change, healthy) -> None:  # type: ignore[no-untyped-def]
    assert change(at(0), healthy=healthy, force=True).forced is False
    assert change(at(0), healthy=healthy).forced is False


@pytest.mark.parametrize("s", [at(0), at(50), running(1)], ids=desc)
def test_weight_0_is_never_gated(s: State) -> None:
    new = routing.shift(s, 0, source="admin", reason="", now=T + 1, healthy=GREEN_DOWN)
    assert (new.weight, new.forced) == (0, False)
    if s.split:
        assert routing.abort(s, source="admin", reason="", now=T + 1).weight == 0


def test_a_later_change_clears_forced() -> None:
    forced = shift20(at(0), healthy=GREEN_DOWN, force=True)
    assert forced.forced
    assert routing.shift(forced, 30, source="admin", reason="", now=T + 2).forced is False
    assert routing.abort(forced, source="admin", reason="", now=T + 2).forced is False


# --- event: every kind of change --------------------------------------------------------------------------------------


def test_event_names_every_kind_of_change() -> None:
    s0 = at(0)
    shifted = shift20(s0)
    started = start(s0)
    assert rollout.start(s0, [10], 1.0, source="admin", reason="", now=T).rollout is not None
    paused = rollout.pause(started, source="admin", reason="", now=T + 2)
    resumed = rollout.resume(paused, source="admin", reason="", now=T + 3)
    stepped = rollout.advance(resumed, now=T + 4)
    promoted = rollout.advance(stepped, now=T + 5)
    cases = [
        (s0, switch_green(s0), "switch"),
        (s0, shifted, "shift"),
        (shifted, routing.shift(shifted, 40, source="admin", reason="", now=T + 2), "shift"),
        (shifted, routing.abort(shifted, source="admin", reason="", now=T + 2), "aborted"),
        (shifted, promote(shifted), "switch"),
        (s0, started, "step"),  # the first step
        (shifted, start(shifted), "step"),  # a stepped promotion may start from a shift
        (started, paused, "paused"),
        (paused, resumed, "resumed"),
        (resumed, stepped, "step"),
        (stepped, promoted, "promoted"),
        (started, routing.abort(started, source="admin", reason="", now=T + 2), "aborted"),
        (paused, routing.rollback(paused, source="admin", reason="", now=T + 2), "aborted"),
        (started, routing.shift(started, 30, source="admin", reason="", now=T + 2), "shift"),
        (started, promote(started), "switch"),
    ]
    for old, new, expected in cases:
        assert new.revision == old.revision + 1, (old, new)
        assert routing.event(old, new) == expected, (old, new)
    assert (stepped.weight, stepped.rollout.step if stepped.rollout else None) == (50, 1)
    assert (promoted.active, promoted.weight, promoted.rollout, promoted.source) == (GREEN, 0, None, "rollout")


def test_lowering_the_weight_off_a_standby_that_is_down_needs_no_force() -> None:
    """Moving traffic off a failing colour is the way out: only more traffic to it is gated."""
    lowered = routing.shift(at(50), 10, source="admin", reason="", now=T + 1, healthy=GREEN_DOWN)
    assert (lowered.weight, lowered.forced) == (10, False)
    with pytest.raises(TargetDown):
        routing.shift(at(10), 50, source="admin", reason="", now=T + 1, healthy=GREEN_DOWN)


@pytest.mark.parametrize("blank", ["", " ", "\u00a0", "\t \u2003"])
@pytest.mark.parametrize("weight", [0, 30, 100])
def test_a_blank_preview_asks_for_no_colour_and_the_bucket_decides(blank: str, weight: int) -> None:
    s = at(weight)
    assert routing.preview_color(s, blank) is None
    for bucket in range(BUCKETS):
        assert routing.choose(s, blank, bucket) == (GREEN if bucket < weight else BLUE)
