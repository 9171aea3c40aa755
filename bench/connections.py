"""Connection scale: one bgproxy replica holding N (10,000) idle keep-alive client connections.

Each idle connection first gets one `GET /small` answered (a keep-alive connection a browser or an Ingress keeps
after a request), then stays open and silent. Measured: bgproxy's RSS before and with the N idle connections (the
difference per connection), its open files, whether every idle connection still works afterwards, and the latency
of a stream of requests on fresh connections (connect, one request, close) and on one kept connection, before,
with, and after the N idle connections (median, p99, max). The client is this process (uvloop), on the load core;
bgproxy is alone on the SUT core. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field

import uvloop

from . import procstat
from .harness import BenchError, Harness
from .origin import SMALL_BODY, Origin
from .systems import Running, start_bgproxy

REQUEST = b"GET /small HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench-connections\r\n\r\n"
TIMEOUT = 10.0  # seconds for any one connect or response
OPEN_TIMEOUT = 120.0  # seconds for opening all the idle connections
HOLD = 600  # bgproxy's IDLE_TIMEOUT during the run: longer than the run, so nothing idles out


@dataclass
class Latency:
    label: str
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    foreign_pct: float = 0.0  # CPU other people's processes used meanwhile (100 = one core): noise


@dataclass
class ConnectionsResult:
    idle: int
    opened: int
    open_s: float
    open_errors: list[str]
    rss_before_mib: float
    rss_idle_mib: float
    rss_after_mib: float
    rss_per_connection_kib: float
    fds_before: int
    fds_idle: int
    fds_after: int
    still_alive: int  # idle connections that answered a second request at the end
    checked_alive: int
    quiet_cpu_before_pct: float  # bgproxy's CPU with no traffic at all (its timers), before...
    quiet_cpu_idle_pct: float  # ...and while it holds the idle connections
    latencies: list[Latency] = field(default_factory=list)


def raise_open_files(need: int) -> None:
    """This process holds the client side of every connection: raise its open-files limit (the hard one too,
    as root), or say how far it falls short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need and os.geteuid() == 0:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return
        except (ValueError, OSError):
            pass
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < need:
        raise BenchError(f"the open-files limit is {hard}, {need} are needed: raise it (ulimit -Hn) or use --idle")


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(REQUEST)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    if not head.startswith(b"HTTP/1.1 200"):
        raise BenchError(f"unexpected answer: {head[:100]!r}")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        None,
    )
    if length is None:
        raise BenchError("no Content-Length in the answer")
    body = await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
    if body != SMALL_BODY:
        raise BenchError("wrong body")


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), TIMEOUT)
    except (OSError, TimeoutError):
        pass


def _latency(label: str, times: list[float], errors: int) -> Latency:
    ms = sorted(t * 1000 for t in times) or [0.0]
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return Latency(label, len(times), errors, round(q[49], 3), round(q[89], 3), round(q[98], 3), round(ms[-1], 3))


async def _noted(bg: Running, stream: Awaitable[Latency]) -> Latency:
    """A latency stream, with the CPU that processes this benchmark did not start used meanwhile."""
    before, t0 = procstat.foreign_ticks(), time.perf_counter()
    lat = await stream
    used = procstat.cpu_seconds_between(before, procstat.foreign_ticks())
    lat.foreign_pct = round(100 * used / (time.perf_counter() - t0), 1)
    return lat


async def _quiet_cpu(bg: Running, seconds: float) -> float:
    """bgproxy's CPU (% of a core) over `seconds` without a single request: what its timers cost."""
    before = procstat.cpu_ticks(bg.pids())
    await asyncio.sleep(seconds)
    return round(100 * procstat.cpu_seconds_between(before, procstat.cpu_ticks(bg.pids())) / seconds, 2)


async def _fresh_stream(port: int, n: int, label: str) -> Latency:
    """n requests one after the other, each on a new connection: connect, request, answer, close."""
    times, errors = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            reader, writer = await _connect(port)
            await _exchange(reader, writer)
            times.append(time.perf_counter() - t0)
            await _close(writer)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, BenchError):
            errors += 1
    return _latency(label, times, errors)


async def _kept_stream(port: int, n: int, label: str) -> Latency:
    times, errors = [], 0
    reader, writer = await _connect(port)
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            await _exchange(reader, writer)
            times.append(time.perf_counter() - t0)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, BenchError):
            errors += 1
            await _close(writer)
            reader, writer = await _connect(port)
    await _close(writer)
    return _latency(label, times, errors)


async def _open_idle(
    port: int, n: int, batch: int
) -> tuple[list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], list[str]]:
    """n connections, `batch` at a time, each with one request answered; the ones that failed are reported."""
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    errors: list[str] = []

    async def one() -> None:
        try:
            reader, writer = await _connect(port)
        except (OSError, TimeoutError) as exc:
            errors.append(f"connect: {exc!r}")
            return
        try:
            await _exchange(reader, writer)
            conns.append((reader, writer))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, BenchError) as exc:
            errors.append(f"request: {exc!r}")
            await _close(writer)

    async with asyncio.timeout(OPEN_TIMEOUT):
        for start in range(0, n, batch):
            await asyncio.gather(*(one() for _ in range(min(batch, n - start))))
    return conns, errors


