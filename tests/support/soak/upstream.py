"""The blue and green apps of the soak, in a process of their own: `python -m tests.support.soak.upstream
BLUE_PORT GREEN_PORT`.

Each answers with its colour, echoes what it saw of the forwarding headers, streams and sinks bodies built by
`payload`, echoes websocket messages, and has a health endpoint the chaos driver can make fail
(`POST /_control/health` with `fail` or `ok`; only the driver calls it, straight, never through the Ingress).
"""

from __future__ import annotations

import asyncio
import hashlib
import sys

import uvloop
from aiohttp import WSMsgType, web

from tests.support.soak import payload

SEEN = {
    "X-Seen-Host": "Host",
    "X-Seen-Xff": "X-Forwarded-For",
    "X-Seen-Xfp": "X-Forwarded-Proto",
    "X-Seen-Xfh": "X-Forwarded-Host",
    "X-Seen-Request-Id": "X-Request-ID",
}


def colour_app(colour: str) -> web.Application:
    healthy = [True]
    mine = {"X-App": colour}

    async def hello(request: web.Request) -> web.Response:
        await request.read()
        seen = {out: request.headers.get(name, "") for out, name in SEEN.items()}
        return web.Response(text=f"{colour}\n", headers=mine | seen)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(int(request.query["ms"]) / 1000)
        return web.Response(text=f"{colour}\n", headers=mine)

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text=f"{colour} says no\n", headers=mine)

    async def stream(request: web.Request) -> web.StreamResponse:
        seed, size, pace = int(request.query["seed"]), int(request.query["size"]), int(request.query["pace_ms"])
        resp = web.StreamResponse(headers=mine)
        if request.query.get("chunked") != "1":
            resp.content_length = size
        await resp.prepare(request)
        for n, chunk in enumerate(payload.chunks(colour, seed, size)):
            await resp.write(chunk)
            if pace and n % 4 == 3:
                await asyncio.sleep(pace / 1000)
        await resp.write_eof()
        return resp

    async def upload(request: web.Request) -> web.Response:
        h, total = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            h.update(chunk)
            total += len(chunk)
        return web.Response(text=f"{colour} {total} {h.hexdigest()}\n", headers=mine)

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str(f"{colour}:{msg.data}")
        return sock

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=200 if healthy[0] else 503, text="ok\n" if healthy[0] else "failing\n")

    async def control(request: web.Request) -> web.Response:
        healthy[0] = (await request.text()).strip() != "fail"
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/hello", hello)
    app.router.add_get("/slow", slow)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/stream", stream)
    app.router.add_post("/upload", upload)
    app.router.add_get("/ws", ws)
    app.router.add_get("/healthz", health)
    app.router.add_post("/_control/health", control)
    return app


async def serve(ports: dict[str, int]) -> None:
    runners = []
    for colour, port in ports.items():
        runner = web.AppRunner(colour_app(colour), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        runners.append(runner)
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            await runner.cleanup()


if __name__ == "__main__":
    uvloop.run(serve({"blue": int(sys.argv[1]), "green": int(sys.argv[2])}))
