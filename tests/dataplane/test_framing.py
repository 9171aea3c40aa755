"""Strict framing over raw sockets: ambiguous or broken requests are refused and never reach the upstream.

Each smuggling attempt hides a second request (`GET /smuggled`) that a lenient parser on either side might
see; the raw upstream records every byte it receives, so the tests check it never got there.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bgproxy.app import Bgproxy
from tests.support.servers import TIMEOUT, RawClient, RawUpstream, StartProxy

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"


@pytest.fixture
async def recording_upstream() -> AsyncIterator[RawUpstream]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await up.read_request(reader)
            if b"chunked" in head.lower():
                while not up.received.endswith(b"0\r\n\r\n"):
                    data = await reader.read(65536)
                    if not data:
                        return
                    up.received += data
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with RawUpstream(handler) as up:
        yield up


@pytest.fixture
async def strict_proxy(start_proxy: StartProxy, recording_upstream: RawUpstream) -> Bgproxy:
    return await start_proxy(
        blue_url=recording_upstream.url, max_request_line="512", max_header_bytes="2048", header_timeout="0.5"
    )


CASES = {
    "cl-and-te": (
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te-and-cl": (
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n",
        400,
    ),
    "two-equal-cl": (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n", 400),
    "two-different-cl": (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 35\r\n\r\n", 400),
    "cl-list": (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0, 35\r\n\r\n", 400),
    "cl-plus-sign": (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +35\r\n\r\n", 400),
    "cl-negative": (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400),
    "two-te": (
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te-gzip": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    "te-gzip-chunked": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    # RFC 9112 §6.3: chunked that is not the final coding leaves the length undeterminable: 400.
    "te-chunked-not-last": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400),
    "te-xchunked": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n", 501),
    "te-space-before-colon": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    "te-obs-fold": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400),
    "bad-chunk-size": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    "chunk-size-overflow": (
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff1\r\n",
        400,
    ),
    "bare-lf": (b"GET / HTTP/1.1\nHost: h\n\n", 400),
    "nul-in-header": (b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n", 400),
    "no-host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two-hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    "connect": (b"CONNECT internal:22 HTTP/1.1\r\nHost: internal:22\r\n\r\n", 405),
    # HTTP/2's preface, or a PRI request that llhttp never finishes: refused at once, not left to time out.
    "h2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    "pri-as-1.1": (b"PRI / HTTP/1.1\r\n\r\n", 400),
    "long-target": (b"GET /" + b"a" * 600 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),
    "large-headers": (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-Big: " + b"b" * 3000 + b"\r\n\r\n", 431),
    # 1,800 bytes on the wire, 2,250 as header bytes count (name + value + 4): over the 2,048 limit in one read.
    "many-tiny-headers": (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"a:\r\n" * 450 + b"\r\n", 431),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_ambiguous_or_broken_request_is_refused_and_never_forwarded(
    strict_proxy: Bgproxy, recording_upstream: RawUpstream, name: str
) -> None:
    payload, expected = CASES[name]
    c = await RawClient.connect(strict_proxy.port)
    try:
        await c.send(payload + SMUGGLED)
        status, headers, body = await c.read_response()
        assert status == expected, body
        assert headers["connection"] == ["close"]
        assert await c.closed()
    finally:
        await c.close()
    assert b"/smuggled" not in recording_upstream.received
    # The head of a chunked request may have gone out before its broken body; nothing after it did.
    assert recording_upstream.received.count(b" HTTP/1.1\r\n") <= 1


async def test_error_after_good_requests_answers_those_first(strict_proxy: Bgproxy, recording_upstream) -> None:
    c = await RawClient.connect(strict_proxy.port)
    try:
        await c.send(b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await c.read_response())[0] == 200
        await c.send(b"GET /two HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n" + SMUGGLED)
        assert (await c.read_response())[0] == 400
        assert await c.closed()
    finally:
        await c.close()
    assert recording_upstream.received.count(b" HTTP/1.1\r\n") == 1
    assert b"/smuggled" not in recording_upstream.received


async def test_body_is_reframed_exactly_by_its_content_length(strict_proxy: Bgproxy, recording_upstream) -> None:
    """A body that looks like a request is only ever a body."""
    c = await RawClient.connect(strict_proxy.port)
    try:
        await c.send(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED)
        assert (await c.read_response())[0] == 200
    finally:
        await c.close()
    received = bytes(recording_upstream.received)
    assert received.count(b" HTTP/1.1\r\n") == 2  # the POST line and, inside its body, the smuggled text
    assert received.startswith(b"POST /upload HTTP/1.1\r\n")
    assert received.endswith(b"Content-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED)


async def test_chunked_body_is_forwarded_chunked_with_the_same_bytes(strict_proxy: Bgproxy, recording_upstream) -> None:
    c = await RawClient.connect(strict_proxy.port)
    try:
        await c.send(
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        assert (await c.read_response())[0] == 200
    finally:
        await c.close()
    received = bytes(recording_upstream.received)
    assert b"Transfer-Encoding: chunked\r\n" in received
    body = received.partition(b"\r\n\r\n")[2]
    assert body == b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"


async def test_slow_header_client_is_closed(strict_proxy: Bgproxy, recording_upstream) -> None:
    c = await RawClient.connect(strict_proxy.port)
    try:
        await c.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: ")
        status, _, _ = await c.read_response()
        assert status == 408
        assert await c.closed()
    finally:
        await c.close()
    assert recording_upstream.received == b""


async def test_non_websocket_upgrade_is_ignored_and_request_served(strict_proxy: Bgproxy, recording_upstream) -> None:
    c = await RawClient.connect(strict_proxy.port)
    try:
        await c.send(
            b"GET /h2c HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        assert (await asyncio.wait_for(c.read_response(), TIMEOUT))[0] == 200
        assert (await asyncio.wait_for(c.read_response(), TIMEOUT))[0] == 200
    finally:
        await c.close()
    received = bytes(recording_upstream.received).lower()
    assert b"upgrade" not in received and b"http2-settings" not in received
    assert b"get /next " in received


async def test_an_upgrade_with_a_zero_length_and_trailing_whitespace_is_served(
    strict_proxy: Bgproxy, recording_upstream: RawUpstream
) -> None:
    """A Content-Length of 0 with whitespace after it (llhttp allows that) is no body: an ignored upgrade with it is
    served, not refused as an upgrade with a body (501), as the per-header path once did."""
    c = await RawClient.connect(strict_proxy.port)
    try:
        await c.send(
            b"GET /h2c HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 0 \r\n\r\n"
        )
        assert (await asyncio.wait_for(c.read_response(), TIMEOUT))[0] == 200
    finally:
        await c.close()
    assert bytes(recording_upstream.received).startswith(b"GET /h2c HTTP/1.1\r\n")


async def test_headers_an_interim_response_names_in_connection_are_dropped(start_proxy: StartProxy) -> None:
    """Connection names hop-by-hop headers in a 1xx response as in the final one: neither reaches the client."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await up.read_request(reader)
        writer.write(
            b"HTTP/1.1 103 Early Hints\r\nConnection: X-Hop\r\nX-Hop: 1\r\nLink: </a.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 2\r\nContent-Length: 2\r\n\r\nok"
        )
        await writer.drain()
        await reader.read()

    async with RawUpstream(handler) as up:
        app = await start_proxy(blue_url=up.url)
        c = await RawClient.connect(app.port)
        try:
            await c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            interim = await asyncio.wait_for(c.read_response(), TIMEOUT)
            final = await asyncio.wait_for(c.read_response(), TIMEOUT)
        finally:
            await c.close()
    assert interim[0] == 103 and interim[1]["link"] == ["</a.css>; rel=preload"]
    assert final[:1] == (200,) and final[2] == b"ok"
    assert "x-hop" not in interim[1] and "x-hop" not in final[1]
    assert "connection" not in interim[1]


