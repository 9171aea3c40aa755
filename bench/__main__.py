"""python -m bench [all|throughput|stream|flip|instructions] — see --help."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from . import connections, deps, flip, instructions, origin, procstat, report, stream, systems, throughput
from .harness import REPO_ROOT, BenchError, Harness, source_tree
from .status import Status, Statuses
from .wrk import write_scripts

# "ingress" is /small again, with the dozen request headers an Ingress passes on (bench/wrk.py).
PATHS = {"small": "/small", "16k": "/16k", "ingress": "/small+ingress"}
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark bgproxy against nginx, HAProxy and a plain aiohttp proxy (loopback only).",
        epilog="Examples: python -m bench --quick --require bgproxy (CI smoke);  python -m bench (full run, "
        "~15 min);  python -m bench stream --only nginx,bgproxy;  python -m bench flip;  "
        "python -m bench instructions (callgrind's instructions per request of bgproxy, deterministic);  "
        "python -m bench connections (10,000 idle keep-alive connections, ~1 min)",
    )
    p.add_argument(
        "mode",
        nargs="?",
        default="all",
        choices=("all", "throughput", "stream", "flip", "instructions", "connections"),
    )
    p.add_argument("--quick", action="store_true", help="seconds-long smoke: 1 rep of 1 s, 64 MiB streams")
    p.add_argument("--reps", type=int, help="interleaved repetitions (default 5; quick 1)")
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 10; quick 1)")
    p.add_argument("--warmup", type=int, help="seconds of wrk warm-up per system and path (default 2; quick 0)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    p.add_argument("--paths", help=f"of {','.join(PATHS)} (default small,16k; for instructions small,ingress)")
    p.add_argument(
        "--only",
        help=f"systems to run, of {','.join(systems.ORDER)} (default {','.join(systems.DEFAULT)}; "
        "bgproxy,bgproxy-noanalysis: what the live figures cost; bgproxy,bgproxy-weight50: what a 50/50 split "
        "costs; bgproxy,bgproxy-rev --rev REV: this checkout against another commit)",
    )
    p.add_argument(
        "--require",
        default="",
        help="systems whose failure fails the run even though they are "
        "optional by default (bgproxy is, until it exists): e.g. --require bgproxy",
    )
    p.add_argument("--stream-mib", type=int, help="size of the streamed download/upload (default 1024; quick 64)")
    p.add_argument("--stream-reps", type=int, default=1)
    p.add_argument("--stream-timeout", type=float, default=300.0, help="seconds per transfer")
    p.add_argument("--flip-interval", type=float, default=0.1, help="seconds between flips (default 0.1)")
    p.add_argument("--idle", type=int, help="connections: idle keep-alive connections to hold (default 10000)")
    p.add_argument("--probes", type=int, help="connections: requests per latency stream (default 2000)")
    p.add_argument("--sut-cpu", type=int, default=1, help="core for the system under test")
    p.add_argument("--load-cpu", type=int, default=0, help="core for wrk, curl and the origin")
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="directory for results.md/.json (default bench/results; other modes: results-MODE.*)",
    )
    p.add_argument("--keep-workdir", action="store_true", help="keep configs and logs (path is printed)")
    instructions.add_arguments(p)
    a = p.parse_args(argv)
    quick = a.quick
    counting = a.mode == "instructions"
    a.reps = a.reps or (1 if quick else 3 if counting else 5)
    a.requests = a.requests or (1000 if quick else 10000)
    a.warmup_requests = a.warmup_requests or (300 if quick else 3000)
    a.paths = a.paths or ("small,ingress" if counting else "small,16k")
    if (a.rev or a.tree) and a.mode not in ("instructions", "throughput"):
        p.error("--rev and --tree are for the instructions and throughput modes")
    a.duration = a.duration or (1 if quick else 10)
    a.warmup = a.warmup if a.warmup is not None else (0 if quick else 2)
    a.stream_mib = a.stream_mib or (64 if quick else 1024)
    a.idle = a.idle or (500 if quick else 10000)
    a.probes = a.probes or (200 if quick else 2000)
    a.selected = _names(a.only, p) if a.only else list(systems.DEFAULT)
    a.required = _names(a.require, p) if a.require else []
    if (a.rev or a.tree) and not counting and "bgproxy-rev" not in a.selected:
        p.error("--rev/--tree in throughput mode measure the bgproxy-rev system: name it with --only")
    if not set(a.required) <= set(a.selected):
        p.error("--require names a system that --only leaves out")
    try:
        a.path_list = [PATHS[x.strip()] for x in a.paths.split(",") if x.strip()]
    except KeyError as exc:
        p.error(f"unknown path {exc}; choose from {','.join(PATHS)}")
    if a.duration < 1 or a.reps < 1:
        p.error("--duration and --reps must be at least 1 (wrk takes whole seconds)")
    return a


def _names(text: str, p: argparse.ArgumentParser) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in systems.ORDER]
    if unknown:
        p.error(f"unknown system(s) {','.join(unknown)}; choose from {','.join(systems.ORDER)}")
    return [n for n in systems.ORDER if n in names]


def _cpus(a: argparse.Namespace) -> tuple[int | None, int | None]:
    allowed = os.sched_getaffinity(0)
    if {a.sut_cpu, a.load_cpu} <= allowed and a.sut_cpu != a.load_cpu:
        return a.sut_cpu, a.load_cpu
    print(
        f"bench: CPUs {a.sut_cpu} and {a.load_cpu} are not both available (have {sorted(allowed)}); "
        "running unpinned, figures will not be comparable",
        file=sys.stderr,
    )
    return None, None


def _version(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        out = (done.stdout + done.stderr).strip().splitlines()
        return out[0] if out else "?"
    return "?"


def _meta(a: argparse.Namespace, h: Harness, tools: dict[str, str]) -> dict[str, object]:
    cpu_model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    versions = {"python": sys.version.split()[0]}
    for pkg in ("aiohttp", "uvloop", "httptools", "bgproxy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[pkg] = importlib.metadata.version(pkg)
    for tool, flag in (("nginx", "-v"), ("haproxy", "-v"), ("wrk", "-v"), ("curl", "--version")):
        if tool in tools:
            versions[tool] = _version([tools[tool], flag])
    git = _version(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"])
    versions["git"] = "no commit yet" if git.startswith("fatal") else git
    return {
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "sut_cpu": h.sut_cpu,
        "load_cpu": h.load_cpu,
        "connections": a.connections,
        "reps": a.reps,
        "duration": a.duration,
        "warmup": a.warmup,
        "stream_mib": a.stream_mib,
        "flip_interval_s": a.flip_interval,
        "mode": a.mode,
        "quick": a.quick,
        "versions": versions,
    }


def _machine_busy_pct(seconds: float) -> float:
    """Mean busy % of all cores over `seconds`, before anything of ours runs."""
    before = procstat.core_jiffies()
    time.sleep(seconds)
    after = procstat.core_jiffies()
    return 100 * statistics.fmean(procstat.core_busy_fraction(before, after, c) for c in after)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def count_instructions(a: argparse.Namespace) -> int:
    tools = deps.ensure_binaries({"nginx", "taskset", "wrk", "valgrind", "callgrind_control"})
    sut_cpu, load_cpu = _cpus(a)
    workdir = Path(tempfile.mkdtemp(prefix="bgproxy-instructions-"))
    try:
        with Harness(workdir, sut_cpu, load_cpu) as h:
            instructions.run(a, h, tools)
    finally:
        if a.keep_workdir:
            print(f"bench: configs, logs and callgrind dumps kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def run_connections(a: argparse.Namespace) -> int:
    """The connection-scale run: bgproxy only, against the nginx origin (bench/connections.py)."""
    tools = deps.ensure_binaries({"nginx", "taskset"})
    sut_cpu, load_cpu = _cpus(a)
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})
    workdir = Path(tempfile.mkdtemp(prefix="bgproxy-bench-"))
    try:
        with Harness(workdir, sut_cpu, load_cpu) as h:
            meta = _meta(a, h, tools)
            if "bgproxy-rev" in a.selected and (a.rev or a.tree):
                h.other_tree = source_tree(a.rev, a.tree, workdir)
                meta["bgproxy_rev"] = a.rev or str(a.tree)
            org = origin.start_origin(h, tools["nginx"], 1 << 20)
            result = connections.run(h, org, idle=a.idle, probes=a.probes, batch=500, quiet=1.0 if a.quick else 5.0)
    finally:
        if a.keep_workdir:
            print(f"bench: configs and logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    markdown = f"# bench connections, {meta['when']}\n\n" + connections.render(result)
    md, js = report.write(a.out, "results-connections", markdown, {"meta": meta, "connections": result})
    print("\n" + markdown)
    print(f"bench: wrote {md} and {js}", file=sys.stderr)
    failed = result.opened < result.idle or result.still_alive < result.checked_alive
    failed = failed or any(lat.errors for lat in result.latencies)
    if failed:
        print("bench: FAILED: an idle connection or a request failed", file=sys.stderr)
    return 1 if failed else 0


def run(a: argparse.Namespace) -> int:
    if a.mode == "instructions":
        return count_instructions(a)
    if a.mode == "connections":
        return run_connections(a)
    wanted_tools = {"nginx", "taskset"}
    if a.mode in ("all", "throughput", "flip"):
        wanted_tools.add("wrk")
    if a.mode in ("all", "stream"):
        wanted_tools.add("curl")
    for name in a.selected:
        wanted_tools |= systems.TOOLS_NEEDED.get(name, set())
        deps.ensure_python_packages(systems.PYTHON_NEEDED.get(name, set()))
    tools = deps.ensure_binaries(wanted_tools)

    sut_cpu, load_cpu = _cpus(a)
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})  # the harness (flipper, samplers) stays off the SUT core
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:  # children inherit it: room for many connections
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    busy_before = _machine_busy_pct(0.5 if a.quick else 1.0)
    if busy_before > 10:
        print(
            f"bench: warning: the machine is {busy_before:.0f}% busy before the benchmark starts; "
            "figures will be noisy",
            file=sys.stderr,
        )
    statuses = Statuses({n: Status() for n in a.selected})
    optional = systems.OPTIONAL_BY_DEFAULT - set(a.required)
    workdir = Path(tempfile.mkdtemp(prefix="bgproxy-bench-"))
    samples: list[throughput.Sample] = []
    transfers: list[stream.Transfer] = []
    flip_runs: list[flip.FlipRun] = []
    try:
        with Harness(workdir, sut_cpu, load_cpu) as h:
            meta = _meta(a, h, tools)
            if "bgproxy-rev" in a.selected and (a.rev or a.tree):
                h.other_tree = source_tree(a.rev, a.tree, workdir)
                meta["bgproxy_rev"] = a.rev or str(a.tree)
            meta["machine_busy_before_pct"] = round(busy_before, 1)
            scripts = write_scripts(workdir)
            org = origin.start_origin(h, tools["nginx"], a.stream_mib * 1024 * 1024)
            wanted = [n for n in a.selected if a.mode != "flip" or n == "bgproxy"]
            running = []
            for name in wanted:
                try:
                    running.append(systems.start(name, h, org, tools))
                except BenchError as exc:
                    state = "skipped" if "not importable" in str(exc) else "failed"
                    statuses.fail(name, f"did not start: {exc}", state=state)
            if a.mode in ("all", "throughput"):
                samples = throughput.run(
                    h,
                    running,
                    statuses,
                    scripts[False],
                    paths=a.path_list,
                    reps=a.reps,
                    duration=a.duration,
                    connections=a.connections,
                    warmup=a.warmup,
                )
            if a.mode in ("all", "stream"):
                transfers = stream.run(h, running, statuses, org, reps=a.stream_reps, timeout=a.stream_timeout)
            bg = next((r for r in running if r.name == "bgproxy"), None)
            if a.mode in ("all", "flip"):
                if bg is None:
                    print("bench: flip run skipped: bgproxy is not running", file=sys.stderr)
                else:
                    variants = [bg]
                    try:  # the same flips at the default settings, started only now: idle until here otherwise
                        variants.append(systems.check_relays(systems.start_bgproxy(h, org, "defaults")))
                    except BenchError as exc:
                        statuses.fail("bgproxy", f"at the default settings, did not start: {exc}")
                    flip_runs = flip.run(
                        h,
                        variants,
                        statuses,
                        scripts[True],
                        reps=min(a.reps, 3),
                        duration=a.duration,
                        connections=a.connections,
                        interval=a.flip_interval,
                    )
    finally:
        if a.keep_workdir:
            print(f"bench: configs and logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = report.summarize(samples, systems.ORDER, a.path_list)
    flip_sum = report.flip_summary(flip_runs)
    markdown = report.render(meta, statuses, a.selected, a.path_list, rows, samples, transfers, flip_sum)
    payload: dict[str, object] = {
        "meta": meta,
        "systems": {n: {"state": s.state, "reasons": s.reasons} for n, s in statuses.items()},
        "throughput": {"summary": rows, "samples": samples},
        "stream": transfers,
        "flip": {"summary": flip_sum, "runs": flip_runs},
    }
    # a partial run (stream, flip, throughput) does not overwrite the full run's results.md
    md, js = report.write(a.out, "results" if a.mode == "all" else f"results-{a.mode}", markdown, payload)
    print("\n" + markdown)
    print(f"bench: wrote {md} and {js}", file=sys.stderr)

    failed = [n for n, s in statuses.items() if s.state != "ok" and n not in optional]
    tolerated = [n for n, s in statuses.items() if s.state != "ok" and n in optional]
    if tolerated:
        print(
            f"bench: tolerated (optional; use --require {','.join(tolerated)} to make it fatal): "
            + ", ".join(f"{n} {statuses[n].state}" for n in tolerated),
            file=sys.stderr,
        )
    if failed:
        print(f"bench: FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; processes stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
