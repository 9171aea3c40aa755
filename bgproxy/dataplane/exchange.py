"""One request and its response (`Exchange`), created by the client side and answered by the upstream side."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .pool import UpstreamPool
    from .upstream import UpstreamConnection


# Final: compiled, a C static rather than a lookup in the module's dict per request. perf_counter, as uvloop's clock
# moves in whole milliseconds: too coarse for durations.
perf_counter: Final = time.perf_counter


class Exchange:
    """One request and its response; created when the request head is complete, on the colour chosen then."""

    __slots__ = (
        "chunked",
        "connecting",
        "expect_continue",
        "has_body",
        "head",
        "head_request",
        "http10",
        "ignore_upgrade",
        "keep_alive",
        "length",
        "method",
        "path",
        "pending",
        "pending_bytes",
        "pool",
        "preview",
        "request_done",
        "response_done",
        "retried",
        "retryable",
        "set_cookie",
        "started",
        "status",
        "upstream",
        "websocket",
    )

    def __init__(self, method: bytes, path: bytes, pool: UpstreamPool, head: bytes) -> None:
        # Per request, so the flags the head decides are set by the caller (cheaper than keyword arguments).
        self.method = method
        self.path = path
        self.pool = pool
        self.head = head  # the request head as the upstream gets it
        self.http10 = False
        self.keep_alive = True
        self.has_body = False
        self.length = 0  # of the request body by its Content-Length; -1 when chunked
        self.chunked = False
        self.expect_continue = False
        self.websocket = False
        self.ignore_upgrade = False  # an Upgrade that is not a websocket: dropped as hop-by-hop, parsed on as HTTP
        self.retryable = False
        self.set_cookie = b""  # a sticky bucket drawn for this request, handed to the client with the response
        self.preview = False  # a preview is not live traffic: it does not keep its colour from being drained
        self.head_request = method == b"HEAD"
        self.pending: list[bytes] = []  # body received while no upstream connection is attached yet
        self.pending_bytes = 0
        self.connecting: asyncio.Task[None] | None = None
        self.request_done = False
        self.response_done = False
        self.retried = False
        self.started = 0.0  # perf_counter() when it started: from then on it counts in flight on its colour
        self.status = 0  # of the response, once its head went to the client
        self.upstream: UpstreamConnection | None = None

    def finish(self, code: int) -> float:
        """The one place an exchange's end is counted: status `code` on its colour; returns the time it took."""
        self.response_done = True
        now = perf_counter()
        stats = self.pool.stats
        stats.inflight -= 1
        if self.preview:
            stats.previews -= 1
        else:
            stats.ended = now
        return stats.done(self.method, code, self.started, now)
