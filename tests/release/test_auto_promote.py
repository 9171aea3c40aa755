"""Auto-promotion against real upstreams: a real bgproxy (memory store) with AUTO_PROMOTE_AFTER set, a release
recorded through POST /release, and a standby colour whose readiness endpoint (/ctl/ready, and /ctl/health for
the health probes) answers what the test sets.

A healthy standby that passes its checks is promoted once AUTO_PROMOTE_AFTER has passed, not before; one that fails
them is not, and /state says why; a failure or a health flap restarts the wait; a person taking over ends it.
Figures are printed on lines starting with "measured:".
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bgproxy.app import Bgproxy
from tests.support.configmap import until
from tests.support.replicas import measured
from tests.support.servers import TIMEOUT, StartProxy, Upstream

pytestmark = pytest.mark.slow
READY = json.dumps([{"path": "/ctl/ready", "status": 200}])
HEALTH = {"health_path": "/ctl/health", "health_interval": "0.2", "health_unhealthy_threshold": "1"}
HEALTH |= {"health_healthy_threshold": "1", "health_timeout": "0.5"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        yield session


async def call(http: aiohttp.ClientSession, app: Bgproxy, path: str, **body: Any) -> Any:
    method = "GET" if path in ("/state", "/history") else "POST"
    async with http.request(method, f"http://127.0.0.1:{app.admin_port}{path}", json=body or None) as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
        return answer


async def watch_until_promoted(http: aiohttp.ClientSession, app: Bgproxy, within: float) -> tuple[dict, float, dict]:
    """Reads /state back to back until green is active: (that state, the wall-clock time blue was last seen
    active, the last `auto_promote` seen while waiting)."""
    last_blue, waiting = 0.0, {}
    end = time.monotonic() + within
    while time.monotonic() < end:
        seen = time.time()
        state = await call(http, app, "/state")
        if state["active"] == "green":
            return state, last_blue, waiting
        last_blue, waiting = seen, state["auto_promote"] or waiting
        await asyncio.sleep(0.01)
    pytest.fail(f"not promoted within {within}s")


async def test_a_new_release_on_a_healthy_standby_is_promoted_after_auto_promote_after_not_before(
    start_proxy: StartProxy, http: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str]
) -> None:
    after = 2.0
    app = await start_proxy(auto_promote_after=str(after), promote_checks=READY)
    recorded = await call(http, app, "/release", release="v43", reason="build 43")
    assert (recorded["active"], recorded["release"], recorded["release_pending"]) == ("blue", "v43", True)
    promoted, last_blue, waiting = await watch_until_promoted(http, app, after + 5)
    since = recorded["updated_at"]
    assert waiting["release"] == "v43" and waiting["blocked_by"] is None
    assert since <= waiting["waiting_since"] and after <= waiting["due_at"] - since < after + 0.5
    assert promoted["updated_at"] - since >= after  # not before...
    assert last_blue - since >= after - 0.2  # ...as seen from outside too: blue served until then
    assert promoted["updated_at"] - since < after + 1.5  # and not much after
    assert (promoted["source"], promoted["forced"], promoted["release_pending"]) == ("auto", False, False)
    assert promoted["reason"].startswith("auto-promotion of release v43: green healthy and passing")
    assert promoted["auto_promote"] is None and promoted["promoted_at"] == promoted["updated_at"]
    history = (await call(http, app, "/history"))["history"]
    assert [(e["event"], e["source"]) for e in history] == [("auto-promote", "auto"), ("release", "admin")]
    measured(
        capsys,
        f"auto-promotion with AUTO_PROMOTE_AFTER={after:g}: promoted {promoted['updated_at'] - since:.3f}s after the "
        f"release was recorded; blue last seen active {last_blue - since:.3f}s after it",
    )


async def test_a_standby_failing_its_checks_is_not_promoted_and_state_says_why(
    start_proxy: StartProxy, upstreams: dict[str, Upstream], http: aiohttp.ClientSession, capsys: Any
) -> None:
    after = 1.0
    green = upstreams["green"]
    green.answers["ready"] = (503, "migrating the schema", 0.0)
    app = await start_proxy(auto_promote_after=str(after), promote_checks=READY)
    await call(http, app, "/release", release="v43")
    # Failing checks for twice the wait, seen by green itself.
    await until(
        lambda: len(green.hits.get("ready", ())) >= 2 and green.hits["ready"][-1] - green.hits["ready"][0] > 2 * after,
        "checks fail for 2 s",
    )
    state = await call(http, app, "/state")
    assert (state["active"], state["weight"], state["release_pending"]) == ("blue", 0, True)
    waiting = state["auto_promote"]
    assert waiting["due_at"] is None
    assert waiting["blocked_by"] == (
        "pre-promotion check 1 (GET /ctl/ready) failed on green: status 503, expected 200; the body begins "
        "'migrating the schema'"
    )
    fixed = time.time()
    green.answers["ready"] = (200, "ok", 0.0)
    promoted, _, _ = await watch_until_promoted(http, app, after + 5)
    assert promoted["updated_at"] - fixed >= after
    measured(capsys, f"blocked standby fixed: promoted {promoted['updated_at'] - fixed:.3f}s after (AFTER={after:g})")


@pytest.mark.parametrize("flap", ["check", "health"])
async def test_a_flap_restarts_the_wait(
    start_proxy: StartProxy, upstreams: dict[str, Upstream], http: aiohttp.ClientSession, flap: str, capsys: Any
) -> None:
    after = 2.5
    green = upstreams["green"]
    settings = {"promote_checks": READY} if flap == "check" else HEALTH
    app = await start_proxy(auto_promote_after=str(after), **settings)
    name = "ready" if flap == "check" else "health"
    recorded = await call(http, app, "/release", release="v43")
    first_due = None

    async def due() -> bool:
        nonlocal first_due
        first_due = (await call(http, app, "/state"))["auto_promote"]["due_at"]
        return first_due is not None

    await until(due, "the first look passed")
    assert first_due is not None
    green.answers[name] = (503, "down for a moment", 0.0)

    async def blocked() -> str | None:
        return (await call(http, app, "/state"))["auto_promote"]["blocked_by"]

    await until(blocked, "the wait is blocked")
    assert "green" in (await blocked() or "")
    fixed = time.time()
    green.answers[name] = (200, "ok", 0.0)
    promoted, _, _ = await watch_until_promoted(http, app, after + 5)
    assert promoted["updated_at"] - fixed >= after  # a whole new wait from the recovery
    assert promoted["updated_at"] > first_due + 0.3  # not when the first wait would have ended
    measured(
        capsys,
        f"{flap} flap: the first wait was due {first_due - recorded['updated_at']:.3f}s after the release; "
        f"promoted {promoted['updated_at'] - fixed:.3f}s after the standby recovered (AFTER={after:g})",
    )


async def test_with_auto_promote_steps_the_promotion_is_stepped(
    start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    app = await start_proxy(auto_promote_after="1", auto_promote_steps="50,100", auto_promote_interval="1")
    await call(http, app, "/release", release="v43")
    promoted, _, _ = await watch_until_promoted(http, app, 10)
    assert (promoted["source"], promoted["weight"], promoted["rollout"]) == ("rollout", 0, None)
    history = (await call(http, app, "/history"))["history"]
    events = [(e["event"], e["weight"], e["source"]) for e in reversed(history)]
    assert events == [
        ("release", 0, "admin"),
        ("auto-promote", 50, "auto"),
        ("step", 100, "rollout"),
        ("promoted", 0, "rollout"),
    ]


async def test_a_person_taking_over_ends_the_wait(start_proxy: StartProxy, http: aiohttp.ClientSession) -> None:
    app = await start_proxy(auto_promote_after="30")
    await call(http, app, "/release", release="v43")
    assert (await call(http, app, "/state"))["auto_promote"]["release"] == "v43"
    shifted = await call(http, app, "/shift", weight=10)
    assert shifted["release_pending"] is False and shifted["auto_promote"] is None
    aborted = await call(http, app, "/abort")
    assert aborted["weight"] == 0 and aborted["release_pending"] is False and aborted["auto_promote"] is None
    # A new release waits again; an abort ends that wait too (no traffic moves).
    await call(http, app, "/release", release="v44")
    aborted = await call(http, app, "/abort", reason="not v44")
    assert (aborted["release"], aborted["release_pending"], aborted["auto_promote"]) == ("v44", False, None)
    assert (aborted["active"], aborted["weight"]) == ("blue", 0)
    # Another one; a manual promote takes it, and nothing is promoted twice.
    await call(http, app, "/release", release="v45")
    promoted = await call(http, app, "/promote", reason="by hand")
    assert (promoted["active"], promoted["source"], promoted["auto_promote"]) == ("green", "admin", None)
    events = [e["event"] for e in (await call(http, app, "/history"))["history"]]
    assert events == ["switch", "release", "aborted", "release", "aborted", "shift", "release"]


async def test_without_auto_promote_after_a_release_only_waits(
    start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    app = await start_proxy()
    state = await call(http, app, "/release", release="v43")
    assert (state["release_pending"], state["auto_promote"], app.auto_promote) == (True, None, None)
