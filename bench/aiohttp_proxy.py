"""The Python baseline: a straightforward streaming reverse proxy, aiohttp server + aiohttp ClientSession,
uvloop, no access log. Run: python -m bench.aiohttp_proxy --listen 127.0.0.1:8081 --upstream http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
    )
)
SESSION = web.AppKey("session", ClientSession)
UPSTREAM = web.AppKey("upstream", str)


def _forwardable(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Drop hop-by-hop headers and those the Connection header names; keep repeated ones."""
    named = {h.strip().lower() for h in headers.get("Connection", "").split(",")}
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in headers.items():
        if k.lower() not in HOP_BY_HOP and k.lower() not in named:
            out.add(k, v)
    return out


async def proxy(request: web.Request) -> web.StreamResponse:
    headers = _forwardable(request.headers)
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    url = URL(request.app[UPSTREAM] + request.raw_path, encoded=True)
    data = request.content if request.body_exists else None
    async with request.app[SESSION].request(
        request.method, url, headers=headers, data=data, allow_redirects=False
    ) as upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(_forwardable(upstream.headers))
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(65536):
            await response.write(chunk)
        await response.write_eof()
        return response


async def serve(host: str, port: int, upstream: str) -> None:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app[SESSION] = ClientSession(
        connector=TCPConnector(limit=0, keepalive_timeout=120),
        timeout=ClientTimeout(total=None, sock_connect=2, sock_read=60),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
    )
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=4096).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await app[SESSION].close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:8081")
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    uvloop.run(serve(host, int(port), args.upstream))


if __name__ == "__main__":
    main()
