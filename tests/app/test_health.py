"""Health of each colour: active probes with thresholds, passive connect failures, and the flips they gate.

Each colour here is a small aiohttp app whose /healthz answer the test controls; a probe can be held at the
upstream until the test has looked at the verdict, so "still up after N-1 failures" is checked without racing.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bgproxy.app import Bgproxy
from tests.support.health import HealthApp
from tests.support.servers import TIMEOUT, RawUpstream, StartProxy, free_port

POLL = 0.02


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        yield s


class Admin:
    def __init__(self, session: aiohttp.ClientSession, app: Bgproxy) -> None:
        self.s = session
        self.app = app
        self.base = f"http://127.0.0.1:{app.admin_port}"

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        async with self.s.request(method, self.base + path, json=body) as r:
            return r.status, await r.json()

    async def state(self) -> dict[str, Any]:
        status, body = await self.call("GET", "/state")
        assert status == 200
        return dict(body)

    async def healthy(self, color: str) -> bool:
        return bool((await self.state())["backends"][color]["healthy"])

    async def metric(self, name: str, **labels: str) -> float | None:
        async with self.s.get(self.base + "/metrics") as r:
            text = await r.text()
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        m = re.search(rf"^{re.escape(name)}{{{re.escape(want)}}} (\S+)$", text, re.M) if labels else None
        if not labels:
            m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(m.group(1)) if m else None

    async def wait_healthy(self, color: str, expected: bool, *, within: float = 5.0) -> None:
        end = time.monotonic() + within
        while await self.healthy(color) is not expected:
            if time.monotonic() > end:
                pytest.fail(f"{color} not {'up' if expected else 'down'} within {within}s")
            await asyncio.sleep(POLL)  # bounded poll


async def served(session: aiohttp.ClientSession, app: Bgproxy, **headers: str) -> tuple[int, str]:
    async with session.get(f"http://127.0.0.1:{app.port}/", headers=headers) as r:
        return r.status, r.headers.get("X-Bg-Color", "")


async def wait(event: asyncio.Event, what: str) -> None:
    try:
        await asyncio.wait_for(event.wait(), TIMEOUT)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


PROBES = {
    "health_path": "/healthz",
    "health_interval": "0.05",
    "health_timeout": "5",  # long: a held probe must not time out while the test looks
    "health_unhealthy_threshold": "3",
    "health_healthy_threshold": "2",
}


async def test_active_probes_take_a_colour_down_after_the_threshold_and_gate_flips(
    start_proxy: StartProxy, colors: dict[str, HealthApp], session: aiohttp.ClientSession
) -> None:
    blue, green = colors["blue"], colors["green"]
    app = await start_proxy(blue_url=blue.url, green_url=green.url, **PROBES)
    admin = Admin(session, app)
    await wait_for_probes(green, 2)
    assert await admin.healthy("green") is True
    assert await admin.metric("bgproxy_backend_up", color="green") == 1

    # Two failures in a row: still up (threshold 3). The third probe is held until we have looked.
    green.status = 503
    green.hold_probe(after=2)
    await wait(green.held, "the third failing probe")
    assert green.answered[-2:] == [503, 503]
    assert await admin.healthy("green") is True
    green.release.set()
    await admin.wait_healthy("green", False)
    assert green.answered[-3:] == [503, 503, 503]
    assert await admin.metric("bgproxy_backend_up", color="green") == 0
    assert await admin.metric("bgproxy_backend_up", color="blue") == 1

    # Every flip to green is refused with 409 and a message; nothing changes.
    before = await admin.state()
    for path, body in (("/switch", {"to": "green"}), ("/promote", {}), ("/switch", {"to": "green", "force": False})):
        status, answer = await admin.call("POST", path, body)
        assert status == 409, answer
        assert "green is failing its health checks" in answer["error"] and '"force": true' in answer["error"]
    assert await admin.state() == before
    assert await admin.call("GET", "/history") == (200, {"history": []})
    assert await served(session, app) == (200, "blue")

    # force: applied, and recorded as forced in the state, the history and the metrics.
    status, answer = await admin.call("POST", "/switch", {"to": "green", "force": True, "reason": "hotfix"})
    assert status == 200, answer
    assert (answer["active"], answer["forced"], answer["revision"]) == ("green", True, 1)
    state = await admin.state()
    assert (state["active"], state["forced"], state["backends"]["green"]["healthy"]) == ("green", True, False)
    _, history = await admin.call("GET", "/history")
    assert [(h["to"], h["forced"], h["reason"]) for h in history["history"]] == [("green", True, "hotfix")]
    assert await admin.metric("bgproxy_unhealthy_switches_total", source="admin") == 1
    assert await served(session, app) == (200, "green")

    # Recovery: one good probe is not enough (threshold 2); the second brings green back.
    green.status = 200
    green.hold_probe(after=1)
    await wait(green.held, "the second good probe")
    assert green.answered[-1] == 200
    assert await admin.healthy("green") is False
    green.release.set()
    await admin.wait_healthy("green", True)
    assert await admin.metric("bgproxy_backend_up", color="green") == 1

    # A flip to a healthy colour is not forced, even when it says force.
    status, answer = await admin.call("POST", "/rollback", {"force": True})
    assert status == 200 and (answer["active"], answer["forced"]) == ("blue", False), answer
    assert await admin.metric("bgproxy_unhealthy_switches_total", source="admin") == 1


async def test_rollback_to_a_colour_that_went_down_is_refused(
    start_proxy: StartProxy, colors: dict[str, HealthApp], session: aiohttp.ClientSession
) -> None:
    blue, green = colors["blue"], colors["green"]
    app = await start_proxy(blue_url=blue.url, green_url=green.url, **PROBES)
    admin = Admin(session, app)
    status, answer = await admin.call("POST", "/switch", {"to": "green", "reason": "release"})
    assert status == 200 and answer["forced"] is False
    blue.status = 500  # the old colour breaks after the release
    await admin.wait_healthy("blue", False)
    before = await admin.state()
    status, answer = await admin.call("POST", "/rollback", {"reason": "oops"})
    assert status == 409 and "blue is failing its health checks" in answer["error"], answer
    assert await admin.state() == before
    status, answer = await admin.call("POST", "/rollback", {"reason": "oops", "force": True})
    assert status == 200 and (answer["active"], answer["forced"]) == ("blue", True), answer
    _, history = await admin.call("GET", "/history")
    assert [(h["from"], h["to"], h["forced"]) for h in history["history"]] == [
        ("green", "blue", True),
        ("blue", "green", False),
    ]


async def wait_for_probes(app: HealthApp, n: int) -> None:
    end = time.monotonic() + 5
    while len(app.answered) < n:
        if time.monotonic() > end:
            pytest.fail(f"fewer than {n} probes reached {app.color} within 5s")
        await asyncio.sleep(POLL)


async def test_passive_a_failed_connect_marks_the_colour_down(
    start_proxy: StartProxy, session: aiohttp.ClientSession, colors: dict[str, HealthApp]
) -> None:
    """Probes off: the data plane's own connect failure is the signal. Green points at a closed port."""
    green_port = free_port()
    app = await start_proxy(blue_url=colors["blue"].url, green_url=f"http://127.0.0.1:{green_port}")
    admin = Admin(session, app)
    assert await admin.healthy("green") is True  # nothing known against it yet
    async with session.get(f"http://127.0.0.1:{app.port}/", headers={"X-Preview": "1"}) as r:
        assert r.status == 502
        assert "green" in await r.text()
    assert await admin.healthy("green") is False
    assert await admin.metric("bgproxy_backend_up", color="green") == 0
    assert await admin.metric("bgproxy_upstream_errors_total", color="green", kind="connect") == 1
    before = await admin.state()
    status, answer = await admin.call("POST", "/switch", {"to": "green"})
    assert status == 409 and "green is failing its health checks" in answer["error"], answer
    assert await admin.state() == before

    # Green comes up on that port; with probes off, one good connect brings it back.
    revived = await HealthApp("green").start(port=green_port)
    try:
        assert await served(session, app, **{"X-Preview": "1"}) == (200, "green")
        assert await admin.healthy("green") is True
        status, answer = await admin.call("POST", "/switch", {"to": "green"})
        assert status == 200 and (answer["active"], answer["forced"]) == ("green", False), answer
    finally:
        await revived.stop()


