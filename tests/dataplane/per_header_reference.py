"""Both sides of the data plane as they were before heads were taken whole (bgproxy 5d693dd): httptools calls
`on_url` (`on_status`), and `on_header` once per header; headers are sorted as they arrive and the head is rewritten
from them. The client side (`PerHeaderClient`) and the upstream side (`PerHeaderUpstream`).

Kept verbatim (bar names, and the tunnel-opening method, which the comparison never reaches) as the reference that
test_head_differential.py compares the data plane with: what reaches the upstream, and what is refused; what
reaches the client. Not used by bgproxy itself.

Two bugs of the old path that the new one fixed are fixed here too (marked FIXED), so that the comparison shows only
differences nobody meant; test_head_differential.py tests each fix on the new path by itself:
- "Content-Length: 0 " (trailing whitespace, which llhttp allows) counted as a body, so such an upgrade request was
  refused with 501;
- headers named by a 1xx response's Connection header were forwarded (the final response's were dropped).
"""

# ruff: noqa
# mypy: ignore-errors

from __future__ import annotations

import asyncio
import logging
from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING, cast

import httptools

from bgproxy.dataplane import refusals
from bgproxy.dataplane.choose import Chooser
from bgproxy.dataplane.exchange import Exchange
from bgproxy.dataplane.flow import PENDING, PENDING_LIMIT, QUEUE, UPSTREAM_FULL, ReadGate
from bgproxy.dataplane.headers import (
    IDEMPOTENT,
    LAST_CHUNK,
    PLAIN_CONNECTION,
    RESPONSE_DROP,
    chunk,
    connection_tokens,
    has_token,
)
from bgproxy.dataplane.refusals import Deadline, Reject, error_response
from bgproxy.dataplane.request_head import (
    CONNECTION,
    CONTENT_LENGTH,
    COOKIE,
    DROP,
    EXPECT,
    HOST,
    PREVIEW,
    PROXY_CONNECTION,
    STICKY,
    TRANSFER_ENCODING,
    UPGRADE,
    XF_FOR,
    XF_HOST,
    XF_PROTO,
)
from bgproxy.dataplane.tunnel import UpgradeWait

if TYPE_CHECKING:
    from bgproxy.dataplane.client import ClientConnection
    from bgproxy.dataplane.pool import UpstreamPool
    from bgproxy.dataplane.server import ProxyServer
    from bgproxy.dataplane.upstream import UpstreamConnection


def drop_named(lines: list[bytes], drop: frozenset[bytes]) -> list[bytes]:
    """Header lines (name, ": ", value, CRLF per header), in order, without the named ones."""
    out: list[bytes] = []
    for i in range(0, len(lines), 4):
        if lines[i].lower() not in drop:
            out += lines[i : i + 4]
    return out


Special = tuple[int, bytes, bytes]  # (kind, name as sent, value)
access_logger = logging.getLogger("bgproxy.access")
NO_DEADLINE, HEAD, IDLE, EXCHANGE = (int(k) for k in Deadline)


def head_bytes(head: list[bytes], special: list[Special]) -> int:
    """Header bytes of a head (name, value and 4 per header), as MAX_HEADER_BYTES counts them."""
    dropped = [(name, value) for kind, name, value in special if kind >= DROP]
    return sum(map(len, head)) + sum(len(name) + len(value) + 4 for name, value in dropped)


def head_incomplete(conn: ClientConnection, received: int) -> None:
    """A read ended inside a request head: bound the head's size (httptools buffers a header until it ends)."""
    if conn.head_raw:
        conn.head_raw += received
    else:  # the head began in this read, perhaps after the body of the request before it: count its own part
        conn.head_raw = len(conn.url) + head_bytes(conn.head, conn.special)
    srv = conn.server
    if conn.head_raw > srv.max_request_line + srv.max_header_bytes:
        refusals.refuse(conn, 431 if len(conn.head) > 4 or conn.special else 414, "request head too large")
        return
    if conn.deadline_kind != refusals.Deadline.HEAD and not conn.queue:  # behind an exchange, its deadline rules
        conn.set_head_deadline()