async def test_stalled_request_body_gets_408_and_is_not_completed_upstream(start_proxy: StartProxy) -> None:
    arrived = bytearray()
    upstream_closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):  # never answers: it waits for the whole body
                arrived.extend(data)
        finally:
            upstream_closed.set()  # EOF or reset: the proxy gave up on the request

    async with RawUpstream(handler) as up:
        app = await start_proxy(blue_url=up.url, upstream_read_timeout="0.4")
        c = await RawClient.connect(app.port)
        try:
            await c.send(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nonly part of it")
            status, headers, _ = await c.read_response()
            assert status == 408 and headers["connection"] == ["close"]
            assert await c.closed()
        finally:
            await c.close()
        # The body was streamed as it came and then cut: the upstream connection is closed with the request
        # short of its Content-Length, so the upstream can never take it for a complete upload.
        await asyncio.wait_for(upstream_closed.wait(), TIMEOUT)
    head, _, body = bytes(arrived).partition(b"\r\n\r\n")
    assert head.startswith(b"POST /upload HTTP/1.1\r\n") and b"\r\ncontent-length: 100" in head.lower()
    assert body == b"only part of it"


async def test_idle_keepalive_client_is_closed(start_proxy: StartProxy, recording_upstream: RawUpstream) -> None:
    app = await start_proxy(blue_url=recording_upstream.url, idle_timeout="0.3")
    c = await RawClient.connect(app.port)
    try:
        await c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await c.read_response())[0] == 200
        assert await c.closed()  # nothing more sent: closed after the idle timeout, well within TIMEOUT
    finally:
        await c.close()


