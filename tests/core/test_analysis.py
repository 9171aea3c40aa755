"""The automatic rollback's pure core, with tables: which colour is judged when, the verdict at its boundaries, the
reasons it gives, and what a rollback does to the state; and the drained signal's rule."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bgproxy.core import rollout, routing
from bgproxy.core.analysis import SOURCE, Breach, Figures, Thresholds, judge, judged, roll_back, verdict
from bgproxy.core.drained import drained_at, receives
from bgproxy.core.model import Color, Hold, Rollout, State

BLUE, GREEN = Color.BLUE, Color.GREEN
T = Thresholds(window=30, min_requests=50, max_error_rate=0.05, max_p99=None, max_p99_ratio=None, watch=300)
HEALTHY = Figures(requests=1000, errors=0, p50=0.01, p99=0.02)


def base(**kw: object) -> State:
    fields: dict[str, object] = {
        "active": BLUE,
        "previous": None,
        "revision": 4,
        "updated_at": 1.0,
        "source": "admin",
        "reason": "",
    }
    fields.update(kw)
    return State(**fields)  # type: ignore[arg-type]


PROMOTED = base(active=GREEN, previous=BLUE, promoted_at=1000.0, release="v43")
STEPPING = base(weight=10, rollout=Rollout((10, 50, 100), 60.0, 0, 1000.0), release="v43")

# --- judged(): which colour decides, in every situation -------------------------------------------------------------

JUDGED = [
    ("nothing split, never promoted", base(), 1010.0, None),
    ("a shift: the standby", base(weight=20), 1010.0, GREEN),
    ("all ordinary traffic on the standby", base(weight=100), 1010.0, GREEN),
    ("a stepped promotion: the standby", STEPPING, 1010.0, GREEN),
    (
        "a paused stepped promotion too",
        replace(STEPPING, rollout=replace(STEPPING.rollout, paused=True)),
        1010.0,
        GREEN,
    ),
    ("just promoted: the new active colour", PROMOTED, 1000.0, GREEN),
    ("promoted, inside the watch", PROMOTED, 1299.9, GREEN),
    ("promoted, the watch just over", PROMOTED, 1300.0, None),
    ("promoted, long after", PROMOTED, 5000.0, None),
    ("a promote with nothing to go back to", replace(PROMOTED, previous=None), 1010.0, None),
    ("a shift after a promote: the standby, not the active", replace(PROMOTED, weight=20), 1010.0, BLUE),
    ("after a rollback the watch is over", replace(PROMOTED, promoted_at=None), 1010.0, None),
]


@pytest.mark.parametrize(("case", "state", "now", "expected"), JUDGED, ids=[c[0] for c in JUDGED])
def test_judged_names_the_colour_getting_new_traffic(case: str, state: State, now: float, expected: Color) -> None:
    assert judged(state, now=now, watch=300) is expected


def test_a_watch_of_zero_judges_no_promote() -> None:
    assert judged(PROMOTED, now=1000.0, watch=0) is None
    assert judged(base(weight=20), now=1000.0, watch=0) is GREEN  # a split is still judged


# --- verdict(): the boundaries ---------------------------------------------------------------------------------------

ABS = replace(T, max_p99=0.5)
LAT = replace(T, max_p99=0.5, max_p99_ratio=3.0)
VERDICTS = [
    ("no requests", Figures(), HEALTHY, T, None),
    ("one short of min_requests, all failing", Figures(requests=49, errors=49, p99=9.0), HEALTHY, LAT, None),
    ("min_requests exactly, all failing", Figures(requests=50, errors=50, p99=0.01), HEALTHY, T, "error_rate"),
    ("error rate at the threshold", Figures(requests=100, errors=5, p99=0.01), HEALTHY, T, None),
    ("error rate just above", Figures(requests=100, errors=6, p99=0.01), HEALTHY, T, "error_rate"),
    (
        "a threshold of 0: a single 5xx",
        Figures(requests=1000, errors=1),
        HEALTHY,
        replace(T, max_error_rate=0),
        "error_rate",
    ),
    ("p99 at the absolute threshold", Figures(requests=100, p99=0.5), HEALTHY, ABS, None),
    ("p99 above the absolute threshold", Figures(requests=100, p99=0.51), HEALTHY, ABS, "latency"),
    ("p99 far above, but the absolute threshold off", Figures(requests=100, p99=60.0), HEALTHY, T, None),
    ("p99 at 3x the other's", Figures(requests=100, p99=0.06), HEALTHY, LAT, None),
    ("p99 above 3x the other's", Figures(requests=100, p99=0.0601), HEALTHY, LAT, "latency"),
    (
        "p99 10x the other's, but the other has too few requests to compare with",
        Figures(requests=100, p99=0.2),
        Figures(requests=49, p99=0.02),
        LAT,
        None,
    ),
    ("p99 10x, the other without requests", Figures(requests=100, p99=0.2), Figures(), LAT, None),
    ("the errors win over the latency", Figures(requests=100, errors=50, p99=9.0), HEALTHY, LAT, "error_rate"),
    ("healthy", Figures(requests=100_000, errors=5000, p99=0.02), HEALTHY, LAT, None),
]


@pytest.mark.parametrize(("case", "mine", "other", "t", "kind"), VERDICTS, ids=[c[0] for c in VERDICTS])
def test_verdict_boundaries(case: str, mine: Figures, other: Figures, t: Thresholds, kind: str | None) -> None:
    breach = verdict(GREEN, mine, other, t)
    assert (breach.kind if breach else None) == kind
    if breach is not None:
        assert breach.color is GREEN


REASONS = [
    (
        Figures(requests=200, errors=60, p99=0.01),
        T,
        ["green", "5xx share 30.0%", "60 of 200", "last 30s", "ANALYSIS_MAX_ERROR_RATE 5.0%"],
    ),
    (Figures(requests=80, p99=1.5), LAT, ["green", "p99 1.50s", "last 30s", "80 requests", "ANALYSIS_MAX_P99 500ms"]),
    (
        Figures(requests=120, p99=0.2),
        replace(T, max_p99_ratio=3.0),
        ["green", "p99 200ms", "last 30s", "120 requests", "10.0x blue's 20ms", "ANALYSIS_MAX_P99_RATIO 3"],
    ),
]


@pytest.mark.parametrize(("mine", "t", "words"), REASONS)
def test_reasons_name_figure_threshold_window_and_count(mine: Figures, t: Thresholds, words: list[str]) -> None:
    breach = verdict(GREEN, mine, HEALTHY, t)
    assert breach is not None
    for word in words:
        assert word in breach.reason, (word, breach.reason)


# --- judge() and roll_back() --------------------------------------------------------------------------------------

FAILING = {GREEN: Figures(requests=100, errors=30, p99=0.01), BLUE: HEALTHY}


def test_judge_leaves_the_very_state_when_nothing_breaches_or_nothing_is_judged() -> None:
    healthy = {GREEN: HEALTHY, BLUE: HEALTHY}
    for state in (base(weight=20), STEPPING, PROMOTED):
        assert judge(state, healthy, T, now=1010.0) == (state, None)
        assert judge(state, healthy, T, now=1010.0)[0] is state
    quiet = base()  # nothing judged: even failing figures change nothing
    assert judge(quiet, FAILING, T, now=1010.0)[0] is quiet
    assert judge(PROMOTED, FAILING, T, now=1300.0)[0] is PROMOTED  # after the watch


def test_roll_back_during_a_stepped_promotion_sends_the_weight_to_zero_and_holds_what_was_asked() -> None:
    after, breach = judge(STEPPING, FAILING, T, now=1010.0)
    assert breach is not None and (breach.color, breach.kind) == (GREEN, "error_rate")
    assert (after.active, after.previous, after.weight, after.rollout) == (BLUE, None, 0, None)
    assert (after.revision, after.updated_at, after.source, after.reason) == (5, 1010.0, SOURCE, breach.reason)
    assert after.forced is False and after.release == "v43" and after.release_pending is False
    assert after.hold == Hold(BLUE, 10, "v43", breach.reason, 1010.0)
    assert routing.event(STEPPING, after) == "auto-rollback"


def test_roll_back_during_a_shift_keeps_the_active_colour() -> None:
    shifted = base(weight=50, release="v43", release_pending=True)
    after, breach = judge(shifted, FAILING, T, now=1010.0)
    assert breach is not None
    assert (after.active, after.weight, after.release_pending) == (BLUE, 0, False)
    assert after.hold == Hold(BLUE, 50, "v43", breach.reason, 1010.0)


def test_roll_back_during_the_watch_goes_back_to_the_previous_colour_and_holds_the_promoted_one() -> None:
    after, breach = judge(PROMOTED, FAILING, T, now=1100.0)
    assert breach is not None and breach.color is GREEN
    assert (after.active, after.previous, after.weight, after.promoted_at) == (BLUE, GREEN, 0, None)
    assert (after.revision, after.source) == (5, SOURCE)
    assert after.hold == Hold(GREEN, 0, "v43", breach.reason, 1100.0)
    assert routing.event(PROMOTED, after) == "auto-rollback"


def test_a_rollback_is_judged_once_the_newer_state_finds_nothing_to_judge() -> None:
    """With several replicas, the second one to see the breach decides again from the first one's write."""
    for state in (STEPPING, PROMOTED, base(weight=100)):
        after, _ = judge(state, FAILING, T, now=1010.0)
        assert judged(after, now=1010.0, watch=T.watch) is None
        assert judge(after, FAILING, T, now=1010.0)[0] is after


