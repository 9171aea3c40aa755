"""One client connection (usually from the Ingress), read top to bottom as the path of its requests.

httptools parses each request head; `read_request` checks it, chooses its colour once (on the state object of that
instant) and rewrites the head into an `Exchange`; the exchange takes a connection from its colour's pool and the
body streams on to it; the response streams back from the upstream side (upstream.py). Requests pipelined on one
connection queue behind each other and are answered in order. Backpressure both ways: a side whose write buffer is
full pauses reading on the other (flow.py). What the proxy answers itself is in refusals.py, websockets in tunnel.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING, cast

import httptools

from ..log import log
from . import refusals
from .exchange import Exchange
from .flow import PENDING, PENDING_LIMIT, QUEUE, UPSTREAM_FULL, ReadGate
from .headers import LAST_CHUNK, chunk
from .refusals import Deadline, Reject, error_response
from .request_head import DROP, Special, head_bytes, head_incomplete, read_request
from .tunnel import UpgradeWait, start_tunnel

if TYPE_CHECKING:
    from .server import ProxyServer
    from .upstream import UpstreamConnection

access_logger = logging.getLogger("bgproxy.access")
# Plain-int module constants for the per-request path (exact ints compare on CPython's fast path).
NO_DEADLINE, HEAD, IDLE, EXCHANGE = (int(k) for k in Deadline)


class ClientConnection(asyncio.Protocol):
    """One downstream TCP connection, carrying many requests in turn."""

    transport: asyncio.Transport

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()  # [0] is being answered; later ones were pipelined behind it
        self.parsing: Exchange | None = None  # the exchange whose request body is still arriving
        self.gate = ReadGate()
        # One deadline per connection, checked by the server's ticker; `progress` marks progress since the last
        # tick, so the per-request path sets a flag instead of reading the clock.
        self.deadline = 0.0
        self.deadline_kind = NO_DEADLINE
        self.progress = False
        self.peer = b""
        self.closed = False  # closed, or closing: nothing more is written or read
        self.write_paused = False
        # The request head as it arrives: the upstream's head in `head` ([4 slots for the request line] + name,
        # ": ", value, CRLF per header), and the headers that need a look in `special`.
        self.url = b""
        self.head: list[bytes] = []
        self.special: list[Special] = []
        self.in_head = False
        self.counting = False  # this read is large enough to carry an oversized head: count header bytes
        self.head_size = 0
        self.head_raw = 0  # bytes of the earlier reads of a head that spans reads
        self.body_seen = False  # a chunked body: this read carried body bytes
        self.framing = 0  # ...and bytes since the last body bytes (chunk headers, trailers)
        self._out: list[bytes] = []
        self._out_conn: UpstreamConnection | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        srv = self.server
        if not srv.admit(self):
            self.closed = True
            self.transport.write(error_response(503, "too many connections"))
            self.transport.close()
            return
        self.gate.transport = self.transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0].encode() if peer else b"unknown"
        self.set_head_deadline()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        # A read this small cannot hold too many header bytes ("a:" CRLF, 4 bytes, counts 5): headers are then
        # not counted one by one (the head's size is checked once, when it spans reads).
        self.counting = len(data) > self.server.count_reads_over
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._flush()
            self._upgrade(data[exc.args[0] :])
            return
        except httptools.HttpParserError as exc:
            self._flush()
            refusals.bad_request(self, exc)
            return
        if self._out:  # body pieces gathered during this read
            self._flush()
        self.progress = True
        if self.in_head:
            head_incomplete(self, len(data))
        elif self.deadline_kind == IDLE:  # bytes, but no request yet (part of a method, empty lines)
            self.set_head_deadline()
        elif self.parsing is not None and self.parsing.chunked:
            refusals.framing_read(self, len(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connection_closed(self)
        for ex in self.queue:
            refusals.drop_upstream(ex)
            if ex.started and not ex.response_done:
                # 499: the client went away before its answer was complete (nginx's convention).
                ex.finish(499)
        self.queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        conn = self.queue[0].upstream if self.queue else None
        if conn is not None:
            conn.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        conn = self.queue[0].upstream if self.queue else None
        if conn is not None:
            conn.resume_reading()
        self.progress = True

    # -- httptools callbacks: the request -----------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        # The target is the first part of a request httptools reports: its first piece starts a new head
        # (one callback fewer per request than on_message_begin).
        if self.in_head:
            url = self.url + url
        else:
            self.in_head = True
            self.head = [b"", b"", b"", b""]
            self.special = []
            self.head_size = 0
            self.head_raw = 0
        self.url = url
        if len(url) > self.server.max_request_line:
            raise Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.counting or not self.in_head:  # a large read, or a chunked body's trailers (dropped)
            self.head_size += len(name) + len(value) + 4
            if self.head_size > self.server.max_header_bytes:
                raise Reject(431, "request headers too large" if self.in_head else "request trailers too large")
            if not self.in_head:
                return
        # Sorted on arrival: most headers go straight into the upstream's head, in their order.
        kind = self.server.watch.get(name.lower())
        if kind is None:
            self.head.extend((name, b": ", value, b"\r\n"))
            return
        if kind < DROP:
            self.head.extend((name, b": ", value, b"\r\n"))
        self.special.append((kind, name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        srv = self.server
        if self.head_raw and head_bytes(self.head, self.special) > srv.max_header_bytes:
            raise Reject(431, "request headers too large")
        self.head_size = 0  # from here on, trailers are counted
        ex = read_request(self.parser, self.url, self.head, self.special, self.peer, srv.chooser)
        self.head.clear()  # nothing of the head stays on an idle keep-alive connection
        self.special.clear()
        self.parsing = ex
        queue = self.queue
        queue.append(ex)
        if len(queue) == 1:
            self._start(ex)
        else:
            self.gate.pause(QUEUE)

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is None or ex.response_done:
            return  # the answer came already (say, an early 413): the rest of this body is dropped
        if ex.chunked:
            self.body_seen = True
            pieces: tuple[bytes, ...] = chunk(body)
        else:
            pieces = (body,)
        if ex.upstream is not None:
            self._send(ex.upstream, pieces)
            return
        ex.pending += pieces
        ex.pending_bytes += len(body)
        if ex.pending_bytes > PENDING_LIMIT:
            self.gate.pause(PENDING)

    def on_message_complete(self) -> None:
        ex = self.parsing
        if ex is None:
            return
        self.parsing = None
        ex.request_done = True
        if ex.chunked:
            self.framing = 0
        if ex.chunked and not ex.response_done:
            if ex.upstream is not None:
                self._send(ex.upstream, (LAST_CHUNK,))
            else:
                ex.pending.append(LAST_CHUNK)
        if ex.response_done and self.queue and self.queue[0] is ex:
            self._advance()

    # -- one exchange at a time ---------------------------------------------------------------------------

    def _start(self, ex: Exchange) -> None:
        ex.pool.stats.inflight += 1  # until Exchange.finish
        if ex.preview:
            ex.pool.stats.previews += 1
        ex.started = perf_counter()  # uvloop's clock moves in whole milliseconds: too coarse for durations
        self.deadline_kind = EXCHANGE
        self.deadline = 0.0  # the ticker starts the read clock
        conn = ex.pool.take()
        if conn is not None:
            self._attach(ex, conn)
        else:
            ex.connecting = self.loop.create_task(self._connect(ex))

    async def _connect(self, ex: Exchange) -> None:
        try:
            conn = await ex.pool.connect()
        except (OSError, TimeoutError) as exc:
            ex.connecting = None
            if not self.closed:
                detail = "connect timed out" if isinstance(exc, TimeoutError) else f"connect failed: {exc}"
                refusals.upstream_error(self, ex, "connect", 502, detail)
            return
        ex.connecting = None
        if self.closed or not self.queue or self.queue[0] is not ex:
            conn.transport.close()
            return
        self._attach(ex, conn)
        self._flush()

    def _attach(self, ex: Exchange, conn: UpstreamConnection) -> None:
        conn.bind(self, ex)
        ex.upstream = conn
        if self.write_paused:
            conn.pause_reading()
        if not ex.has_body:  # the head is the whole request
            conn.transport.write(ex.head)
            return
        self._send(conn, (ex.head, *ex.pending) if ex.pending else (ex.head,))
        if ex.pending_bytes:
            ex.pending = []
            ex.pending_bytes = 0
            self.gate.resume(PENDING)

    def _send(self, conn: UpstreamConnection, pieces: tuple[bytes, ...]) -> None:
        # Gathered during one data_received, written with one writelines afterwards.
        if self._out_conn is not conn:
            self._flush()
            self._out_conn = conn
        self._out += pieces

    def _flush(self) -> None:
        out = self._out
        if out:
            self._out = []
            conn = self._out_conn
            if conn is not None and not conn.closed:
                conn.transport.writelines(out)

    def keep_alive_for(self, ex: Exchange) -> bool:
        """Whether the connection stays open after this response; decided when the response head is built."""
        return ex.keep_alive and ex.request_done and not self.server.draining

    def response_complete(self, ex: Exchange) -> None:
        ex.upstream = None
        seconds = ex.finish(ex.status)
        if self.server.access_log:
            log(
                access_logger,
                "request",
                method=ex.method.decode(),
                path=ex.path.decode("latin-1"),
                status=ex.status,
                color=ex.pool.color.value,
                ms=round(seconds * 1000, 3),
            )
        if not ex.keep_alive:
            self.closed = True
            self.transport.close()
            return
        if ex.request_done:
            self._advance()

    def _advance(self) -> None:
        queue = self.queue
        queue.popleft()
        if queue:
            if len(queue) == 1:
                self.gate.resume(QUEUE)
            self._start(queue[0])
            self._flush()  # called from the upstream side too, where no data_received will flush
        elif self.server.draining:
            self.closed = True
            self.transport.close()
        elif self.in_head:  # a pipelined head is still arriving
            self.set_head_deadline()
        else:
            self.deadline_kind = IDLE
            self.deadline = 0.0  # the ticker starts the idle clock

    def set_head_deadline(self) -> None:
        # Absolute, not refreshed by progress: a client dribbling a byte at a time must still finish in time.
        self.deadline_kind = HEAD
        self.deadline = self.loop.time() + self.server.header_timeout

    # -- what the upstream side calls (exchange.Downstream) ------------------------------------------------

    def upstream_failed(self, ex: Exchange, conn: UpstreamConnection, kind: str, reason: str) -> None:
        if ex.response_done or self.closed:
            return
        ex.upstream = None
        if ex.status:
            refusals.cut(self, ex, kind)
            return
        if ex.retryable and not ex.retried and not conn.got_bytes and conn.used > 1:
            # A pooled connection the upstream closed just before we reused it: safe to try once more.
            ex.retried = True
            ex.connecting = self.loop.create_task(self._connect(ex))
            return
        refusals.upstream_error(self, ex, kind, 502, reason)

    def pause_reading_for_upstream(self) -> None:
        self.gate.pause(UPSTREAM_FULL)

    def resume_reading_for_upstream(self) -> None:
        self.gate.resume(UPSTREAM_FULL)

    # -- websockets -----------------------------------------------------------------------------------------

    def _upgrade(self, rest: bytes) -> None:
        """httptools stopped at a request's upgrade: hold what follows until the upstream answers."""
        ex = self.queue[-1] if self.queue else None
        if ex is not None and ex.ignore_upgrade:
            # Not a websocket: the Upgrade header was dropped as hop-by-hop; parse on as plain HTTP.
            self.parser = httptools.HttpRequestParser(self)
            if rest:
                self.data_received(rest)
            return
        self.transport.set_protocol(UpgradeWait(self, rest))

    def start_tunnel(self, conn: UpstreamConnection, rest: bytes) -> None:
        """The upstream answered 101: from now on both sides are a byte pipe, pinned to this colour."""
        ex = self.queue[0] if self.queue else None
        if ex is None or not ex.websocket or self.closed:
            conn.abandon()
            self.closed = True
            self.transport.abort()
            return
        self.server.tunnel_opened(self, start_tunnel(self, ex, conn, rest, self.server.tunnel_closed))

    @property
    def idle(self) -> bool:
        return not self.queue