async def test_connections_beyond_the_cap_are_refused_clearly(
    start_proxy: StartProxy, recording_upstream: RawUpstream
) -> None:
    app = await start_proxy(blue_url=recording_upstream.url, max_connections="2")
    held = [await RawClient.connect(app.port) for _ in range(2)]
    extra = await RawClient.connect(app.port)
    try:
        for c in held:  # the first two work
            await c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            assert (await c.read_response())[0] == 200
        status, headers, body = await extra.read_response()
        assert headers["connection"] == ["close"]
        assert status == 503 and b"too many connections" in body
        assert await extra.closed()
        await held[0].close()
        # A slot is free again: a new client gets through (bounded retries while the close propagates).
        async with asyncio.timeout(TIMEOUT):
            while True:
                again = await RawClient.connect(app.port)
                await again.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                status, _, _ = await again.read_response()
                await again.close()
                if status == 200:
                    break
    finally:
        for c in [*held, extra]:
            await c.close()
    assert app.proxy is not None and app.proxy.refused >= 1


async def head_pending(app: Bgproxy) -> None:
    """Until the proxy has read part of a head and waits for the rest (so that the next send is a read of its own)."""
    assert app.proxy is not None
    async with asyncio.timeout(TIMEOUT):
        while not any(conn.held for conn in app.proxy.connections):  # noqa: ASYNC110 - bounded poll
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("size,expected", [(900, 200), (1100, 431)])
async def test_header_limit_holds_for_a_head_that_spans_reads(
    strict_proxy: Bgproxy, recording_upstream: RawUpstream, size: int, expected: int
) -> None:
    """Two reads, each under MAX_HEADER_BYTES (2048 here); together over it (2 x 1100) or not (2 x 900)."""
    c = await RawClient.connect(strict_proxy.port)
    try:
        await c.send(b"GET /spans HTTP/1.1\r\nHost: h\r\nX-A: " + b"a" * size + b"\r\n")
        await head_pending(strict_proxy)
        await c.send(b"X-B: " + b"b" * size + b"\r\n\r\n")
        status, headers, _ = await c.read_response()
        assert status == expected
    finally:
        await c.close()
    received = bytes(recording_upstream.received)
    if expected == 200:
        assert b"x-a: " + b"a" * size in received.lower() and b"x-b: " + b"b" * size in received.lower()
    else:
        assert headers["connection"] == ["close"] and received == b""


async def test_oversized_trailers_are_refused(strict_proxy: Bgproxy, recording_upstream: RawUpstream) -> None:
    """Trailers of a chunked body count against MAX_HEADER_BYTES too; the body never completes upstream."""
    c = await RawClient.connect(strict_proxy.port)
    try:
        await c.send(b"POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n")
        async with asyncio.timeout(TIMEOUT):
            while b"abc" not in recording_upstream.received:  # noqa: ASYNC110 - bounded poll
                await asyncio.sleep(0.01)
        # Small sends, each likely a read of its own, so no single read is over the limit; the 19th trailer takes
        # them past 2048 bytes as it ends. Nothing more is sent: the answer comes first.
        for i in range(19):
            await c.send(b"X-T%d: %s\r\n" % (i, b"t" * 100))
            await asyncio.sleep(0)
        status, headers, _ = await c.read_response()
        assert status == 431 and headers["connection"] == ["close"]
        assert await c.closed()
    finally:
        await c.close()
    assert not bytes(recording_upstream.received).endswith(b"0\r\n\r\n")


async def test_part_of_a_method_after_a_response_gets_the_head_timeout(strict_proxy: Bgproxy) -> None:
    """Bytes that start no request yet (here "GE") start the head clock: 408, not a silent idle close later."""
    c = await RawClient.connect(strict_proxy.port)
    try:
        await c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await c.read_response())[0] == 200
        await c.send(b"GE")
        status, headers, _ = await c.read_response()  # within TIMEOUT; the idle timeout is 60 s
        assert status == 408 and headers["connection"] == ["close"]
    finally:
        await c.close()


