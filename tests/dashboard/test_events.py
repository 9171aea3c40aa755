"""`GET /events`, the stream the dashboard lives on, read as EventSource reads it: what a stream starts with, a
change pushed at once, the figures once a second, the bound on streams, and a stop that never waits on one."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from bgproxy.admin.events import MAX_STREAMS, RETRY_MS, SAMPLED, TICK, WRITE_TIMEOUT
from bgproxy.app import Bgproxy
from bgproxy.settings import load_settings
from tests.support.admin import Admin
from tests.support.servers import TIMEOUT, Upstream
from tests.support.sse import EventStream


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=TIMEOUT)) as s:
        yield s


@contextlib.asynccontextmanager
async def events(session: aiohttp.ClientSession, app: Bgproxy) -> AsyncIterator[EventStream]:
    async with session.get(f"http://127.0.0.1:{app.admin_port}/events") as r:
        assert r.status == 200
        assert r.content_type == "text/event-stream"
        assert r.headers["Cache-Control"] == "no-cache"
        yield EventStream(r)


async def test_a_stream_starts_with_the_retry_delay_the_series_the_state_and_the_history(
    proxy: Bgproxy, session: aiohttp.ClientSession
) -> None:
    admin = Admin(session, proxy)
    await admin.post("/shift", {"weight": 30, "reason": "canary"})
    async with events(session, proxy) as stream:
        first = await stream.next()
        assert first.retry == RETRY_MS and first.data is None  # EventSource reconnects this soon after a restart
        series = await stream.next()
        assert series.name == "series" and isinstance(series.data, list)
        state = await stream.next()
        assert state.name == "state"
        served = await admin.state()
        for key in ("active", "standby", "revision", "weight", "source", "reason", "rollout", "hold"):
            assert state.data[key] == served[key], key
        assert set(state.data["backends"]) == {"blue", "green"}
        history = await stream.next()
        assert history.name == "history"
        assert history.data["history"] == list(reversed(await admin.history()))  # the answer of GET /history
        assert [e["event"] for e in history.data["history"]] == ["shift"]
        assert history.data["history"][0]["reason"] == "canary"


async def test_a_change_is_pushed_at_once_with_the_new_state_and_history(
    proxy: Bgproxy, session: aiohttp.ClientSession
) -> None:
    admin = Admin(session, proxy)
    async with events(session, proxy) as stream:
        await stream.until("opening state", lambda e: e.name == "history")
        took = []
        for to in ("green", "blue", "green"):
            sent = time.monotonic()
            await admin.post("/switch", {"to": to, "reason": f"to {to}"})
            state = await stream.until(f"state with {to} active", lambda e: e.name == "state", within=2.0)
            took.append(state.at - sent)
            assert (state.data["active"], state.data["reason"]) == (to, f"to {to}")
            history = await stream.next(within=2.0)
            assert history.name == "history"
            assert history.data["history"][0]["to"] == to
        print(f"\n[events] call sent -> state event read: {', '.join(f'{t * 1000:.1f} ms' for t in took)}")
        # at once, not at the next tick of the figures
        assert max(took) < TICK, took


async def test_the_figures_come_once_a_second_with_each_colour_s_live_figures(
    proxy: Bgproxy, session: aiohttp.ClientSession
) -> None:
    async with session.get(f"http://127.0.0.1:{proxy.port}/") as r:
        assert r.status == 200
    async with events(session, proxy) as stream:
        seen = []
        while len(seen) < 3:
            event = await stream.until("figures", lambda e: e.name == "figures", within=3 * TICK + TIMEOUT)
            seen.append(event)
        gaps = [b.at - a.at for a, b in itertools.pairwise(seen)]
        assert all(0.5 * TICK < g < 2.5 * TICK for g in gaps), gaps
        figures = seen[-1].data
        assert abs(figures["at"] - time.time()) < 5
        blue = figures["backends"]["blue"]
        assert blue["requests"] == 1 and blue["p50"] is not None and blue["p99"] is not None
        assert set(SAMPLED) <= set(blue) and blue["healthy"] is True
        assert figures["store"] == {"backend": "memory"}
    # a stream opened now draws the last seconds at once
    async with events(session, proxy) as stream:
        series = await stream.until("series", lambda e: e.name == "series")
        assert len(series.data) >= 3
        last = series.data[-1]
        assert set(last) == {"at", "blue", "green"} and set(last["blue"]) == set(SAMPLED)
        assert last["blue"]["p50"] is not None


async def test_streams_are_bounded_and_one_over_the_bound_is_refused_with_a_message(
    proxy: Bgproxy, session: aiohttp.ClientSession
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(MAX_STREAMS):
            await stack.enter_async_context(events(session, proxy))
        async with session.get(f"http://127.0.0.1:{proxy.admin_port}/events") as r:
            assert r.status == 503
            assert "too many event streams" in (await r.json())["error"]
    # the streams closed by their clients are let go (noticed at the next write, within a tick): room again
    end = time.monotonic() + TIMEOUT
    while True:
        async with session.get(f"http://127.0.0.1:{proxy.admin_port}/events") as r:
            if r.status == 200:
                break
        assert time.monotonic() < end, "the closed streams were never let go"
        await asyncio.sleep(0.1)  # bounded poll


async def test_a_stop_ends_every_open_stream_at_once_and_does_not_wait_on_them(
    upstreams: dict[str, Upstream], session: aiohttp.ClientSession
) -> None:
    app = Bgproxy(
        load_settings(
            blue_url=upstreams["blue"].url,
            green_url=upstreams["green"].url,
            listen="127.0.0.1:0",
            admin_listen="127.0.0.1:0",
            state_backend="memory",
        )
    )
    await app.start()
    stopped = False
    try:
        async with contextlib.AsyncExitStack() as stack:
            streams = [await stack.enter_async_context(events(session, app)) for _ in range(3)]
            for stream in streams:
                await stream.until("opening state", lambda e: e.name == "state")
            started = time.monotonic()
            await asyncio.wait_for(app.stop(), TIMEOUT)
            stopped = True
            took = time.monotonic() - started
            for stream in streams:
                assert await stream.ended(within=2.0)  # a clean end: EventSource reconnects after `retry`
    finally:
        if not stopped:
            await app.stop()
    print(f"\n[events] stop with 3 open streams took {took * 1000:.0f} ms")
    assert took < 2.0, took


@pytest.mark.slow
async def test_a_client_that_reads_nothing_delays_no_other_and_is_let_go(
    proxy: Bgproxy, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bgproxy.admin")
    admin = Admin(session, proxy)
    # a page that stopped reading: a tiny receive buffer, and nothing read after the request
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy.admin_port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{proxy.admin_port}\r\n\r\n".encode())
    await writer.drain()
    try:
        async with events(session, proxy) as stream:
            await stream.until("opening history", lambda e: e.name == "history")
            # changes until the silent client's backlog is full (each carries the whole history: megabytes soon)
            flips, to = 0, "green"
            while "dashboard_stream_stuck" not in caplog.text:
                assert flips < 3000, "the silent client never counted as stuck"
                sent = time.monotonic()
                await admin.post("/switch", {"to": to})
                # (the first figures tick after loading also sends the state: it may still be queued, a step behind)
                state = await stream.until(
                    "the change", lambda e, to=to: e.name == "state" and e.data["active"] == to, within=2.0
                )
                # the reading page hears every change at once, however stuck the other one is
                assert state.at - sent < TICK, (flips, state.at - sent)
                flips, to = flips + 1, ("blue" if to == "green" else "green")
            stuck_at = time.monotonic()
            # its stream ends (what it was sent is all it gets) and so does its connection, at the latest when a write
            # has waited WRITE_TIMEOUT
            async with asyncio.timeout(WRITE_TIMEOUT + TIMEOUT):
                while await reader.read(1 << 20):
                    pass
            print(f"\n[events] a silent client was stuck after {flips} changes and let go")
            assert time.monotonic() - stuck_at < WRITE_TIMEOUT + TIMEOUT
    finally:
        writer.close()
