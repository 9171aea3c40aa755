"""The drained signal: a colour that gets no ordinary traffic is drained once nothing live has been in flight on it
for DRAINED_AFTER; a long download or a websocket that started on it before the flip keeps it from being drained
until it ends, previews do not; `bgproxy wait-drained` waits for it. Timings printed on "measured:" lines."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from bgproxy import cli
from bgproxy.app import Bgproxy
from tests.support.replicas import measured
from tests.support.servers import TIMEOUT, StartProxy

AFTER = 1.0  # DRAINED_AFTER in these tests


async def backends(session: aiohttp.ClientSession, app: Bgproxy) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{app.admin_port}/state") as r:
        assert r.status == 200
        body: dict[str, Any] = (await r.json())["backends"]
        return body


async def drained_gauge(session: aiohttp.ClientSession, app: Bgproxy) -> dict[str, float]:
    async with session.get(f"http://127.0.0.1:{app.admin_port}/metrics") as r:
        text = await r.text()
    return {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("bgproxy_drained{")
    }


async def wait_drained(*argv: str) -> int:
    """`bgproxy wait-drained ...` in a worker thread (it blocks on urllib) while this loop serves the proxy."""
    return await asyncio.to_thread(cli.main, ["wait-drained", *argv])


@pytest.mark.slow
async def test_a_download_and_a_websocket_keep_the_old_colour_from_draining_until_they_end(
    start_proxy: StartProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    app = await start_proxy(drained_after=str(AFTER))
    base, admin = f"http://127.0.0.1:{app.port}", f"http://127.0.0.1:{app.admin_port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        download = await s.get(f"{base}/drip?seconds=5")
        assert download.headers["X-Bg-Color"] == "blue"
        ws = await s.ws_connect(f"{base}/ws")
        await ws.send_str("hello")
        assert await asyncio.wait_for(ws.receive_str(), TIMEOUT) == "blue:hello"
        assert (await backends(s, app))["blue"]["inflight"] == 2
        async with s.post(f"{admin}/switch", json={"to": "green"}) as r:
            assert r.status == 200
        flipped = time.time()
        waiter = asyncio.create_task(wait_drained("blue", "--admin-url", admin, "--timeout", "30"))

        previews = 0
        stop_previews = asyncio.Event()

        async def preview_blue() -> None:
            """Preview requests to blue all along: they must not hold its drain back."""
            nonlocal previews
            while not stop_previews.is_set():
                async with s.get(f"{base}/", headers={"X-Preview": "blue"}) as r:
                    assert (r.status, r.headers["X-Bg-Color"]) == (200, "blue")
                    previews += 1
                await asyncio.sleep(0.01)  # pacing, a hundred a second

        previewing = asyncio.create_task(preview_blue())
        body = b""
        while True:  # read the download to its end, watching blue stay not drained
            chunk = await asyncio.wait_for(download.content.readany(), TIMEOUT)
            if not chunk:
                break
            body += chunk
            assert (await backends(s, app))["blue"]["drained_since"] is None
        assert body == b"blue" * 10240 and time.time() - flipped > 4
        download_ended = time.time()
        await asyncio.sleep(AFTER * 1.5)  # longer than DRAINED_AFTER: only the websocket holds blue now
        assert (await backends(s, app))["blue"]["drained_since"] is None
        assert not waiter.done()
        await ws.send_str("still")
        assert await asyncio.wait_for(ws.receive_str(), TIMEOUT) == "blue:still"
        closing = time.time()
        await ws.close()
        closed = time.time()

        end = time.monotonic() + AFTER + 3
        while (drained := (await backends(s, app))["blue"]["drained_since"]) is None:
            assert time.monotonic() < end, "blue not drained after the websocket closed"
            await asyncio.sleep(0.02)
        seen = time.time()
        assert await asyncio.wait_for(waiter, TIMEOUT) == 0
        waited = time.time()
        stop_previews.set()
        await asyncio.wait_for(previewing, TIMEOUT)
        assert await drained_gauge(s, app) == {"blue": 1.0, "green": 0.0}
        green = (await backends(s, app))["green"]
        assert green["drained_since"] is None and green["requests"] == 0

    measured(
        capsys,
        f"drained: DRAINED_AFTER {AFTER:g} s; blue stayed not drained through the 5 s download (ended "
        f"{download_ended - flipped:.2f} s after the flip) and the websocket (closed {closed - flipped:.2f} s after "
        f"the flip); drained_since = websocket closed + {drained - closing:.3f} s, seen in /state "
        f"{seen - closed:.2f} s after the close, wait-drained returned {waited - closed:.2f} s after it; "
        f"{previews} preview requests to blue meanwhile",
    )
    assert closing + AFTER - 0.01 <= drained <= closed + AFTER + 0.5
    assert previews > 10


async def test_a_standby_that_never_served_is_drained_after_the_quiet_time_and_a_split_never(
    start_proxy: StartProxy,
) -> None:
    app = await start_proxy(drained_after=str(AFTER))
    started = time.time()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        end = time.monotonic() + AFTER + 3
        while (drained := (await backends(s, app))["green"]["drained_since"]) is None:
            assert time.monotonic() < end
            await asyncio.sleep(0.02)
        assert started - 1 < drained <= time.time()
        assert (await backends(s, app))["blue"]["drained_since"] is None  # the active colour: never
        async with s.post(f"http://127.0.0.1:{app.admin_port}/shift", json={"weight": 10}) as r:
            assert r.status == 200
        assert (await backends(s, app))["green"]["drained_since"] is None  # gets traffic again
        assert await drained_gauge(s, app) == {"blue": 0.0, "green": 0.0}


async def test_wait_drained_times_out_with_exit_1_and_says_why(
    proxy: Bgproxy, capsys: pytest.CaptureFixture[str]
) -> None:
    before = time.monotonic()
    code = await wait_drained("blue", "--timeout", "0.3", "--admin-url", f"http://127.0.0.1:{proxy.admin_port}")
    _, err = capsys.readouterr()
    assert code == 1 and 0.3 <= time.monotonic() - before < 5
    assert err.startswith("bgproxy: blue is not drained after 0.3s") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["red"], "unknown colour 'red'"),
        (["blue", "--timeout", "soon"], "expected a number of seconds"),
        (["blue", "--timeout", "-1"], "expected a number of seconds"),
    ],
)
def test_wait_drained_refuses_bad_arguments(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["wait-drained", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


async def test_wait_drained_against_no_admin_api_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = await wait_drained("green", "--admin-url", "http://127.0.0.1:1")
    assert code == 2 and "cannot reach the admin API" in capsys.readouterr().err
