"""The composition root: build the store, the state holder, the data plane and the admin API; start and drain.

Start order matters: the admin port comes up first (liveness answers, readiness says no), then the state is
loaded, then the data plane listens, so a replica never serves a guessed colour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal

from aiohttp import web

from . import __version__, build
from .admin import build_admin_app
from .core.addresses import Address
from .core.analysis import Thresholds
from .dataplane import ProxyServer
from .health import HealthChecker
from .log import log
from .metrics import Metrics
from .notify import open_notifiers
from .release.analysis import AutoRollback
from .release.auto_promote import AutoPromoter
from .release.checks import PromoteChecks
from .release.live import LiveFigures
from .release.steps import StepTimer
from .settings import ENV_PREFIX, Settings
from .state import StateHolder
from .stores import open_store

logger = logging.getLogger("bgproxy.app")


class StartupError(Exception):
    """bgproxy cannot start (an address in use, say); the message says what to fix."""


class ListenError(StartupError):
    """An address bgproxy cannot listen on (in use, not on this machine, not allowed); `setting` is its field."""

    def __init__(self, address: Address, setting: str, reason: str) -> None:
        super().__init__(f"cannot listen on {address} ({ENV_PREFIX}{setting.upper()}): {reason}")
        self.address, self.setting, self.reason = address, setting, reason


class Bgproxy:
    """One running bgproxy: `async with Bgproxy(settings) as app:` serves until the block ends."""

    def __init__(self, settings: Settings) -> None:
        settings.upstreams()
        self.settings = settings
        # ANALYSIS_ENABLED=false keeps no live window: nothing would judge it, and it costs on every request.
        self.metrics = Metrics(window=settings.analysis_window if settings.analysis_enabled else None)
        self.metrics.set_build(__version__, compiled=build.compiled())
        self.store = open_store(settings, self.metrics)
        self.holder = StateHolder(self.store, self.metrics, initial_active=settings.initial_active)
        self.health = HealthChecker(settings, self.metrics)
        self.steps = StepTimer(self.holder, self.metrics.healthy)
        self.checks = PromoteChecks(settings.promote_checks, settings.upstreams())
        self.auto_promote: AutoPromoter | None = None
        if settings.auto_promote_after is not None:
            self.auto_promote = AutoPromoter(
                self.holder,
                self.metrics.healthy,
                self.checks,
                after=settings.auto_promote_after,
                steps=settings.auto_promote_steps,
                interval=settings.auto_promote_interval,
            )
        self.notifiers = open_notifiers(settings, self.holder, self.metrics)
        self.live = LiveFigures(self.holder, self.metrics, drained_after=settings.drained_after)
        self.analysis = AutoRollback(self.holder, self.live, self.metrics, thresholds(settings))
        self.proxy: ProxyServer | None = None
        self.draining = False
        self._admin_runner: web.AppRunner | None = None
        self._admin_site: web.TCPSite | None = None
        self._follow: asyncio.Task[None] | None = None

    def ready(self) -> bool:
        return self.holder.loaded and self.proxy is not None and not self.draining

    async def start(self) -> None:
        s = self.settings
        _raise_open_files_limit(s.max_connections)
        await self.checks.start()
        view = self.auto_promote.view if self.auto_promote is not None else lambda: None
        admin = build_admin_app(
            s, self.holder, self.metrics, self.ready, live=self.live, checks=self.checks, auto_promote=view
        )
        self._admin_runner = web.AppRunner(admin, access_log=None, handle_signals=False)
        await self._admin_runner.setup()
        self._admin_site = web.TCPSite(self._admin_runner, s.admin_listen.host, s.admin_listen.port, reuse_address=True)
        try:
            await self._admin_site.start()
        except OSError as exc:
            raise ListenError(s.admin_listen, "admin_listen", _reason(exc)) from None
        await self.holder.load()
        for notifier in self.notifiers:
            notifier.start()
        self._follow = asyncio.create_task(self._follow_store(), name="bgproxy-follow-store")
        await self.health.start()
        self.steps.start()
        if self.auto_promote is not None:
            self.auto_promote.start()
        self.live.start()
        if s.analysis_enabled:
            self.analysis.start()
        proxy = ProxyServer(s, self.holder, self.metrics, on_health=self.health.passive)
        try:
            await proxy.start()
        except OSError as exc:
            await proxy.close()
            raise ListenError(s.listen, "listen", _reason(exc)) from None
        self.proxy = proxy
        log(
            logger,
            "listening",
            listen=f"{s.listen.host}:{self.port}",
            admin=f"{s.admin_listen.host}:{self.admin_port}",
            active=self.holder.current.active.value,
            revision=self.holder.current.revision,
            store=self.store.name,
            build="compiled" if build.compiled() else "pure",
        )

    async def _follow_store(self) -> None:
        try:
            await self.holder.follow()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("state store change stream died; flips made elsewhere are no longer applied")
            raise

    @property
    def port(self) -> int:
        assert self.proxy is not None
        return self.proxy.port

    @property
    def admin_port(self) -> int:
        assert self._admin_site is not None and self._admin_site._server is not None
        sockets = getattr(self._admin_site._server, "sockets", None) or []
        port: int = sockets[0].getsockname()[1] if sockets else self.settings.admin_listen.port
        return port

    async def drain(self) -> None:
        """SIGTERM: not ready at once, keep accepting for the grace period, then finish in-flight work."""
        if self.draining:
            return
        self.draining = True
        s = self.settings
        log(logger, "draining", grace=s.drain_grace, timeout=s.drain_timeout)
        if self.proxy is not None:
            self.proxy.draining = True  # responses now carry Connection: close
            await asyncio.sleep(s.drain_grace)  # endpoints take this long to stop sending us traffic
            await self.proxy.drain(timeout=s.drain_timeout)

    async def stop(self) -> None:
        await self.steps.stop()
        if self.auto_promote is not None:
            await self.auto_promote.stop()
        await self.analysis.stop()
        self.live.stop()
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._follow
        for notifier in self.notifiers:
            await notifier.stop()
        if self.proxy is not None:
            await self.proxy.close()
        await self.health.stop()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        await self.store.close()
        await self.checks.close()
        if self.proxy is not None:  # a start that failed says so in one line (the CLI's), without a log of this
            log(logger, "stopped")

    async def __aenter__(self) -> Bgproxy:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then drain and exit cleanly.

    A signal that arrives while the state is still loading (e.g. the API server is unreachable) stops at once.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = Bgproxy(settings)
    starting = asyncio.create_task(app.start(), name="bgproxy-start")
    stopping = asyncio.create_task(stop.wait(), name="bgproxy-wait-for-signal")
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            await starting  # raises if the start failed
            await stopping
            await app.drain()
        else:
            log(logger, "stopped_while_starting")
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
    finally:
        stopping.cancel()
        await app.stop()


def thresholds(settings: Settings) -> Thresholds:
    """The automatic rollback's thresholds, as the settings give them."""
    return Thresholds(
        window=settings.analysis_window,
        min_requests=settings.analysis_min_requests,
        max_error_rate=settings.analysis_max_error_rate,
        max_p99=settings.analysis_max_p99,
        max_p99_ratio=settings.analysis_max_p99_ratio,
        watch=settings.analysis_watch,
    )


def _reason(exc: OSError) -> str:
    """The OS's words for the error (Address already in use), whether from the socket module or uvloop."""
    if exc.errno and exc.errno > 0:  # getaddrinfo's errors are negative: their strerror is the message
        return os.strerror(exc.errno)
    return exc.strerror or str(exc)


def _raise_open_files_limit(max_connections: int) -> None:
    # Each client connection may hold an upstream one too; leave room for the admin port and files.
    want = max_connections * 2 + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    if new < max_connections + 256:
        # Not even the client connections fit: beyond the limit, accepts fail instead of a clear 503.
        log(logger, "open_files_limit", level=logging.WARNING, limit=new, wanted=want, max_connections=max_connections)
    elif new < want:
        log(logger, "open_files_limit", level=logging.DEBUG, limit=new, wanted=want)
