"""The data plane as a whole: the listening socket, each colour's pool, the limits every connection checks, the
one ticker that expires deadlines, and the drain on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from ..core.model import Color
from ..log import log
from ..metrics import ERROR_KINDS, Metrics
from ..settings import Settings
from .choose import Chooser, CurrentState
from .client import ClientConnection
from .headers import LineKinds
from .pool import UpstreamPool
from .refusals import Deadline, expire
from .request_head import watch_table
from .tunnel import Tunnel

logger = logging.getLogger("bgproxy.proxy")


class ProxyServer:
    def __init__(
        self,
        settings: Settings,
        state: CurrentState,
        metrics: Metrics,
        *,
        on_health: Callable[[Color, bool], None] | None = None,
    ) -> None:
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.pools: dict[Color, UpstreamPool] = {
            color: UpstreamPool(
                color,
                upstream,
                stats=metrics.colors[color],
                errors={kind: metrics.error_counters[(color, kind)] for kind in ERROR_KINDS},
                color_header=settings.color_header,
                connect_timeout=settings.upstream_connect_timeout,
                on_health=on_health or metrics.set_healthy,
            )
            for color, upstream in settings.upstreams().items()
        }
        self.chooser = Chooser(
            state,
            self.pools,
            preview_cookie=settings.preview_cookie,
            policy=settings.preview_policy,
            sticky_cookie=settings.sticky_cookie,
        )
        self.watch = watch_table(settings.preview_header, settings.sticky_header)
        self.line_kinds = LineKinds(self.watch)
        self.read_timeout = settings.upstream_read_timeout
        self.header_timeout = settings.header_timeout
        self.idle_timeout = settings.idle_timeout
        self.max_request_line = settings.max_request_line
        self.max_header_bytes = settings.max_header_bytes
        self.max_connections = settings.max_connections
        self.access_log = settings.access_log
        self.connections: set[ClientConnection] = set()
        self.tunnels: set[Tunnel] = set()
        self.draining = False
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._tick_every = min(1.0, max(0.05, min(self.read_timeout, self.header_timeout, self.idle_timeout) / 4))
        self._changed: asyncio.Event | None = None  # set when a connection or tunnel ends, during a drain

    async def start(self) -> None:
        host, port = self.settings.listen
        self._server = await self.loop.create_server(
            lambda: ClientConnection(self), host, port, backlog=2048, reuse_address=True
        )
        self._ticker = self.loop.call_later(self._tick_every, self._tick)

    @property
    def port(self) -> int:
        # Read untyped: uvloop's Server.sockets is a list where typeshed says tuple, and a compiled build checks the
        # declared type of what it reads.
        server: Any = self._server
        assert server is not None
        port: int = server.sockets[0].getsockname()[1]
        return port

    # -- the connections ------------------------------------------------------------------------------------

    def admit(self, conn: ClientConnection) -> bool:
        """Room for one more client connection (websockets count too)?"""
        if len(self.connections) + len(self.tunnels) >= self.max_connections:
            self.refused += 1
            return False
        self.connections.add(conn)
        return True

    def connection_closed(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        if self._changed is not None:
            self._changed.set()

    def tunnel_opened(self, conn: ClientConnection, tunnel: Tunnel) -> None:
        """The connection's transport now belongs to the tunnel."""
        self.connections.discard(conn)
        self.tunnels.add(tunnel)

    def tunnel_closed(self, tunnel: Tunnel) -> None:
        self.tunnels.discard(tunnel)
        if self._changed is not None:
            self._changed.set()

    def _tick(self) -> None:
        """Expire connections past their deadline; a timeout fires within one tick of its due time."""
        now = self.loop.time()
        timeouts: dict[int, float] = {Deadline.IDLE: self.idle_timeout, Deadline.EXCHANGE: self.read_timeout}
        expired = []
        for conn in self.connections:
            kind = conn.deadline_kind
            if kind == Deadline.NONE:
                continue
            if kind == Deadline.HEAD:
                if conn.deadline <= now:
                    expired.append(conn)
            elif conn.progress or not conn.deadline:
                conn.progress = False
                conn.deadline = now + timeouts[kind]
            elif conn.deadline <= now:
                expired.append(conn)
        for conn in expired:
            expire(conn)
        self._ticker = self.loop.call_later(self._tick_every, self._tick)

    # -- shutdown -------------------------------------------------------------------------------------------

    async def drain(self, *, timeout: float) -> None:  # noqa: ASYNC109 - the drain budget, not a call timeout
        """Stop listening, let in-flight exchanges finish (bounded), then close websockets and what is left."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.idle:
                conn.closed = True
                conn.transport.close()
        self._changed = asyncio.Event()
        if not await self._until(lambda: not self.connections, timeout):
            log(logger, "drain_timeout", level=logging.WARNING, open=len(self.connections))
        if self.tunnels:
            for tunnel in list(self.tunnels):
                tunnel.close_gracefully()
            # The close frames are written; give the peers a moment to answer them before the sockets go.
            await self._until(lambda: not self.tunnels, 1.0)
        for tunnel in list(self.tunnels):
            tunnel.abort()
        for conn in list(self.connections):
            conn.transport.abort()

    async def _until(self, done: Callable[[], bool], timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until `done()` holds, re-checked whenever a connection or tunnel ends; False after `timeout`."""
        assert self._changed is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not done():
                    self._changed.clear()
                    await self._changed.wait()
        return done()

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.transport.abort()
        for tunnel in list(self.tunnels):
            tunnel.abort()
        for pool in self.pools.values():
            pool.close()
        if self._server is not None:
            await self._server.wait_closed()
