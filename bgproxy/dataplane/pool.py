"""Everything about one colour that the per-request path needs, resolved once at start-up: its upstream, its
keep-alive pool of connections, its counters and the response header naming it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from ..core.addresses import Upstream
from ..core.model import Color
from ..core.stats import ColorStats
from .headers import LineKinds
from .upstream import RESPONSE_KINDS, UpstreamConnection

if TYPE_CHECKING:
    from prometheus_client import Counter

MAX_IDLE_PER_COLOR: Final = 512


class UpstreamPool:
    def __init__(
        self,
        color: Color,
        upstream: Upstream,
        *,
        stats: ColorStats,
        errors: dict[str, Counter],
        color_header: str,
        connect_timeout: float,
        on_health: Callable[[Color, bool], None],
    ) -> None:
        self.color = color
        self.upstream = upstream
        self.stats = stats
        self.errors = errors
        self.color_line = f"{color_header}: {color.value}\r\n".encode() if color_header else b""
        self.connect_timeout = connect_timeout
        self.on_health = on_health
        self.host_header = upstream.host_header.encode()
        self._ssl = ssl.create_default_context() if upstream.scheme == "https" else None
        self.idle: list[UpstreamConnection] = []
        self.line_kinds = LineKinds(RESPONSE_KINDS)  # response header lines seen before (upstream.py)

    def take(self) -> UpstreamConnection | None:
        """The most recently used idle connection: the least likely to have been closed by the upstream."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def put(self, conn: UpstreamConnection) -> None:
        if len(self.idle) < MAX_IDLE_PER_COLOR:
            self.idle.append(conn)
        else:
            conn.transport.close()

    def discard(self, conn: UpstreamConnection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    async def connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        up = self.upstream
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self), up.host, up.port, ssl=self._ssl
                )
        except (OSError, TimeoutError):
            self.on_health(self.color, False)  # a passive signal; active probes refine it
            raise
        self.on_health(self.color, True)
        return conn

    def close(self) -> None:
        for conn in self.idle:
            conn.transport.close()
        self.idle.clear()
