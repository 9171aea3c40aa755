"""The systems under test: how to start each one pinned to the SUT core and know that it is ready."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import procstat
from .harness import REPO_ROOT, BenchError, Harness, Proc, free_ports, imported_from, post_json, wait_http, wait_tcp
from .origin import BODY_16K, SMALL_BODY, Origin, nginx_common, start_nginx

ORDER = ("direct", "nginx", "haproxy", "aiohttp", "bgproxy", "bgproxy-noanalysis", "bgproxy-weight50", "bgproxy-rev")
# The variants of bgproxy run only when named with --only, each beside bgproxy, interleaved in one run:
# bgproxy-noanalysis (ANALYSIS_ENABLED=false: no live figures kept) measures what the live figures cost;
# bgproxy-weight50 (half of the traffic to the standby by sticky bucket) what a split costs;
# bgproxy-rev the bgproxy of another commit or checkout (--rev/--tree): before against after.
VARIANTS = ("bgproxy-noanalysis", "bgproxy-weight50", "bgproxy-rev")
DEFAULT = tuple(n for n in ORDER if n not in VARIANTS)
BASELINE = "nginx"
OPTIONAL_BY_DEFAULT = frozenset({"bgproxy", *VARIANTS})
START_TIMEOUT = 20.0


@dataclass
class Running:
    name: str
    url: str
    proc: Proc  # whose process tree is the system under test (for direct: the origin nginx)
    admin_url: str | None = None
    variant: str = ""  # bgproxy's: a key of BGPROXY_VARIANTS

    def pids(self) -> list[int]:
        return procstat.tree(self.proc.pid)

    def check_alive(self) -> None:
        if not self.proc.alive():
            raise BenchError(self.proc.describe_exit())


def _nginx_proxy(h: Harness, origin: Origin, tools: dict[str, str]) -> Running:
    (port,) = free_ports(1)
    conf = (
        nginx_common(h.workdir, "nginx-proxy")
        + f"""    client_max_body_size 0;
    proxy_request_buffering off;  # else a 1 GiB upload is spooled to a temp file before it is forwarded
    proxy_max_temp_file_size 0;   # else a response the client reads slowly is spooled to disk (up to 1 GiB)
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $http_host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_connect_timeout 2s;
    proxy_read_timeout 60s;
    upstream origin {{
        server 127.0.0.1:{origin.port};
        keepalive 128;
        keepalive_requests 10000000;
        keepalive_timeout 120s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ proxy_pass http://origin; }}
    }}
}}
"""
    )
    proc = start_nginx(h, "nginx-proxy", conf, port, h.sut_cpu, tools["nginx"])
    return Running("nginx", f"http://127.0.0.1:{port}", proc)


def _haproxy(h: Harness, origin: Origin, tools: dict[str, str]) -> Running:
    (port,) = free_ports(1)
    cfg = h.workdir / "haproxy.cfg"
    cfg.write_text(f"""global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 120s
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server origin 127.0.0.1:{origin.port}
""")
    check = subprocess.run([tools["haproxy"], "-c", "-f", str(cfg)], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise BenchError(f"haproxy rejects its config: {check.stdout}{check.stderr}")
    proc = h.spawn("haproxy", [tools["haproxy"], "-db", "-f", str(cfg)], cpu=h.sut_cpu)
    wait_tcp(port, 10, proc)
    return Running("haproxy", f"http://127.0.0.1:{port}", proc)


def _aiohttp(h: Harness, origin: Origin, tools: dict[str, str]) -> Running:
    (port,) = free_ports(1)
    argv = [
        sys.executable,
        "-m",
        "bench.aiohttp_proxy",
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        origin.url,
    ]
    proc = h.spawn("aiohttp", argv, cpu=h.sut_cpu)
    wait_tcp(port, START_TIMEOUT, proc)
    return Running("aiohttp", f"http://127.0.0.1:{port}", proc)


def bgproxy_importable() -> str | None:
    """None if `python -m bgproxy` can run from the repository, else why not."""
    probe = "import importlib.util as u, sys; sys.exit(0 if u.find_spec('bgproxy.__main__') else 3)"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode == 0:
        return None
    if done.returncode == 3:
        return "bgproxy is not importable (no bgproxy.__main__)"
    return "importing bgproxy fails: " + (done.stderr.strip().splitlines() or ["?"])[-1]


# How the benchmark runs bgproxy: "bench" as every system is measured (nothing written, quiet logs); "defaults"
# as an operator gets it without flags (the file store, which fsyncs every flip, and info logs, a line per flip).
BGPROXY_VARIANTS = {"bench": "memory store, warning logs", "defaults": "file store, info logs (the defaults)"}


def bgproxy_command(
    origin: Origin, port: int, admin: int, *, variant: str = "bench", workdir: Path | None = None
) -> tuple[list[str], dict[str, str]]:
    """argv and extra environment of a bgproxy the benchmark measures (the instruction count uses it too)."""
    argv = [
        sys.executable,
        "-m",
        "bgproxy",
        "serve",
        "--blue",
        origin.url,
        "--green",
        origin.green_url,
        "--listen",
        f"127.0.0.1:{port}",
        "--admin-listen",
        f"127.0.0.1:{admin}",
    ]
    if variant == "bench":
        argv += ["--state-backend", "memory", "--log-level", "warning"]
    elif variant == "defaults" and workdir is not None:  # the default settings, the state file in the workdir
        argv += ["--state-backend", "file", "--state-file", str(workdir / "bgproxy-state.json"), "--log-level", "info"]
    else:
        raise ValueError(f"unknown bgproxy variant {variant!r} (or no workdir for its state file)")
    # no drain on SIGTERM: the benchmark stops it when nothing is in flight
    return argv, {"BGPROXY_DRAIN_GRACE": "0", "BGPROXY_DRAIN_TIMEOUT": "2"}


def start_bgproxy(
    h: Harness,
    origin: Origin,
    variant: str = "bench",
    *,
    env: dict[str, str] | None = None,
    name: str = "bgproxy",
    tree: Path | None = None,
) -> Running:
    """`python -m bgproxy serve` on the SUT core as `variant` says; `env` adds BGPROXY_* settings; `tree` runs the
    bgproxy package of that directory instead of this checkout's."""
    reason = bgproxy_importable()
    if reason:
        raise BenchError(reason)
    port, admin = free_ports(2)
    argv, settings = bgproxy_command(origin, port, admin, variant=variant, workdir=h.workdir)
    settings.update(env or {})
    if tree is not None:
        settings["PYTHONPATH"] = str(tree)
    label = name if variant == "bench" else f"{name}-{variant}"
    proc = h.spawn(label, argv, cpu=h.sut_cpu, env=settings, cwd=tree)
    wait_tcp(port, START_TIMEOUT, proc)
    wait_http(f"http://127.0.0.1:{admin}/readyz", START_TIMEOUT, proc)
    return Running(name, f"http://127.0.0.1:{port}", proc, admin_url=f"http://127.0.0.1:{admin}", variant=variant)


