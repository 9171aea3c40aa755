"""Real servers for the tests to talk to: recording upstream apps, byte-level clients and upstreams, free ports."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from aiohttp import WSMsgType, web

from bgproxy.app import Bgproxy

TIMEOUT = 10.0


@dataclass
class Seen:
    method: str
    path: str
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> list[str]:
        low = name.lower().encode()
        return [v.decode("latin-1") for k, v in self.raw_headers if k.lower() == low]


@dataclass
class Upstream:
    """A real aiohttp app standing in for one colour; records what reached it."""

    color: str
    url: str = ""
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    arrived: dict[str, asyncio.Event] = field(default_factory=dict)
    # /ctl/NAME answers what the test set here (status, body, seconds before answering), 200 "ok" by default, and
    # records when each request came (monotonic): an endpoint a pre-promotion check or a health probe can look at.
    answers: dict[str, tuple[int, str, float]] = field(default_factory=dict)
    hits: dict[str, list[float]] = field(default_factory=dict)

    def gate(self, name: str) -> tuple[asyncio.Event, asyncio.Event]:
        """(arrived, release): the request /gate/NAME waits for `release` after setting `arrived`."""
        self.arrived.setdefault(name, asyncio.Event())
        self.gates.setdefault(name, asyncio.Event())
        return self.arrived[name], self.gates[name]


def upstream_app(up: Upstream) -> web.Application:
    async def record(request: web.Request, body: bytes = b"") -> None:
        up.seen.append(Seen(request.method, request.raw_path, list(request.raw_headers), body))

    async def default(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        await record(request, body)
        return web.Response(text=f"{up.color}\n", headers={"X-App": up.color})

    async def echo(request: web.Request) -> web.StreamResponse:
        """Streams the request body back as it arrives (no buffering of the whole body)."""
        await record(request)
        resp = web.StreamResponse(headers={"X-App": up.color})
        if request.content_length is not None:
            resp.content_length = request.content_length
        await resp.prepare(request)
        async for chunk in request.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def count(request: web.Request) -> web.StreamResponse:
        """Reads the body and answers its length: uploads of any size without echoing them."""
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        await record(request)
        return web.Response(text=f"{up.color} {total}\n", headers={"X-App": up.color})

    async def stream(request: web.Request) -> web.StreamResponse:
        size = int(request.query.get("size", "0"))
        chunked = request.query.get("chunked") == "1"
        await record(request)
        resp = web.StreamResponse(headers={"X-App": up.color})
        if not chunked:
            resp.content_length = size
        await resp.prepare(request)
        block = up.color[0].encode() * 65536
        sent = 0
        while sent < size:
            n = min(len(block), size - sent)
            await resp.write(block[:n])
            sent += n
        await resp.write_eof()
        return resp

    async def drip(request: web.Request) -> web.StreamResponse:
        """A download that takes `seconds` (default 5): a chunk every tenth of it."""
        seconds = float(request.query.get("seconds", "5"))
        await record(request)
        resp = web.StreamResponse(headers={"X-App": up.color})
        await resp.prepare(request)
        for _ in range(10):
            await resp.write(up.color.encode() * 1024)
            await asyncio.sleep(seconds / 10)
        await resp.write_eof()
        return resp

    async def gate(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        arrived, release = up.gate(name)
        await record(request)
        arrived.set()
        await release.wait()
        return web.Response(text=f"{up.color} {name}\n", headers={"X-App": up.color})

    async def ctl(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        up.hits.setdefault(name, []).append(time.monotonic())
        await record(request)
        code, text, delay = up.answers.get(name, (200, "ok", 0.0))
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=code, text=text, headers={"X-App": up.color})

    async def status(request: web.Request) -> web.StreamResponse:
        await record(request)
        code = int(request.match_info["code"])
        return web.Response(status=code, headers={"X-App": up.color}, body=None if code in (204, 304) else b"x")

    async def cookies(request: web.Request) -> web.StreamResponse:
        await record(request)
        resp = web.Response(text=up.color, headers={"X-App": up.color})
        resp.headers.add("Set-Cookie", "a=1; Path=/")
        resp.headers.add("Set-Cookie", "b=2; Path=/")
        resp.headers["Connection"] = "keep-alive, X-Secret-Hop"
        resp.headers["X-Secret-Hop"] = "should not pass"
        resp.headers["Keep-Alive"] = "timeout=5"
        return resp

    async def gzip(request: web.Request) -> web.StreamResponse:
        await record(request)
        import gzip as gz

        return web.Response(
            body=gz.compress(b"compressed " * 100, mtime=0),
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain", "X-App": up.color},
        )

    async def ws(request: web.Request) -> web.StreamResponse:
        await record(request)
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str(f"{up.color}:{msg.data}")
            elif msg.type == WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    app = web.Application(client_max_size=1 << 31)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/count", count)
    app.router.add_get("/stream", stream)
    app.router.add_get("/drip", drip)
    app.router.add_get("/gate/{name}", gate)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_route("*", "/ctl/{name}", ctl)
    app.router.add_get("/cookies", cookies)
    app.router.add_get("/gzip", gzip)
    app.router.add_get("/ws", ws)
    app.router.add_route("*", "/{tail:.*}", default)
    return app


StartProxy = Callable[..., Awaitable[Bgproxy]]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


# Ports for servers a test starts later come from below the kernel's ephemeral range: a port bind(0) picked there
# could be taken by an outgoing connection (a replica's to the API server, say) before the server binds it, which
# CI saw as "Address already in use". None is handed out twice in a session.
_PORTS: Final = range(10_000, _ephemeral_low())
_handed_out: set[int] = set()
_ports_rng: Final = random.Random()  # not the global one, which tests seed


def free_port() -> int:
    """A port on 127.0.0.1 that nothing is bound to now, for a server a test starts later."""
    for _ in range(1000):
        port = _ports_rng.choice(_PORTS) if len(_PORTS) > 1000 else 0
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = s.getsockname()[1]
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port found on 127.0.0.1")


class RawClient:
    """A client that speaks bytes, for framing cases no HTTP library would send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status_line = b""  # of the last response read

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_response(self) -> tuple[int, dict[str, list[str]], bytes]:
        """One response, framed by Content-Length or chunked (no body for 1xx/204/304)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        self.status_line = head.partition(b"\r\n")[0]
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers.setdefault(k.strip().lower(), []).append(v.strip())
        body = b""
        if "content-length" in headers:
            body = await asyncio.wait_for(self.reader.readexactly(int(headers["content-length"][0])), TIMEOUT)
        elif headers.get("transfer-encoding") == ["chunked"]:
            while True:
                size_line = await asyncio.wait_for(self.reader.readuntil(b"\r\n"), TIMEOUT)
                size = int(size_line.split(b";")[0], 16)
                chunk = await asyncio.wait_for(self.reader.readexactly(size + 2), TIMEOUT)
                if size == 0:
                    break
                body += chunk[:-2]
        return status, headers, body

    async def read_all(self) -> bytes:
        return await asyncio.wait_for(self.reader.read(), TIMEOUT)

    async def closed(self) -> bool:
        """True once the server closed the connection (EOF or reset), within the timeout."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
        except ConnectionError:
            return True
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


class RawUpstream:
    """An upstream that speaks bytes: records exactly what arrives and answers as the test scripts it."""

    def __init__(self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> None:
        self.handler = handler
        self.received = bytearray()
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> RawUpstream:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """Reads one request head (and a Content-Length body), recording the bytes."""
        head = await reader.readuntil(b"\r\n\r\n")
        self.received += head
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                body = await reader.readexactly(int(line.split(b":")[1]))
                self.received += body
        return head

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
