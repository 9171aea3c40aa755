"""A colour whose health the test controls: `/healthz` answers what the test sets, and a probe can be held at the
upstream until the test has looked at the verdict."""

from __future__ import annotations

import asyncio

from aiohttp import web


class HealthApp:
    """One colour: `/healthz` answers `status`; every other path answers the colour's name."""

    def __init__(self, color: str) -> None:
        self.color = color
        self.status = 200
        self.answered: list[int] = []  # the status of every probe answered, in order
        self.hold_at: int | None = None  # the probe with this 1-based number waits for `release`
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    def hold_probe(self, after: int) -> None:
        """Hold the probe that comes after `after` more answers, until `release` is set."""
        self.held.clear()
        self.release.clear()
        self.hold_at = len(self.answered) + after + 1

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.hold_at == len(self.answered) + 1:
            self.held.set()
            await self.release.wait()
            self.hold_at = None
        status = self.status
        self.answered.append(status)
        return web.Response(status=status, text="ok" if status < 400 else "failing")

    async def _other(self, request: web.Request) -> web.Response:
        return web.Response(text=f"{self.color}\n")

    async def start(self, port: int = 0) -> HealthApp:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_route("*", "/{tail:.*}", self._other)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()
