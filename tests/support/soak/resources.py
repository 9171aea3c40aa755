"""RSS, open file descriptors, threads and asyncio tasks of each replica process, sampled from outside.

RSS, fds and threads come from /proc. asyncio tasks come from a probe thread that `probe/sitecustomize.py` starts
in the replica processes only (bgproxy's code is untouched; the admin API has no such figure): every second it
counts the live tasks in asyncio's task registry and writes the count to a file named by SOAK_PROBE_FILE.

A rolling restart replaces a replica's process, so growth is computed per process (a "generation"), over its steady
part (from a warm-up after it became ready until its SIGTERM): a least-squares slope scaled to 10 minutes, and the
plain difference between the medians of the first and last quarter of those samples.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

PROBE_DIR = Path(__file__).resolve().parent / "probe"
FIGURES = ("rss_mib", "fds", "threads", "tasks")
TEN_MINUTES = 600.0
# How much a figure may change over a process's steady part: what noise needs (the allocator, the connections
# the Ingress and the apps happen to hold) plus a growth per 10 minutes that no leak stays under for long.
FLAT = {"rss_mib": (8.0, 4.0), "fds": (40.0, 10.0), "threads": (4.0, 0.0), "tasks": (10.0, 5.0)}
MIN_SPAN = 15.0  # seconds of steady samples below which a process's figures are reported, not judged


@dataclass
class Sample:
    t: float  # seconds since the soak started
    rss_mib: float
    fds: int
    threads: int
    tasks: int | None


@dataclass
class Generation:
    """One process of one replica, from its start to its exit."""

    replica: str
    number: int
    pid: int
    probe_file: Path
    started: float
    ready: float | None = None  # when it first said ready
    draining: float | None = None  # when it got SIGTERM
    ended: float | None = None
    samples: list[Sample] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.replica}#{self.number}"

    def sample(self, t: float) -> None:
        s = read(self.pid, self.probe_file, t)
        if s is not None:
            self.samples.append(s)

    def steady(self, warmup: float) -> list[Sample]:
        """Samples from `warmup` seconds after the process became ready (connection pools fill, the first flips
        import what they need) until its SIGTERM."""
        if self.ready is None:
            return []
        start = self.ready + warmup
        end = self.draining if self.draining is not None else float("inf")
        return [s for s in self.samples if start <= s.t < end]

    def growth(self, figure: str, warmup: float) -> Growth | None:
        pts = [(s.t, float(v)) for s in self.steady(warmup) if (v := getattr(s, figure)) is not None]
        if len(pts) < 8:
            return None
        span = pts[-1][0] - pts[0][0]
        quarter = max(2, len(pts) // 4)
        first = statistics.median(v for _, v in pts[:quarter])
        last = statistics.median(v for _, v in pts[-quarter:])
        mean_t = statistics.fmean(t for t, _ in pts)
        mean_v = statistics.fmean(v for _, v in pts)
        var_t = sum((t - mean_t) ** 2 for t, _ in pts)
        slope = sum((t - mean_t) * (v - mean_v) for t, v in pts) / var_t if var_t else 0.0
        return Growth(
            figure,
            span=span,
            first=first,
            last=last,
            peak=max(v for _, v in pts),
            per_10min=slope * TEN_MINUTES,
        )


@dataclass
class Growth:
    figure: str
    span: float  # seconds covered
    first: float  # median of the first quarter
    last: float  # median of the last quarter
    peak: float
    per_10min: float  # least-squares slope

    @property
    def change(self) -> float:
        return self.last - self.first


def not_flat(gen: Generation, warmup: float) -> list[str]:
    """What grew beyond `FLAT` over the steady part of one process's life."""
    problems = []
    for figure, (noise, per_10min) in FLAT.items():
        gr = gen.growth(figure, warmup)
        if gr is None or gr.span < MIN_SPAN:
            continue
        allowed = noise + per_10min * gr.span / TEN_MINUTES
        if gr.change > allowed:
            problems.append(
                f"{gen.label}: {figure} grew {gr.first:g} -> {gr.last:g} over {gr.span:.0f}s "
                f"({gr.per_10min:+.1f} per 10 min; allowed {allowed:.1f})"
            )
    return problems


def read(pid: int, probe_file: Path, t: float) -> Sample | None:
    """One sample of a live process; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kib = int(fields.get("VmRSS", "0 kB").split()[0])
    threads = int(fields.get("Threads", "0"))
    tasks: int | None = None
    try:
        tasks = int(probe_file.read_text().split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return Sample(t, rss_kib / 1024, fds, threads, tasks)


def probe_env(probe_file: Path) -> dict[str, str]:
    """What a replica's environment needs for the task probe: its sitecustomize first on the path."""
    return {"SOAK_PROBE_FILE": str(probe_file), "SOAK_PROBE_DIR": str(PROBE_DIR)}
