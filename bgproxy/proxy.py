"""The data plane: client connections, the colour decision, and forwarding to the colour's upstream.

Read it top to bottom as one request's path: `ClientConnection` parses the head with httptools, picks the
colour once (`routing.choose` on the state object of that instant), rewrites the head, and streams the body
to an `UpstreamConnection` taken from that colour's pool; the response streams back the same way. Requests
pipelined on one connection queue behind each other and are answered in order. Backpressure both ways: a
side whose write buffer is full pauses reading on the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING, cast

import httptools

from .core import routing
from .core.preview import cookie_value, forwarded_client
from .core.routing import Color
from .headers import IDEMPOTENT, REQUEST_DROP, connection_tokens, drop_named, has_token
from .log import log
from .upstream import UpstreamConnection, UpstreamPool
from .websocket import FrameTracker, close_frame

if TYPE_CHECKING:
    from collections.abc import Callable

    from .metrics import Metrics
    from .settings import Settings
    from .state import StateHolder

logger = logging.getLogger("bgproxy.proxy")
access_logger = logging.getLogger("bgproxy.access")

PENDING_LIMIT = 256 * 1024  # request body bytes held while no upstream connection is attached
# Why the client side is not being read: several reasons may overlap, reading resumes when none is left.
PAUSE_UPSTREAM_FULL, PAUSE_QUEUE, PAUSE_PENDING = 1, 2, 4
# What the connection's single deadline is for.
DL_NONE, DL_HEAD, DL_IDLE, DL_EXCHANGE = 0, 1, 2, 3

# Headers of a request that need a look; everything else is copied through untouched.
HOST, XF_PROTO, XF_HOST, EXPECT, COOKIE, PREVIEW = 1, 2, 3, 4, 5, 6
DROP, CONNECTION, TRANSFER_ENCODING, CONTENT_LENGTH, UPGRADE, XF_FOR, PROXY_CONNECTION = 10, 11, 12, 13, 14, 15, 16
_WATCH = {name: DROP for name in REQUEST_DROP} | {
    b"host": HOST,
    b"x-forwarded-proto": XF_PROTO,
    b"x-forwarded-host": XF_HOST,
    b"expect": EXPECT,
    b"cookie": COOKIE,
    b"connection": CONNECTION,
    b"transfer-encoding": TRANSFER_ENCODING,
    b"content-length": CONTENT_LENGTH,
    b"upgrade": UPGRADE,
    b"x-forwarded-for": XF_FOR,
    b"proxy-connection": PROXY_CONNECTION,
}
REASONS = {
    400: b"Bad Request",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


class Reject(Exception):
    """A request the proxy answers itself and never forwards."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def error_response(status: int, message: str, *, color_line: bytes = b"", close: bool = True) -> bytes:
    body = f"{status} {REASONS[status].decode()}: {message}\n".encode()
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status]),
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body),
            color_line,
            b"Connection: close\r\n\r\n" if close else b"\r\n",
            body,
        )
    )


