"""Security defaults of the admin API: loopback by default, tokens never shown, no CORS, no cross-site flips.

Covered elsewhere and not repeated here: the default address in Settings and the refusal to start a
non-loopback admin without a token (exit 2) in test_settings.py, as is a token read from BGPROXY_ADMIN_TOKEN_FILE
protecting a real server whose debug log never shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bgproxy.app import Bgproxy
from tests.support.processes import clean_env, serve_process
from tests.support.servers import TIMEOUT, StartProxy, Upstream, free_port

DEFAULT_ADMIN_PORT = 9090
TOKEN = "sec-T0KEN-never-print-8c1d"
EVIL = "https://evil.example"


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state owned by process `pid`, from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        with open(f"/proc/{pid}/net/{table}") as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state != "0A" or inode not in inodes:  # 0A: LISTEN
                    continue
                hex_addr, hex_port = local.split(":")
                raw = bytes.fromhex(hex_addr)
                # /proc prints the address as 32-bit words in host order
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.append((socket.inet_ntop(family, raw), int(hex_port, 16)))
    return found


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no obstacle
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


async def connect_refused(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")
async def test_a_started_serve_binds_the_admin_port_to_loopback_only(
    tmp_path: Path, upstreams: dict[str, Upstream]
) -> None:
    """`bgproxy serve` with no admin address given: 127.0.0.1:9090, and nothing else."""
    if not port_is_free(DEFAULT_ADMIN_PORT):
        pytest.skip(f"port {DEFAULT_ADMIN_PORT} is taken on this machine")
    port = free_port()
    args = ["serve", "--blue", upstreams["blue"].url, "--green", upstreams["green"].url]
    env = clean_env(BGPROXY_LISTEN=f"127.0.0.1:{port}", BGPROXY_STATE_BACKEND="memory", BGPROXY_DRAIN_GRACE="0")
    async with serve_process(tmp_path, args, env) as proc:
        assert proc.proc is not None
        try:
            await proc.wait_ready(DEFAULT_ADMIN_PORT)
        except pytest.fail.Exception:
            if "address already in use" in proc.stderr.lower():
                pytest.skip(f"port {DEFAULT_ADMIN_PORT} was taken meanwhile")
            raise
        sockets = listening_sockets(proc.proc.pid)
        assert ("127.0.0.1", DEFAULT_ADMIN_PORT) in sockets, sockets
        assert [s for s in sockets if s[1] == DEFAULT_ADMIN_PORT] == [("127.0.0.1", DEFAULT_ADMIN_PORT)], sockets
        assert sorted(sockets) == sorted([("127.0.0.1", DEFAULT_ADMIN_PORT), ("127.0.0.1", port)])
        # Another loopback address reaches a wildcard listener, but not this one.
        assert await connect_refused("127.0.0.2", DEFAULT_ADMIN_PORT)
        assert not await connect_refused("127.0.0.1", DEFAULT_ADMIN_PORT)
        log = json.loads(next(line for line in proc.stderr.splitlines() if '"listening"' in line))
        assert log["admin"] == f"127.0.0.1:{DEFAULT_ADMIN_PORT}"
        assert await proc.stop() == 0


async def test_the_token_is_never_logged_nor_shown_in_any_answer(
    tmp_path: Path, upstreams: dict[str, Upstream]
) -> None:
    """Text logs at debug with the access log on, through refused, failed and successful calls with near-miss
    tokens; and no admin answer, header or body, carries the token."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port, admin_port = free_port(), free_port()
    env = clean_env(
        BGPROXY_BLUE_URL=upstreams["blue"].url,
        BGPROXY_GREEN_URL=upstreams["green"].url,
        BGPROXY_LISTEN=f"127.0.0.1:{port}",
        BGPROXY_ADMIN_LISTEN=f"127.0.0.1:{admin_port}",
        BGPROXY_ADMIN_TOKEN_FILE=str(token_file),
        BGPROXY_STATE_BACKEND="memory",
        BGPROXY_LOG_LEVEL="debug",
        BGPROXY_LOG_FORMAT="text",
        BGPROXY_ACCESS_LOG="true",
        BGPROXY_DRAIN_GRACE="0",
    )
    base = f"http://127.0.0.1:{admin_port}"
    seen: list[str] = []
    async with (
        serve_process(tmp_path, ["serve"], env) as proc,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s,
    ):
        await proc.wait_ready(admin_port)

        async def call(method: str, path: str, auth: str | None, **kw: object) -> int:
            headers = {"Authorization": auth} if auth is not None else {}
            async with s.request(method, base + path, headers=headers, **kw) as r:  # type: ignore[arg-type]
                seen.append(str(r.headers) + await r.text())
                return r.status

        good = f"Bearer {TOKEN}"
        assert await call("POST", "/switch", None, json={"to": "green"}) == 401
        assert await call("POST", "/switch", f"Bearer {TOKEN}x", json={"to": "green"}) == 401
        assert await call("POST", "/switch", f"Bearer {TOKEN[:-1]}", json={"to": "green"}) == 401
        assert await call("POST", "/switch", f"Basic {TOKEN}", json={"to": "green"}) == 401
        assert await call("POST", "/rollback", good) == 409  # nothing to roll back to
        assert await call("POST", "/switch", good, json={"to": TOKEN}) == 400  # echoed to its sender only
        seen.pop()
        assert await call("POST", "/switch", good, data=b"{not json") == 400
        assert await call("POST", "/switch", good, json={"to": "green", "reason": "release"}) == 200
        assert await call("POST", "/promote", good, json={}) == 200
        for path in ("/state", "/history", "/metrics", "/openapi.json", "/healthz", "/readyz", "/nope"):
            await call("GET", path, good)
        # the data plane forwards a client's Authorization untouched; its access log still must not show it
        async with s.get(f"http://127.0.0.1:{port}/some/path", headers={"Authorization": good}) as r:
            assert r.status == 200
        assert await proc.stop() == 0
    stderr = proc.stderr
    assert "switch" in stderr and "request" in stderr  # the logs we searched do say things
    assert TOKEN not in stderr
    assert TOKEN[:12] not in stderr  # not even part of it
    for answer in seen:
        assert TOKEN not in answer
    assert TOKEN.encode() in upstreams["blue"].seen[-1].header("Authorization")[0].encode()