def test_a_promote_after_a_completed_stepped_promotion_starts_the_watch() -> None:
    last = replace(STEPPING, weight=100, rollout=Rollout((10, 50, 100), 60.0, 2, 1000.0))
    promoted = rollout.advance(last, now=1060.0)
    assert promoted.promoted_at == 1060.0 and judged(promoted, now=1061.0, watch=300) is GREEN


def test_a_person_made_change_clears_the_hold() -> None:
    held, _ = judge(STEPPING, FAILING, T, now=1010.0)
    assert held.hold is not None
    assert routing.shift(held, 20, source="admin", reason="", now=1020.0).hold is None
    assert routing.set_release(held, "v44", source="admin", reason="", now=1020.0).hold is None


def test_roll_back_of_a_breach_that_names_its_colour() -> None:
    breach = Breach(GREEN, "latency", "green: p99 ...")
    assert roll_back(base(weight=30), breach, now=5.0).hold == Hold(BLUE, 30, None, "green: p99 ...", 5.0)


def test_rps_is_over_the_span_and_never_inflated_by_a_short_one() -> None:
    assert Figures(requests=300, span=30.0).rps == 10.0
    assert Figures(requests=5, span=0.1).rps == 5.0
    assert Figures().error_rate == 0.0


# --- the drained signal's rule -------------------------------------------------------------------------------------

