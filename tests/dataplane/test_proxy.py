"""The data plane, end to end: what a real client gets back and what a real upstream receives."""

from __future__ import annotations

import asyncio
import gzip

import aiohttp
import pytest

from bgproxy.app import Bgproxy
from tests.support.servers import TIMEOUT, RawClient, RawUpstream, StartProxy, Upstream, free_port


def url(app: Bgproxy, path: str = "/") -> str:
    return f"http://127.0.0.1:{app.port}{path}"


async def test_request_goes_to_active_colour_and_names_it(proxy: Bgproxy, upstreams: dict[str, Upstream]) -> None:
    async with aiohttp.ClientSession() as s, s.get(url(proxy, "/hello")) as r:
        assert r.status == 200
        assert await r.text() == "blue\n"
        assert r.headers["X-Bg-Color"] == "blue"
    assert [x.path for x in upstreams["blue"].seen] == ["/hello"]
    assert upstreams["green"].seen == []


async def test_raw_path_and_query_forwarded_byte_for_byte(raw, upstreams: dict[str, Upstream]) -> None:
    target = b"/a%2Fb/./../c;p=1?x=1&y=%20%zz&x=2&empty=&=v#"
    target = target[:-1]  # a fragment never goes on the wire
    c = await raw()
    await c.send(b"GET " + target + b" HTTP/1.1\r\nHost: example.test\r\n\r\n")
    status, _, body = await c.read_response()
    assert status == 200 and body == b"blue\n"
    assert upstreams["blue"].seen[0].path == target.decode()


async def test_host_preserved_and_forwarded_headers_set(raw, upstreams: dict[str, Upstream]) -> None:
    c = await raw()
    await c.send(b"GET / HTTP/1.1\r\nHost: shop.example.com\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n")
    await c.read_response()
    seen = upstreams["blue"].seen[0]
    assert seen.header("Host") == ["shop.example.com"]
    assert seen.header("X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"]
    assert seen.header("X-Forwarded-Proto") == ["http"]
    assert seen.header("X-Forwarded-Host") == ["shop.example.com"]


async def test_forwarded_proto_from_the_ingress_is_kept(raw, upstreams: dict[str, Upstream]) -> None:
    c = await raw()
    await c.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: public.example\r\n\r\n")
    await c.read_response()
    seen = upstreams["blue"].seen[0]
    assert seen.header("X-Forwarded-Proto") == ["https"]
    assert seen.header("X-Forwarded-Host") == ["public.example"]
    assert seen.header("X-Forwarded-For") == ["127.0.0.1"]


async def test_hop_by_hop_request_headers_removed(raw, upstreams: dict[str, Upstream]) -> None:
    c = await raw()
    await c.send(
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Drop-Me: 1\r\nConnection: keep-alive, X-Drop-Me\r\nKeep-Alive: timeout=5\r\n"
        b"TE: trailers\r\nTrailer: X-T\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\n"
        b"X-Kept: yes\r\nX-Kept: twice\r\n\r\n"
    )
    status, _, _ = await c.read_response()
    assert status == 200
    names = {k.decode().lower() for k, _ in upstreams["blue"].seen[0].raw_headers}
    for hop in ("x-drop-me", "keep-alive", "te", "trailer", "proxy-authorization", "proxy-connection"):
        assert hop not in names, hop
    assert upstreams["blue"].seen[0].header("X-Kept") == ["yes", "twice"]


async def test_hop_by_hop_response_headers_removed_and_set_cookie_kept(raw) -> None:
    c = await raw()
    await c.send(b"GET /cookies HTTP/1.1\r\nHost: h\r\n\r\n")
    status, headers, body = await c.read_response()
    assert status == 200 and body == b"blue"
    assert headers["set-cookie"] == ["a=1; Path=/", "b=2; Path=/"]
    assert "x-secret-hop" not in headers
    assert "keep-alive" not in headers
    assert "connection" not in headers
    assert headers["x-bg-color"] == ["blue"]


async def test_compressed_body_passed_unchanged(raw) -> None:
    c = await raw()
    await c.send(b"GET /gzip HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\n\r\n")
    _status, headers, body = await c.read_response()
    assert headers["content-encoding"] == ["gzip"]
    assert gzip.decompress(body) == b"compressed " * 100


