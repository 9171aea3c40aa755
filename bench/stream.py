"""Stream one large response down and one large upload up through each system with curl, sampling the
system's summed VmRSS every 100 ms: peak growth over the pre-transfer baseline, and MiB/s."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass

from .harness import BenchError, Harness, die_with_parent, http_get
from .origin import Origin
from .procstat import RssSampler
from .status import Statuses
from .systems import Running

MiB = 1024 * 1024


@dataclass
class Transfer:
    system: str
    direction: str  # download | upload
    bytes: int
    seconds: float
    mib_s: float
    rss_base_mib: float
    rss_peak_mib: float
    rss_growth_mib: float
    rss_samples: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _curl(h: Harness, argv: list[str], timeout: float) -> tuple[str, list[str]]:
    """Run curl; return (response body, fields of the -w line)."""
    cmd = h.pinned(["curl", "-sS", "--max-time", str(int(timeout)), *argv], h.load_cpu)
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout + 10, check=False, preexec_fn=die_with_parent
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"curl did not finish within {timeout:.0f}s") from exc
    if done.returncode != 0:
        raise BenchError(f"curl failed (exit {done.returncode}): {done.stderr.strip()}")
    body, _, last = done.stdout.rstrip("\n").rpartition("\n")
    return body, last.split()


def transfer(h: Harness, system: Running, origin: Origin, direction: str, timeout: float) -> Transfer:
    system.check_alive()
    for _ in range(5):  # touch the request path once more before the baseline is taken
        http_get(system.url + "/small")
    size = origin.big_size
    with RssSampler(system.pids()) as rss:
        if direction == "download":
            _, (code, got, secs) = _curl(
                h,
                [
                    "-o",
                    "/dev/null",
                    "-w",
                    "\n%{http_code} %{size_download} %{time_total}",
                    system.url + "/1g",
                ],
                timeout,
            )
            if code != "200" or int(got) != size:
                raise BenchError(f"download: status {code}, {got} of {size} bytes")
        else:
            body, (code, sent, secs) = _curl(
                h,
                [
                    "-T",
                    str(origin.big_file),
                    "-H",
                    "Expect:",
                    "-w",
                    "\n%{http_code} %{size_upload} %{time_total}",
                    system.url + "/upload",
                ],
                timeout,
            )
            received = json.loads(body).get("received") if code == "200" else None
            if received != size:
                raise BenchError(f"upload: status {code}, sent {sent}, origin received {received} of {size}")
    system.check_alive()
    seconds = float(secs)
    return Transfer(
        system.name,
        direction,
        size,
        seconds,
        size / MiB / seconds,
        rss.baseline / MiB,
        rss.peak / MiB,
        rss.growth / MiB,
        rss.samples,
    )


def run(
    h: Harness, systems: list[Running], statuses: Statuses, origin: Origin, *, reps: int, timeout: float
) -> list[Transfer]:
    results: list[Transfer] = []
    for rep in range(1, reps + 1):
        for system in systems:
            for direction in ("download", "upload"):
                if not system.proc.alive():
                    break
                try:
                    t = transfer(h, system, origin, direction, timeout)
                except (BenchError, ValueError, OSError) as exc:
                    statuses.fail(system.name, f"stream {direction}: {exc}")
                    continue
                results.append(t)
                print(
                    f"[stream {rep}/{reps}] {system.name:<8} {direction:<8} {t.mib_s:8.0f} MiB/s  RSS "
                    f"{t.rss_base_mib:6.1f} -> peak {t.rss_peak_mib:6.1f} MiB (+{t.rss_growth_mib:.1f})",
                    file=sys.stderr,
                )
    return results
