"""The upstream side of the data plane: one keep-alive pool per colour and the protocol that reads responses.

An `UpstreamConnection` serves one exchange at a time. It parses the response with httptools, rewrites only
the head (hop-by-hop headers out, the colour header in, framing re-declared) and passes body bytes straight
to the client, everything one `data_received` produced in one `writelines`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import httptools

from .core.routing import Color
from .headers import PLAIN_CONNECTION, RESPONSE_DROP, connection_tokens, drop_named
from .metrics import ColorStats
from .settings import Upstream

if TYPE_CHECKING:
    from prometheus_client import Counter

    from .proxy import ClientConnection, Exchange

MAX_IDLE_PER_COLOR = 512
_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}


def status_line(status: int, reason: bytes) -> bytes:
    """The status line as the client gets it; upstreams repeat a handful of them, so they are built once."""
    line = _STATUS_LINES.get((status, reason))
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        if len(_STATUS_LINES) < 256:  # bounded: reason phrases are free text
            _STATUS_LINES[(status, reason)] = line
    return line


class UpstreamPool:
    """Everything about one colour that the hot path needs, resolved once at start-up."""

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


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to an upstream; bound to a client exchange while a request is on it."""

    transport: asyncio.Transport

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.closed = False
        self.parser = httptools.HttpResponseParser(self)
        self.client: ClientConnection | None = None
        self.ex: Exchange | None = None
        self.tunnel: ClientConnection | None = None
        self.used = 0  # requests sent on this connection, to know whether a failure may be a stale reuse
        self.reading_paused = False  # by a client whose socket is full
        self.got_bytes = False
        # The response head being built: [status line] + name, ": ", value, CRLF per header. Both lists are
        # replaced when a message ends, so no on_message_begin callback is needed.
        self._lines: list[bytes] = [b""]
        self._framing: list[tuple[bytes, bytes]] = []  # hop-by-hop and framing headers, looked at once complete
        self._reason = b""
        self._out: list[bytes] = []
        self._chunked_out = False
        self._delimited = True  # the response has Content-Length or chunked framing
        self._complete = False
        self._reusable = True
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

    def _unbind(self) -> None:
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
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.frames_out.feed(data)
            tunnel.transport.write(data)
            return
        client = self.client
        if client is None:
            # An idle connection must not speak: whatever it says cannot belong to any request.
            self.transport.close()
            return
        self.got_bytes = True
        client.active = True  # progress: the read timeout starts over
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
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.tunnel_closed()
            return
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
        client = self.client or self.tunnel
        if client is not None:
            client.pause_reading_for_upstream()

    def resume_writing(self) -> None:
        client = self.client or self.tunnel
        if client is not None:
            client.resume_reading_for_upstream()

    # -- httptools callbacks ------------------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        if self._complete:
            self._reusable = False  # a second response after the one asked for: the upstream is confused
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
            self._reusable = False  # a second response after the one asked for (see on_status): it goes nowhere
            return
        ex = self.ex
        client = self.client
        assert ex is not None and client is not None
        status = self.parser.get_status_code()
        out = self._lines
        framing = self._framing
        out[0] = _STATUS_LINES.get((status, self._reason)) or status_line(status, self._reason)
        self._reason = b""
        if status < 200 and status != 101:
            self._interim(status, ex, out)
            return
        length: bytes | None = None
        chunked = False
        upgrade: bytes | None = None
        for lname, value in framing:
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
            # httptools cannot be told that a HEAD response has no body: end it here, parse anew next time.
            self._complete = True
            self.parser = httptools.HttpResponseParser(self)
            self._lines = [b""]
            self._framing = []

    def on_body(self, body: bytes) -> None:
        if self._complete:
            self._reusable = False  # bytes after a bodiless response: the upstream is confused
            return
        if self._chunked_out:
            self._out += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            self._out.append(body)

    def on_message_complete(self) -> None:
        self._lines = [b""]  # fresh for the next head; a chunked body's trailers (reported as headers) are dropped
        self._framing = []
        ex = self.ex
        if ex is None or not ex.status or ex.status == 101 or self._complete:
            return  # an interim response ended (the final one follows), or a response nobody asked for
        if self._chunked_out:
            self._out.append(b"0\r\n\r\n")
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
        # Reused only if nothing followed the response (its lists were renewed when it ended, and stay empty).
        clean = self._reusable and len(self._lines) == 1 and not self._framing
        if ex.request_done and clean and self._keep_alive and not self.closed:
            if self.reading_paused:  # by a slow client; the next one must not inherit that
                self.resume_reading()
            self.pool.put(self)
        elif not self.closed:
            self.transport.close()
        client.response_complete(ex)

    def _fail(self, kind: str, reason: str) -> None:
        client, ex = self.client, self.ex
        self._unbind()
        if not self.closed:
            self.transport.close()
        if client is not None and ex is not None:
            client.upstream_failed(ex, self, kind, reason)

    def abandon(self) -> None:
        """The client went away mid-exchange: this request's upstream side is of no use to anyone."""
        self._unbind()
        if not self.closed:
            self.transport.close()

    def detach_for_tunnel(self, client: ClientConnection) -> None:
        self._unbind()
        self.tunnel = client
