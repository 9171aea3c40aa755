"""A real nginx configured as ingress-nginx configures one (its defaults), in front of bgproxy replicas.

What it copies from ingress-nginx: the upstream is chosen by a Lua balancer from an endpoint list the controller
pushes at run time (no reload, so client connections and websockets survive endpoint changes); keep-alive to the
upstreams (`keepalive 320`, 60 s, 10000 requests, HTTP/1.1, `Connection` from the websocket map); on a connection
error or timeout the next endpoint is tried (`proxy_next_upstream error timeout`, 3 tries, never a non-idempotent
request that was already sent); request bodies buffered (`proxy-request-buffering: on`) except under
`/upload-stream` (as the annotation `proxy-request-buffering: off` does); responses not buffered; the X-Forwarded-*
headers and X-Request-ID set as it sets them. Its own additions, for the soak: `X-Upstream-Addr` and
`X-Upstream-Status` response headers, a JSON access log, and the control port the endpoint list is pushed to.

Needs Debian's `nginx` and `libnginx-mod-http-lua` (with lua-resty-core for `ngx.balancer`).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.servers import free_port

MODULES = Path("/usr/lib/nginx/modules")
LUA_MODULES = ("ndk_http_module.so", "ngx_http_lua_module.so")
START = 10.0

# Round robin over the endpoints (ingress-nginx's default `load-balance`), never the same endpoint twice for one
# request: a retry after a connection error goes to the next one.
BALANCER = """
            local b = require "ngx.balancer"
            local eps = ngx.shared.endpoints:get("list") or ""
            local list = {}
            for ep in eps:gmatch("[^,]+") do list[#list + 1] = ep end
            if #list == 0 then
                ngx.log(ngx.WARN, "no endpoints")
                return ngx.exit(503)
            end
            local ctx = ngx.ctx
            if ctx.tried == nil then
                ctx.tried = {}
                ctx.next = ngx.shared.endpoints:incr("rr", 1, 0)
                if #list > 1 then b.set_more_tries(#list - 1) end
            end
            local ep
            for i = 0, #list - 1 do
                local cand = list[(ctx.next + i) % #list + 1]
                if not ctx.tried[cand] then ep = cand break end
            end
            ep = ep or list[ctx.next % #list + 1]
            ctx.tried[ep] = true
            local host, port = ep:match("^(.+):(%d+)$")
            local ok, err = b.set_current_peer(host, tonumber(port))
            if not ok then
                ngx.log(ngx.ERR, "set_current_peer: ", err)
                return ngx.exit(500)
            end
"""


def missing() -> str | None:
    """Why this machine cannot run the Ingress, or None."""
    if shutil.which("nginx") is None:
        return "nginx is not installed (apt-get install nginx)"
    absent = [m for m in LUA_MODULES if not (MODULES / m).exists()]
    if absent:
        return f"nginx's Lua module is not installed (apt-get install libnginx-mod-http-lua): no {', '.join(absent)}"
    return None


class Ingress:
    """One nginx master with `workers` workers on 127.0.0.1:`port`; endpoints are set with `set_endpoints`."""

    def __init__(self, workdir: Path, *, workers: int = 2, host: str = "soak.example") -> None:
        self.dir = workdir / "ingress"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.workers = workers
        self.host = host
        self.port, self.control_port = free_port(), free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self.endpoints: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.dir / "access.log"

    @property
    def error_log(self) -> Path:
        return self.dir / "error.log"

    def config(self) -> str:
        d = self.dir
        user = "user root;\n" if os.geteuid() == 0 else ""  # else workers run as nobody and cannot read the dir
        temps = "\n".join(
            f"    {k}_temp_path {d}/tmp-{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        loads = "".join(f"load_module {MODULES / m};\n" for m in LUA_MODULES)
        location = """
            proxy_pass http://upstream_balancer;
            proxy_http_version 1.1;
            proxy_set_header Host $best_http_host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Request-ID $req_id;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Host $best_http_host;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Scheme $scheme;
            proxy_set_header X-Scheme $scheme;
            proxy_set_header X-Original-Forwarded-For $http_x_forwarded_for;
            proxy_set_header Proxy "";
            proxy_connect_timeout 5s;
            proxy_send_timeout 60s;
            proxy_read_timeout 60s;
            proxy_buffering off;
            proxy_buffer_size 4k;
            proxy_buffers 4 4k;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 3;
            client_max_body_size 64m;
            add_header X-Upstream-Addr $upstream_addr always;
            add_header X-Upstream-Status $upstream_status always;"""
        return f"""{loads}{user}daemon off;
master_process on;
worker_processes {self.workers};
worker_shutdown_timeout 240s;
pid {d}/nginx.pid;
error_log {self.error_log} error;  # connects refused, upstreams that closed early
events {{ worker_connections 16384; multi_accept on; }}
http {{
{temps}
    log_format soak escape=json '{{"t":$msec,"id":"$http_x_request_id","m":"$request_method","u":"$uri",'
        '"s":$status,"ua":"$upstream_addr","us":"$upstream_status","rt":$request_time}}';
    access_log {self.access_log} soak;
    keepalive_timeout 75s;
    keepalive_requests 1000;
    reset_timedout_connection on;
    client_body_buffer_size 8k;
    server_tokens off;
    lua_shared_dict endpoints 1m;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
    map $http_host $best_http_host {{ default $http_host; '' $host; }}
    map $http_x_request_id $req_id {{ default $http_x_request_id; '' $request_id; }}
    upstream upstream_balancer {{
        server 0.0.0.1;  # placeholder: the Lua balancer picks the endpoint
        balancer_by_lua_block {{{BALANCER}        }}
        keepalive 320;
        keepalive_timeout 60s;
        keepalive_requests 10000;
    }}
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
        server_name _;
        location / {{{location}
            proxy_request_buffering on;
        }}
        location /upload-stream {{{location}
            proxy_request_buffering off;
            rewrite ^ /upload break;
        }}
    }}
    server {{
        listen 127.0.0.1:{self.control_port};
        location = /endpoints {{
            content_by_lua_block {{
                ngx.req.read_body()
                ngx.shared.endpoints:set("list", ngx.req.get_body_data() or "")
                ngx.say("ok")
            }}
        }}
    }}
}}
"""

    async def start(self) -> Ingress:
        conf = self.dir / "nginx.conf"
        conf.write_text(self.config())
        argv = ["nginx", "-p", str(self.dir), "-e", str(self.error_log), "-c", str(conf)]
        check = await asyncio.to_thread(subprocess.run, [*argv, "-t"], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"nginx rejects its configuration:\n{check.stderr}")
        with (self.dir / "stderr.log").open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START
        while True:
            try:
                await self.set_endpoints(self.endpoints)
                return self
            except (aiohttp.ClientError, OSError):
                if self.proc.returncode is not None or loop.time() > deadline:
                    raise RuntimeError(f"nginx did not start:\n{self.errors()}") from None
                await asyncio.sleep(0.05)  # between polls of a bounded wait

    async def set_endpoints(self, endpoints: Sequence[str]) -> None:
        """What the controller does when the Service's endpoints change: the new list, at once, no reload."""
        body = ",".join(endpoints)
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            async with s.post(f"http://127.0.0.1:{self.control_port}/endpoints", data=body) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"nginx refused the endpoints: {resp.status} {await resp.text()}")
        self.endpoints = tuple(endpoints)

    def errors(self) -> str:
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""

    def access(self, request_ids: set[str]) -> dict[str, dict[str, Any]]:
        """nginx's access log lines for these X-Request-IDs: what it answered, after which upstream attempts."""
        out: dict[str, dict[str, Any]] = {}
        if not request_ids or not self.access_log.exists():
            return out
        with self.access_log.open(errors="replace") as log:
            for line in log:
                if any(rid in line for rid in request_ids):
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    out[entry.get("id", "")] = entry
        return out

    async def stop(self) -> None:
        """SIGQUIT, nginx's graceful stop; SIGTERM (fast) if that takes long, then SIGKILL."""
        if self.proc is None or self.proc.returncode is not None:
            return
        for sig, wait in ((signal.SIGQUIT, 3.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), wait)
                return
            except TimeoutError:
                continue
