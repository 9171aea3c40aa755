"""What the proxy answers itself: refused requests (400, 405, 408, 414, 431, 501, 503), upstream errors (502, 504),
cut responses, and the deadlines that lead to them. All cold paths, kept out of the per-request path.

Each answer goes out only after the responses already owed on the connection, and a refused connection is closed:
nothing after a refused request is read.
"""

from __future__ import annotations

import enum
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING

import httptools

from ..log import log

if TYPE_CHECKING:
    from .client import ClientConnection
    from .exchange import Exchange

logger = logging.getLogger("bgproxy.proxy")


class Deadline(enum.IntEnum):
    """What a client connection's single deadline is for."""

    NONE = 0
    HEAD = 1  # a complete request head, by an absolute time: a client dribbling bytes must still finish in time
    IDLE = 2  # a keep-alive connection between requests
    EXCHANGE = 3  # progress of the exchange being answered (the upstream's read timeout, or a stalled body)


class Reject(Exception):
    """A request the proxy answers itself and never forwards."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def error_response(status: int, message: str, *, color_line: bytes = b"", close: bool = True) -> bytes:
    phrase = HTTPStatus(status).phrase
    body = f"{status} {phrase}: {message}\n".encode()
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode()),
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body),
            color_line,
            b"Connection: close\r\n\r\n" if close else b"\r\n",
            body,
        )
    )


def bad_request(conn: ClientConnection, exc: httptools.HttpParserError) -> None:
    """The parser stopped: a callback refused the request (`Reject`), or llhttp found it malformed."""
    reject = exc.__context__
    if not isinstance(reject, Reject):
        detail = str(exc)
        # llhttp's words for a coding other than chunked at the end: an unknown coding, not a bad request.
        status = 501 if "Request has invalid `Transfer-Encoding`" in detail else 400
        reject = Reject(status, f"invalid request: {detail}")
    conn.parser = httptools.HttpRequestParser(conn)  # never parse past garbage
    refuse_request(conn, reject)


def refuse_request(conn: ClientConnection, reject: Reject) -> None:
    """A request the proxy will not forward: logged, then answered (`refuse`)."""
    log(logger, "bad_request", level=logging.INFO, status=reject.status, reason=reject.reason, peer=conn.peer.decode())
    refuse(conn, reject.status, reject.reason)


def refuse(conn: ClientConnection, status: int, reason: str) -> None:
    """Answer once the responses already owed on this connection are out, then close."""
    if conn.closed:
        return
    conn.gate.stop()
    queue = conn.queue
    first = queue[0] if queue else None
    if first is None or first.response_done:
        conn.closed = True
        conn.transport.write(error_response(status, reason))
        conn.transport.close()
        return
    while len(queue) > 1:
        queue.pop()  # pipelined behind the one in progress: never started, never answered
    if first is conn.parsing:
        # The broken part is this exchange's own body: the upstream will not get the rest of it.
        conn.parsing = None
        if first.status:
            cut(conn, first, "protocol")
            return
        drop_upstream(first)
        first.status = status
        first.keep_alive = False
        conn.transport.write(error_response(status, reason))
        conn.response_complete(first)
        return
    # Let the exchange in progress finish; the connection closes after it.
    first.keep_alive = False
    conn.parsing = None


def framing_read(conn: ClientConnection, received: int) -> None:
    """A read of a chunked request body. Trailers count against MAX_HEADER_BYTES as each one ends, but a chunk or
    trailer line is held until it ends: reads that carried no body bytes (chunk lines, trailers) are bounded like a
    head's raw bytes, so an endless trailer line is refused too."""
    if conn.body_seen:
        conn.body_seen = False
        conn.framing = 0
        return
    conn.framing += received
    srv = conn.server
    if conn.framing > srv.max_request_line + srv.max_header_bytes:
        refuse(conn, 431, "request trailers too large")


def expire(conn: ClientConnection) -> None:
    """The connection's deadline passed (the server's ticker found it)."""
    kind = conn.deadline_kind
    conn.deadline_kind = Deadline.NONE
    conn.deadline = 0.0
    if kind == Deadline.IDLE:
        conn.closed = True
        conn.transport.close()
    elif kind == Deadline.HEAD:
        refuse(conn, 408, "request head not received in time")
    elif kind == Deadline.EXCHANGE and conn.queue:
        ex = conn.queue[0]
        if ex.status:
            cut(conn, ex, "timeout")
        elif not ex.request_done:
            drop_upstream(ex)
            ex.keep_alive = False
            ex.status = 408
            conn.transport.write(error_response(408, "request body not received in time"))
            conn.response_complete(ex)
        else:
            drop_upstream(ex)
            upstream_error(conn, ex, "timeout", 504, f"no response within {conn.server.read_timeout:g}s")


def drop_upstream(ex: Exchange) -> None:
    """The exchange will get no (more) answer from its upstream: let go of the connection, or of connecting."""
    if ex.upstream is not None:
        ex.upstream.abandon()
        ex.upstream = None
    if ex.connecting is not None:
        ex.connecting.cancel()
        ex.connecting = None


def upstream_error(conn: ClientConnection, ex: Exchange, kind: str, status: int, reason: str) -> None:
    """502 or 504 from the proxy, naming the colour: nothing of the upstream's answer reached the client."""
    pool = ex.pool
    pool.errors[kind].inc()
    ex.status = status
    keep = conn.keep_alive_for(ex)
    ex.keep_alive = keep
    message = f"{pool.color.value} upstream ({pool.upstream.url}): {reason}"
    conn.transport.write(error_response(status, message, color_line=pool.color_line + ex.set_cookie, close=not keep))
    log(
        logger, "upstream_error", level=logging.WARNING, color=pool.color.value, kind=kind, status=status, reason=reason
    )
    conn.response_complete(ex)


def cut(conn: ClientConnection, ex: Exchange, kind: str) -> None:
    """Part of the response reached the client: close the connection so the truncation is visible."""
    ex.pool.errors[kind].inc()
    drop_upstream(ex)
    ex.finish(ex.status)
    log(logger, "response_cut", level=logging.WARNING, color=ex.pool.color.value, kind=kind)
    conn.closed = True
    conn.transport.abort()