async def test_head_204_and_304_have_no_body_and_keep_the_connection_usable(raw) -> None:
    c = await raw()
    await c.send(b"HEAD /stream?size=5000 HTTP/1.1\r\nHost: h\r\n\r\n")
    head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert b" 200 " in head.split(b"\r\n")[0]
    assert b"Content-Length: 5000" in head
    for code in (204, 304):
        await c.send(b"GET /status/%d HTTP/1.1\r\nHost: h\r\n\r\n" % code)
        head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 %d " % code)
        assert b"Transfer-Encoding" not in head
    # Any stray body byte would corrupt this next response.
    await c.send(b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n")
    status, _, body = await c.read_response()
    assert (status, body) == (200, b"blue\n")


async def test_expect_100_continue_is_relayed(raw, upstreams: dict[str, Upstream]) -> None:
    c = await raw()
    await c.send(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    interim = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert interim.startswith(b"HTTP/1.1 100")
    await c.send(b"hello")
    status, _, body = await c.read_response()
    assert (status, body) == (200, b"hello")


async def test_chunked_request_body_streamed_to_upstream(raw, upstreams: dict[str, Upstream]) -> None:
    c = await raw()
    await c.send(b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    await c.send(b"6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    status, _headers, body = await c.read_response()
    assert (status, body) == (200, b"hello world")


async def test_repeated_request_headers_kept_in_order(raw, upstreams: dict[str, Upstream]) -> None:
    c = await raw()
    await c.send(b"GET / HTTP/1.1\r\nHost: h\r\nAccept: a\r\nX-Multi: 1\r\nAccept: b\r\nX-Multi: 2\r\n\r\n")
    await c.read_response()
    seen = upstreams["blue"].seen[0]
    assert seen.header("X-Multi") == ["1", "2"]
    assert seen.header("Accept") == ["a", "b"]


async def test_large_download_and_upload_stream_through(proxy: Bgproxy) -> None:
    size = 32 * 1024 * 1024 + 7
    async with aiohttp.ClientSession() as s:
        for chunked in ("0", "1"):
            got = 0
            async with s.get(url(proxy, f"/stream?size={size}&chunked={chunked}")) as r:
                assert r.status == 200
                async for chunk in r.content.iter_any():
                    got += len(chunk)
            assert got == size

        async def body():  # a generator: aiohttp sends it chunked, never whole
            block = b"u" * 65536
            for _ in range(size // len(block)):
                yield block

        async with s.post(url(proxy, "/count"), data=body()) as r:
            assert await r.text() == f"blue {size // 65536 * 65536}\n"


async def test_websocket_is_tunnelled(proxy: Bgproxy) -> None:
    async with aiohttp.ClientSession() as s, s.ws_connect(url(proxy, "/ws")) as ws:
        for i in range(5):
            await ws.send_str(f"m{i}")
            assert await asyncio.wait_for(ws.receive_str(), TIMEOUT) == f"blue:m{i}"
        payload = bytes(range(256)) * 1000
        await ws.send_bytes(payload)
        assert await asyncio.wait_for(ws.receive_bytes(), TIMEOUT) == payload


async def test_502_when_upstream_refuses(start_proxy: StartProxy) -> None:
    app = await start_proxy(blue_url=f"http://127.0.0.1:{free_port()}")
    async with aiohttp.ClientSession() as s, s.get(url(app)) as r:
        assert r.status == 502
        assert r.headers["X-Bg-Color"] == "blue"
        assert "blue upstream" in await r.text()
    assert app.metrics.error_counters[(app.holder.current.active, "connect")]._value.get() == 1


async def test_504_when_upstream_does_not_answer_in_time(start_proxy: StartProxy, upstreams) -> None:
    app = await start_proxy(upstream_read_timeout="0.3")
    async with aiohttp.ClientSession() as s, s.get(url(app, "/gate/never")) as r:
        assert r.status == 504
        assert "blue upstream" in await r.text()


async def test_client_disconnect_closes_the_upstream_request(start_proxy: StartProxy) -> None:
    upstream_saw_close = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        if await reader.read(1) == b"":
            upstream_saw_close.set()

    async with RawUpstream(handler) as up:
        app = await start_proxy(blue_url=up.url)
        c = await RawClient.connect(app.port)
        await c.send(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        await asyncio.wait_for(c.reader.readuntil(b"partial"), TIMEOUT)
        await c.close()
        await asyncio.wait_for(upstream_saw_close.wait(), TIMEOUT)


async def test_pipelined_requests_answered_in_order(raw, upstreams: dict[str, Upstream]) -> None:
    c = await raw()
    await c.send(
        b"".join(b"GET /p%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(5)) + b"POST /echo HTTP/1.1\r\n"
        b"Host: h\r\nContent-Length: 4\r\n\r\nlast"
    )
    bodies = [(await c.read_response())[2] for _ in range(6)]
    assert bodies == [b"blue\n"] * 5 + [b"last"]
    assert [s.path for s in upstreams["blue"].seen[:5]] == [f"/p{i}" for i in range(5)]


async def test_connection_close_is_honoured(raw) -> None:
    c = await raw()
    await c.send(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    status, headers, _ = await c.read_response()
    assert status == 200 and headers["connection"] == ["close"]
    assert await c.closed()


async def test_http10_client_gets_a_body_it_can_frame(raw) -> None:
    c = await raw()
    await c.send(b"GET /stream?size=1000&chunked=1 HTTP/1.0\r\n\r\n")
    data = await c.read_all()
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head and body == b"b" * 1000


async def test_http10_keep_alive_client_keeps_its_connection(raw) -> None:
    c = await raw()
    for _ in range(2):
        await c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, body = await c.read_response()
        assert c.status_line.startswith(b"HTTP/1.1 200")
        assert status == 200 and headers["connection"] == ["keep-alive"] and body == b"blue\n"
    await c.send(b"GET / HTTP/1.0\r\n\r\n")  # no keep-alive asked: the answer closes
    status, headers, _ = await c.read_response()
    assert status == 200 and headers["connection"] == ["close"]
    assert await c.closed()


async def test_each_response_keeps_its_own_reason_on_a_reused_connection(start_proxy: StartProxy) -> None:
    """The status line of a connection's last response is reused only for the same status and reason."""
    answers = [b"200 OK", b"200 Fine", b"404 Not Found", b"404 Not Found", b"200 OK"]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await up.read_request(reader)
            writer.write(b"HTTP/1.1 " + answer + b"\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        await reader.read()

    async with RawUpstream(handler) as up:
        app = await start_proxy(blue_url=up.url)
        c = await RawClient.connect(app.port)
        for answer in answers:
            await c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            await c.read_response()
            assert c.status_line == b"HTTP/1.1 " + answer
        assert up.connections == 1
        await c.close()


async def test_response_heads_in_pieces_with_trailers_stay_apart(start_proxy: StartProxy) -> None:
    """A status line split across reads keeps its reason; a chunked body's trailers never reach the next head."""

    def read_by_proxy() -> bool:
        upstream = next(iter(app.proxy.connections)).queue[0].upstream
        return upstream is not None and upstream.got_bytes

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await up.read_request(reader)
        pieces = (b"HTTP/1.1 299 Custom Re", b"ason\r\nX-A: 1\r\nTransfer-Enc", b"oding: chunked\r\n\r\n3\r\nabc\r\n")
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await wait_until(read_by_proxy, "the proxy read the piece")  # so that the next one is a read of its own
        writer.write(b"0\r\nX-Trailer: t\r\nConnection: x\r\n\r\n")
        await up.read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
        await writer.drain()
        await reader.read()

    async with RawUpstream(handler) as up:
        app = await start_proxy(blue_url=up.url)
        c = await RawClient.connect(app.port)
        await c.send(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")
        status, headers, body = await c.read_response()
        assert status == 299 and c.status_line == b"HTTP/1.1 299 Custom Reason"
        assert headers["x-a"] == ["1"] and headers["transfer-encoding"] == ["chunked"] and body == b"abc"
        await c.send(b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
        _, headers, body = await c.read_response()
        assert c.status_line == b"HTTP/1.1 200 OK"  # an HTTP/1.0 upstream, answered in HTTP/1.1
        assert body == b"ok" and "x-trailer" not in headers and headers["content-length"] == ["2"]
        assert up.connections == 1
        await c.close()


async def test_http10_client_with_proxy_connection_keep_alive_is_still_http10(raw) -> None:
    """llhttp reads Proxy-Connection like Connection: keep-alive must not make it look like HTTP/1.1."""
    c = await raw()
    await c.send(b"GET /stream?size=1000&chunked=1 HTTP/1.0\r\nProxy-Connection: keep-alive\r\n\r\n")
    data = await c.read_all()  # the body is framed by the connection's end: never chunked to HTTP/1.0
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding" not in head and body == b"b" * 1000


async def test_bytes_after_a_head_response_never_reach_the_next_client(start_proxy: StartProxy) -> None:
    """An upstream that sends more than the HEAD response asked for: its connection is not reused."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await up.read_request(reader)
        if head.startswith(b"HEAD "):
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 Leak\r\nSet-Cookie: session=attacker\r\nX-More")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    async with RawUpstream(handler) as up:
        app = await start_proxy(blue_url=up.url)
        first = await RawClient.connect(app.port)
        await first.send(b"HEAD /a HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await first.read_response())[0] == 204
        second = await RawClient.connect(app.port)
        await second.send(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
        _, headers, body = await second.read_response()
        assert second.status_line == b"HTTP/1.1 200 OK" and "set-cookie" not in headers and body == b"ok"
        assert up.connections == 2
        await first.close()
        await second.close()


async def test_upstream_garbage_is_502(start_proxy: StartProxy) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await up.read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()

    async with RawUpstream(handler) as up:
        app = await start_proxy(blue_url=up.url)
        async with aiohttp.ClientSession() as s, s.get(url(app)) as r:
            assert r.status == 502


async def test_upstream_reset_mid_response_cuts_the_client_response(start_proxy: StartProxy) -> None:
    relayed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
        await writer.drain()
        await asyncio.wait_for(relayed.wait(), TIMEOUT)  # reset only once the client has the first 100 bytes
        writer.transport.abort()

    async with RawUpstream(handler) as up:
        app = await start_proxy(blue_url=up.url)
        c = await RawClient.connect(app.port)
        try:
            await c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\ncontent-length: 1000\r\n" in head.lower()
            assert await asyncio.wait_for(c.reader.readexactly(100), TIMEOUT) == b"x" * 100
            relayed.set()
            # Then the connection ends, 900 bytes short of what the head promised and with no byte more, so
            # no client can take the response for complete.
            assert await c.closed()
        finally:
            await c.close()


@pytest.mark.parametrize("method,retried", [("GET", True), ("POST", False)])
async def test_stale_pooled_connection_retried_only_when_safe(
    start_proxy: StartProxy, method: str, retried: bool
) -> None:
    """The upstream closes a kept-alive connection just as the next request arrives on it."""
    served = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        while True:
            await up.read_request(reader)
            if up.connections == 1 and served == 1:
                return  # closes without answering: the race a pooled connection can lose
            served += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with RawUpstream(handler) as up:
        app = await start_proxy(blue_url=up.url)
        async with aiohttp.ClientSession() as s:
            async with s.get(url(app)) as r:
                assert r.status == 200
            body = b"" if method == "GET" else b"data"
            async with s.request(method, url(app), data=body) as r:
                assert r.status == (200 if retried else 502)
        assert up.connections == (2 if retried else 1)


async def test_metrics_count_requests_per_colour(proxy: Bgproxy) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.get(url(proxy)) as r:
                await r.read()
        async with s.get(url(proxy), headers={"X-Preview": "1"}) as r:
            await r.read()
        async with s.get(f"http://127.0.0.1:{proxy.admin_port}/metrics") as r:
            text = await r.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert samples[("bgproxy_requests_total", (("code", "200"), ("color", "blue"), ("method", "GET")))] == 3
    assert samples[("bgproxy_requests_total", (("code", "200"), ("color", "green"), ("method", "GET")))] == 1
    assert samples[("bgproxy_request_duration_seconds_count", (("color", "blue"),))] == 3
    assert samples[("bgproxy_inflight_requests", (("color", "blue"),))] == 0
    assert samples[("bgproxy_active_color", (("color", "blue"),))] == 1
    assert samples[("bgproxy_active_color", (("color", "green"),))] == 0


async def wait_until(predicate, what: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not predicate():  # noqa: ASYNC110 - a bounded poll of the proxy's own state
            await asyncio.sleep(0.01)
    assert predicate(), what


async def test_slow_reader_pauses_upstream_and_the_pooled_connection_recovers(proxy: Bgproxy) -> None:
    """Backpressure: a client that stops reading pauses the upstream; the connection is reused unpaused."""
    pool = proxy.proxy.pools[proxy.holder.current.active]
    c = await RawClient.connect(proxy.port)
    size = 16 * 1024 * 1024
    await c.send(b"GET /stream?size=%d&chunked=1 HTTP/1.1\r\nHost: h\r\n\r\n" % size)

    def upstream_paused() -> bool:
        return any(
            conn.ex is not None and conn.reading_paused
            for client in proxy.proxy.connections
            if client.queue and (conn := client.queue[0].upstream) is not None
        )

    await wait_until(upstream_paused, "the upstream was never paused while the client did not read")
    status, _, body = await c.read_response()
    assert status == 200 and len(body) == size
    assert len(pool.idle) == 1 and not pool.idle[0].reading_paused
    # The same pooled connection serves the next request, from a different client.
    async with aiohttp.ClientSession() as s, s.get(url(proxy, "/after")) as r:
        assert await asyncio.wait_for(r.text(), TIMEOUT) == "blue\n"
    await c.close()


async def test_drain_finishes_requests_then_says_going_away_to_websockets(
    start_proxy: StartProxy, upstreams: dict[str, Upstream]
) -> None:
    app = await start_proxy(drain_grace="0", drain_timeout="5")
    arrived, release = upstreams["blue"].gate("drain")
    async with aiohttp.ClientSession() as s, s.ws_connect(url(app, "/ws")) as ws:
        await ws.send_str("hi")
        assert await asyncio.wait_for(ws.receive_str(), TIMEOUT) == "blue:hi"
        slow = asyncio.create_task(s.get(url(app, "/gate/drain")))
        await asyncio.wait_for(arrived.wait(), TIMEOUT)
        draining = asyncio.create_task(app.drain())
        await asyncio.sleep(0)
        assert not app.ready()
        release.set()
        async with await asyncio.wait_for(slow, TIMEOUT) as r:
            assert (r.status, await r.text()) == (200, "blue drain\n")
            assert r.headers["Connection"] == "close"
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
        await asyncio.wait_for(draining, TIMEOUT)
