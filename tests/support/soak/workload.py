"""The soak's clients, all through the Ingress at once, each checking every answer it gets.

Kinds: `keepalive` (one kept connection per client: GET and small POST, slow requests, and requests the upstream
answers 503 itself), `fresh` (a new connection per request), `download` (a few MiB streamed, every byte checked),
`upload` (a few MiB streamed up, buffered by the Ingress or not, every byte checked by the app), `websocket`
(long-lived, across flips: every message echoed by one colour).

Every answer gets an outcome: `ok`; `upstream` (the app's own error answer, which the proxy must pass on);
`expected` (a websocket closed with 1001 by a replica that was draining); or `failure`, with a class naming the
cause: who answered (bgproxy's own error, the Ingress's own error, the client's connection), a colour the state
did not allow, a body or header that did not arrive intact. Only failures are kept in full; the rest are counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.support.soak import payload
from tests.support.soak.cluster import Cluster
from tests.support.soak.timeline import Timeline

HOST = "soak.example"
MIB = 1 << 20
TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=5)
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=90, sock_connect=5)
MAX_KEPT = 1000  # failures kept in full (all are counted)
SEEN = ("X-Seen-Host", "X-Seen-Xff", "X-Seen-Xfp", "X-Seen-Xfh", "X-Seen-Request-Id")  # what the app echoes


@dataclass
class Failure:
    kind: str
    cls: str
    start: float  # seconds since the soak started
    end: float
    replica: str | None
    request_id: str
    detail: str


@dataclass
class Stats:
    """Counts by kind and outcome class; failures in full."""

    counts: dict[str, Counter[str]] = field(default_factory=dict)
    colours: Counter[str] = field(default_factory=Counter)
    failovers: int = 0  # answers the Ingress got after retrying another replica (passive failover)
    bytes_checked: int = 0
    ws_messages: int = 0
    failures: list[Failure] = field(default_factory=list)

    def count(self, kind: str, cls: str) -> None:
        self.counts.setdefault(kind, Counter())[cls] += 1

    def total(self, kind: str | None = None) -> int:
        return sum(sum(c.values()) for k, c in self.counts.items() if kind in (None, k))


class Checked(Exception):
    """An answer that arrived but is wrong: the message says how (its class is what precedes the first colon),
    `replica` which replica answered, when known."""

    def __init__(self, message: str, replica: str | None = None) -> None:
        super().__init__(message)
        self.message, self.replica = message, replica


class Workload:
    def __init__(self, cluster: Cluster, timeline: Timeline, rng: random.Random) -> None:
        self.cluster = cluster
        self.timeline = timeline
        self.rng = rng
        self.stats = Stats()
        self.stopping = False
        self.url = cluster.ingress.url

    # --- bookkeeping --------------------------------------------------------------------------------------

    def _record_ok(self, kind: str, cls: str, colour: str | None) -> None:
        self.stats.count(kind, cls)
        if colour:
            self.stats.colours[colour] += 1

    def _fail(self, kind: str, cls: str, start: float, rid: str, replica: str | None, detail: str) -> None:
        self.stats.count(kind, f"FAILED {cls}")
        if len(self.stats.failures) >= MAX_KEPT:
            return
        self.stats.failures.append(
            Failure(kind, cls, self.cluster.rel(start), self.cluster.rel(), replica, rid, detail[:500])
        )

    def _replica(self, headers: Any) -> str | None:
        addrs = headers.get("X-Upstream-Addr", "")
        if not addrs:
            return None
        if "," in addrs:
            self.stats.failovers += 1
        return self.cluster.name_of(addrs.split(",")[-1])

    def _check_colour(self, colour: str | None, start: float, decided: float, replica: str | None) -> None:
        allowed = self.timeline.allowed(start, decided)
        if colour not in allowed:
            raise Checked(f"wrong colour: {colour} answered, the state allowed only {sorted(allowed)}", replica)

    @staticmethod
    def _who(status: int, headers: Any, body: str) -> str:
        """Who produced an unexpected answer: the app, bgproxy, or the Ingress itself."""
        if headers.get("X-App"):
            return f"upstream {status}"
        if headers.get("X-Bg-Color"):
            return f"bgproxy {status}: {body.strip()[:200]}"
        return (
            f"ingress {status}: upstream_addr {headers.get('X-Upstream-Addr', '-')}, "
            f"upstream_status {headers.get('X-Upstream-Status', '-')}, {body.strip()[:100]!r}"
        )

    def _headers(self, rid: str) -> dict[str, str]:
        return {"Host": HOST, "X-Request-ID": rid}

    async def _guard(self, kind: str, run: Callable[..., Awaitable[tuple[str, str]]], *args: Any) -> None:
        """Run one exchange, `run(*args, rid=..., start=...)`; whatever goes wrong is a classified failure."""
        rid, start = uuid.uuid4().hex, time.monotonic()
        try:
            cls, colour = await run(*args, rid=rid, start=start)
            self._record_ok(kind, cls, colour)
        except Checked as exc:
            self._fail(kind, exc.message.split(":")[0], start, rid, exc.replica, exc.message)
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            self._fail(kind, f"client {type(exc).__name__}", start, rid, None, f"{type(exc).__name__}: {exc}")

    # --- plain requests -----------------------------------------------------------------------------------

    async def _plain(self, session: aiohttp.ClientSession, kind: str, *, slow: bool) -> None:
        roll = self.rng.random()
        if slow and roll < 0.05:
            path = f"/slow?ms={self.rng.randint(100, 1500)}"
            await self._guard(kind, self._exchange, session, "GET", path, None, "slow")
        elif roll < 0.15:
            await self._guard(kind, self._exchange, session, "GET", "/status/503", None, "own answer")
        elif roll < 0.35:
            body = f"soak post {self.rng.random()}".encode()
            await self._guard(kind, self._exchange, session, "POST", "/hello", body, "hello")
        else:
            await self._guard(kind, self._exchange, session, "GET", "/hello", None, "hello")

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        body: bytes | None,
        what: str,
        *,
        rid: str,
        start: float,
    ) -> tuple[str, str]:
        """One request with a small answer: `hello` (the forwarding headers checked too), `slow`, or `own answer`
        (the app answers 503 itself: passed on, it is nobody's failure)."""
        async with session.request(method, f"{self.url}{path}", data=body, headers=self._headers(rid)) as resp:
            decided = time.monotonic()
            text = await resp.text()
        replica = self._replica(resp.headers)
        colour = resp.headers.get("X-Bg-Color")
        status, want = (503, f"{colour} says no\n") if what == "own answer" else (200, f"{colour}\n")
        if resp.status != status:
            raise Checked(self._who(resp.status, resp.headers, text), replica)
        if text != want or resp.headers.get("X-App") != colour:
            raise Checked(f"body: {text!r} from {resp.headers.get('X-App')} with X-Bg-Color {colour}", replica)
        if what == "hello":
            seen = tuple(resp.headers.get(h) for h in SEEN)
            expected = (HOST, "127.0.0.1, 127.0.0.1", "http", HOST, rid)
            if seen != expected:
                raise Checked(f"forwarding headers: the app saw {seen}, expected {expected}", replica)
        self._check_colour(colour, start, decided, replica)
        return ("upstream's own 503" if what == "own answer" else f"{method} {what} 200"), colour or ""

    async def keepalive_client(self) -> None:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
            while not self.stopping:
                await self._plain(session, "keepalive", slow=True)
                await asyncio.sleep(self.rng.uniform(0, 0.004))

    async def fresh_client(self) -> None:
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
            while not self.stopping:
                await self._plain(session, "fresh", slow=False)
                await asyncio.sleep(self.rng.uniform(0, 0.004))

    # --- streams ------------------------------------------------------------------------------------------

    async def download_client(self) -> None:
        async with aiohttp.ClientSession(timeout=STREAM_TIMEOUT) as session:
            while not self.stopping:
                size = self.rng.randint(1 * MIB, 6 * MIB)
                seed = self.rng.randrange(16)
                pace = self.rng.choice((0, 5, 20))
                chunked = self.rng.choice(("0", "1"))
                path = f"/stream?seed={seed}&size={size}&pace_ms={pace}&chunked={chunked}"
                await self._guard("download", self._download, session, path, seed, size)
                await asyncio.sleep(self.rng.uniform(0, 0.05))

    async def _download(
        self, session: aiohttp.ClientSession, path: str, seed: int, size: int, *, rid: str, start: float
    ) -> tuple[str, str]:
        async with session.get(f"{self.url}{path}", headers=self._headers(rid)) as resp:
            decided = time.monotonic()
            replica = self._replica(resp.headers)
            if resp.status != 200:
                raise Checked(
                    self._who(resp.status, resp.headers, (await resp.read())[:200].decode("latin-1")), replica
                )
            colour = resp.headers.get("X-Bg-Color") or ""
            h, got = hashlib.sha256(), 0
            async for chunk in resp.content.iter_any():
                h.update(chunk)
                got += len(chunk)
        if got != size or h.hexdigest() != payload.digest(colour, seed, size):
            raise Checked(
                f"download body: {got} of {size} bytes, {'wrong digest' if got == size else 'cut short'}", replica
            )
        self.stats.bytes_checked += got
        self._check_colour(colour, start, decided, replica)
        return "200 verified", colour

    async def upload_client(self, path: str) -> None:
        async with aiohttp.ClientSession(timeout=STREAM_TIMEOUT) as session:
            while not self.stopping:
                size = self.rng.randint(1 * MIB, 6 * MIB)
                seed = self.rng.randrange(16)
                pace = self.rng.choice((0, 5, 20))
                await self._guard("upload " + path, self._upload, session, path, seed, size, pace)
                await asyncio.sleep(self.rng.uniform(0, 0.05))

    async def _upload(
        self, session: aiohttp.ClientSession, path: str, seed: int, size: int, pace: int, *, rid: str, start: float
    ) -> tuple[str, str]:
        async def body() -> AsyncIterator[bytes]:
            for n, chunk in enumerate(payload.chunks("up", seed, size)):
                yield chunk
                if pace and n % 4 == 3:
                    await asyncio.sleep(pace / 1000)

        async with session.post(f"{self.url}{path}", data=body(), headers=self._headers(rid)) as resp:
            decided = time.monotonic()
            text = await resp.text()
            replica = self._replica(resp.headers)
            if resp.status != 200:
                raise Checked(self._who(resp.status, resp.headers, text), replica)
        colour = resp.headers.get("X-Bg-Color") or ""
        want = f"{colour} {size} {payload.digest('up', seed, size)}\n"
        if text != want:
            raise Checked(f"upload body: the app answered {text.strip()!r}, expected {want.strip()!r}", replica)
        self.stats.bytes_checked += size
        self._check_colour(colour, start, decided, replica)
        return "200 verified", colour

    # --- websockets ---------------------------------------------------------------------------------------

    async def websocket_client(self, lifetime: tuple[float, float]) -> None:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            while not self.stopping:
                await self._guard("websocket", self._websocket, session, lifetime)
                await asyncio.sleep(self.rng.uniform(0, 0.2))

    async def _websocket(
        self, session: aiohttp.ClientSession, lifetime: tuple[float, float], *, rid: str, start: float
    ) -> tuple[str, str]:
        try:
            ws = await session.ws_connect(f"{self.url}/ws", headers=self._headers(rid), autoping=True)
        except aiohttp.WSServerHandshakeError as exc:
            raise Checked(self._who(exc.status, exc.headers or {}, exc.message)) from None
        decided = time.monotonic()
        replica = self._replica(ws._response.headers)
        colour = ws._response.headers.get("X-Bg-Color")
        until = decided + self.rng.uniform(*lifetime)
        n = 0
        try:
            self._check_colour(colour, start, decided, replica)
            while not self.stopping and time.monotonic() < until:
                n += 1
                await ws.send_str(f"{rid}-{n}")
                msg = await ws.receive(timeout=10)
                if msg.type == aiohttp.WSMsgType.TEXT:
                    if msg.data != f"{colour}:{rid}-{n}":
                        raise Checked(f"websocket echo: {msg.data!r} for message {n} on a {colour} socket")
                    self.stats.ws_messages += 1
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    return self._ws_closed(ws.close_code, replica, start, n), colour or ""
                else:
                    raise Checked(f"websocket: unexpected {msg.type.name} {msg.data!r}")
                await asyncio.sleep(self.rng.uniform(0.05, 0.3))
            await ws.close()
            return "closed by the client after its lifetime", colour or ""
        except Checked as exc:
            raise Checked(exc.message, exc.replica or replica) from None
        finally:
            if not ws.closed:
                await ws.close()

    def _ws_closed(self, code: int | None, replica: str | None, start: float, n: int) -> str:
        """A websocket the server side closed: expected only as a drain's 1001 from a draining replica."""
        member = self.cluster.member(replica) if replica else None
        draining = member is not None and "draining" in member.phases_during(start, time.monotonic())
        if code == 1001 and draining:
            return "closed 1001 by a draining replica"
        raise Checked(
            f"websocket closed by the server: code {code} after {n} messages, replica {replica} "
            f"{'was' if draining else 'was not'} draining",
            replica,
        )
