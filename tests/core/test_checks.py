"""Pre-promotion checks and auto-promotion, pure, with tables: what a check list may hold (and what a bad one is
told), whether an answer passes, and when a waiting release is promoted."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bgproxy.core import rollout, routing
from bgproxy.core.checks import MAX_CHECKS, PromoteCheck, parse_checks, skipped
from bgproxy.core.model import Color, Hold, NothingRunning, Rollout, State, TargetDown

BLUE, GREEN = Color.BLUE, Color.GREEN

# --- the list as written in PROMOTE_CHECKS ---------------------------------------------------------------------------


def test_a_full_entry_and_the_defaults() -> None:
    full, bare = parse_checks(
        '[{"path": "/healthz", "status": 200, "body": "^ok", "timeout": 3, "method": "HEAD", '
        '"headers": {"X-Check": "1"}}, {"path": "/ready"}]'
    )
    assert full == PromoteCheck(
        path="/healthz", status=200, body="^ok", timeout=3.0, method="HEAD", headers={"X-Check": "1"}
    )
    assert (bare.status, bare.body, bare.timeout, bare.method, bare.headers) == (None, None, 2.0, "GET", {})
    assert parse_checks("[]") == ()


BAD_LISTS = [
    # (case, PROMOTE_CHECKS, what the message must say)
    ("not JSON", "[{", "expected a JSON list of checks"),
    ("not a list", '{"path": "/healthz"}', 'expected a JSON list of checks such as [{"path": "/healthz"}], got dict'),
    ("an entry not an object", '[{"path": "/a"}, "/b"]', "entry [1]: expected an object such as"),
    ("no path", '[{"status": 200}]', "entry [0], field 'path': required"),
    ("a path without its slash", '[{"path": "healthz"}]', "entry [0], field 'path': expected a path such as /healthz"),
    ("a path with a space", '[{"path": "/a b"}]', "field 'path': expected a path such as /healthz"),
    ("a status out of range", '[{"path": "/", "status": 600}]', "field 'status': Input should be less than or equal"),
    ("a status as a string", '[{"path": "/", "status": "200"}]', "field 'status'"),
    ("a regex that does not compile", '[{"path": "/", "body": "(ok"}]', "field 'body': expected a regular expression"),
    ("a timeout of 0", '[{"path": "/", "timeout": 0}]', "field 'timeout': Input should be greater than 0"),
    (
        "a timeout too long",
        '[{"path": "/", "timeout": 61}]',
        "field 'timeout': Input should be less than or equal to 60",
    ),
    ("a method in lower case", '[{"path": "/", "method": "get"}]', "field 'method': Input should be 'GET'"),
    ("a header name with a space", '[{"path": "/", "headers": {"X A": "1"}}]', "field 'headers.X A.[key]'"),
    ("a header value with a newline", '[{"path": "/", "headers": {"X": "a\\nb"}}]', "field 'headers.X'"),
    ("an unknown field", '[{"path": "/", "timout": 5}]', "field 'timout': Extra inputs are not permitted"),
    ("too many", "[" + ",".join(['{"path": "/"}'] * (MAX_CHECKS + 1)) + "]", f"at most {MAX_CHECKS} checks"),
]


@pytest.mark.parametrize(("raw", "says"), [r[1:] for r in BAD_LISTS], ids=[r[0] for r in BAD_LISTS])
def test_a_bad_list_is_refused_naming_the_entry_and_the_field(raw: str, says: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_checks(raw)
    assert says in str(info.value)
    assert "\n" not in str(info.value)


# --- whether an answer passes ----------------------------------------------------------------------------------------

ANSWERS = [
    # (case, check, status, body, None when it passes, else what the failure says)
    ("any status below 400 by default", {}, 302, "", None),
    ("400 fails by default", {}, 400, "bad", "status 400, expected one below 400; the body begins 'bad'"),
    ("503 fails by default", {}, 503, "", "status 503, expected one below 400; the body is empty"),
    ("the status asked for", {"status": 204}, 204, "", None),
    ("another status", {"status": 200}, 201, "made", "status 201, expected 200; the body begins 'made'"),
    ("a body that matches", {"body": r"\"ready\":\s*true"}, 200, '{"ready": true}', None),
    ("a body that does not", {"body": "^ok$"}, 200, "degraded", "status 200 but the body does not match '^ok$'"),
    ("the status is checked first", {"status": 200, "body": "ok"}, 500, "ok", "status 500, expected 200"),
    ("a long body is cut", {"status": 200}, 500, "x" * 1000, "the body begins '" + "x" * 120 + "'"),
]


@pytest.mark.parametrize(("fields", "status", "body", "says"), [r[1:] for r in ANSWERS], ids=[r[0] for r in ANSWERS])
def test_whether_an_answer_passes(fields: dict[str, object], status: int, body: str, says: str | None) -> None:
    failure = PromoteCheck.model_validate({"path": "/ready", **fields}).failure(status, body)
    if says is None:
        assert failure is None
    else:
        assert failure is not None and says in failure
        assert len(failure) < 300


def test_skipping_the_checks_is_recorded_as_forced_and_nothing_is_no_change() -> None:
    old = State(BLUE, None, 1, 1.0, "admin", "")
    new = routing.promote(old, source="admin", reason="", now=2.0)
    assert skipped(old, new).forced and not new.forced
    assert skipped(old, old) is old


# --- auto-promotion's decision ---------------------------------------------------------------------------------------

BASE = State(BLUE, GREEN, 4, 1.0, "admin", "", release="v42")
WAITING = routing.set_release(BASE, "v43", source="configmap", reason="", now=10.0)  # revision 5
HEALTHY = {BLUE: True, GREEN: True}


def promote(state: State, *, revision: int = 5, steps: tuple[int, ...] | None = None) -> State:
    return rollout.auto_promote(
        state, revision=revision, steps=steps, interval=30.0, reason="auto", now=20.0, healthy=HEALTHY
    )


def test_a_waiting_release_is_promoted_with_source_auto() -> None:
    assert rollout.waiting(WAITING) and not rollout.waiting(BASE)
    new = promote(WAITING)
    assert (new.active, new.previous, new.weight, new.source, new.release) == (GREEN, BLUE, 0, "auto", "v43")
    assert not new.release_pending and new.promoted_at == 20.0  # the automatic rollback watches it from now
    assert routing.event(WAITING, new) == "auto-promote"


def test_a_waiting_release_with_steps_starts_a_stepped_promotion() -> None:
    new = promote(WAITING, steps=(10, 50, 100))
    assert new.active is BLUE and new.weight == 10 and new.rollout == Rollout((10, 50, 100), 30.0, 0, 20.0)
    assert new.source == "auto" and not new.release_pending
    assert routing.event(WAITING, new) == "auto-promote"


NOTHING_WAITS = [
    ("no release recorded", BASE, 4),
    ("promoted already (by another replica)", promote(WAITING), 5),
    ("a newer release since", routing.set_release(WAITING, "v44", source="admin", reason="", now=11.0), 5),
    ("a person shifted traffic", routing.shift(WAITING, 10, source="admin", reason="", now=11.0), 5),
    ("held by an automatic rollback", replace(WAITING, hold=Hold(GREEN, 0, "v43", "5xx", 11.0)), 5),
    (
        "a release recorded during a shift",
        routing.set_release(replace(BASE, weight=20), "v43", source="admin", reason="", now=11.0),
        5,
    ),
]


@pytest.mark.parametrize(("state", "revision"), [r[1:] for r in NOTHING_WAITS], ids=[r[0] for r in NOTHING_WAITS])
def test_nothing_is_promoted_when_nothing_waits_for_it(state: State, revision: int) -> None:
    assert promote(state, revision=revision) is state


def test_an_abort_ends_the_wait_and_with_nothing_waiting_there_is_nothing_to_abort() -> None:
    aborted = routing.abort(WAITING, source="admin", reason="not this one", now=12.0)
    assert (aborted.release_pending, aborted.release, aborted.weight, aborted.active) == (False, "v43", 0, BLUE)
    assert routing.event(WAITING, aborted) == "aborted" and not rollout.waiting(aborted)
    with pytest.raises(NothingRunning):
        routing.abort(aborted, source="admin", reason="", now=13.0)


def test_a_standby_that_went_down_is_not_auto_promoted() -> None:
    with pytest.raises(TargetDown):
        rollout.auto_promote(
            WAITING, revision=5, steps=None, interval=30.0, reason="", now=20.0, healthy={BLUE: True, GREEN: False}
        )