@pytest.fixture
async def admin(start_proxy: StartProxy) -> AsyncIterator[tuple[Bgproxy, aiohttp.ClientSession, str]]:
    """A proxy with the default admin settings: loopback, no token."""
    app = await start_proxy()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        yield app, s, f"http://127.0.0.1:{app.admin_port}"


def cors_headers(headers: object) -> list[str]:
    return [k for k in headers if k.lower().startswith("access-control-")]  # type: ignore[attr-defined]


async def test_no_cors_headers_even_for_a_cross_origin_request(
    admin: tuple[Bgproxy, aiohttp.ClientSession, str],
) -> None:
    _, s, base = admin
    for path in ("/state", "/history", "/metrics", "/openapi.json", "/healthz", "/readyz"):
        async with s.get(base + path, headers={"Origin": EVIL}) as r:
            assert r.status == 200
            assert cors_headers(r.headers) == [], (path, dict(r.headers))
    # A preflight is not answered with a permission: the browser will not send the real request.
    for path in ("/switch", "/promote", "/rollback", "/state"):
        preflight = {
            "Origin": EVIL,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        async with s.options(base + path, headers=preflight) as r:
            assert r.status == 405
            assert cors_headers(r.headers) == [], (path, dict(r.headers))
    async with s.get(base + "/state") as r:
        assert (await r.json())["active"] == "blue"


CROSS_SITE = [
    # (case, headers, body) as a browser sends them for a page on another site, without any preflight
    ("form-post", {"Origin": EVIL, "Content-Type": "application/x-www-form-urlencoded"}, b"to=green"),
    ("text-plain-json", {"Origin": EVIL, "Content-Type": "text/plain"}, b'{"to": "green"}'),
    ("no-cors-fetch", {"Origin": EVIL, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}, b""),
    ("sandboxed-page", {"Origin": "null", "Content-Type": "text/plain"}, b'{"to": "green"}'),
    ("fetch-metadata-only", {"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"}, b'{"to": "green"}'),
    ("dns-rebinding", {"Host": "evil.example:9090", "Origin": "http://evil.example:9090"}, b'{"to": "green"}'),
]


@pytest.mark.parametrize("path", ["/switch", "/promote", "/rollback"])
@pytest.mark.parametrize(("case", "headers", "body"), CROSS_SITE, ids=[c[0] for c in CROSS_SITE])
async def test_a_web_page_cannot_flip_a_loopback_admin_without_a_token(
    admin: tuple[Bgproxy, aiohttp.ClientSession, str], case: str, headers: dict[str, str], body: bytes, path: str
) -> None:
    """Without CORS a page cannot read the answer, but a browser sends these requests anyway: they must not flip."""
    _, s, base = admin
    async with s.post(base + "/switch", json={"to": "green"}) as r:  # a real flip first, so rollback has a target
        assert r.status == 200
    async with s.get(base + "/state") as r:
        before = await r.json()
    async with s.post(base + path, data=body, headers=headers) as r:
        assert r.status == 403, await r.text()
        assert "refused" in (await r.json())["error"]
    async with s.get(base + "/state") as r:
        assert await r.json() == before


async def test_same_origin_and_plain_clients_still_flip(admin: tuple[Bgproxy, aiohttp.ClientSession, str]) -> None:
    app, s, base = admin
    same_origin = {"Origin": f"http://127.0.0.1:{app.admin_port}", "Sec-Fetch-Site": "same-origin"}
    cases: list[tuple[str, dict[str, str], bytes]] = [
        ("/switch", {"Content-Type": "application/x-www-form-urlencoded"}, b'{"to": "green"}'),  # curl -d
        ("/promote", {}, b""),  # curl -X POST
        ("/rollback", same_origin, b""),
        ("/switch", {"Host": f"localhost:{app.admin_port}"}, b'{"to": "blue"}'),
        ("/promote", {"Host": f"[::1]:{app.admin_port}"}, b""),
    ]
    for path, headers, body in cases:
        async with s.post(base + path, data=body, headers=headers) as r:
            assert r.status == 200, (path, headers, await r.text())


async def test_with_a_token_any_host_name_is_accepted(start_proxy: StartProxy) -> None:
    """The Host check only guards the token-less default; a token is the guard otherwise (a Service name)."""
    app = await start_proxy(admin_token=TOKEN)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        headers = {"Authorization": f"Bearer {TOKEN}", "Host": "bgproxy-admin.prod.svc:9090"}
        async with s.post(f"http://127.0.0.1:{app.admin_port}/promote", headers=headers) as r:
            assert r.status == 200
        headers["Origin"] = EVIL
        async with s.post(f"http://127.0.0.1:{app.admin_port}/promote", headers=headers) as r:
            assert r.status == 403
