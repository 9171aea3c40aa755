"""The stepped promotion in the pure core: start, advance on the clock, pause and resume; and properties of any
sequence of release operations (weights in range, revisions one per change, the plan and the weight agreeing)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgproxy.core import rollout, routing
from bgproxy.core.model import (
    Color,
    InvalidPlan,
    NothingRunning,
    NothingToRollBack,
    Rollout,
    RoutingError,
    State,
    TargetDown,
    initial_state,
)

BLUE, GREEN = Color.BLUE, Color.GREEN
T = 1000.0
UP = {BLUE: True, GREEN: True}
GREEN_DOWN = {BLUE: True, GREEN: False}


def base(weight: int = 0) -> State:
    return State(BLUE, GREEN, 3, T - 50, "admin", "", weight=weight)


def started(steps: tuple[int, ...] = (10, 50, 100), interval: float = 60.0) -> State:
    return rollout.start(base(), steps, interval, source="admin", reason="release 7", now=T)


# --- start ------------------------------------------------------------------------------------------------------------


def test_start_applies_the_first_step_at_once() -> None:
    s = started()
    assert (s.active, s.previous, s.weight, s.revision) == (BLUE, GREEN, 10, 4)
    assert s.rollout == Rollout((10, 50, 100), 60.0, 0, T, paused=False)
    assert (s.updated_at, s.source, s.reason, s.forced) == (T, "admin", "release 7", False)
    assert s.rollout.due_at == T + 60


def test_start_takes_any_sequence_and_an_integer_interval() -> None:
    s = rollout.start(base(), range(25, 101, 25), 2, source="admin", reason="", now=T)
    assert s.rollout is not None and (s.rollout.steps, s.rollout.interval) == ((25, 50, 75, 100), 2.0)


def test_start_from_a_shift_replaces_its_weight_with_the_first_step() -> None:
    s = rollout.start(base(weight=60), [10, 100], 5, source="admin", reason="", now=T)
    assert s.weight == 10 and s.rollout is not None


@pytest.mark.parametrize(
    ("steps", "interval", "names"),
    [
        ([], 60, "'steps'"),
        ([50, 10], 60, "'steps'"),
        ([0, 10], 60, "'steps'"),
        ([10], 0.5, "'interval'"),
        ([10], True, "'interval'"),  # a bool is no number of seconds, in the compiled build too
    ],
)
def test_start_refuses_a_plan_that_can_never_be_valid(steps: list[int], interval: object, names: str) -> None:
    with pytest.raises(InvalidPlan, match=names):
        rollout.start(base(), steps, interval, source="admin", reason="", now=T)


@pytest.mark.parametrize("paused", [False, True])
def test_start_refuses_a_second_stepped_promotion(paused: bool) -> None:
    s = started()
    if paused:
        s = rollout.pause(s, source="admin", reason="", now=T + 1)
    with pytest.raises(RoutingError, match=r"already running \(step 1 of 3\); abort it first") as info:
        rollout.start(s, [20, 40], 60, source="admin", reason="", now=T + 2)
    assert not isinstance(info.value, InvalidPlan)  # a 409 (try later), not a 400 (never valid)


def test_start_is_gated_by_the_standbys_health() -> None:
    with pytest.raises(TargetDown, match="green is failing"):
        rollout.start(base(), [10], 60, source="admin", reason="", now=T, healthy=GREEN_DOWN)
    s = rollout.start(base(), [10], 60, source="admin", reason="", now=T, healthy=GREEN_DOWN, force=True)
    assert s.forced is True and s.weight == 10


# --- advance ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("now", [T, T + 1, T + 59.999])
def test_advance_before_the_step_is_due_changes_nothing(now: float) -> None:
    s = started()
    assert rollout.advance(s, now=now) is s
    assert rollout.advance(s, now=now, healthy=UP) is s


@pytest.mark.parametrize("late", [0.0, 0.5, 3600.0])
def test_advance_when_due_takes_one_step_timed_from_now(late: float) -> None:
    s = started()
    now = T + 60 + late
    new = rollout.advance(s, now=now, healthy=UP)
    assert new.weight == 50 and new.rollout is not None
    assert (new.rollout.step, new.rollout.step_started_at, new.rollout.steps) == (1, now, (10, 50, 100))
    assert (new.revision, new.updated_at, new.source, new.forced) == (5, now, "rollout", False)
    assert new.reason == "step 2 of 3: 50% (10, 50, 100 every 60s)"
    # one step per call however late: a replica that wakes after a long pause does not skip steps
    assert rollout.advance(new, now=now) is new
    assert routing.event(s, new) == "step"


def test_advance_after_the_last_step_promotes_with_source_rollout() -> None:
    s = started((10, 50), 30)
    s = rollout.advance(s, now=T + 30)
    done = rollout.advance(s, now=T + 60)
    assert (done.active, done.previous, done.weight, done.rollout) == (GREEN, BLUE, 0, None)
    assert (done.revision, done.source, done.forced) == (6, "rollout", False)
    assert done.reason == "stepped promotion complete (10, 50 every 30s)"
    assert routing.event(s, done) == "promoted"
    assert rollout.advance(done, now=T + 1000) is done  # nothing left to do


def test_the_whole_plan_runs_step_by_step_to_a_normal_promote() -> None:
    s = started((5, 25, 50, 100), 10)
    weights = [s.weight]
    now = T
    while s.rollout is not None:
        now += 10
        s = rollout.advance(s, now=now, healthy=UP)
        weights.append(s.weight)
    assert weights == [5, 25, 50, 100, 0]
    assert (s.active, s.revision, s.source) == (GREEN, 4 + 4, "rollout")


def test_a_due_step_is_held_while_the_standby_is_down() -> None:
    s = started()
    assert rollout.advance(s, now=T + 600, healthy=GREEN_DOWN) is s
    last = rollout.advance(rollout.advance(s, now=T + 60), now=T + 120)
    assert rollout.advance(last, now=T + 600, healthy=GREEN_DOWN) is last  # the promote too
    # the active colour's health does not hold it
    assert rollout.advance(s, now=T + 60, healthy={BLUE: False, GREEN: True}).weight == 50


def test_a_paused_rollout_never_advances() -> None:
    s = rollout.pause(started(), source="admin", reason="", now=T + 1)
    assert rollout.advance(s, now=T + 10**6, healthy=UP) is s


def test_advance_with_nothing_running_changes_nothing() -> None:
    for s in (base(), base(weight=30)):
        assert rollout.advance(s, now=T + 10**6) is s


# --- pause / resume ---------------------------------------------------------------------------------------------------


def test_pause_holds_the_step_and_resume_restarts_its_interval() -> None:
    s = rollout.advance(started(), now=T + 60)  # step 2 (50%), started at T+60
    paused = rollout.pause(s, source="admin", reason="look", now=T + 70)
    assert paused.rollout is not None and paused.rollout.paused
    assert (paused.weight, paused.rollout.step, paused.revision, paused.reason) == (50, 1, s.revision + 1, "look")
    assert paused.rollout.step_started_at == T + 60
    assert routing.event(s, paused) == "paused"
    resumed = rollout.resume(paused, source="admin", reason="ok", now=T + 500)
    assert resumed.rollout is not None and not resumed.rollout.paused
    assert (resumed.rollout.step, resumed.rollout.step_started_at, resumed.weight) == (1, T + 500, 50)
    assert routing.event(paused, resumed) == "resumed"
    # the step holds a full interval from the resume, then goes on
    assert rollout.advance(resumed, now=T + 559.9) is resumed
    assert rollout.advance(resumed, now=T + 560).weight == 100


@pytest.mark.parametrize(
    ("s", "call", "message"),
    [
        (base(), rollout.pause, "nothing to pause: no stepped promotion is running (weight 0)"),
        (base(weight=20), rollout.pause, "nothing to pause: no stepped promotion is running (weight 20)"),
        (base(), rollout.resume, "nothing to resume: no stepped promotion is running (weight 0)"),
        (started(), rollout.resume, "nothing to resume: it is not paused"),
        (rollout.pause(started(), source="a", reason="", now=T), rollout.pause, "nothing to pause: it is paused"),
    ],
)
def test_pause_and_resume_with_nothing_to_act_on_are_refused(s: State, call: Any, message: str) -> None:
    with pytest.raises(NothingRunning) as info:
        call(s, source="admin", reason="", now=T + 1)
    assert message in str(info.value)


def test_abort_ends_a_paused_rollout() -> None:
    s = rollout.pause(started(), source="admin", reason="", now=T + 1)
    done = routing.abort(s, source="admin", reason="", now=T + 2)
    assert (done.weight, done.rollout, done.active) == (0, None, BLUE)


# --- properties: any sequence of release operations -------------------------------------------------------------------

HEALTH = st.sampled_from([None, UP, GREEN_DOWN, {BLUE: False, GREEN: True}])
STEPS = st.lists(st.integers(1, 100), min_size=1, max_size=5, unique=True).map(sorted)
OP = st.one_of(
    st.tuples(st.just("shift"), st.integers(0, 100), HEALTH, st.booleans()),
    st.tuples(st.just("start"), STEPS, st.sampled_from([1, 5, 60]), HEALTH, st.booleans()),
    st.tuples(st.just("advance"), st.floats(0, 120), HEALTH),
    st.tuples(st.just("pause")),
    st.tuples(st.just("resume")),
    st.tuples(st.just("abort")),
    st.tuples(st.just("promote"), HEALTH, st.booleans()),
    st.tuples(st.just("rollback"), HEALTH, st.booleans()),
    st.tuples(st.just("switch"), st.sampled_from([BLUE, GREEN]), HEALTH, st.booleans()),
)
EVENTS = {"switch", "shift", "step", "promoted", "paused", "resumed", "aborted"}


def apply(s: State, op: tuple[Any, ...], now: float) -> State:
    kind, *args = op
    kw: dict[str, Any] = {"source": "admin", "reason": kind, "now": now}
    if kind == "shift":
        return routing.shift(s, args[0], healthy=args[1], force=args[2], **kw)
    if kind == "start":
        return rollout.start(s, args[0], args[1], healthy=args[2], force=args[3], **kw)
    if kind == "advance":
        return rollout.advance(s, now=now + args[0], healthy=args[1])
    if kind == "pause":
        return rollout.pause(s, **kw)
    if kind == "resume":
        return rollout.resume(s, **kw)
    if kind == "abort":
        return routing.abort(s, **kw)
    if kind == "promote":
        return routing.promote(s, healthy=args[0], force=args[1], **kw)
    if kind == "rollback":
        return routing.rollback(s, healthy=args[0], force=args[1], **kw)
    return routing.switch(s, args[0], healthy=args[1], force=args[2], **kw)


def check(s: State) -> None:
    assert 0 <= s.weight <= 100
    assert s.active is not s.standby
    if s.rollout is not None:
        r = s.rollout
        assert 0 <= r.step < len(r.steps)
        assert s.weight == r.steps[r.step]  # the plan and the weight agree
        assert list(r.steps) == sorted(set(r.steps)) and 1 <= r.steps[0] and r.steps[-1] <= 100
        assert s.split
    assert s.split == (s.weight > 0 or s.rollout is not None)
    assert State.from_dict(s.to_dict()) == s  # every reachable state can be stored and read back


@settings(database=None, deadline=None, max_examples=300)
@given(start=st.sampled_from([BLUE, GREEN]), ops=st.lists(OP, max_size=40))
def test_any_sequence_of_release_operations_keeps_the_invariants(start: Color, ops: list[tuple[Any, ...]]) -> None:
    s = initial_state(start, now=0.0)
    clock = 0.0
    for op in ops:
        clock += 1.0
        before = s
        try:
            s = apply(s, op, clock)
        except (NothingRunning, NothingToRollBack, TargetDown) as exc:
            # refused for a reason of the moment: a 409 that changes nothing
            kind = op[0]
            if isinstance(exc, TargetDown):
                assert not op[-1]  # force was not given
            elif isinstance(exc, NothingRunning):
                assert kind in ("pause", "resume", "abort")
                assert kind != "abort" or not before.split
            else:
                assert kind == "rollback" and not before.split
            continue
        except RoutingError as exc:
            assert op[0] == "start" and before.rollout is not None, exc  # the one other refusal: a second rollout
            continue
        check(s)
        if s is before:
            continue
        # a change: one revision more, recorded with its own kind of event
        assert s.revision == before.revision + 1
        assert routing.event(before, s) in EVENTS
        if op[0] == "advance":
            assert s.source == "rollout" and before.rollout is not None and not before.rollout.paused
            assert s.weight > before.weight or (s.active is before.standby and s.weight == 0)
        else:
            assert (s.updated_at, s.source, s.reason) == (clock, "admin", op[0])
        if s.forced:
            assert op[-1] is True  # only a forced call records forced
        if s.active is not before.active:
            assert (s.previous, s.weight, s.rollout) == (before.active, 0, None)
        else:
            assert s.previous == before.previous
        clock = max(clock, s.updated_at)
    check(s)


@settings(database=None, deadline=None)
@given(weights=st.lists(st.integers(0, 100), min_size=2, max_size=10), bucket=st.integers(0, 99))
def test_a_bucket_on_the_standby_colour_stays_there_while_the_weight_only_rises(
    weights: list[int], bucket: int
) -> None:
    s = base()
    on_standby = False
    for w in sorted(weights):
        s = routing.shift(s, w, source="admin", reason="", now=T)
        now = routing.choose(s, None, bucket) is s.standby
        assert now or not on_standby
        on_standby = now
