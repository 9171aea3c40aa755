"""python -m bench instructions: callgrind's instructions per request, the figure to compare two commits by.

Timings on a shared machine spread by 20%; the instructions bgproxy executes for a request do not. bgproxy runs
as the benchmark runs it (systems.bgproxy_command) under ``valgrind --tool=callgrind --instr-atstart=no`` in
front of the nginx origin. Per path, a warm-up runs with counting off; then, for each repetition, counting is
switched on (``callgrind_control -i on``), wrk sends a fixed number of requests and stops, bgproxy finishes the
requests still in flight and closes every client connection, counting is switched off and dumped. The figure is
the dump's total Ir divided by the requests bgproxy answered meanwhile (its ``bgproxy_requests_total``, read with
counting off), which counts the ~50 requests in flight when wrk stops; wrk's own count is shown beside it.

``--rev REV`` measures another commit of this repository (exported with ``git archive``, run from there with
the packages of this environment), ``--tree DIR`` a checkout; the harness stays this one, so two commits are
measured the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from . import origin, report, systems
from .harness import (
    REPO_ROOT,
    BenchError,
    Harness,
    Proc,
    free_ports,
    imported_from,
    post_json,
    source_tree,
    wait_http,
    wait_tcp,
)
from .wrk import INGRESS_HEADERS, run_wrk, write_stop_after_script

START_TIMEOUT = 300.0  # python under valgrind imports slowly, more so on a busy machine
IDLE_TIMEOUT = 60.0
WRK_REQUEST_TIMEOUT_S = 10  # callgrind makes bgproxy ~50x slower: wrk's default 2 s would count slow answers
CONNECTIONS = 50  # as the throughput runs
MIN_RPS_UNDER_CALLGRIND = 100  # bounds each wrk run: requests / this + 30 seconds
# Deterministic dict/set hashing in the server, so that two runs execute the same instructions.
HASH_SEED = "0"


@dataclass
class Count:
    path: str
    rep: int
    instructions: int
    answered: int  # by bgproxy while counting (its requests_total), or wrk's count if the metric is missing
    wrk_requests: int
    seconds: float

    @property
    def per_request(self) -> float:
        return self.instructions / self.answered if self.answered else 0.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("instructions mode (default paths small,ingress; default reps 3)")
    g.add_argument("--requests", type=int, help="requests counted per run (default 10000; quick 1000)")
    g.add_argument("--warmup-requests", type=int, help="requests per path before counting (default 3000; quick 300)")
    g.add_argument("--rev", help="measure this commit of the repository (git archive) instead of the working tree")
    g.add_argument("--tree", type=Path, help="measure the bgproxy package of this checkout instead")
    g.add_argument(
        "--weight",
        type=int,
        default=0,
        help="shift this share of traffic to green first (what a split costs; default 0)",
    )


def _describe(tree: Path, rev: str | None) -> str:
    """The commit measured, marked `+changes` when bgproxy/ differs from it (other files do not count)."""
    where = ["git", "-C", str(REPO_ROOT if rev else tree)]
    done = subprocess.run([*where, "rev-parse", "--short", rev or "HEAD"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return "?"
    commit = done.stdout.strip()
    if rev is None:
        changed = subprocess.run(
            [*where, "status", "--porcelain", "--", "bgproxy"], capture_output=True, text=True, check=False
        )
        if changed.stdout.strip():
            commit += "+changes"
    return commit


def _build_of(tree: Path) -> str:
    """Which build of bgproxy runs from `tree`: `compiled` or `pure Python` (a commit before bgproxy.build had only
    the pure one)."""
    probe = "from bgproxy import build; print('compiled' if build.compiled() else 'pure Python')"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return done.stdout.strip()
    return "pure Python" if "bgproxy.build" in done.stderr or "cannot import name 'build'" in done.stderr else "?"


def answered(admin_url: str) -> int | None:
    """The sum of bgproxy_requests_total over all its labels, or None when the metric is not there."""
    with urllib.request.urlopen(admin_url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    values = [float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith("bgproxy_requests_total{")]
    return round(sum(values)) if values else None


_TCP_STATES_HELD = {"01", "08"}  # ESTABLISHED (accepted, or still in the accept queue), CLOSE_WAIT (not closed)


def client_connections(port: int) -> int:
    """Server-side sockets of `port` that bgproxy has not closed yet (from /proc/net/tcp*)."""
    held = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] in _TCP_STATES_HELD:
                    held += 1
    return held


def _wait_idle(port: int, proc: Proc) -> None:
    """Until bgproxy has answered what was in flight when wrk stopped and closed every client connection."""
    deadline = time.monotonic() + IDLE_TIMEOUT
    while client_connections(port):
        if not proc.alive():
            raise BenchError(proc.describe_exit())
        if time.monotonic() > deadline:
            raise BenchError(f"bgproxy still holds client connections {IDLE_TIMEOUT:.0f}s after wrk stopped")
        time.sleep(0.05)


class Callgrind:
    """Switches one callgrind process's counting on and off and reads the total of each dump."""

    def __init__(self, control: str, proc: Proc, out_dir: Path) -> None:
        self.control, self.proc, self.out_dir = control, proc, out_dir

    def _send(self, *args: str) -> None:
        done = subprocess.run(
            [self.control, *args, str(self.proc.pid)], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0 or "OK." not in done.stdout:
            raise BenchError(f"callgrind_control {' '.join(args)} failed: {done.stdout}{done.stderr}".strip())

    def on(self) -> None:
        self._send("-i", "on")

    def off_and_dump(self) -> int:
        """Counting off, then a dump: its `totals:` line is the Ir counted since the previous dump."""
        self._send("-i", "off")
        before = set(self.out_dir.glob(f"callgrind.out.{self.proc.pid}.*"))
        self._send("-d")
        new = sorted(set(self.out_dir.glob(f"callgrind.out.{self.proc.pid}.*")) - before)
        if len(new) != 1:
            raise BenchError(f"expected one new callgrind dump, found {[p.name for p in new]}")
        for line in new[0].read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                return int(line.split()[1])
        raise BenchError(f"{new[0]} has no totals: line")


def _wrk(h: Harness, url: str, script: Path, requests: int, headers: Sequence[str]) -> int:
    result = run_wrk(
        h.pinned([], h.load_cpu),
        url,
        script=script,
        duration=requests // MIN_RPS_UNDER_CALLGRIND + 30,
        connections=CONNECTIONS,
        timeout_s=WRK_REQUEST_TIMEOUT_S,
        headers=headers,
        stop_after=True,
    )
    if result.socket_errors or result.status_errors:
        raise BenchError(f"wrk: {result.socket_errors} socket errors, {result.status_errors} statuses >= 400")
    if result.requests < requests:
        raise BenchError(f"wrk completed {result.requests} of {requests} requests before its time limit")
    return result.requests


def _split(path: str) -> tuple[str, Sequence[str]]:
    """ "/small+ingress" is /small with an Ingress's request headers (as in bench/throughput.py)."""
    url_path, _, variant = path.partition("+")
    return url_path, INGRESS_HEADERS if variant == "ingress" else ()


def measure(a: argparse.Namespace, h: Harness, tools: dict[str, str], tree: Path) -> list[Count]:
    org = origin.start_origin(h, tools["nginx"], 1024 * 1024)
    port, admin = free_ports(2)
    argv, env = systems.bgproxy_command(org, port, admin)
    env = {**env, "PYTHONHASHSEED": HASH_SEED, "PYTHONPATH": str(tree)}
    print(f"bench: counting the instructions of {imported_from(tree, env)}", file=sys.stderr)
    valgrind = [tools["valgrind"], "--tool=callgrind", "--instr-atstart=no"]
    valgrind.append(f"--callgrind-out-file={h.workdir}/callgrind.out.%p")
    proc = h.spawn("bgproxy-callgrind", [*valgrind, *argv], cpu=h.sut_cpu, env=env, cwd=tree)
    url, admin_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"
    wait_tcp(port, START_TIMEOUT, proc)
    wait_http(admin_url + "/readyz", START_TIMEOUT, proc)
    if wait_http(url + "/small", START_TIMEOUT, proc) != origin.SMALL_BODY:
        raise BenchError("bgproxy relays a wrong body for /small")
    if a.weight:  # forced: the health gate may not have probed green yet; both colours are the same origin anyway
        post_json(admin_url + "/shift", {"weight": a.weight, "reason": "bench: instructions of a split", "force": True})
    cg = Callgrind(tools["callgrind_control"], proc, h.workdir)
    warmup = write_stop_after_script(h.workdir, a.warmup_requests)
    counted = write_stop_after_script(h.workdir, a.requests)
    for path in a.path_list:
        url_path, headers = _split(path)
        _wrk(h, url + url_path, warmup, a.warmup_requests, headers)
        _wait_idle(port, proc)
    counts = []
    for rep in range(1, a.reps + 1):
        for path in a.path_list:
            url_path, headers = _split(path)
            before = answered(admin_url)
            t0 = time.monotonic()
            cg.on()
            wrk_requests = _wrk(h, url + url_path, counted, a.requests, headers)
            _wait_idle(port, proc)
            instructions = cg.off_and_dump()
            seconds = time.monotonic() - t0
            after = answered(admin_url)
            n = after - before if after is not None and before is not None else wrk_requests
            count = Count(path, rep, instructions, n, wrk_requests, seconds)
            counts.append(count)
            print(
                f"[rep {rep}/{a.reps}] {path:<14} {count.per_request:9.0f} instructions/request  "
                f"({instructions} Ir, {n} answered, wrk {wrk_requests}, {seconds:.1f} s)",
                file=sys.stderr,
            )
    return counts


@dataclass
class Row:
    path: str
    runs: int
    median: float
    min: float
    max: float
    spread_pct: float  # (max - min) / median


def summarize(counts: list[Count], paths: Sequence[str]) -> list[Row]:
    rows = []
    for path in paths:
        per = [c.per_request for c in counts if c.path == path]
        if per:
            median = statistics.median(per)
            rows.append(Row(path, len(per), median, min(per), max(per), 100 * (max(per) - min(per)) / median))
    return rows


def render(rows: list[Row], meta: dict[str, object]) -> str:
    lines = [
        "# bgproxy: instructions per request (callgrind)",
        "",
        f"{meta['when']}: bgproxy {meta['measured']}, {meta['build']} ({meta['tree']}), {meta['valgrind']}, "
        f"Python {meta['python']}. "
        f"{meta['requests']} requests per run (wrk -t1 -c{CONNECTIONS}, plus those in flight when it stops) after "
        f"{meta['warmup_requests']} uncounted per path; total Ir / requests bgproxy answered meanwhile"
        + (
            f"; weight {meta['weight']} (a split: the sticky bucket of each request decides its colour)."
            if meta.get("weight")
            else "."
        ),
        "",
        "| path | runs | instructions/request (median) | min | max | spread |",
        "|:--|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        title = r.path.replace("+ingress", " + an Ingress's 13 headers")
        lines.append(f"| {title} | {r.runs} | {r.median:,.0f} | {r.min:,.0f} | {r.max:,.0f} | {r.spread_pct:.2f}% |")
    return "\n".join(lines) + "\n"


def run(a: argparse.Namespace, h: Harness, tools: dict[str, str]) -> dict[str, object]:
    """Count, print and write results-instructions.md/.json; returns what it wrote."""
    tree = source_tree(a.rev, a.tree, h.workdir)
    counts = measure(a, h, tools, tree)
    rows = summarize(counts, a.path_list)
    valgrind = subprocess.run([tools["valgrind"], "--version"], capture_output=True, text=True, check=False)
    meta: dict[str, object] = {
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "measured": _describe(tree, a.rev),
        "build": _build_of(tree),
        "tree": str(tree) if a.tree or not a.rev else f"git archive {a.rev}",
        "valgrind": valgrind.stdout.strip(),
        "python": sys.version.split()[0],
        "requests": a.requests,
        "warmup_requests": a.warmup_requests,
        "reps": a.reps,
        "weight": a.weight,
    }
    payload: dict[str, object] = {
        "meta": meta,
        "summary": rows,
        "runs": [{**asdict(c), "per_request": c.per_request} for c in counts],
    }
    markdown = render(rows, meta)
    md, js = report.write(a.out, "results-instructions", markdown, payload)
    print("\n" + markdown)
    print(f"bench: wrote {md} and {js}", file=sys.stderr)
    return payload
