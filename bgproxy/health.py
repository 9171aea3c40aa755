"""Health of each colour: active probes of `HEALTH_PATH` plus the data plane's passive signals.

A colour goes down after `unhealthy_threshold` failed probes in a row, or at once when the data plane cannot
connect to it; it comes back after `healthy_threshold` good probes (or, with probes off, one good connect).
The verdict lives in `Metrics.healthy` (and `backend_up`), where admin flips and `/state` read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

from .core.addresses import Upstream
from .core.model import Color
from .log import log
from .metrics import Metrics
from .settings import Settings

logger = logging.getLogger("bgproxy.health")


class HealthChecker:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.upstreams: dict[Color, Upstream] = settings.upstreams()
        self.metrics = metrics
        self.path = settings.health_path
        self.interval = settings.health_interval
        self.timeout = settings.health_timeout
        self.up_after = settings.health_healthy_threshold
        self.down_after = settings.health_unhealthy_threshold
        self._streak = dict.fromkeys(Color, 0)  # >0: successes in a row, <0: failures in a row
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    @property
    def probing(self) -> bool:
        """Active probes are on (HEALTH_PATH is set); without them, connects alone decide."""
        return self.path is not None

    def passive(self, color: Color, ok: bool) -> None:
        """A connect attempt by the data plane: a failure is news at once, a success only matters unprobed."""
        if not ok:
            self._set(color, False, "connect failed")
        elif not self.probing:
            self._set(color, True, "connected")

    async def start(self) -> None:
        if not self.probing:
            return
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout), headers={"User-Agent": "bgproxy-health"}
        )
        self._tasks = [asyncio.create_task(self._loop(c), name=f"bgproxy-health-{c.value}") for c in Color]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    async def _loop(self, color: Color) -> None:
        while True:
            await self.probe(color)
            await asyncio.sleep(self.interval)

    async def probe(self, color: Color) -> bool:
        """One probe; returns whether it succeeded and updates the verdict."""
        assert self._session is not None and self.path is not None
        url = self.upstreams[color].url + self.path
        detail = ""
        try:
            async with self._session.get(url, allow_redirects=False) as resp:
                await resp.read()
                ok = resp.status < 400
                detail = f"status {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        streak = self._streak[color]
        streak = max(streak, 0) + 1 if ok else min(streak, 0) - 1
        self._streak[color] = streak
        if streak >= self.up_after:
            self._set(color, True, detail)
        elif -streak >= self.down_after:
            self._set(color, False, detail)
        return ok

    def _set(self, color: Color, healthy: bool, detail: str) -> None:
        if self.metrics.healthy[color] is healthy:
            return
        self.metrics.set_healthy(color, healthy)
        log(
            logger,
            "backend_up" if healthy else "backend_down",
            level=logging.INFO if healthy else logging.WARNING,
            color=color.value,
            detail=detail,
        )