def read_request(
    parser: httptools.HttpRequestParser,
    url: bytes,
    out: list[bytes],
    special: list[Special],
    peer: bytes,
    chooser: Chooser,
) -> Exchange:
    """The exchange for a complete request head: checked, its colour chosen, its head rewritten for the upstream.

    `out` holds 4 empty slots for the request line, then name, ": ", value, CRLF per forwarded header. Raises
    `Reject` for a request that must not be forwarded.
    """
    method = parser.get_method()
    out[0] = method
    out[1] = b" "
    out[2] = url
    out[3] = b" HTTP/1.1\r\n"
    host = xff = conn_value = upgrade = te = length = preview = cookie = sticky = None
    has_xfp = has_xfh = expect = proxy_connection = False
    for kind, _, value in special:
        if kind < DROP:
            if kind == HOST:
                if host is not None:
                    raise Reject(400, "more than one Host header")
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
            elif kind == STICKY:
                sticky = value
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
        raise Reject(400, "missing Host header")
    if te is not None and te.strip().lower() != b"chunked":
        raise Reject(501, f"Transfer-Encoding {te.decode('latin-1')!r} is not supported; use chunked")
    if method == b"CONNECT":
        raise Reject(405, "CONNECT is not supported by this proxy")
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
    has_body = chunked or (length is not None and int(length) > 0)  # FIXED: was length.strip(b"0") != b""
    ignore_upgrade = upgrade is not None and not websocket and parser.should_upgrade()
    if ignore_upgrade and has_body:
        raise Reject(501, "protocol upgrade with a request body is not supported")

    # The colour: the common case (no preview asked for, all ordinary traffic on the active colour) inline.
    state = chooser.state.current
    if preview is None and not state.weight and (cookie is None or chooser.preview_bytes not in cookie):
        pool = chooser.pools[state.active]
        set_cookie = b""
        previewed = False
    else:
        pool, set_cookie, previewed = chooser.choose(state, preview, cookie, sticky, xff, peer)

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

    ex = Exchange(method, url, pool, b"".join(out))
    ex.http10 = http10
    ex.keep_alive = keep_alive and not websocket
    ex.has_body = has_body
    ex.chunked = chunked
    ex.expect_continue = expect
    ex.websocket = websocket
    ex.ignore_upgrade = ignore_upgrade
    ex.retryable = not has_body and method in IDEMPOTENT
    ex.set_cookie = set_cookie
    if previewed:
        ex.preview = True
    return ex


class PerHeaderClient(asyncio.Protocol):
    """The client side as it was: httptools calls on_url and on_header per header (see the module docstring)."""

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
        self.counting = len(data) > self.server.max_header_bytes * 4 // 5
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

    @property
    def idle(self) -> bool:
        return not self.queue


_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}


def status_line(status: int, reason: bytes) -> bytes:
    """The status line as the client gets it; upstreams repeat a handful of them, so they are built once."""
    line = _STATUS_LINES.get((status, reason))
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        if len(_STATUS_LINES) < 256:  # bounded: reason phrases are free text
            _STATUS_LINES[(status, reason)] = line
    return line


