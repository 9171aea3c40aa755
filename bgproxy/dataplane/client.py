"""One client connection (usually from the Ingress), read top to bottom as the path of its requests.

llhttp (httptools) validates every request without a callback per header: the read is fed to it in pieces whose ends
the proxy knows (`_feed`), and each complete head is handed whole to `read_request`, which checks it, chooses its
colour once (on the state object of that instant) and rewrites the head into an `Exchange`; the exchange takes a
connection from its colour's pool and the body streams on to it; the response streams back from the upstream side
(upstream.py). Requests pipelined on one connection queue behind each other and are answered in order. Backpressure
both ways: a side whose write buffer is full pauses reading on the other (flow.py). What the proxy answers itself is
in refusals.py, websockets in tunnel.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Final, cast

import httptools

from ..log import log
from . import refusals
from .exchange import Exchange, perf_counter
from .flow import PENDING, PENDING_LIMIT, QUEUE, UPSTREAM_FULL, ReadGate
from .headers import LAST_CHUNK, chunk
from .refusals import Deadline, Reject, error_response
from .request_head import NotOneHead, field_bytes, head_incomplete, read_request, request_target
from .tunnel import UpgradeWait, start_tunnel

if TYPE_CHECKING:
    from .server import ProxyServer
    from .upstream import UpstreamConnection

access_logger = logging.getLogger("bgproxy.access")
# Plain-int module constants for the per-request path (exact ints compare on CPython's fast path; Final, so that a
# compiled build reads them from C statics rather than the module's dict).
NO_DEADLINE: Final = int(Deadline.NONE)
HEAD_DEADLINE: Final = int(Deadline.HEAD)
IDLE: Final = int(Deadline.IDLE)
EXCHANGE: Final = int(Deadline.EXCHANGE)

# Where the client's byte stream stands (`ClientConnection._feed`).
START: Final = 0  # before a request line (llhttp skips CR and LF there)
HEAD: Final = 1  # inside a request head
LENGTH: Final = 2  # inside a body of known length: `remaining` bytes to go
CHUNK_LINE: Final = 3  # at or inside a chunk-size line
CHUNK_DATA: Final = 4  # inside a chunk's data and the CRLF after it: `remaining` bytes to go
TRAILERS: Final = 5  # inside the trailer section that ends a chunked body
AGAIN: Final = -1  # (data_received: what was fed as one head was more; parsed again in pieces)
CR: Final = 13
LF: Final = 10
BIG_PIECE: Final = 4096  # a piece of a read longer than this is fed as a view, not copied
# llhttp and the proxy's reading of where a request stands disagree: never guess, refuse.
OUT_OF_STEP: Final = "invalid request: framing out of step with the parser"


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
        # Where the request stream stands (see _feed), and the bytes of a head (or a chunk or trailer line) that
        # earlier reads brought: `held` of them, the last three in `tail` (a CRLF, or CRLF CRLF, may straddle reads).
        self.fstate = START
        self.remaining = 0
        self.parts: list[bytes] = []
        self.held = 0
        self.tail = b""
        self.line_open = False  # the held head's request line has not ended yet
        self.head = b""  # a complete head, for on_headers_complete
        self.messages = 0  # requests llhttp reported complete
        self.fed_from = 0  # where in the read the piece llhttp is fed begins (an upgrade's rest follows it)
        self.trailer_bytes = 0
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
        upgrade = -1
        try:
            if self.fstate == START and data[0] > CR and data.endswith(b"\r\n\r\n"):
                # Most reads are one whole head: fed at once, and read_request checks that no other one follows.
                self.fstate = HEAD
                self.head = data
                self.fed_from = 0
                try:
                    self.parser.feed_data(data)
                except httptools.HttpParserCallbackError as exc:
                    if not isinstance(exc.__context__, NotOneHead):
                        raise
                    self.fstate = AGAIN
                state = self.fstate
                if state == START:  # a bodiless request: its head went out whole, nothing is gathered
                    self.progress = True
                    return
                if state == AGAIN:
                    # A head and more (a pipelined request, a body): nothing was taken from the read yet. (Parsed
                    # again outside the handler, so that an exception raised then keeps its own context.)
                    self.parser = httptools.HttpRequestParser(self)
                    self.fstate = START
                    self._feed(data)
                elif state == HEAD:
                    raise Reject(400, OUT_OF_STEP)
            else:
                self._feed(data)
        except httptools.HttpParserUpgrade as exc:
            upgrade = self.fed_from + exc.args[0]
        except httptools.HttpParserError as exc:
            self._flush()
            refusals.bad_request(self, exc)
            return
        except Reject as reject:
            self._flush()
            refusals.refuse_request(self, reject)
            return
        if upgrade >= 0:  # (outside the handler: what the rest of the read raises keeps its own context)
            self._flush()
            self._upgrade(data[upgrade:])
            return
        if self._out:  # body pieces gathered during this read
            self._flush()
        self.progress = True
        if self.fstate == HEAD:
            head_incomplete(self)
        elif self.deadline_kind == IDLE:  # bytes, but no request yet (empty lines)
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

    # -- the request stream, in pieces ----------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """Feed llhttp one read in pieces that end where a head, a body, a chunk's data or a chunk or trailer line
        ends, so that the proxy knows where each head lies without a callback per header. llhttp judges every byte;
        after each piece its callbacks must agree with where the proxy thinks the request stands, or it is refused.
        """
        n = len(data)
        pos = 0
        while pos < n and not self.closed:
            state = self.fstate
            if state <= HEAD:
                pos = self._head_piece(data, pos, n)
            elif state == LENGTH or state == CHUNK_DATA:
                take = self.remaining
                if take > n - pos:
                    take = n - pos
                self.remaining -= take
                done = self.messages
                self._parse(data, pos, pos + take)
                pos += take
                if not self.remaining:
                    if state == LENGTH:
                        self.fstate = START
                        done += 1
                    else:
                        self.fstate = CHUNK_LINE
                if self.messages != done:
                    raise Reject(400, OUT_OF_STEP)
            else:
                pos = self._line_piece(data, pos, n)

    def _parse(self, data: bytes, start: int, end: int) -> None:
        self.fed_from = start
        if start == 0 and end == len(data):
            self.parser.feed_data(data)
        elif end - start > BIG_PIECE:
            self.parser.feed_data(memoryview(data)[start:end])
        else:
            self.parser.feed_data(data[start:end])

    def _head_piece(self, data: bytes, pos: int, n: int) -> int:
        """Up to the end of a head (the first CRLF CRLF: llhttp takes no bare LF and no folded line), or the whole
        read if the head goes on; returns where the piece ended."""
        begin = pos
        if self.fstate == START:
            while pos < n and (data[pos] == CR or data[pos] == LF):
                pos += 1
            if pos == n:
                self._parse(data, begin, n)
                return n
            self.fstate = HEAD
            self.line_open = True
            found = data.find(b"\r\n\r\n", pos)
            end = found + 4 if found >= 0 else -1
        else:  # the head began in an earlier read (and this read begins at pos 0)
            tail = self.tail
            found = (tail + data[:3]).find(b"\r\n\r\n")  # CRLF CRLF across the two reads
            if found >= 0:
                end = found - len(tail) + 4
            else:
                found = data.find(b"\r\n\r\n")
                end = found + 4 if found >= 0 else -1
        if end < 0:
            self._parse(data, begin, n)
            ended = self.line_open and ((self.tail[-1:] == b"\r" and data[pos] == LF) or data.find(b"\r\n", pos) >= 0)
            self._hold(data, pos, n)
            if ended:  # the request line is complete: its target can be judged now
                self.line_open = False
                target = request_target(b"".join(self.parts).partition(b"\r\n")[0], self.parser.get_method())
                if len(target) > self.server.max_request_line:
                    raise Reject(414, "request target too long")
            return n
        if self.parts:
            self.head = b"".join(self.parts) + data[:end]
            self._release()
        else:
            self.head = data if pos == 0 and end == n else data[pos:end]
        self._parse(data, begin, end)  # on_headers_complete takes self.head
        if self.fstate == HEAD:
            raise Reject(400, OUT_OF_STEP)
        return end

    def _line_piece(self, data: bytes, pos: int, n: int) -> int:
        """A chunk-size or trailer line, fed up to its CRLF and then read (llhttp has judged it by then)."""
        if self.parts and self.tail[-1:] == b"\r" and data[pos] == LF:
            end = pos + 1
        else:
            end = data.find(b"\r\n", pos)
            if end < 0:
                self._parse(data, pos, n)
                self._hold(data, pos, n)
                return n
            end += 2
        done = self.messages
        self._parse(data, pos, end)
        if self.parts:
            line = (b"".join(self.parts) + data[pos:end])[:-2]
            self._release()
        else:
            line = data[pos : end - 2]
        if self.fstate == CHUNK_LINE:
            semi = line.find(b";")
            size = int(line[:semi] if semi >= 0 else line, 16)
            if size:
                self.fstate = CHUNK_DATA
                self.remaining = size + 2  # and the CRLF after the data
            else:
                self.fstate = TRAILERS
        elif line:
            self.trailer_bytes += field_bytes(line)
            if self.trailer_bytes > self.server.max_header_bytes:
                raise Reject(431, "request trailers too large")
        else:  # the empty line that ends a chunked body
            self.fstate = START
            done += 1
        if self.messages != done:
            raise Reject(400, OUT_OF_STEP)
        return end

    def _hold(self, data: bytes, start: int, end: int) -> None:
        """Keep what this read brought of a head or line that a later read ends."""
        piece = data if start == 0 and end == len(data) else data[start:end]
        self.parts.append(piece)
        self.held += end - start
        self.tail = (self.tail + piece[-3:])[-3:]

    def _release(self) -> None:
        self.parts = []
        self.held = 0
        self.tail = b""

    # -- httptools callbacks: the request (no header callbacks: see _feed) ------------------------------------

    def on_headers_complete(self) -> None:
        ex = read_request(self.parser, self.head, self.peer, self.server)
        self.head = b""  # nothing of the head stays on an idle keep-alive connection
        if ex.chunked:
            self.fstate = CHUNK_LINE
            self.trailer_bytes = 0
        elif ex.length > 0:
            self.fstate = LENGTH
            self.remaining = ex.length
        else:
            self.fstate = START
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
        self.messages += 1
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
        elif self.fstate == HEAD:  # a pipelined head is still arriving
            self.set_head_deadline()
        else:
            self.deadline_kind = IDLE
            self.deadline = 0.0  # the ticker starts the idle clock

    def set_head_deadline(self) -> None:
        # Absolute, not refreshed by progress: a client dribbling a byte at a time must still finish in time.
        self.deadline_kind = HEAD_DEADLINE
        self.deadline = self.loop.time() + self.server.header_timeout

    # -- what the upstream side calls ----------------------------------------------------------------------

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
            self.fstate = START
            self._release()
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
