"""CPU time and resident memory of a process tree, read from /proc."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is field 3, `state`)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].decode().split()


def _all_stats() -> dict[int, list[str]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                out[int(entry)] = fields
    return out


def _descendants(root: int, stats: dict[int, list[str]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def tree(root: int) -> list[int]:
    """The root and all its live descendants (nginx master + workers, a taskset'd python, ...)."""
    return _descendants(root, _all_stats())


def foreign_ticks() -> dict[int, int]:
    """CPU ticks of every process that is not this one or a descendant of it: other people's load, which
    makes a run noisy (processes that start and end between two snapshots are missed)."""
    stats = _all_stats()
    ours = set(_descendants(os.getpid(), stats))
    return {pid: int(f[11]) + int(f[12]) for pid, f in stats.items() if pid not in ours}


def cpu_ticks(pids: Iterable[int]) -> dict[int, int]:
    """utime + stime (all threads) of each pid, in clock ticks."""
    ticks: dict[int, int] = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks[pid] = int(fields[11]) + int(fields[12])
    return ticks


def cpu_seconds_between(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU used between two snapshots; processes born in between count from zero."""
    return sum(t - before.get(pid, 0) for pid, t in after.items()) / CLK_TCK


def rss_bytes(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


class RssSampler:
    """Samples the summed VmRSS of fixed pids every `interval` seconds in a thread; keeps the peak."""

    def __init__(self, pids: list[int], interval: float = 0.1) -> None:
        self.pids = pids
        self.interval = interval
        self.baseline = rss_bytes(pids)
        self.peak = self.baseline
        self.samples = 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        self.peak = max(self.peak, rss_bytes(self.pids))
        self.samples += 1

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def core_jiffies() -> dict[int, tuple[int, int]]:
    """Per CPU (busy, total) jiffies from /proc/stat. Busy includes irq and softirq time, which the kernel
    charges to no process: on loopback the TCP receive path of what a process sends runs there."""
    out: dict[int, tuple[int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                ticks = [int(v) for v in vals[:8]]  # user nice system idle iowait irq softirq steal
                out[int(name[3:])] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
    return out


def core_busy_fraction(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], cpu: int) -> float:
    busy = after[cpu][0] - before[cpu][0]
    total = after[cpu][1] - before[cpu][1]
    return busy / total if total else 0.0
