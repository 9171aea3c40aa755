"""One connection to an upstream: it sends a request head and body, parses the response with httptools, rewrites
only the head (hop-by-hop headers out, the colour header in, framing re-declared) and passes body bytes straight to
the client, everything one `data_received` produced in one `writelines`.

It serves one exchange at a time and talks to the client side only through `exchange.Downstream`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final, cast

import httptools

from .headers import (
    LAST_CHUNK,
    PLAIN_CONNECTION,
    RESPONSE_DROP,
    RESPONSE_DROP_LENGTHS,
    chunk,
    connection_tokens,
    drop_named,
)

if TYPE_CHECKING:
    from .exchange import Downstream, Exchange
    from .pool import UpstreamPool

_STATUS_LINES: Final[dict[tuple[int, bytes], bytes]] = {}


def status_line(status: int, reason: bytes) -> bytes:
    """The status line as the client gets it; upstreams repeat a handful of them, so they are built once."""
    line = _STATUS_LINES.get((status, reason))
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        if len(_STATUS_LINES) < 256:  # bounded: reason phrases are free text
            _STATUS_LINES[(status, reason)] = line
    return line


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to an upstream; bound to a client exchange while a request is on it."""

    transport: asyncio.Transport

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.closed = False
        self.parser = httptools.HttpResponseParser(self)
        self.client: Downstream | None = None
        self.ex: Exchange | None = None
        self.used = 0  # requests sent on this connection, to know whether a failure may be a stale reuse
        self.reading_paused = False  # by a client whose socket is full
        self.got_bytes = False
        # The response head being built: [status line] + name, ": ", value, CRLF per header.
        self._lines: list[bytes] = [b""]
        self._framing: list[tuple[bytes, bytes]] = []  # hop-by-hop and framing headers, looked at once complete
        self._reason = b""
        # The status line of the last response and what it was built from: a connection's responses nearly always
        # repeat it (200 OK), and then it costs two compares rather than a tuple and a dict lookup.
        self._status = 0
        self._status_reason = b""
        self._status_line = b""
        self._out: list[bytes] = []
        self._chunked_out = False
        self._delimited = True  # the response has Content-Length or chunked framing
        self._complete = False
        self._reusable = True  # nothing but the response asked for came on this connection
        self._keep_alive = False

    # -- binding ------------------------------------------------------------------------------------------

    def bind(self, client: Downstream, ex: Exchange) -> None:
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
        if (RESPONSE_DROP_LENGTHS >> len(name)) & 1:
            lname = name.lower()
            if lname in RESPONSE_DROP:
                self._framing.append((lname, value))
                return
        # Four appends: compiled, each is a direct list append, where extend() would build a tuple and iterate it.
        lines = self._lines
        lines.append(name)
        lines.append(b": ")
        lines.append(value)
        lines.append(b"\r\n")

    def on_headers_complete(self) -> None:
        if self._complete:
            return  # a second response after the one asked for (see on_message_begin): it goes nowhere
        ex = self.ex
        client = self.client
        assert ex is not None and client is not None
        status = self.parser.get_status_code()
        out = self._lines
        reason = self._reason
        if status != self._status or reason != self._status_reason:
            self._status, self._status_reason = status, reason
            self._status_line = status_line(status, reason)
        out[0] = self._status_line
        self._reason = b""
        if status < 200 and status != 101:
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
