"""Graceful drain of a real `bgproxy serve` process on SIGTERM.

Kubernetes keeps sending traffic for a while after it sends SIGTERM (until the endpoints update), so the
contract is: `/readyz` fails at once; the listener keeps accepting for DRAIN_GRACE; then it stops accepting;
requests in flight finish (bounded by DRAIN_TIMEOUT); responses during the drain carry `Connection: close`;
websockets get a close frame (1001) at the end; the process exits 0.

The in-flight requests are held by the upstream's /gate/NAME handler and released by the test, so "in flight at
SIGTERM" is a fact, not a timing guess. Figures (in flight, completed, refused) are printed for the closing note.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.support.processes import clean_env, serve_args, serve_process
from tests.support.servers import TIMEOUT, RawClient, Upstream, free_port

IN_FLIGHT = 20
POLL = 0.02  # seconds between polls of a bounded wait


def drain_env(grace: float, timeout: float) -> dict[str, str]:
    return clean_env(
        BGPROXY_STATE_BACKEND="memory",
        BGPROXY_DRAIN_GRACE=str(grace),
        BGPROXY_DRAIN_TIMEOUT=str(timeout),
    )


async def wait_for(predicate: Callable[[], bool], what: str, *, within: float = TIMEOUT) -> None:
    end = time.monotonic() + within
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(POLL)  # a bounded poll, not synchronisation


async def refuses(port: int) -> bool:
    """True if a new TCP connection to the data plane is refused (nothing listens any more)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    except ConnectionRefusedError:
        return True
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return False


