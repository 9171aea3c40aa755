"""The nginx origin every system under test proxies to, plus the upload sink behind its /upload."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .harness import BenchError, Harness, Proc, free_ports, wait_http, wait_tcp

SMALL_BODY = b"Hello from the bgproxy bench origin. This body is about one hundred bytes long, give or take.....\n"
BODY_16K = bytes(i % 251 for i in range(16384))


def nginx_common(workdir: Path, name: str) -> str:
    """Top of an nginx.conf: foreground, one worker, private pid/log/temp paths (works without root)."""
    tmp = workdir / f"{name}-tmp"
    tmp.mkdir(exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""  # else workers run as nobody and cannot read /tmp/...
    temps = "\n".join(
        f"    {kind}_temp_path {tmp}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}daemon off;
master_process on;
worker_processes 1;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
{temps}
    keepalive_timeout 120s;
    keepalive_requests 10000000;  # default 1000: connections would be closed every 1000 requests
"""


def start_nginx(h: Harness, name: str, conf: str, port: int, cpu: int | None, nginx: str) -> Proc:
    path = h.workdir / f"{name}.conf"
    path.write_text(conf)
    argv = [nginx, "-p", str(h.workdir), "-e", str(h.workdir / f"{name}-error.log"), "-c", str(path)]
    proc = h.spawn(name, argv, cpu=cpu)
    wait_tcp(port, 10, proc)
    return proc


@dataclass
class Origin:
    port: int
    green_port: int  # the same server on a second port: bgproxy wants distinct blue and green URLs
    proc: Proc
    sink: Proc
    big_size: int
    big_file: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def green_url(self) -> str:
        return f"http://127.0.0.1:{self.green_port}"


def start_origin(h: Harness, nginx: str, big_size: int) -> Origin:
    port, green_port, sink_port = free_ports(3)
    root = h.workdir / "www"
    root.mkdir(exist_ok=True)
    (root / "small").write_bytes(SMALL_BODY)
    (root / "16k").write_bytes(BODY_16K)
    big = root / "1g"
    with open(big, "wb") as f:  # sparse: costs no disk, reads as zeros
        f.truncate(big_size)
    conf = (
        nginx_common(h.workdir, "origin")
        + f"""    sendfile on;
    tcp_nopush on;
    open_file_cache max=16 inactive=600s;
    open_file_cache_valid 600s;
    default_type application/octet-stream;
    upstream sink {{ server 127.0.0.1:{sink_port}; keepalive 8; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        listen 127.0.0.1:{green_port} backlog=4096;
        root {root};
        location = /small {{ default_type text/plain; }}
        location = /16k {{ }}
        location = /1g {{ }}
        location = /upload {{
            # `return 200` here would answer before the body has arrived and discard the rest:
            # stream every byte to a sink that counts them, unbuffered, and relay its answer.
            client_max_body_size 0;
            proxy_request_buffering off;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
            proxy_pass http://sink;
        }}
    }}
}}
"""
    )
    sink = h.spawn("sink", [sys.executable, "-m", "bench.sink", str(sink_port)], cpu=h.load_cpu)
    wait_tcp(sink_port, 10, sink)
    proc = start_nginx(h, "origin", conf, port, h.load_cpu, nginx)
    origin = Origin(port, green_port, proc, sink, big_size, big)
    for path, want in (("/small", SMALL_BODY), ("/16k", BODY_16K)):
        if wait_http(origin.url + path, 10, proc) != want:
            raise BenchError(f"origin serves a wrong body for {path}")
    return origin