def check_relays(running: Running) -> Running:
    """The system relays both test bodies intact (before anything is measured through it)."""
    for path, want in (("/small", SMALL_BODY), ("/16k", BODY_16K)):
        got = wait_http(running.url + path, START_TIMEOUT, running.proc)
        if got != want:
            raise BenchError(f"{running.name} relays a wrong body for {path} ({len(got)} bytes, want {len(want)})")
    return running


def _bgproxy(h: Harness, origin: Origin, tools: dict[str, str]) -> Running:
    return start_bgproxy(h, origin)


def _bgproxy_noanalysis(h: Harness, origin: Origin, tools: dict[str, str]) -> Running:
    return start_bgproxy(h, origin, env={"BGPROXY_ANALYSIS_ENABLED": "false"}, name="bgproxy-noanalysis")


def _bgproxy_weight50(h: Harness, origin: Origin, tools: dict[str, str]) -> Running:
    running = start_bgproxy(h, origin, name="bgproxy-weight50")
    assert running.admin_url is not None
    # force: the health gate may not have probed green yet; both colours are the same origin anyway
    post_json(running.admin_url + "/shift", {"weight": 50, "reason": "bench: a 50/50 split", "force": True})
    return running


def _bgproxy_rev(h: Harness, origin: Origin, tools: dict[str, str]) -> Running:
    if h.other_tree is None:
        raise BenchError("bgproxy-rev needs --rev REV or --tree DIR")
    imported_from(h.other_tree, {"PYTHONPATH": str(h.other_tree)})  # an editable install elsewhere must not win
    return start_bgproxy(h, origin, name="bgproxy-rev", tree=h.other_tree)


def _direct(h: Harness, origin: Origin, tools: dict[str, str]) -> Running:
    return Running("direct", origin.url, origin.proc)


STARTERS: dict[str, Callable[[Harness, Origin, dict[str, str]], Running]] = {
    "direct": _direct,
    "nginx": _nginx_proxy,
    "haproxy": _haproxy,
    "aiohttp": _aiohttp,
    "bgproxy": _bgproxy,
    "bgproxy-noanalysis": _bgproxy_noanalysis,
    "bgproxy-weight50": _bgproxy_weight50,
    "bgproxy-rev": _bgproxy_rev,
}

TOOLS_NEEDED = {"nginx": {"nginx"}, "haproxy": {"haproxy"}}
PYTHON_NEEDED = {"aiohttp": {"aiohttp", "uvloop"}}


def start(name: str, h: Harness, origin: Origin, tools: dict[str, str]) -> Running:
    """Start a system and check that it relays both test bodies intact."""
    return check_relays(STARTERS[name](h, origin, tools))
