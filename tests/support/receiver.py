"""A real webhook receiver on 127.0.0.1 (aiohttp): records every POST with its exact body bytes, and answers as a
test tells it: 200, a scripted list of statuses, or not at all (it hangs until released)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.configmap import WAIT, until


@dataclass(frozen=True)
class Delivery:
    at: float  # time.monotonic() when it arrived
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    def signed_with(self, secret: str) -> bool:
        """The test's own check of X-Bgproxy-Signature: HMAC-SHA256 of the exact body bytes, compared in constant
        time, as a receiver should."""
        want = "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers.get("X-Bgproxy-Signature", ""), want)


@dataclass
class Receiver:
    deliveries: list[Delivery] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # answered in turn; then `status`
    status: int = 200
    hanging: bool = False  # every request is held until `release()` (the client's timeout ends it first): `hold()`
    port: int = 0
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()

    def hold(self) -> None:
        """From now on, hold every request unanswered until `release()`."""
        self.hanging = True
        self._release = asyncio.Event()

    def release(self) -> None:
        """Let the hung requests answer, and answer at once from now on."""
        self.hanging = False
        self._release.set()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.deliveries.append(Delivery(time.monotonic(), dict(request.headers), body))
        if self.hanging:
            await self._release.wait()
        status = self.statuses.pop(0) if self.statuses else self.status
        return web.Response(status=status, text="ok" if status < 300 else "no")

    async def received(self, count: int, within: float = WAIT) -> list[Delivery]:
        await until(lambda: len(self.deliveries) >= count, f"{count} webhook deliveries", within)
        return self.deliveries