class Exchange:
    """One request and its response; created when the request head is complete."""

    __slots__ = (
        "chunked",
        "connecting",
        "expect_continue",
        "has_body",
        "head",
        "head_request",
        "http10",
        "keep_alive",
        "method",
        "path",
        "pending",
        "pending_bytes",
        "pool",
        "request_done",
        "response_done",
        "retried",
        "retryable",
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
        self.chunked = False
        self.expect_continue = False
        self.websocket = False
        self.retryable = False
        self.head_request = method == b"HEAD"
        self.pending: list[bytes] = []  # body received while no upstream connection is attached yet
        self.pending_bytes = 0
        self.connecting: asyncio.Task[None] | None = None
        self.request_done = False
        self.response_done = False
        self.retried = False
        self.started = 0.0
        self.status = 0  # of the response, once its head went to the client
        self.upstream: UpstreamConnection | None = None


class ClientConnection(asyncio.Protocol):
    """One downstream TCP connection (usually from the Ingress), carrying many requests in turn."""

    transport: asyncio.Transport

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()  # [0] is being answered; later ones were pipelined behind it
        self.parsing: Exchange | None = None  # the exchange whose request body is still arriving
        self.tunnel: UpstreamConnection | None = None
        self.frames_in = FrameTracker()  # websocket frames client -> upstream, once tunnelled
        self.frames_out = FrameTracker()  # and upstream -> client
        # One deadline per connection, checked by the server's ticker; `active` marks progress since the
        # last tick, so the hot path sets a flag instead of reading the clock.
        self.deadline = 0.0
        self.deadline_kind = DL_NONE
        self.active = False
        self.peer = b""
        self.gone = False
        # The request head as it arrives: the upstream's head in `_head` ([4 slots for the request line] +
        # name, ": ", value, CRLF per header), and the headers that need a look in `_special` (kind, name, value).
        self._url = b""
        self._head: list[bytes] = []
        self._special: list[tuple[int, bytes, bytes]] = []
        self._counting = False  # this read is large enough to carry an oversized head: count header bytes
        self._head_size = 0
        self._head_raw = 0  # bytes of the earlier reads of a head that spans reads
        self._in_head = False
        self._reject: Reject | None = None
        self._out: list[bytes] = []
        self._out_conn: UpstreamConnection | None = None
        self._paused = 0
        self._write_paused = False
        self._upgrade_buffer: list[bytes] | None = None
        self._ws_closing = False
        self._reparse = False

    # -- asyncio.Protocol ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        srv = self.server
        if len(srv.connections) >= srv.max_connections:
            self.gone = True
            self.transport.write(error_response(503, "too many connections"))
            self.transport.close()
            srv.refused += 1
            return
        srv.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0].encode() if peer else b"unknown"
        self._set_head_deadline()

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            self.frames_in.feed(data)
            tunnel.transport.write(data)
            return
        if self._upgrade_buffer is not None:
            self._buffer_upgrade(data)
            return
        if self.gone:
            if self._ws_closing:  # the client's answer to our close frame: the handshake is complete
                self.transport.close()
            return
        # A read this small cannot hold too many header bytes ("a:" CRLF, 4 bytes, counts 5): headers are then
        # not counted one by one (the head's size is checked once, when it spans reads).
        self._counting = len(data) > self.server.count_reads_over
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._flush()
            self._upgraded(data[exc.args[0] :])
            return
        except httptools.HttpParserError as exc:
            self._flush()
            self._bad_request(exc)
            return
        if self._out:  # body pieces gathered during this read
            self._flush()
        self.active = True
        if self._in_head:
            self._head_incomplete(len(data))
        elif self.deadline_kind == DL_IDLE:  # bytes, but no request yet (part of a method, empty lines)
            self._set_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self.server.connections.discard(self)
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.transport.close()
        now = perf_counter()
        for ex in self.queue:
            if ex.connecting is not None:
                ex.connecting.cancel()
            if ex.upstream is not None:
                ex.upstream.abandon()
            if ex.started and not ex.response_done:
                ex.response_done = True
                stats = ex.pool.stats
                stats.inflight -= 1
                # 499: the client went away before its answer was complete (nginx's convention).
                stats.done(ex.method, 101 if ex.status == 101 else 499, now - ex.started)
        self.queue.clear()
        self.server.connection_closed()

    def pause_writing(self) -> None:
        self._write_paused = True
        conn = self.tunnel or (self.queue[0].upstream if self.queue else None)
        if conn is not None:
            conn.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        conn = self.tunnel or (self.queue[0].upstream if self.queue else None)
        if conn is not None:
            conn.resume_reading()
        self.active = True

    # -- httptools callbacks: the request -----------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        # The target is the first part of a request httptools reports: its first piece starts a new head
        # (one callback fewer per request than on_message_begin).
        if self._in_head:
            url = self._url + url
        else:
            self._in_head = True
            self._head = [b"", b"", b"", b""]
            self._special = []
            self._head_size = 0
            self._head_raw = 0
        self._url = url
        if len(url) > self.server.max_request_line:
            self._raise(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._counting or not self._in_head:  # a large read, or a chunked body's trailers (dropped)
            self._head_size += len(name) + len(value) + 4
            if self._head_size > self.server.max_header_bytes:
                self._raise(431, "request headers too large")
            if not self._in_head:
                return
        # Sorted on arrival: most headers go straight into the upstream's head, in their order.
        kind = self.server.watch.get(name.lower())
        if kind is None:
            self._head.extend((name, b": ", value, b"\r\n"))
            return
        if kind < DROP:
            self._head.extend((name, b": ", value, b"\r\n"))
        self._special.append((kind, name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        srv = self.server
        parser = self.parser
        out = self._head
        special = self._special
        if self._head_raw and self._head_bytes(out, special) > srv.max_header_bytes:
            self._raise(431, "request headers too large")
        self._head_size = 0  # from here on, trailers are counted
        method = parser.get_method()
        out[0] = method
        out[1] = b" "
        out[2] = self._url
        out[3] = b" HTTP/1.1\r\n"
        host = xff = conn_value = upgrade = te = length = preview = cookie = None
        has_xfp = has_xfh = expect = proxy_connection = False
        for kind, _, value in special:
            if kind < DROP:
                if kind == HOST:
                    if host is not None:
                        self._raise(400, "more than one Host header")
                    host = value
                elif kind == PREVIEW:
                    preview = value
                elif kind == COOKIE:
                    cookie = value if cookie is None else cookie + b"; " + value
                elif kind == XF_PROTO:
                    has_xfp = True
                elif kind == XF_HOST:
                    has_xfh = True
                elif kind == EXPECT:
                    expect = value.lower() == b"100-continue"
            elif kind == CONNECTION:
                conn_value = value if conn_value is None else conn_value + b"," + value
            elif kind == XF_FOR:
                xff = value if xff is None else xff + b", " + value
            elif kind == CONTENT_LENGTH:
                length = value
            elif kind == TRANSFER_ENCODING:
                te = value
            elif kind == UPGRADE:
                upgrade = value
            elif kind == PROXY_CONNECTION:
                proxy_connection = True
        keep_alive = parser.should_keep_alive()
        # Keep-alive without a Connection (or Proxy-Connection, which llhttp reads alike) header is HTTP/1.1:
        # 1.0 needs "Connection: keep-alive". That spares get_http_version, which formats a string.
        if keep_alive and conn_value is None and not proxy_connection:
            http10 = False
        else:
            http10 = parser.get_http_version() == "1.0"
        if host is None and not http10:
            self._raise(400, "missing Host header")
        if te is not None and te.strip().lower() != b"chunked":
            self._raise(501, f"Transfer-Encoding {te.decode('latin-1')!r} is not supported; use chunked")
        if method == b"CONNECT":
            self._raise(405, "CONNECT is not supported by this proxy")
        if conn_value is not None:
            extra = connection_tokens(conn_value)
            if extra:
                out[4:] = drop_named(out[4:], extra)
        websocket = (
            upgrade is not None
            and conn_value is not None
            and has_token(upgrade, b"websocket")
            and has_token(conn_value, b"upgrade")
        )
        chunked = te is not None
        has_body = chunked or (length is not None and length.strip(b"0") != b"")
        if upgrade is not None and not websocket and parser.should_upgrade():
            if has_body:
                self._raise(501, "protocol upgrade with a request body is not supported")
            self._reparse = True  # httptools stops at the upgrade; we ignore it and parse on

        # The decision: one look at the state of this instant.
        state = srv.holder.current
        if preview is None and (cookie is None or srv.cookie_name not in cookie):
            color = state.active
        else:
            color = self._preview_color(state, preview, cookie, xff)
        pool = srv.pools[color]

        peer = self.peer
        out += (b"X-Forwarded-For: ", xff + b", " + peer if xff else peer, b"\r\n")
        if not has_xfp:
            out.append(b"X-Forwarded-Proto: http\r\n")
        if host is None:
            host = pool.host_header
            out += (b"Host: ", host, b"\r\n")
        if not has_xfh:
            out += (b"X-Forwarded-Host: ", host, b"\r\n")
        if chunked:
            out.append(b"Transfer-Encoding: chunked\r\n")
        elif length is not None:
            out += (b"Content-Length: ", length, b"\r\n")
        if websocket:
            assert upgrade is not None
            out += (b"Connection: Upgrade\r\nUpgrade: ", upgrade, b"\r\n")
        out.append(b"\r\n")

        ex = Exchange(method, self._url, pool, b"".join(out))
        out.clear()  # nothing of the head stays on an idle keep-alive connection
        special.clear()
        ex.http10 = http10
        ex.keep_alive = keep_alive and not websocket
        ex.has_body = has_body
        ex.chunked = chunked
        ex.expect_continue = expect
        ex.websocket = websocket
        ex.retryable = not has_body and method in IDEMPOTENT
        self.parsing = ex
        queue = self.queue
        queue.append(ex)
        if len(queue) == 1:
            self._start(ex)
        else:
            self._pause(PAUSE_QUEUE)

    def _preview_color(
        self, state: routing.State, preview: bytes | None, cookie: bytes | None, xff: bytes | None
    ) -> Color:
        """The colour for a request that asks to preview (the header wins over the cookie), if it may."""
        srv = self.server
        if preview is not None:
            value: str | None = preview.decode("latin-1")
        else:
            assert cookie is not None
            value = cookie_value(cookie.decode("latin-1"), srv.cookie_str)
        if not value:
            return state.active
        policy = srv.preview_policy
        if not policy.open:
            client = forwarded_client(xff.decode("latin-1") if xff else None, self.peer.decode())
            value = policy.admit(value, client)
            if value is None:
                return state.active
        return routing.choose(state, value)

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is None or ex.response_done:
            return  # the answer came already (say, an early 413): the rest of this body is dropped
        if ex.upstream is not None:
            if ex.chunked:
                self._send(ex.upstream, (b"%x\r\n" % len(body), body, b"\r\n"))
            else:
                self._send(ex.upstream, (body,))
            return
        if ex.chunked:
            ex.pending += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            ex.pending.append(body)
        ex.pending_bytes += len(body)
        if ex.pending_bytes > PENDING_LIMIT:
            self._pause(PAUSE_PENDING)

    def on_message_complete(self) -> None:
        ex = self.parsing
        if ex is None:
            return
        self.parsing = None
        ex.request_done = True
        if ex.chunked and not ex.response_done:
            if ex.upstream is not None:
                self._send(ex.upstream, (b"0\r\n\r\n",))
            else:
                ex.pending.append(b"0\r\n\r\n")
        if ex.response_done and self.queue and self.queue[0] is ex:
            self._advance()

    # -- one exchange at a time ---------------------------------------------------------------------------

    def _start(self, ex: Exchange) -> None:
        pool = ex.pool
        pool.stats.inflight += 1
        ex.started = perf_counter()  # uvloop's clock moves in whole milliseconds: too coarse for durations
        self.deadline_kind = DL_EXCHANGE
        self.deadline = 0.0  # the ticker starts the read clock
        conn = pool.take()
        if conn is not None:
            self._attach(ex, conn)
        else:
            ex.connecting = self.loop.create_task(self._connect(ex))

    async def _connect(self, ex: Exchange) -> None:
        try:
            conn = await ex.pool.connect()
        except (OSError, TimeoutError) as exc:
            ex.connecting = None
            if not self.gone:
                detail = "connect timed out" if isinstance(exc, TimeoutError) else f"connect failed: {exc}"
                self._upstream_error(ex, "connect", 502, detail)
            return
        ex.connecting = None
        if self.gone or not self.queue or self.queue[0] is not ex:
            conn.transport.close()
            return
        self._attach(ex, conn)
        self._flush()

    def _attach(self, ex: Exchange, conn: UpstreamConnection) -> None:
        conn.bind(self, ex)
        ex.upstream = conn
        if self._write_paused:
            conn.pause_reading()
        if not ex.has_body:  # the head is the whole request
            conn.transport.write(ex.head)
            return
        self._send(conn, (ex.head, *ex.pending) if ex.pending else (ex.head,))
        if ex.pending_bytes:
            ex.pending = []
            ex.pending_bytes = 0
            self._resume(PAUSE_PENDING)

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
        now = perf_counter()
        ex.response_done = True
        ex.upstream = None
        stats = ex.pool.stats
        stats.inflight -= 1
        stats.done(ex.method, ex.status, now - ex.started)
        if self.server.access_log:
            log(
                access_logger,
                "request",
                method=ex.method.decode(),
                path=ex.path.decode("latin-1"),
                status=ex.status,
                color=ex.pool.color.value,
                ms=round((now - ex.started) * 1000, 3),
            )
        if not ex.keep_alive:
            self.gone = True
            self.transport.close()
            return
        if ex.request_done:
            self._advance()

    def _advance(self) -> None:
        queue = self.queue
        queue.popleft()
        if queue:
            if len(queue) == 1:
                self._resume(PAUSE_QUEUE)
            self._start(queue[0])
            self._flush()  # called from the upstream side too, where no data_received will flush
        elif self.server.draining:
            self.gone = True
            self.transport.close()
        elif self._in_head:  # a pipelined head is still arriving
            self._set_head_deadline()
        else:
            self.deadline_kind = DL_IDLE
            self.deadline = 0.0  # the ticker starts the idle clock

    def upstream_failed(self, ex: Exchange, conn: UpstreamConnection, kind: str, reason: str) -> None:
        if ex.response_done or self.gone:
            return
        ex.upstream = None
        if ex.status:
            self._cut(ex, kind)
            return
        if ex.retryable and not ex.retried and not conn.got_bytes and conn.used > 1:
            # A pooled connection the upstream closed just before we reused it: safe to try once more.
            ex.retried = True
            ex.connecting = self.loop.create_task(self._connect(ex))
            return
        self._upstream_error(ex, kind, 502, reason)

    def _cut(self, ex: Exchange, kind: str) -> None:
        """Part of the response reached the client: close the connection so the truncation is visible."""
        ex.pool.errors[kind].inc()
        if ex.upstream is not None:
            ex.upstream.abandon()
            ex.upstream = None
        ex.response_done = True
        ex.pool.stats.inflight -= 1
        ex.pool.stats.done(ex.method, ex.status, perf_counter() - ex.started)
        log(logger, "response_cut", level=logging.WARNING, color=ex.pool.color.value, kind=kind)
        self.gone = True
        self.transport.abort()

    def _upstream_error(self, ex: Exchange, kind: str, status: int, reason: str) -> None:
        pool = ex.pool
        pool.errors[kind].inc()
        ex.status = status
        keep = self.keep_alive_for(ex)
        ex.keep_alive = keep
        message = f"{pool.color.value} upstream ({pool.upstream.url}): {reason}"
        self.transport.write(error_response(status, message, color_line=pool.color_line, close=not keep))
        log(
            logger,
            "upstream_error",
            level=logging.WARNING,
            color=pool.color.value,
            kind=kind,
            status=status,
            reason=reason,
        )
        self.response_complete(ex)

    # -- websockets ---------------------------------------------------------------------------------------

    def _upgraded(self, rest: bytes) -> None:
        if self._reparse:
            # Not a websocket: the Upgrade header was dropped as hop-by-hop; parse on as plain HTTP.
            self._reparse = False
            self.parser = httptools.HttpRequestParser(self)
            if rest:
                self.data_received(rest)
            return
        self._upgrade_buffer = []
        if rest:
            self._buffer_upgrade(rest)

    def _buffer_upgrade(self, data: bytes) -> None:
        # Frames a client sends before the upstream's 101: held (bounded) until the tunnel opens.
        assert self._upgrade_buffer is not None
        self._upgrade_buffer.append(data)
        if sum(map(len, self._upgrade_buffer)) > PENDING_LIMIT:
            self._pause(PAUSE_PENDING)

    def start_tunnel(self, conn: UpstreamConnection, rest: bytes) -> None:
        """The upstream answered 101: from now on both sides are a byte pipe, pinned to this colour."""
        ex = self.queue[0] if self.queue else None
        if ex is None or not ex.websocket or self.gone:
            conn.abandon()
            self.gone = True
            self.transport.abort()
            return
        conn.detach_for_tunnel(self)
        ex.upstream = None
        self.tunnel = conn
        self.deadline_kind = DL_NONE
        self.deadline = 0.0
        if rest:
            self.frames_out.feed(rest)
            self.transport.write(rest)
        buffered = self._upgrade_buffer or []
        self._upgrade_buffer = None
        for data in buffered:
            self.frames_in.feed(data)
        if buffered:
            conn.transport.writelines(buffered)
        self._paused = 0
        self.transport.resume_reading()

    def close_websocket(self) -> None:
        """End of a drain: a close frame (1001, going away) to both sides, if that fits between frames."""
        tunnel = self.tunnel
        if tunnel is None:
            return
        if self.frames_in.at_boundary and self.frames_out.at_boundary:
            # RFC 6455 §7.1.1: the client answers with its own close frame before the TCP connection ends, so
            # stop relaying and close only once it spoke (or the drain's last second is up).
            self.tunnel = None
            tunnel.tunnel = None
            self.gone = self._ws_closing = True
            self.transport.write(close_frame(masked=False))
            tunnel.transport.write(close_frame(masked=True))
            tunnel.transport.close()
        else:  # mid-frame: a close frame now would corrupt the stream
            self.transport.abort()
            tunnel.transport.abort()

    def tunnel_closed(self) -> None:
        self.tunnel = None
        if not self.gone:
            self.transport.close()

    # -- errors, limits and timers ------------------------------------------------------------------------

    def _raise(self, status: int, reason: str) -> None:
        self._reject = Reject(status, reason)
        raise self._reject

    def _bad_request(self, exc: Exception) -> None:
        reject = self._reject
        if reject is None:
            detail = str(exc)
            # llhttp's words for a coding other than chunked at the end: an unknown coding, not a bad request.
            status = 501 if "Request has invalid `Transfer-Encoding`" in detail else 400
            reject = Reject(status, f"invalid request: {detail}")
        self._reject = None
        self.parser = httptools.HttpRequestParser(self)  # never parse past garbage
        log(
            logger,
            "bad_request",
            level=logging.INFO,
            status=reject.status,
            reason=reject.reason,
            peer=self.peer.decode(),
        )
        self._refuse(reject.status, reject.reason)

    def _refuse(self, status: int, reason: str) -> None:
        """Answer once the responses already owed on this connection are out, then close."""
        if self.gone:
            return
        self.transport.pause_reading()
        self._paused = -1  # never resumed: nothing after a refused request is read
        queue = self.queue
        first = queue[0] if queue else None
        if first is None or first.response_done:
            self.gone = True
            self.transport.write(error_response(status, reason))
            self.transport.close()
            return
        while len(queue) > 1:
            queue.pop()  # pipelined behind the one in progress: never started, never answered
        if first is self.parsing:
            # The broken part is this exchange's own body: the upstream will not get the rest of it.
            self.parsing = None
            if first.status:
                self._cut(first, "protocol")
                return
            if first.upstream is not None:
                first.upstream.abandon()
            if first.connecting is not None:
                first.connecting.cancel()
                first.connecting = None
            first.status = status
            first.keep_alive = False
            self.transport.write(error_response(status, reason))
            self.response_complete(first)
            return
        # Let the exchange in progress finish; the connection closes after it.
        first.keep_alive = False
        self.parsing = None

    @staticmethod
    def _head_bytes(head: list[bytes], special: list[tuple[int, bytes, bytes]]) -> int:
        """Header bytes of a head (name, value and 4 per header), as MAX_HEADER_BYTES counts them."""
        dropped = [(name, value) for kind, name, value in special if kind >= DROP]
        return sum(map(len, head)) + sum(len(name) + len(value) + 4 for name, value in dropped)

    def _head_incomplete(self, received: int) -> None:
        if self._head_raw:
            self._head_raw += received
        else:  # the head began in this read, perhaps after the body of the request before it: count its own part
            self._head_raw = len(self._url) + self._head_bytes(self._head, self._special)
        srv = self.server
        if self._head_raw > srv.max_request_line + srv.max_header_bytes:
            self._refuse(431 if len(self._head) > 4 or self._special else 414, "request head too large")
            return
        if self.deadline_kind != DL_HEAD and not self.queue:  # behind an exchange, its deadline rules
            self._set_head_deadline()

    def _set_head_deadline(self) -> None:
        # Absolute, not refreshed by progress: a client dribbling a byte at a time must still finish in time.
        self.deadline_kind = DL_HEAD
        self.deadline = self.loop.time() + self.server.header_timeout

    def timed_out(self) -> None:
        kind = self.deadline_kind
        self.deadline_kind = DL_NONE
        self.deadline = 0.0
        if kind == DL_IDLE:
            self.gone = True
            self.transport.close()
        elif kind == DL_HEAD:
            self._refuse(408, "request head not received in time")
        elif kind == DL_EXCHANGE and self.queue:
            ex = self.queue[0]
            if ex.status:
                self._cut(ex, "timeout")
            elif not ex.request_done:
                if ex.upstream is not None:
                    ex.upstream.abandon()
                ex.keep_alive = False
                ex.status = 408
                self.transport.write(error_response(408, "request body not received in time"))
                self.response_complete(ex)
            else:
                if ex.upstream is not None:
                    ex.upstream.abandon()
                if ex.connecting is not None:
                    ex.connecting.cancel()
                    ex.connecting = None
                self._upstream_error(ex, "timeout", 504, f"no response within {self.server.read_timeout:g}s")

    def _pause(self, reason: int) -> None:
        if not self._paused and not self.gone:
            self.transport.pause_reading()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if self._paused < 0:
            return
        was = self._paused
        self._paused &= ~reason
        if was and not self._paused and not self.gone:
            self.transport.resume_reading()

    def pause_reading_for_upstream(self) -> None:
        self._pause(PAUSE_UPSTREAM_FULL)

    def resume_reading_for_upstream(self) -> None:
        self._resume(PAUSE_UPSTREAM_FULL)

    @property
    def idle(self) -> bool:
        return not self.queue and self.tunnel is None


class ProxyServer:
    """The listening socket, the colour pools, and the timers and drain that span connections."""

    def __init__(
        self,
        settings: Settings,
        holder: StateHolder,
        metrics: Metrics,
        *,
        on_health: Callable[[Color, bool], None] | None = None,
    ) -> None:
        self.settings = settings
        self.holder = holder
        self.loop = asyncio.get_running_loop()
        self.pools: dict[Color, UpstreamPool] = {
            color: UpstreamPool(
                color,
                upstream,
                stats=metrics.colors[color],
                errors={
                    kind: metrics.error_counters[(color, kind)] for kind in ("connect", "timeout", "reset", "protocol")
                },
                color_header=settings.color_header,
                connect_timeout=settings.upstream_connect_timeout,
                on_health=on_health or metrics.set_healthy,
            )
            for color, upstream in settings.upstreams().items()
        }
        self.watch = dict(_WATCH)
        if settings.preview_header:
            self.watch[settings.preview_header.lower().encode()] = PREVIEW
        self.cookie_str = settings.preview_cookie
        self.preview_policy = settings.preview_policy
        self.cookie_name = settings.preview_cookie.encode()
        self.read_timeout = settings.upstream_read_timeout
        self.header_timeout = settings.header_timeout
        self.idle_timeout = settings.idle_timeout
        self.max_request_line = settings.max_request_line
        self.max_header_bytes = settings.max_header_bytes
        self.count_reads_over = settings.max_header_bytes * 4 // 5
        self.max_connections = settings.max_connections
        self.access_log = settings.access_log
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._tick_every = min(1.0, max(0.05, min(self.read_timeout, self.header_timeout, self.idle_timeout) / 4))
        self._all_closed: asyncio.Event | None = None

    async def start(self) -> None:
        host, port = self.settings.listen
        self._server = await self.loop.create_server(
            lambda: ClientConnection(self), host, port, backlog=2048, reuse_address=True
        )
        self._ticker = self.loop.call_later(self._tick_every, self._tick)

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def _tick(self) -> None:
        """Expire connections past their deadline; a timeout fires within one tick of its due time."""
        now = self.loop.time()
        timeouts = {DL_IDLE: self.idle_timeout, DL_EXCHANGE: self.read_timeout}
        expired = []
        for conn in self.connections:
            kind = conn.deadline_kind
            if kind == DL_NONE:
                continue
            if kind == DL_HEAD:
                if conn.deadline <= now:
                    expired.append(conn)
            elif conn.active or not conn.deadline:
                conn.active = False
                conn.deadline = now + timeouts[kind]
            elif conn.deadline <= now:
                expired.append(conn)
        for conn in expired:
            conn.timed_out()
        self._ticker = self.loop.call_later(self._tick_every, self._tick)

    def connection_closed(self) -> None:
        # During a drain: done once only websockets are left (they get their close frame at the end).
        if self._all_closed is not None and all(c.tunnel is not None for c in self.connections):
            self._all_closed.set()

    async def drain(self, *, timeout: float) -> None:  # noqa: ASYNC109 - the drain budget, not a call timeout
        """Stop listening, let in-flight exchanges finish (bounded), then close what is left."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.idle:
                conn.gone = True
                conn.transport.close()
        self._all_closed = asyncio.Event()
        self.connection_closed()
        try:
            async with asyncio.timeout(timeout):
                await self._all_closed.wait()
        except TimeoutError:
            log(logger, "drain_timeout", level=logging.WARNING, open=len(self.connections))
        websockets = [c for c in self.connections if c.tunnel is not None]
        for conn in websockets:
            conn.close_websocket()
        if websockets:
            # The close frames are written; give the peers a moment to read them before the sockets go.
            self._all_closed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    while self.connections:
                        self._all_closed.clear()
                        await self._all_closed.wait()
        for conn in list(self.connections):
            conn.transport.abort()

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.transport.abort()
        for pool in self.pools.values():
            pool.close()
        if self._server is not None:
            await self._server.wait_closed()