def _rss_mib(bg: Running) -> float:
    return procstat.rss_bytes(bg.pids()) / (1 << 20)


def _fds(bg: Running) -> int:
    try:
        return len(os.listdir(f"/proc/{bg.proc.pid}/fd"))
    except OSError:
        return -1


async def _settle(bg: Running, seconds: float = 1.0) -> None:
    """Let bgproxy finish what the last burst left (closes, frees) before its memory is read."""
    await asyncio.sleep(seconds)
    bg.check_alive()


async def measure(bg: Running, *, idle: int, probes: int, batch: int, quiet: float) -> ConnectionsResult:
    port = int(bg.url.rsplit(":", 1)[1])
    await _fresh_stream(port, max(100, probes // 10), "warm-up")  # pools, imports, allocator
    await _settle(bg)
    rss_before, fds_before = _rss_mib(bg), _fds(bg)
    quiet_before = await _quiet_cpu(bg, quiet)
    lat = [
        await _noted(bg, _fresh_stream(port, probes, "fresh connections, before")),
        await _noted(bg, _kept_stream(port, probes, "kept connection, before")),
    ]

    t0 = time.perf_counter()
    conns, errors = await _open_idle(port, idle, batch)
    open_s = time.perf_counter() - t0
    await _settle(bg, 2.0)
    rss_idle, fds_idle = _rss_mib(bg), _fds(bg)
    quiet_idle = await _quiet_cpu(bg, quiet)
    lat += [
        await _noted(bg, _fresh_stream(port, probes, f"fresh connections, {len(conns)} idle held")),
        await _noted(bg, _kept_stream(port, probes, f"kept connection, {len(conns)} idle held")),
    ]

    sample = conns[:: max(1, len(conns) // 200)]
    alive = 0
    for reader, writer in sample:  # the idle ones still work: a second request on each of a sample
        try:
            await _exchange(reader, writer)
            alive += 1
        except (OSError, TimeoutError, asyncio.IncompleteReadError, BenchError):
            pass
    await asyncio.gather(*(_close(w) for _, w in conns))
    await _settle(bg, 2.0)
    rss_after, fds_after = _rss_mib(bg), _fds(bg)
    lat += [
        await _noted(bg, _fresh_stream(port, probes, "fresh connections, after closing them")),
        await _noted(bg, _kept_stream(port, probes, "kept connection, after closing them")),
    ]
    per_conn = (rss_idle - rss_before) * 1024 / len(conns) if conns else 0.0
    return ConnectionsResult(
        idle=idle,
        opened=len(conns),
        open_s=round(open_s, 2),
        open_errors=errors[:20],
        rss_before_mib=round(rss_before, 1),
        rss_idle_mib=round(rss_idle, 1),
        rss_after_mib=round(rss_after, 1),
        rss_per_connection_kib=round(per_conn, 2),
        fds_before=fds_before,
        fds_idle=fds_idle,
        fds_after=fds_after,
        still_alive=alive,
        checked_alive=len(sample),
        quiet_cpu_before_pct=quiet_before,
        quiet_cpu_idle_pct=quiet_idle,
        latencies=lat,
    )


def run(h: Harness, origin: Origin, *, idle: int, probes: int, batch: int, quiet: float) -> ConnectionsResult:
    raise_open_files(idle + 1024)
    # Room for the idle ones and the probes: MAX_CONNECTIONS is exactly 10,000 by default, and the 10,001st
    # connection would be refused with a 503.
    env = {"BGPROXY_MAX_CONNECTIONS": str(idle + 256), "BGPROXY_IDLE_TIMEOUT": str(HOLD)}
    bg = start_bgproxy(h, origin, env=env)
    try:
        return uvloop.run(measure(bg, idle=idle, probes=probes, batch=batch, quiet=quiet))
    finally:
        h.stop(bg.proc)


def render(r: ConnectionsResult) -> str:
    lines = [
        f"## {r.opened} idle keep-alive connections held by one bgproxy",
        "",
        f"- opened {r.opened} of {r.idle} in {r.open_s} s"
        + (f" ({len(r.open_errors)} failed: {r.open_errors[:3]})" if r.open_errors else ", none failed"),
        f"- RSS {r.rss_before_mib} MiB before, {r.rss_idle_mib} MiB with them: "
        f"**{r.rss_per_connection_kib} KiB per idle connection**; {r.rss_after_mib} MiB after closing them",
        f"- open files {r.fds_before} before, {r.fds_idle} with them, {r.fds_after} after",
        f"- {r.still_alive} of {r.checked_alive} idle connections sampled answered a second request at the end",
        f"- bgproxy's CPU without any traffic: {r.quiet_cpu_before_pct}% of a core before, "
        f"{r.quiet_cpu_idle_pct}% while it holds them",
        "",
        "| requests, one after the other | n | errors | p50 ms | p90 ms | p99 ms | max ms | other processes' CPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for lat in r.latencies:
        lines.append(
            f"| {lat.label} | {lat.requests} | {lat.errors} | {lat.p50_ms} | {lat.p90_ms} | {lat.p99_ms} "
            f"| {lat.max_ms} | {lat.foreign_pct}% |"
        )
    return "\n".join(lines) + "\n"
