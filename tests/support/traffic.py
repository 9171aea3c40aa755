"""Upstreams whose faults a test turns on and off (a share of 500s, a delay), and a steady load of clients that
records what each request got: for the automatic rollback and the drained signal, which judge live traffic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
from aiohttp import web


@dataclass
class Faults:
    """What an upstream does to each request; changed by the test while the load runs."""

    fail_per_10: int = 0  # of every 10 requests, this many answer 500 (spread out: 3 is requests 0, 3 and 6)
    delay: float = 0.0  # seconds before answering
    requests: int = 0
    failures: int = 0
    first_failure: float | None = None  # time.time() of the first 500 answered

    def fails(self) -> bool:
        n = self.requests
        self.requests += 1
        per = self.fail_per_10
        return per > 0 and (n % 10) * per // 10 != ((n % 10) + 1) * per // 10


def faulty_app(color: str, faults: Faults) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        if faults.delay:
            await asyncio.sleep(faults.delay)
        if faults.fails():
            faults.failures += 1
            if faults.first_failure is None:
                faults.first_failure = time.time()
            return web.Response(status=500, text=f"{color} failed\n", headers={"X-App": color})
        return web.Response(text=f"{color}\n", headers={"X-App": color})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """The app on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@dataclass
class Answer:
    started: float  # time.time()
    ended: float
    status: int
    color: str


class Proxy(Protocol):
    """What the load needs of a proxy: its data-plane port (an in-process `Bgproxy` or a replica process)."""

    @property
    def port(self) -> int: ...


@dataclass
class Load:
    """`clients` keep-alive clients sending GET / back to back through the proxy, no cookies kept (each request
    draws its own sticky bucket), until stopped."""

    app: Proxy
    clients: int = 10
    answers: list[Answer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def __aenter__(self) -> Load:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.clients),
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=10),
        )
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.clients)]
        return self

    async def _client(self) -> None:
        url = f"http://127.0.0.1:{self.app.port}/"
        while not self._stop.is_set():
            started = time.time()
            try:
                async with self._session.get(url) as r:
                    await r.read()
                    self.answers.append(Answer(started, time.time(), r.status, r.headers.get("X-Bg-Color", "")))
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.errors.append(repr(exc))

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), 15)
        await self._session.close()

    def since(self, t: float) -> list[Answer]:
        """The answers to requests that started at or after `t` (time.time())."""
        return [a for a in self.answers if a.started >= t]