async def wait_until_refused(port: int, *, within: float) -> float:
    """Poll with new connections until one is refused; returns the monotonic time it happened."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        if await refuses(port):
            return time.monotonic()
        await asyncio.sleep(POLL)
    pytest.fail(f"the listener still accepted connections {within}s later")


async def readyz_status(session: aiohttp.ClientSession, admin_port: int, path: str = "/readyz") -> int:
    async with session.get(f"http://127.0.0.1:{admin_port}{path}") as r:
        await r.read()
        return r.status


async def get_once(port: int, path: str) -> tuple[int, dict[str, list[str]], bytes]:
    """One request on a brand-new connection."""
    client = await RawClient.connect(port)
    try:
        await client.send(f"GET {path} HTTP/1.1\r\nHost: drain.test\r\n\r\n".encode())
        return await client.read_response()
    finally:
        await client.close()


@dataclass
class Hammer:
    """New connections, one request each, as fast as a few workers can, until a deadline."""

    port: int
    served: int = 0
    refused: int = 0
    failed: list[str] = field(default_factory=list)
    without_close: int = 0

    async def worker(self, until: float, n: int) -> None:
        i = 0
        while time.monotonic() < until:
            i += 1
            try:
                status, headers, body = await get_once(self.port, f"/hammer/{n}/{i}")
            except ConnectionRefusedError:
                self.refused += 1
                continue
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                self.failed.append(f"{type(exc).__name__}: {exc}")
                continue
            if (status, body) != (200, b"blue\n"):
                self.failed.append(f"{status} {body!r}")
                continue
            self.served += 1
            if "close" not in [v.lower() for v in headers.get("connection", [])]:
                self.without_close += 1

    async def run(self, until: float, workers: int = 4) -> None:
        await asyncio.gather(*(self.worker(until, n) for n in range(workers)))


async def test_sigterm_drains_in_flight_requests_and_keeps_accepting_during_the_grace(
    tmp_path: Path, upstreams: dict[str, Upstream]
) -> None:
    grace, drain_timeout = 1.5, 5.0
    blue = upstreams["blue"]
    port, admin_port = free_port(), free_port()
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with (
        serve_process(tmp_path, serve_args(upstreams, port, admin_port), drain_env(grace, drain_timeout)) as proc,
        aiohttp.ClientSession(timeout=timeout) as admin,
        aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as clients,
    ):
        await proc.wait_ready(admin_port)
        assert proc.proc is not None

        # A keep-alive client that has been served once and will ask again during the drain, and one that idles.
        keep_alive = await RawClient.connect(port)
        idle = await RawClient.connect(port)
        for c in (keep_alive, idle):
            await c.send(b"GET /before HTTP/1.1\r\nHost: drain.test\r\n\r\n")
            status, headers, body = await c.read_response()
            assert (status, body) == (200, b"blue\n")
            assert "close" not in headers.get("connection", [""])[0].lower()

        # N requests in flight, each held by the upstream until the test releases it.
        async def fetch(name: str) -> tuple[int, str, str, float]:
            async with clients.get(f"http://127.0.0.1:{port}/gate/{name}") as r:
                body = await r.text()
                return r.status, body, r.headers.get("Connection", ""), time.monotonic()

        names = [f"g{i}" for i in range(IN_FLIGHT)]
        tasks = {name: asyncio.create_task(fetch(name)) for name in names}
        await asyncio.wait_for(asyncio.gather(*(blue.gate(n)[0].wait() for n in names)), TIMEOUT)
        assert not any(t.done() for t in tasks.values())

        sigterm_at = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)

        # /readyz fails at once (bounded poll); liveness stays good while draining.
        ready_end = time.monotonic() + 2.0
        while await readyz_status(admin, admin_port) != 503:
            assert time.monotonic() < ready_end, "/readyz still 200 two seconds after SIGTERM"
            await asyncio.sleep(POLL)
        not_ready_after = time.monotonic() - sigterm_at
        assert await readyz_status(admin, admin_port, "/healthz") == 200

        # During the grace: new connections are accepted and served, each answer says Connection: close.
        hammer = Hammer(port)
        # (until half the grace: a connection still in the backlog when the listener closes would be reset)
        hammering = asyncio.create_task(hammer.run(until=sigterm_at + grace / 2))

        # Half the in-flight requests finish now, inside the grace period.
        first, second = names[: IN_FLIGHT // 2], names[IN_FLIGHT // 2 :]
        for n in first:
            blue.gate(n)[1].set()

        # The keep-alive client's next request is answered with Connection: close, then the proxy hangs up.
        await keep_alive.send(b"GET /during HTTP/1.1\r\nHost: drain.test\r\n\r\n")
        status, headers, body = await keep_alive.read_response()
        assert (status, body) == (200, b"blue\n")
        assert headers.get("connection") == ["close"], headers
        assert await keep_alive.closed()

        await asyncio.wait_for(hammering, TIMEOUT)
        assert hammer.failed == [], hammer.failed[:5]
        assert hammer.refused == 0
        assert hammer.served > 0
        assert hammer.without_close == 0

        # After the grace the listener stops accepting; the idle keep-alive connection is closed.
        refused_at = await wait_until_refused(port, within=grace + 3.0)
        assert refused_at - sigterm_at >= grace
        assert await idle.closed()

        # The other half is still in flight after the listener closed, and finishes now.
        assert not any(tasks[n].done() for n in second)
        released_at = time.monotonic()
        for n in second:
            blue.gate(n)[1].set()
        results = await asyncio.wait_for(asyncio.gather(*tasks.values()), TIMEOUT)
        completed = sum(1 for status, body, _, _ in results if status == 200)
        done_at = dict(zip(tasks, (r[3] for r in results), strict=True))
        assert all(done_at[n] < refused_at for n in first)  # answered inside the grace
        assert all(done_at[n] > released_at for n in second)  # answered after the listener closed
        for name, (status, body, connection, _) in zip(tasks, results, strict=True):
            assert (status, body) == (200, f"blue {name}\n")
            assert connection.lower() == "close"  # answered during the drain

        # Exits 0 as soon as the in-flight work is done, well before DRAIN_TIMEOUT.
        code = await asyncio.wait_for(proc.proc.wait(), TIMEOUT)
        exited_at = time.monotonic()
        assert code == 0, proc.stderr
        assert exited_at - released_at < drain_timeout / 2
        assert exited_at - sigterm_at < grace + drain_timeout
        await keep_alive.close()
        await idle.close()

    print(
        f"\n[drain] in flight at SIGTERM: {IN_FLIGHT}, completed with 200: {completed}; "
        f"new connections during the {grace}s grace: {hammer.served} served, {hammer.refused} refused, "
        f"{len(hammer.failed)} failed; /readyz 503 after {not_ready_after * 1000:.0f} ms; listener refused "
        f"{refused_at - sigterm_at:.2f}s after SIGTERM; exit 0 {exited_at - released_at:.2f}s after the last release "
        f"({exited_at - sigterm_at:.2f}s after SIGTERM, drain timeout {drain_timeout}s)"
    )


async def test_a_request_still_hanging_at_the_drain_timeout_is_cut(
    tmp_path: Path, upstreams: dict[str, Upstream]
) -> None:
    grace, drain_timeout = 0.3, 1.0
    blue = upstreams["blue"]
    port, admin_port = free_port(), free_port()
    async with (
        serve_process(tmp_path, serve_args(upstreams, port, admin_port), drain_env(grace, drain_timeout)) as proc,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s,
    ):
        await proc.wait_ready(admin_port)
        assert proc.proc is not None

        async def fetch(name: str) -> tuple[int, str]:
            async with s.get(f"http://127.0.0.1:{port}/gate/{name}") as r:
                return r.status, await r.text()

        hanging = await RawClient.connect(port)
        await hanging.send(b"GET /gate/hang HTTP/1.1\r\nHost: drain.test\r\n\r\n")
        finishing = asyncio.create_task(fetch("finish"))
        await asyncio.wait_for(asyncio.gather(blue.gate("hang")[0].wait(), blue.gate("finish")[0].wait()), TIMEOUT)

        sigterm_at = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        await wait_until_refused(port, within=grace + 3.0)
        blue.gate("finish")[1].set()  # this one finishes inside the drain timeout
        assert await asyncio.wait_for(finishing, TIMEOUT) == (200, "blue finish\n")

        # "hang" is never released: the drain timeout cuts it, visibly: the connection ends without an answer.
        try:
            received = await asyncio.wait_for(hanging.reader.read(), grace + drain_timeout + TIMEOUT)
            how = f"closed after {len(received)} bytes"
        except ConnectionResetError:
            received, how = b"", "reset"
        assert received == b"", received
        await hanging.close()
        cut_after = time.monotonic() - sigterm_at
        code = await asyncio.wait_for(proc.proc.wait(), TIMEOUT)
        exited_after = time.monotonic() - sigterm_at
        assert code == 0, proc.stderr
        assert cut_after >= grace + drain_timeout  # not before the drain timeout...
        assert exited_after < grace + drain_timeout + 3.0  # ...and not much after it
        assert '"drain_timeout"' in proc.stderr
    print(
        f"\n[drain] request hanging at the drain timeout: cut {cut_after:.2f}s after SIGTERM "
        f"(grace {grace}s + timeout {drain_timeout}s), connection {how}, exit 0 after {exited_after:.2f}s"
    )


async def test_a_websocket_stays_usable_during_the_drain_and_gets_a_1001_close_at_its_end(
    tmp_path: Path, upstreams: dict[str, Upstream]
) -> None:
    """The drain lasts while HTTP work is in flight; a websocket works all along and is closed with 1001 (going away)
    when the drain ends, here when the last held request finishes, well before the drain timeout."""
    grace, drain_timeout = 0.5, 5.0
    blue = upstreams["blue"]
    port, admin_port = free_port(), free_port()
    async with (
        serve_process(tmp_path, serve_args(upstreams, port, admin_port), drain_env(grace, drain_timeout)) as proc,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s,
    ):
        await proc.wait_ready(admin_port)
        assert proc.proc is not None

        async def fetch(name: str) -> tuple[int, str]:
            async with s.get(f"http://127.0.0.1:{port}/gate/{name}") as r:
                return r.status, await r.text()

        async with s.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
            await ws.send_str("before")
            assert await ws.receive_str(timeout=TIMEOUT) == "blue:before"
            held = asyncio.create_task(fetch("held"))  # keeps the drain going past the grace
            await asyncio.wait_for(blue.gate("held")[0].wait(), TIMEOUT)

            sigterm_at = time.monotonic()
            proc.proc.send_signal(signal.SIGTERM)
            await ws.send_str("grace")
            assert await ws.receive_str(timeout=TIMEOUT) == "blue:grace"
            await wait_until_refused(port, within=grace + 3.0)
            for i in range(3):  # the listener is closed, the drain goes on: this websocket still works
                await ws.send_str(f"draining {i}")
                assert await ws.receive_str(timeout=TIMEOUT) == f"blue:draining {i}"

            released_at = time.monotonic()
            blue.gate("held")[1].set()
            assert await asyncio.wait_for(held, TIMEOUT) == (200, "blue held\n")
            msg = await ws.receive(timeout=drain_timeout + TIMEOUT)
            ended_after = time.monotonic() - released_at
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001), msg  # a close frame, "going away"
        assert ended_after < drain_timeout / 2  # at the end of the drain, not at its timeout
        code = await asyncio.wait_for(proc.proc.wait(), TIMEOUT)
        assert code == 0, proc.stderr
        exited_after = time.monotonic() - sigterm_at
    print(
        f"\n[drain] websocket: usable through the grace and the drain, closed with 1001 {ended_after:.2f}s after the "
        f"last HTTP request finished; exit 0 {exited_after:.2f}s after SIGTERM"
    )


async def test_the_websocket_closing_handshake_completes_with_1001(
    tmp_path: Path, upstreams: dict[str, Upstream]
) -> None:
    """The client must be able to answer the proxy's close frame (RFC 6455 7.1.1: the server closes the TCP
    connection after the closing handshake), so that aiohttp reports a clean close with the proxy's code.

    Fails while the proxy closes the TCP connection right after writing its close frame: aiohttp then cannot send
    its answer and reports 1006 (abnormal closure), though the frame it received said 1001."""
    port, admin_port = free_port(), free_port()
    async with (
        serve_process(tmp_path, serve_args(upstreams, port, admin_port), drain_env(0.2, 5.0)) as proc,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s,
    ):
        await proc.wait_ready(admin_port)
        assert proc.proc is not None
        async with s.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
            await ws.send_str("hello")
            assert await ws.receive_str(timeout=TIMEOUT) == "blue:hello"
            proc.proc.send_signal(signal.SIGTERM)
            # Read the close frame a moment after it was sent (once the listener closed, the drain is over), as a
            # busy client would: the proxy must still be there to receive the client's answering close frame.
            await wait_until_refused(port, within=TIMEOUT)
            msg = await ws.receive(timeout=TIMEOUT)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001), msg
            assert ws.close_code == 1001, f"close code {ws.close_code}: the closing handshake did not complete"
        assert await asyncio.wait_for(proc.proc.wait(), TIMEOUT) == 0, proc.stderr
