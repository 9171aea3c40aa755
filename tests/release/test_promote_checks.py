"""Pre-promotion checks against real upstreams: each colour's /ctl/ready answers what the test sets (status, body,
delay), and a real bgproxy runs its checks there before a promote, a switch, a shift from 0 and a stepped promotion.

A failing check refuses the call with 409 naming the check and what came back, and the state stays as it was; a
passing list lets the call through; `force` skips the checks and the state records it as forced.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bgproxy.app import Bgproxy
from tests.support.servers import TIMEOUT, StartProxy, Upstream

READY = json.dumps([{"path": "/ctl/ready", "status": 200}])
CALLS = [
    ("/promote", {}),
    ("/promote", {"steps": [10, 50, 100], "interval": 60}),
    ("/shift", {"weight": 20}),
    ("/switch", {"to": "green"}),
]
IDS = ["promote", "steps", "shift", "switch"]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        yield session


async def call(http: aiohttp.ClientSession, app: Bgproxy, path: str, **body: Any) -> tuple[int, Any]:
    method = "GET" if path in ("/state", "/history") else "POST"
    async with http.request(method, f"http://127.0.0.1:{app.admin_port}{path}", json=body or None) as resp:
        return resp.status, await resp.json()


def routing(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k not in ("backends", "store")}


@pytest.mark.parametrize(("path", "body"), CALLS, ids=IDS)
async def test_a_failing_check_refuses_the_call_with_409_naming_the_check_and_the_state_stays(
    start_proxy: StartProxy, upstreams: dict[str, Upstream], http: aiohttp.ClientSession, path: str, body: dict
) -> None:
    green, blue = upstreams["green"], upstreams["blue"]
    green.answers["ready"] = (503, "database migration running", 0.0)
    app = await start_proxy(promote_checks=READY)
    _, before = await call(http, app, "/state")
    status, answer = await call(http, app, path, **body)
    assert status == 409, answer
    assert answer["error"] == (
        "pre-promotion check 1 (GET /ctl/ready) failed on green: status 503, expected 200; the body begins "
        "'database migration running'; fix it, or send \"force\": true to skip the checks"
    )
    _, after = await call(http, app, "/state")
    assert routing(after) == routing(before)
    _, history = await call(http, app, "/history")
    assert history["history"] == []
    assert len(green.hits["ready"]) == 1 and "ready" not in blue.hits  # the colour about to get traffic only


@pytest.mark.parametrize(("path", "body"), CALLS, ids=IDS)
async def test_a_passing_list_lets_the_call_through(
    start_proxy: StartProxy, upstreams: dict[str, Upstream], http: aiohttp.ClientSession, path: str, body: dict
) -> None:
    green = upstreams["green"]
    green.answers["ready"] = (200, '{"ready": true, "version": "v43"}', 0.0)
    checks = [
        {"path": "/ctl/ready", "status": 200, "body": r'"ready":\s*true'},
        {"path": "/ctl/version", "body": "v43", "method": "POST", "headers": {"X-Check": "bgproxy"}},
    ]
    green.answers["version"] = (200, "release v43", 0.0)
    app = await start_proxy(promote_checks=json.dumps(checks))
    status, answer = await call(http, app, path, **body)
    assert status == 200, answer
    assert answer["forced"] is False and answer["revision"] == 1
    assert (answer["active"], answer["weight"]) != ("blue", 0)
    version = [s for s in green.seen if s.path == "/ctl/version"]
    assert [(s.method, s.header("X-Check"), s.header("User-Agent")) for s in version] == [
        ("POST", ["bgproxy"], ["bgproxy-promote-check"])
    ]


async def test_force_skips_the_checks_and_is_recorded(
    start_proxy: StartProxy,
    upstreams: dict[str, Upstream],
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bgproxy")
    green = upstreams["green"]
    green.answers["ready"] = (503, "not ready", 0.0)
    app = await start_proxy(promote_checks=READY)
    status, answer = await call(http, app, "/promote", force=True, reason="hotfix, checks broken")
    assert status == 200, answer
    assert (answer["active"], answer["forced"], answer["reason"]) == ("green", True, "hotfix, checks broken")
    _, history = await call(http, app, "/history")
    assert history["history"][0]["forced"] is True
    assert "ready" not in green.hits  # skipped, not run and ignored
    skipped = [r for r in caplog.records if r.getMessage() == "promote_checks_skipped"]
    assert len(skipped) == 1 and skipped[0].levelno == logging.WARNING


async def test_a_check_that_does_not_answer_in_time_fails_at_its_timeout(
    start_proxy: StartProxy, upstreams: dict[str, Upstream], http: aiohttp.ClientSession
) -> None:
    upstreams["green"].answers["ready"] = (200, "ok", 5.0)
    app = await start_proxy(promote_checks=json.dumps([{"path": "/ctl/ready", "timeout": 0.3}]))
    started = time.monotonic()
    status, answer = await call(http, app, "/promote")
    took = time.monotonic() - started
    assert status == 409
    assert "pre-promotion check 1 (GET /ctl/ready) failed on green: no answer within 0.3s" in answer["error"]
    assert 0.3 <= took < 2.0, took
    _, state = await call(http, app, "/state")
    assert state["active"] == "blue" and state["revision"] == 0


async def test_a_body_that_does_not_match_fails_and_says_what_came_back(
    start_proxy: StartProxy, upstreams: dict[str, Upstream], http: aiohttp.ClientSession
) -> None:
    green = upstreams["green"]
    green.answers["ready"] = (200, "status: degraded (cache cold)", 0.0)
    app = await start_proxy(promote_checks=json.dumps([{"path": "/ctl/ready", "body": "^status: ok"}]))
    status, answer = await call(http, app, "/shift", weight=10)
    assert status == 409
    assert (
        "status 200 but the body does not match '^status: ok'; the body begins 'status: degraded (cache cold)'"
        in answer["error"]
    )
    green.answers["ready"] = (200, "status: ok", 0.0)
    status, answer = await call(http, app, "/shift", weight=10)
    assert status == 200 and answer["weight"] == 10


async def test_the_checks_run_only_when_traffic_starts_going_to_a_colour(
    start_proxy: StartProxy, upstreams: dict[str, Upstream], http: aiohttp.ClientSession
) -> None:
    green = upstreams["green"]
    app = await start_proxy(promote_checks=READY)
    assert (await call(http, app, "/shift", weight=10))[0] == 200
    assert len(green.hits["ready"]) == 1
    green.answers["ready"] = (503, "", 0.0)  # green already gets traffic: raising its share is not checked
    assert (await call(http, app, "/shift", weight=50))[0] == 200
    assert (await call(http, app, "/abort"))[0] == 200
    assert (await call(http, app, "/release", release="v43"))[0] == 200
    assert len(green.hits["ready"]) == 1  # only the shift from 0 was checked: the rest sent green nothing new...
    assert "ready" not in upstreams["blue"].hits  # ...and blue, which keeps its traffic, is never checked


async def test_a_colour_that_cannot_be_reached_fails_its_checks(
    start_proxy: StartProxy, upstreams: dict[str, Upstream], http: aiohttp.ClientSession
) -> None:
    from tests.support.servers import free_port

    app = await start_proxy(green_url=f"http://127.0.0.1:{free_port()}", promote_checks=READY)
    status, answer = await call(http, app, "/promote")
    assert status == 409
    assert (
        "pre-promotion check 1 (GET /ctl/ready) failed on green: cannot connect to http://127.0.0.1:" in answer["error"]
    )