async def test_a_probe_that_times_out_is_a_failure(
    start_proxy: StartProxy, session: aiohttp.ClientSession, colors: dict[str, HealthApp]
) -> None:
    """Green accepts the connection and reads the probe, then never answers."""
    hung = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await silent.read_request(reader)
        await hung.wait()  # set at the end of the test

    silent = RawUpstream(never_answer)
    async with silent:
        app = await start_proxy(
            blue_url=colors["blue"].url,
            green_url=silent.url,
            health_path="/healthz",
            health_interval="0.05",
            health_timeout="0.2",
            health_unhealthy_threshold="2",
        )
        admin = Admin(session, app)
        await admin.wait_healthy("green", False)
        hung.set()
        assert await admin.healthy("blue") is True
    assert silent.connections >= 2  # the probes did connect and were read: each failed by timing out
    assert silent.received.count(b"GET /healthz HTTP/1.1") >= 2
    status, answer = await admin.call("POST", "/switch", {"to": "green"})
    assert status == 409, answer


async def test_probes_off_by_default(
    start_proxy: StartProxy, session: aiohttp.ClientSession, colors: dict[str, HealthApp]
) -> None:
    """No HEALTH_PATH: nothing is probed, both colours count as up, flips are not gated."""
    app = await start_proxy(blue_url=colors["blue"].url, green_url=colors["green"].url)
    admin = Admin(session, app)
    assert app.settings.health_path is None
    status, answer = await admin.call("POST", "/switch", {"to": "green"})
    assert status == 200 and answer["forced"] is False
    assert colors["blue"].answered == colors["green"].answered == []
