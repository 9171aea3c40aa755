"""Flips through the admin API: instant for new requests, never for requests already in flight."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import pytest

from bgproxy.app import Bgproxy
from tests.support.servers import TIMEOUT, StartProxy, Upstream


async def flip(session: aiohttp.ClientSession, app: Bgproxy, to: str) -> dict:
    async with session.post(f"http://127.0.0.1:{app.admin_port}/switch", json={"to": to}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def get(session: aiohttp.ClientSession, app: Bgproxy, path: str = "/", **kw) -> tuple[int, str, str]:
    async with session.get(f"http://127.0.0.1:{app.port}{path}", **kw) as r:
        return r.status, r.headers.get("X-Bg-Color", ""), await r.text()


async def test_inflight_request_finishes_on_old_colour(proxy: Bgproxy, upstreams: dict[str, Upstream]) -> None:
    arrived, release = upstreams["blue"].gate("slow")
    async with aiohttp.ClientSession() as s:
        slow = asyncio.create_task(get(s, proxy, "/gate/slow"))
        await asyncio.wait_for(arrived.wait(), TIMEOUT)
        await flip(s, proxy, "green")
        assert await get(s, proxy) == (200, "green", "green\n")
        release.set()
        assert await asyncio.wait_for(slow, TIMEOUT) == (200, "blue", "blue slow\n")


async def test_no_request_reaches_old_colour_once_the_admin_call_returned(proxy: Bgproxy) -> None:
    async with aiohttp.ClientSession() as s:
        for i in range(20):
            to = "green" if i % 2 == 0 else "blue"
            await flip(s, proxy, to)
            for _ in range(3):
                assert await get(s, proxy) == (200, to, f"{to}\n")


async def test_websocket_stays_on_its_colour_across_a_flip(proxy: Bgproxy) -> None:
    async with aiohttp.ClientSession() as s, s.ws_connect(f"http://127.0.0.1:{proxy.port}/ws") as ws:
        await ws.send_str("before")
        assert await asyncio.wait_for(ws.receive_str(), TIMEOUT) == "blue:before"
        await flip(s, proxy, "green")
        assert (await get(s, proxy))[1] == "green"
        await ws.send_str("after")
        assert await asyncio.wait_for(ws.receive_str(), TIMEOUT) == "blue:after"


@pytest.mark.slow
async def test_flip_under_load_loses_nothing(proxy: Bgproxy) -> None:
    """50 keep-alive clients hammer the proxy while the colour is flipped 40 times."""
    clients, flips = 50, 40
    stop = asyncio.Event()
    seen: Counter[str] = Counter()
    problems: list[str] = []

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            try:
                status, color, body = await get(session, proxy)
            except aiohttp.ClientError as exc:
                problems.append(f"connection error: {exc!r}")
                continue
            seen[color] += 1
            if status != 200 or body != f"{color}\n":
                problems.append(f"status {status}, header {color!r}, body {body!r}")

    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as load, aiohttp.ClientSession() as admin:
        tasks = [asyncio.create_task(client(load)) for _ in range(clients)]
        started = time.monotonic()
        for i in range(flips):
            await flip(admin, proxy, "green" if i % 2 == 0 else "blue")
            await asyncio.sleep(0.05)  # pacing the flips across the run, not synchronisation
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
        elapsed = time.monotonic() - started
    assert problems == []
    assert seen["blue"] > 0 and seen["green"] > 0
    assert sum(seen.values()) > clients * 4, f"only {sum(seen.values())} requests in {elapsed:.1f}s"
    assert proxy.holder.current.revision == flips


async def test_preview_header_routes_to_standby_or_named_colour(proxy: Bgproxy) -> None:
    async with aiohttp.ClientSession() as s:
        assert await get(s, proxy, headers={"X-Preview": "1"}) == (200, "green", "green\n")
        assert await get(s, proxy, headers={"X-Preview": "anything"}) == (200, "green", "green\n")
        assert await get(s, proxy, headers={"X-Preview": "green"}) == (200, "green", "green\n")
        assert await get(s, proxy, headers={"X-Preview": "blue"}) == (200, "blue", "blue\n")
        assert await get(s, proxy, headers={"X-Preview": ""}) == (200, "blue", "blue\n")
        await flip(s, proxy, "green")
        assert await get(s, proxy, headers={"X-Preview": "1"}) == (200, "blue", "blue\n")
        assert await get(s, proxy, headers={"X-Preview": "GREEN"}) == (200, "green", "green\n")


async def test_preview_cookie_routes_like_the_header(proxy: Bgproxy) -> None:
    async with aiohttp.ClientSession() as s:
        assert await get(s, proxy, headers={"Cookie": "session=abc; bg-preview=1"}) == (200, "green", "green\n")
        assert await get(s, proxy, headers={"Cookie": "bg-preview=blue"}) == (200, "blue", "blue\n")
        assert await get(s, proxy, headers={"Cookie": "xbg-preview=1; other=2"}) == (200, "blue", "blue\n")
        # The header wins over the cookie.
        assert (await get(s, proxy, headers={"Cookie": "bg-preview=green", "X-Preview": "blue"}))[1] == "blue"


async def test_preview_names_are_configurable(start_proxy: StartProxy) -> None:
    app = await start_proxy(preview_header="X-Canary", preview_cookie="canary", color_header="X-Served-By")
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{app.port}/", headers={"X-Canary": "yes"}) as r:
            assert (r.headers["X-Served-By"], await r.text()) == ("green", "green\n")
            assert "X-Bg-Color" not in r.headers
        async with s.get(f"http://127.0.0.1:{app.port}/", headers={"X-Preview": "yes"}) as r:
            assert await r.text() == "blue\n"
        async with s.get(f"http://127.0.0.1:{app.port}/", headers={"Cookie": "canary=green"}) as r:
            assert await r.text() == "green\n"


async def test_colour_header_can_be_turned_off(start_proxy: StartProxy) -> None:
    app = await start_proxy(color_header="")
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{app.port}/") as r:
        assert await r.text() == "blue\n"
        assert "X-Bg-Color" not in r.headers


async def test_preview_with_a_secret_needs_the_secret(start_proxy: StartProxy) -> None:
    app = await start_proxy(preview_secret="s3cret")
    async with aiohttp.ClientSession() as s:
        assert (await get(s, app, headers={"X-Preview": "1"}))[1] == "blue"  # anyone on the internet: live
        assert (await get(s, app, headers={"X-Preview": "green"}))[1] == "blue"
        assert (await get(s, app, headers={"X-Preview": "s3cret"}))[1] == "green"  # the standby colour
        assert (await get(s, app, headers={"X-Preview": "green:s3cret"}))[1] == "green"
        assert (await get(s, app, headers={"X-Preview": "blue:s3cret"}))[1] == "blue"
        assert (await get(s, app, headers={"X-Preview": "green:wrong"}))[1] == "blue"
        assert (await get(s, app, headers={"Cookie": "bg-preview=s3cret"}))[1] == "green"


@pytest.mark.parametrize(
    "allow,xff,expected",
    [
        ("127.0.0.0/8", None, "green"),  # the peer itself is allowed
        ("10.0.0.0/8", None, "blue"),  # the peer (127.0.0.1) is not
        ("10.0.0.0/8", "203.0.113.9, 10.1.2.3", "green"),  # the Ingress saw 10.1.2.3
        ("10.0.0.0/8", "10.1.2.3, 203.0.113.9", "blue"),  # a forged first hop does not count
    ],
)
async def test_preview_can_be_limited_to_client_networks(
    start_proxy: StartProxy, allow: str, xff: str | None, expected: str
) -> None:
    app = await start_proxy(preview_allow=allow)
    headers = {"X-Preview": "1"}
    if xff:
        headers["X-Forwarded-For"] = xff
    async with aiohttp.ClientSession() as s:
        assert (await get(s, app, headers=headers))[1] == expected
