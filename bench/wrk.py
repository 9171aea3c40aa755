"""Run wrk with a Lua script whose done() prints one JSON line, and parse it."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .harness import BenchError, die_with_parent

_MARK = "BENCH_JSON "

# What ingress-nginx adds to a browser's request before it reaches the Service (X-Request-ID and the
# X-Forwarded-* family), plus a browser's usual headers: real requests carry a dozen, wrk sends only Host.
INGRESS_HEADERS = (
    "X-Request-ID: 5f0c3a7e9d1b4c2a8e6f0b1d2c3e4f5a",
    "X-Real-IP: 10.1.2.3",
    "X-Forwarded-For: 10.1.2.3",
    "X-Forwarded-Host: shop.example.com",
    "X-Forwarded-Port: 443",
    "X-Forwarded-Proto: https",
    "X-Forwarded-Scheme: https",
    "X-Scheme: https",
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Encoding: gzip, deflate, br",
    "Accept-Language: en-GB,en;q=0.9",
    "Cookie: session=abc123; theme=dark",
)

# done() runs once in wrk's main thread after the load; latency figures are in microseconds.
# %.0f rather than %d: counters can exceed 2^31 and LuaJIT's %d is picky about non-integers.
_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  local extra = ""
  if counters then extra = counters() end
  io.write(string.format(
    "BENCH_JSON {\"requests\":%.0f,\"duration_us\":%.0f,\"bytes\":%.0f,\"connect\":%.0f,\"read\":%.0f," ..
    "\"write\":%.0f,\"status\":%.0f,\"timeout\":%.0f,\"mean_us\":%.1f,\"max_us\":%.0f,\"p50_us\":%.0f," ..
    "\"p90_us\":%.0f,\"p99_us\":%.0f,\"p999_us\":%.0f%s}\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), extra))
end
"""

# Counting statuses costs wrk a response() callback per request, so only the flip runs use it (both the
# flip and the no-flip runs, so that they stay comparable). Each wrk thread has its own Lua state: the
# counters are globals there, collected in done() through thread:get().
_COUNT = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) non2xx = 0; blue = 0; green = 0 end
function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
  local c = headers["X-Bg-Color"] or headers["x-bg-color"]
  if c == "blue" then blue = blue + 1 elseif c == "green" then green = green + 1 end
end
function counters()
  local n, b, g = 0, 0, 0
  for _, t in ipairs(threads) do n = n + t:get("non2xx"); b = b + t:get("blue"); g = g + t:get("green") end
  return string.format(",\"non2xx\":%.0f,\"blue\":%.0f,\"green\":%.0f", n, b, g)
end
"""


# wrk -t1 stops once it has `limit` answers: a run sends the same load whatever the machine's speed.
# thread:stop() ends the thread's loop, but wrk's main thread sleeps out -d regardless: the script says so on
# stderr and run_wrk(stop_after=...) sends SIGINT, wrk's own "stop now", which wakes it to report.
_STOPPED = "BENCH_STOPPED"
_STOP_AFTER = r"""
local limit = %d
local seen = 0
function response(status, headers, body)
  seen = seen + 1
  if seen == limit then
    wrk.thread:stop()
    io.stderr:write("BENCH_STOPPED\n")
    io.stderr:flush()
  end
end
"""


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    max_ms: float
    socket_errors: int  # connect + read + write + timeout
    status_errors: int  # wrk's own count: status > 399
    non2xx: int | None = None  # only with count=True
    blue: int | None = None
    green: int | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def write_scripts(workdir: Path) -> dict[bool, Path]:
    paths = {False: workdir / "wrk-report.lua", True: workdir / "wrk-count.lua"}
    paths[False].write_text(_DONE)
    paths[True].write_text(_COUNT + _DONE)
    return paths


def write_stop_after_script(workdir: Path, limit: int) -> Path:
    """A script for `wrk -t1` that stops after `limit` responses (and reports like the others)."""
    path = workdir / f"wrk-stop-after-{limit}.lua"
    path.write_text(_STOP_AFTER % limit + _DONE)
    return path


def _run_until_stopped(argv: list[str], timeout: float) -> tuple[int, str, str]:
    """Run wrk with a stop-after script; once it reports that its thread stopped, SIGINT it until it exits."""
    deadline = time.monotonic() + timeout
    popen = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=die_with_parent
    )
    try:
        assert popen.stderr is not None
        before = []
        for line in popen.stderr:  # ends at the marker, or at EOF once wrk has run for its whole -d
            if line.startswith(_STOPPED):
                break
            before.append(line)
        # The kernel may hand SIGINT to the stopping worker thread rather than to the sleeping main one:
        # repeat until the main thread has woken, joined and reported.
        while popen.poll() is None:
            if time.monotonic() > deadline:
                raise BenchError(f"wrk did not stop within {timeout:.0f}s")
            popen.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(0.2)
        out, err = popen.communicate(timeout=max(1.0, deadline - time.monotonic()))
        return popen.returncode, out, "".join(before) + err
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait()


def run_wrk(
    argv_prefix: list[str],
    url: str,
    *,
    script: Path,
    duration: int,
    connections: int,
    threads: int = 1,
    timeout_s: int = 2,
    headers: Sequence[str] = (),
    stop_after: bool = False,
) -> WrkResult:
    """argv_prefix is e.g. ['taskset', '-c', '0'] (or []); duration in whole seconds (wrk takes integers).

    stop_after: the script is a write_stop_after_script one, and duration only bounds the run.
    """
    argv = [
        *argv_prefix,
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        f"--timeout={timeout_s}s",
        "-s",
        str(script),
        *(arg for header in headers for arg in ("-H", header)),
        url,
    ]
    if stop_after:
        returncode, stdout, stderr = _run_until_stopped(argv, duration + 30)
    else:
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=duration + 30, check=False, preexec_fn=die_with_parent
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"wrk did not finish within {duration + 30}s") from exc
        returncode, stdout, stderr = done.returncode, done.stdout, done.stderr
    line = next((ln for ln in stdout.splitlines() if ln.startswith(_MARK)), None)
    if returncode != 0 or line is None:
        raise BenchError(f"wrk failed (exit {returncode}): {stderr.strip() or stdout.strip()}")
    d = json.loads(line[len(_MARK) :])
    secs = d["duration_us"] / 1e6
    return WrkResult(
        requests=int(d["requests"]),
        duration_s=secs,
        rps=d["requests"] / secs if secs else 0.0,
        p50_ms=d["p50_us"] / 1000,
        p90_ms=d["p90_us"] / 1000,
        p99_ms=d["p99_us"] / 1000,
        p999_ms=d["p999_us"] / 1000,
        mean_ms=d["mean_us"] / 1000,
        max_ms=d["max_us"] / 1000,
        socket_errors=int(d["connect"] + d["read"] + d["write"] + d["timeout"]),
        status_errors=int(d["status"]),
        non2xx=int(d["non2xx"]) if "non2xx" in d else None,
        blue=int(d["blue"]) if "blue" in d else None,
        green=int(d["green"]) if "green" in d else None,
    )