class PerHeaderUpstream(asyncio.Protocol):
    """The upstream side as it was: httptools calls on_status, and on_header per header."""

    transport: asyncio.Transport

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.closed = False
        self.parser = httptools.HttpResponseParser(self)
        self.client: ClientConnection | None = None
        self.ex: Exchange | None = None
        self.used = 0  # requests sent on this connection, to know whether a failure may be a stale reuse
        self.reading_paused = False  # by a client whose socket is full
        self.got_bytes = False
        # The response head being built: [status line] + name, ": ", value, CRLF per header.
        self._lines: list[bytes] = [b""]
        self._framing: list[tuple[bytes, bytes]] = []  # hop-by-hop and framing headers, looked at once complete
        self._reason = b""
        self._out: list[bytes] = []
        self._chunked_out = False
        self._delimited = True  # the response has Content-Length or chunked framing
        self._complete = False
        self._reusable = True  # nothing but the response asked for came on this connection
        self._keep_alive = False

    # -- binding ------------------------------------------------------------------------------------------

    def bind(self, client: ClientConnection, ex: Exchange) -> None:
        self.client = client
        self.ex = ex
        self.used += 1
        self.got_bytes = False
        self._reason = b""  # nothing of an earlier exchange may reach this one's head
        self._complete = False
        self._delimited = True

    def detach(self) -> None:
        """No exchange is bound any more (the client went, or the connection became a websocket tunnel)."""
        self.client = None
        self.ex = None

    def pause_reading(self) -> None:
        if not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            if not self.closed:
                self.transport.resume_reading()

    # -- asyncio.Protocol ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            # An idle connection must not speak: whatever it says cannot belong to any request.
            self.transport.close()
            return
        self.got_bytes = True
        client.progress = True  # the read timeout starts over
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._flush()
            client.start_tunnel(self, data[exc.args[0] :])
            return
        except httptools.HttpParserError as exc:
            self._flush()
            self._fail("protocol", f"invalid response: {exc}")
            return
        self._flush()
        if self._complete:
            self._finish()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.client is None:
            self.pool.discard(self)
            return
        if self.ex is not None and self.ex.status and not self._delimited:
            # Body framed by the connection's end: the end is the normal completion.
            self._complete = True
            self._finish()
            return
        self._fail("reset", "upstream closed the connection")

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_reading_for_upstream()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_reading_for_upstream()

    # -- httptools callbacks ------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            # Anything after the response asked for, even part of a status line: the upstream is confused, and
            # the connection must not carry the next exchange.
            self._reusable = False
        self._lines = [b""]
        self._framing = []

    def on_status(self, reason: bytes) -> None:
        self._reason += reason  # in pieces if the status line spans reads

    def on_header(self, name: bytes, value: bytes) -> None:
        # Sorted on arrival, so that completing the head touches only the few headers that matter.
        lname = name.lower()
        if lname in RESPONSE_DROP:
            self._framing.append((lname, value))
        else:
            self._lines.extend((name, b": ", value, b"\r\n"))

    def on_headers_complete(self) -> None:
        if self._complete:
            return  # a second response after the one asked for (see on_message_begin): it goes nowhere
        ex = self.ex
        client = self.client
        assert ex is not None and client is not None
        status = self.parser.get_status_code()
        out = self._lines
        out[0] = _STATUS_LINES.get((status, self._reason)) or status_line(status, self._reason)
        self._reason = b""
        if status < 200 and status != 101:
            for lname, value in self._framing:  # FIXED: an interim head's Connection named nothing
                if lname == b"connection" and value not in PLAIN_CONNECTION and connection_tokens(value):
                    out[1:] = drop_named(out[1:], connection_tokens(value))
            self._interim(status, ex, out)
            return
        length: bytes | None = None
        chunked = False
        upgrade: bytes | None = None
        for lname, value in self._framing:
            if lname == b"content-length":
                length = value
            elif lname == b"transfer-encoding":
                chunked = True
            elif lname == b"connection" and value not in PLAIN_CONNECTION:
                if connection_tokens(value):  # it names more headers as hop-by-hop: rebuild without them
                    out[1:] = drop_named(out[1:], connection_tokens(value))
            elif lname == b"upgrade":
                upgrade = value
        out.append(self.pool.color_line)
        if ex.set_cookie:
            out.append(ex.set_cookie)
        keep_alive = client.keep_alive_for(ex)
        if status == 101:
            out += (b"Connection: Upgrade\r\nUpgrade: ", upgrade or b"websocket", b"\r\n\r\n")
            self._out += out
            ex.status = status
            return
        no_body = ex.head_request or status == 204 or status == 304
        self._chunked_out = False
        if no_body:
            if length is not None and status != 204:
                out += (b"Content-Length: ", length, b"\r\n")
        elif length is not None:
            out += (b"Content-Length: ", length, b"\r\n")
        elif ex.http10:
            keep_alive = False  # an HTTP/1.0 client knows only the connection's end as framing
        else:
            self._chunked_out = True
            out.append(b"Transfer-Encoding: chunked\r\n")
        if not chunked and length is None and not no_body:
            self._delimited = False
        if not keep_alive:
            out.append(b"Connection: close\r\n\r\n")
            ex.keep_alive = False
        elif ex.http10:
            out.append(b"Connection: keep-alive\r\n\r\n")
        else:
            out.append(b"\r\n")
        self._out.append(b"".join(out))  # the head as one buffer; body chunks follow uncopied
        ex.status = status
        self._keep_alive = self.parser.should_keep_alive()
        if ex.head_request:
            # httptools cannot be told that a HEAD response has no body: end it here, parse anew next time
            # (what the old parser still reads of this data counts as bytes after the response).
            self._complete = True
            self.parser = httptools.HttpResponseParser(self)

    def on_body(self, body: bytes) -> None:
        if self._complete:
            self._reusable = False  # bytes after a bodiless response: the upstream is confused
            return
        if self._chunked_out:
            self._out += chunk(body)
        else:
            self._out.append(body)

    def on_message_complete(self) -> None:
        ex = self.ex
        if ex is None or not ex.status or ex.status == 101 or self._complete:
            return  # an interim response ended (the final one follows), or a response nobody asked for
        if self._chunked_out:
            self._out.append(LAST_CHUNK)
        self._complete = True

    # -- helpers ------------------------------------------------------------------------------------------

    def _interim(self, status: int, ex: Exchange, lines: list[bytes]) -> None:
        # 100 Continue goes to a client that asked for it; other 1xx (103) only to HTTP/1.1 clients.
        if status == 100:
            if ex.expect_continue:
                self._out.append(b"HTTP/1.1 100 Continue\r\n\r\n")
        elif not ex.http10:
            self._out += (*lines, b"\r\n")

    def _flush(self) -> None:
        out = self._out
        if out:
            self._out = []
            client = self.client
            if client is not None:
                client.transport.writelines(out)

    def _finish(self) -> None:
        """The response is complete: hand the connection back (or close it) and tell the client side."""
        client, ex = self.client, self.ex
        assert client is not None and ex is not None
        self.client = self.ex = None
        if ex.request_done and self._reusable and self._keep_alive and not self.closed:
            if self.reading_paused:  # by a slow client; the next one must not inherit that
                self.resume_reading()
            self.pool.put(self)
        elif not self.closed:
            self.transport.close()
        client.response_complete(ex)

    def _fail(self, kind: str, reason: str) -> None:
        client, ex = self.client, self.ex
        self.detach()
        if not self.closed:
            self.transport.close()
        if client is not None and ex is not None:
            client.upstream_failed(ex, self, kind, reason)

    def abandon(self) -> None:
        """The client went away mid-exchange: this request's upstream side is of no use to anyone."""
        self.detach()
        if not self.closed:
            self.transport.close()
