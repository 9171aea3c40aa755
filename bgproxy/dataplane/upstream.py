"""One connection to an upstream: it sends a request head and body, parses the response with httptools, rewrites
only the head (hop-by-hop headers out, the colour header in, framing re-declared) and passes body bytes straight to
the client, everything one `data_received` produced in one `writelines`.

llhttp validates the response, but is asked for no header callbacks: when it reports a head complete, the head is
taken whole from the bytes received (it ends at the first CRLF CRLF: strict llhttp takes no bare LF and no folded
line) and its lines are read once; those of no interest go to the client as they came.

It serves one exchange at a time for a `ClientConnection`, which it names for types only (never imports it): compiled,
its calls to the client side are C calls rather than Python method calls.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final, cast

import httptools

from .headers import LAST_CHUNK, RESPONSE_DROP, chunk, connection_tokens

if TYPE_CHECKING:
    from .client import ClientConnection
    from .exchange import Exchange
    from .pool import UpstreamPool

# Response headers the proxy looks at (the rest go to the client as they came): all are hop-by-hop or framing.
CONTENT_LENGTH: Final = 1
TRANSFER_ENCODING: Final = 2
CONNECTION: Final = 3
UPGRADE: Final = 4
HOP: Final = 5
RESPONSE_KINDS: Final = {name: HOP for name in RESPONSE_DROP} | {
    b"content-length": CONTENT_LENGTH,
    b"transfer-encoding": TRANSFER_ENCODING,
    b"connection": CONNECTION,
    b"upgrade": UPGRADE,
}
# Status lines as the upstream sent them -> as the client gets them ("HTTP/1.1 <code> <reason>"); upstreams repeat
# a handful, so each is built once. Bounded: reason phrases are free text.
_STATUS_LINES: Final[dict[bytes, bytes]] = {}


def status_line(line: bytes, status: int) -> bytes:
    """The client's status line for an upstream's (which llhttp accepted: version, a space, three digits, then a
    space and the reason, if any)."""
    out = _STATUS_LINES.get(line)
    if out is None:
        out = b"HTTP/1.1 %d %s" % (status, line[line.find(b" ") + 5 :])
        if len(_STATUS_LINES) < 256:
            _STATUS_LINES[line] = out
    return out


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to an upstream; bound to a client exchange while a request is on it."""

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
        # Where the response head stands: this read (for on_headers_complete), where in it the next head begins,
        # and what earlier reads brought of a head that spans reads (its last three bytes in `_tail`).
        self._data = b""
        self._head_at = 0
        self._parts: list[bytes] = []
        self._tail = b""
        self._in_head = True
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
        if self._parts:  # nothing of an earlier exchange may reach this one's head
            self._parts = []
        self._in_head = True
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
        self._data = data
        self._head_at = 0
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
        self._data = b""  # (an idle connection holds no read)
        self._flush()
        if self._complete:
            self._finish()
        elif self._in_head:
            self._hold(data)

    def _hold(self, data: bytes) -> None:
        """A read ended inside a response head: keep what it brought of it for the read that ends it."""
        if self._head_at:
            data = data[self._head_at :]
        if not self._parts:
            data = data.lstrip(b"\r\n")  # empty lines before a status line are no part of the head
        if data:
            self._parts.append(data)
            self._tail = (self._tail + data[-3:])[-3:]

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

    def _head(self) -> bytes:
        """The response head llhttp has just reported complete, from its status line to its empty line, when it
        began in an earlier read or after empty lines (on_headers_complete takes the common case itself)."""
        data = self._data
        if self._parts:  # it began in an earlier read
            tail = self._tail
            found = (tail + data[:3]).find(b"\r\n\r\n")  # the empty line may straddle the two reads
            if found >= 0:
                end = found + 4 - len(tail)
            else:
                found = data.find(b"\r\n\r\n")
                end = found + 4
            head = b"".join(self._parts) + data[:end]
            self._parts = []
            self._tail = b""
        else:
            at = self._head_at
            while data[at] == 13 or data[at] == 10:  # empty lines, which llhttp skips before a status line
                at += 1
            found = data.find(b"\r\n\r\n", at)
            end = found + 4
            head = data[at:end]
        if found < 0:
            raise ValueError("response head out of step with the parser")  # never guessed: a protocol error
        self._head_at = end  # an interim response's head may be followed by the next one
        return head

    def on_headers_complete(self) -> None:
        if self._complete:
            self._reusable = False  # a second response after the one asked for: it goes nowhere
            return
        ex = self.ex
        client = self.client
        assert ex is not None and client is not None
        status = self.parser.get_status_code()
        data = self._data
        at = self._head_at
        if self._parts or data[at] <= 13:  # the head began in an earlier read, or after empty lines
            head = self._head()
        else:
            end = data.find(b"\r\n\r\n", at) + 4
            if end == 3:
                raise ValueError("response head out of step with the parser")  # never guessed: a protocol error
            self._head_at = end  # an interim response's head may be followed by the next one
            head = data[at:end]
        lines = head.split(b"\r\n")  # the status line, each header line, then b"", b""
        first = lines[0]
        line_kinds = self.pool.line_kinds
        pairs = line_kinds.pairs
        length: bytes | None = None
        chunked = False
        upgrade: bytes | None = None
        tokens: frozenset[bytes] | None = None
        # The lines kept as they came: pieces of the head between the lines left out (each with the CRLF before it)
        out = [_STATUS_LINES.get(first) or status_line(first, status)]
        pos = at = len(first)  # (where the CRLF before the next line is)
        for i in range(1, len(lines) - 2):
            field = lines[i]
            start = at
            at += len(field) + 2
            if len(field) > 2 and not pairs[field[0] << 8 | field[2]]:  # most lines: no name of interest begins so
                continue
            kind, value = line_kinds.get(field)
            if not kind:
                continue
            if start > pos:
                out.append(head[pos:start])
            pos = at
            if kind == CONTENT_LENGTH:
                length = value
            elif kind == TRANSFER_ENCODING:
                chunked = True
            elif kind == CONNECTION:
                named = connection_tokens(value)
                if named:
                    tokens = named if tokens is None else tokens | named
            elif kind == UPGRADE:
                upgrade = value
        out.append(head[pos : len(head) - 2])  # (up to the CRLF that ends the last line)
        if tokens is not None:  # the Connection header names more headers as hop-by-hop (rare): those left out too
            kept = b"".join(out[1:]).split(b"\r\n")  # b"", each line kept, b""
            out[1:] = [b"\r\n".join([f for f in kept if f.partition(b":")[0].lower() not in tokens])]
        if status < 200 and status != 101:
            self._interim(status, ex, b"".join(out))
            return
        self._in_head = False
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

    def _interim(self, status: int, ex: Exchange, head: bytes) -> None:
        # 100 Continue goes to a client that asked for it; other 1xx (103) only to HTTP/1.1 clients.
        if status == 100:
            if ex.expect_continue:
                self._out.append(b"HTTP/1.1 100 Continue\r\n\r\n")
        elif not ex.http10:
            self._out += (head, b"\r\n")

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