async def test_pipelined_head_in_pieces_waits_for_a_slow_exchange(start_proxy: StartProxy) -> None:
    """A head arriving in pieces behind a slow exchange is not timed out by HEADER_TIMEOUT meanwhile."""
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await up.read_request(reader)
            if head.startswith(b"GET /slow "):
                await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with RawUpstream(handler) as up:
        app = await start_proxy(blue_url=up.url, header_timeout="0.2")
        assert app.proxy is not None
        c = await RawClient.connect(app.port)
        try:
            await c.send(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHo")
            await head_pending(app)
            conn = next(iter(app.proxy.connections))
            async with asyncio.timeout(TIMEOUT):  # six ticks of the deadline ticker (0.05 s): past HEADER_TIMEOUT
                for _ in range(6):
                    conn.progress = True
                    while conn.progress:  # noqa: ASYNC110 - bounded poll; the ticker clears the flag
                        await asyncio.sleep(0.01)
            await c.send(b"st: h\r\n\r\n")
            release.set()
            assert [(await c.read_response())[2] for _ in range(2)] == [b"ok", b"ok"]
        finally:
            await c.close()


async def test_a_body_before_a_pipelined_head_does_not_count_as_head(
    strict_proxy: Bgproxy, recording_upstream: RawUpstream
) -> None:
    """60,000 body bytes and the start of the next head in one read: the head is still small."""
    c = await RawClient.connect(strict_proxy.port)
    try:
        post = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 60000\r\n\r\n" + b"x" * 60000
        await c.send(post + b"GET /next HTTP/1.1\r\nHo")
        await head_pending(strict_proxy)
        await c.send(b"st: h\r\n\r\n")
        assert [(await c.read_response())[0] for _ in range(2)] == [200, 200]
    finally:
        await c.close()
    assert b"GET /next " in bytes(recording_upstream.received)


async def test_an_endless_trailer_line_is_refused_with_431(
    strict_proxy: Bgproxy, recording_upstream: RawUpstream
) -> None:
    """A trailer that never ends is buffered by httptools until it ends: its raw bytes are bounded like a head's.

    Fails while nothing bounds it: the proxy keeps reading (and buffering) and never answers."""
    c = await RawClient.connect(strict_proxy.port)

    async def send_forever() -> None:
        # Far beyond MAX_REQUEST_LINE + MAX_HEADER_BYTES (512 + 2048 here), in reads without body bytes.
        try:
            await c.send(b"POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: ")
            for _ in range(1000):
                await c.send(b"t" * 512)
                await asyncio.sleep(0.001)  # separate reads
        except ConnectionError:
            pass  # the proxy closed the connection after its answer

    sender = asyncio.create_task(send_forever())
    try:
        status, headers, body = await c.read_response()
        assert status == 431 and headers["connection"] == ["close"], body
        assert b"trailers too large" in body
        assert await c.closed()
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await c.close()
    assert not bytes(recording_upstream.received).endswith(b"0\r\n\r\n")  # the body never completed upstream


@pytest.mark.parametrize(
    "method,bodiless",
    [
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ],
)
@pytest.mark.parametrize("extra", [b"HTTP/1.", b"HTTP/1.1 20", b"HTTP/1.1 200 OK\r\nContent-Le"])
async def test_a_pooled_connection_that_said_more_than_a_bodiless_response_is_not_reused(
    start_proxy: StartProxy, method: str, bodiless: bytes, extra: bytes
) -> None:
    """Bytes after a bodiless response (here part of an extra status line) mean the upstream is confused: that
    connection must not carry the next exchange. Fails while it is pooled: the next request gets a 502."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await up.read_request(reader)
            if head.startswith(b"GET /ok "):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            else:
                writer.write(bodiless + extra)  # one write: the response and what follows it arrive together
            await writer.drain()

    async with RawUpstream(handler) as up:
        app = await start_proxy(blue_url=up.url)
        c = await RawClient.connect(app.port)
        try:
            await c.send(f"{method} /bodiless HTTP/1.1\r\nHost: h\r\n\r\n".encode())
            status, _, _ = await c.read_response() if method != "HEAD" else await read_head_only(c)
            assert status in (200, 204, 304)
            await c.send(b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n")
            status, _, body = await c.read_response()
            assert (status, body) == (200, b"ok")
            assert up.connections == 2  # the confused connection was closed, not reused
        finally:
            await c.close()


async def read_head_only(c: RawClient) -> tuple[int, dict[str, list[str]], bytes]:
    """The answer to a HEAD request: a head, whatever Content-Length says, and no body."""
    head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    return int(head.split(b" ", 2)[1]), {}, b""
