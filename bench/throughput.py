"""Interleaved wrk runs (A B C D E, A B C D E, ...) with the system's CPU time read around each run."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import procstat
from .harness import BenchError, Harness
from .status import Statuses
from .systems import Running
from .wrk import INGRESS_HEADERS, WrkResult, run_wrk


@dataclass
class Sample:
    system: str
    path: str
    rep: int
    wrk: WrkResult
    cpu_s: float  # the system's processes (utime + stime), children included
    sut_core: float | None  # busy fraction of the SUT's core, irq/softirq included
    load_core: float | None  # busy fraction of the core wrk and the origin share
    foreign_cpu_s: float  # CPU used meanwhile by processes this benchmark did not start
    cpu_pct: float = field(init=False)
    cpu_us_per_req: float = field(init=False)
    core_us_per_req: float | None = field(init=False)
    foreign_pct: float = field(init=False)

    def __post_init__(self) -> None:
        secs, n = self.wrk.duration_s, self.wrk.requests
        self.cpu_pct = 100 * self.cpu_s / secs if secs else 0.0
        self.cpu_us_per_req = 1e6 * self.cpu_s / n if n else 0.0
        self.core_us_per_req = 1e6 * self.sut_core * secs / n if n and self.sut_core is not None else None
        self.foreign_pct = 100 * self.foreign_cpu_s / secs if secs else 0.0

    def to_dict(self) -> dict[str, object]:
        own = {k: v for k, v in asdict(self).items() if k != "wrk"}
        return {**own, **self.wrk.to_dict()}


def measure(h: Harness, system: Running, rep: int, path: str, script: Path, duration: int, connections: int) -> Sample:
    """One wrk run against the system, with its CPU time and both cores' utilisation around it."""
    system.check_alive()
    pids = system.pids()
    foreign = procstat.foreign_ticks()
    ticks, cores = procstat.cpu_ticks(pids), procstat.core_jiffies()
    url_path, _, variant = path.partition("+")  # "/small+ingress": /small, with an Ingress's request headers
    result = run_wrk(
        h.pinned([], h.load_cpu),
        system.url + url_path,
        script=script,
        duration=duration,
        connections=connections,
        headers=INGRESS_HEADERS if variant == "ingress" else (),
    )
    cpu = procstat.cpu_seconds_between(ticks, procstat.cpu_ticks(pids))
    after = procstat.core_jiffies()
    foreign_s = procstat.cpu_seconds_between(foreign, procstat.foreign_ticks())
    system.check_alive()

    def busy(core: int | None) -> float | None:
        return None if core is None else procstat.core_busy_fraction(cores, after, core)

    return Sample(system.name, path, rep, result, cpu, busy(h.sut_cpu), busy(h.load_cpu), foreign_s)


def _pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.0f}%"


def run(
    h: Harness,
    systems: list[Running],
    statuses: Statuses,
    script: Path,
    *,
    paths: list[str],
    reps: int,
    duration: int,
    connections: int,
    warmup: int,
) -> list[Sample]:
    samples: list[Sample] = []
    if warmup > 0:
        for system in systems:
            for path in paths:
                try:
                    measure(h, system, 0, path, script, warmup, connections)
                except BenchError as exc:
                    statuses.fail(system.name, f"warm-up {path}: {exc}")
    for rep in range(1, reps + 1):
        for path in paths:
            for system in systems:
                if not system.proc.alive():
                    continue
                try:
                    sample = measure(h, system, rep, path, script, duration, connections)
                except BenchError as exc:
                    statuses.fail(system.name, f"{path} rep {rep}: {exc}")
                    continue
                samples.append(sample)
                result = sample.wrk
                errors = result.socket_errors + result.status_errors
                print(
                    f"[rep {rep}/{reps}] {path:<6} {system.name:<8} {result.rps:9.0f} rps  p50 "
                    f"{result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  cpu {sample.cpu_pct:5.1f}%  "
                    f"{sample.cpu_us_per_req:6.1f} us/req  cores sut/load {_pct(sample.sut_core)}/"
                    f"{_pct(sample.load_core)}  other processes {sample.foreign_pct:.0f}%"
                    + (f"  ERRORS {errors}" if errors else ""),
                    file=sys.stderr,
                )
                if result.requests == 0:
                    statuses.fail(system.name, f"{path} rep {rep}: no request completed")
                elif errors:
                    statuses.fail(
                        system.name,
                        f"{path} rep {rep}: {result.socket_errors} socket errors, "
                        f"{result.status_errors} responses with status >= 400",
                    )
    return samples