RECEIVES = [
    (base(), BLUE, True),
    (base(), GREEN, False),
    (base(weight=20), GREEN, True),
    (base(weight=20), BLUE, True),
    (base(weight=100), BLUE, True),  # the active colour is what an abort goes back to: never drained
    (STEPPING, GREEN, True),
    (PROMOTED, BLUE, False),
]


@pytest.mark.parametrize(("state", "color", "expected"), RECEIVES)
def test_receives_ordinary_traffic(state: State, color: Color, expected: bool) -> None:
    assert receives(state, color) is expected


DRAINED = [
    # receiving, live in flight, quiet since, off since, after -> drained at
    (True, 0, 0.0, 0.0, 10.0, None),  # gets ordinary traffic: never
    (False, 1, 0.0, 0.0, 10.0, None),  # a live request or websocket still in flight
    (False, 0, 100.0, 50.0, 10.0, 110.0),  # the last live exchange ended after the colour went off
    (False, 0, 50.0, 100.0, 10.0, 110.0),  # went off after the last one ended
    (False, 0, 100.0, 100.0, 0.0, 100.0),  # DRAINED_AFTER 0
]


@pytest.mark.parametrize(("receiving", "live", "quiet", "off", "after", "expected"), DRAINED)
def test_drained_at(receiving: bool, live: int, quiet: float, off: float, after: float, expected: float | None) -> None:
    assert drained_at(receiving=receiving, live=live, quiet_since=quiet, off_since=off, after=after) == expected
