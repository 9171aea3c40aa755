"""`bgproxy demo`: two demo upstreams (blue and green), the proxy and the admin API in one process on loopback.

The upstreams answer with their colour and echo websockets, so preview, switch and rollback can be tried with
curl alone.
"""

from __future__ import annotations

import asyncio
import os
import signal

from aiohttp import WSMsgType, web

from .app import Bgproxy, ListenError, StartupError
from .log import setup_logging
from .settings import Settings, load_settings


def demo_upstream(color: str) -> web.Application:
    async def hello(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await ws.send_str(f"{color}: {msg.data}")
            return ws
        return web.Response(text=f"hello from {color} ({request.method} {request.path_qs})\n", headers={"X-App": color})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    return app


async def _start_upstream(color: str) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(demo_upstream(color), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


async def run_demo(listen: str | None, admin_listen: str | None) -> None:
    runners = []
    try:
        ports = {}
        for color in ("blue", "green"):
            runner, ports[color] = await _start_upstream(color)
            runners.append(runner)
        settings: Settings = load_settings(
            blue_url=f"http://127.0.0.1:{ports['blue']}",
            green_url=f"http://127.0.0.1:{ports['green']}",
            listen=listen or "127.0.0.1:8080",
            admin_listen=admin_listen or "127.0.0.1:9090",
            state_backend="memory",
            admin_token="",
            log_format=os.environ.get("BGPROXY_LOG_FORMAT", "text"),
        )
        setup_logging(settings.log_level, settings.log_format)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        app = Bgproxy(settings)
        try:
            try:
                await app.start()
            except ListenError as exc:  # the demo takes its addresses from its flags only
                flag = "--" + exc.setting.replace("_", "-")
                raise StartupError(
                    f"cannot listen on {exc.address} ({flag}): {exc.reason}; choose free ports with --listen and "
                    "--admin-listen"
                ) from None
            p, a = f"http://127.0.0.1:{app.port}", f"http://127.0.0.1:{app.admin_port}"
            print(
                f"""
bgproxy demo: proxy on {p}, admin API on {a} (blue and green demo upstreams on loopback)

  curl {p}/                                   # the active colour (blue) answers
  curl -H 'X-Preview: 1' {p}/                 # preview: the standby colour (green) answers
  curl --cookie 'bg-preview=green' {p}/       # the preview cookie pins a colour
  curl -X POST -d '{{"to": "green"}}' {a}/switch   # flip: every new request goes to green
  curl -X POST {a}/rollback                   # and back
  curl {a}/state ; curl {a}/history ; curl {a}/metrics

Dashboard: open {a}/ in a browser (the live colour, the figures, the history, and the buttons).

Ctrl-C to stop.
""",
                flush=True,
            )
            await stop.wait()
        finally:
            await app.stop()
    finally:
        for runner in runners:
            await runner.cleanup()
