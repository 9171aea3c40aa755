"""bgproxy under wrk load while the admin API flips the active colour every 100 ms, against runs
without flips, interleaved. Errors are counted by a wrk Lua response() hook (non-2xx) plus socket errors."""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .harness import BenchError, Harness
from .status import Statuses
from .systems import Running
from .throughput import Sample, measure
from .wrk import WrkResult


class Flipper:
    """POSTs /switch alternately to green and blue every `interval` seconds in a thread."""

    def __init__(self, admin_url: str, interval: float) -> None:
        host, _, port = admin_url.removeprefix("http://").partition(":")
        self.host, self.port, self.interval = host, int(port), interval
        self.ok = 0
        self.failed: list[str] = []
        self.latencies_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flipper", daemon=True)

    def switch(self, conn: http.client.HTTPConnection, colour: str) -> None:
        t0 = time.perf_counter()
        conn.request(
            "POST",
            "/switch",
            body=json.dumps({"to": colour, "reason": "bench flip"}),
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        body = resp.read()
        self.latencies_ms.append(1000 * (time.perf_counter() - t0))
        if resp.status != 200:
            raise BenchError(f"POST /switch to {colour}: {resp.status} {body[:200]!r}")

    def _run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
        colour, next_at = "green", time.monotonic()
        while not self._stop.is_set():
            try:
                self.switch(conn, colour)
                self.ok += 1
            except (OSError, http.client.HTTPException, BenchError) as exc:
                self.failed.append(str(exc))
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
            colour = "blue" if colour == "green" else "green"
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))
        conn.close()

    def __enter__(self) -> Flipper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class FlipRun:
    rep: int
    flipping: bool
    sample: Sample
    flips_ok: int = 0
    flips_failed: int = 0
    flip_errors: list[str] = field(default_factory=list)
    switch_p99_ms: float | None = None

    @property
    def wrk(self) -> WrkResult:
        return self.sample.wrk

    def to_dict(self) -> dict[str, object]:
        return {
            **self.sample.to_dict(),
            "flipping": self.flipping,
            "flips_ok": self.flips_ok,
            "flips_failed": self.flips_failed,
            "flip_errors": self.flip_errors[:5],
            "switch_p99_ms": self.switch_p99_ms,
        }


def run(
    h: Harness,
    bg: Running,
    statuses: Statuses,
    script: Path,
    *,
    reps: int,
    duration: int,
    connections: int,
    interval: float,
    path: str = "/small",
) -> list[FlipRun]:
    assert bg.admin_url is not None
    runs: list[FlipRun] = []
    for rep in range(1, reps + 1):
        for flipping in (False, True):
            try:
                if flipping:
                    with Flipper(bg.admin_url, interval) as flipper:
                        sample = measure(h, bg, rep, path, script, duration, connections)
                    lat = sorted(flipper.latencies_ms)
                    run = FlipRun(
                        rep,
                        True,
                        sample,
                        flipper.ok,
                        len(flipper.failed),
                        flipper.failed,
                        lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
                    )
                else:
                    run = FlipRun(rep, False, measure(h, bg, rep, path, script, duration, connections))
            except BenchError as exc:
                statuses.fail(bg.name, f"flip rep {rep}: {exc}")
                return runs
            runs.append(run)
            result = run.wrk
            errors = (result.non2xx or 0) + result.socket_errors
            print(
                f"[flip {rep}/{reps}] {'flipping' if flipping else 'steady':<8} {result.rps:9.0f} rps  p99 "
                f"{result.p99_ms:6.2f} ms  non-2xx {result.non2xx}  socket errors {result.socket_errors}  "
                f"served blue/green {result.blue}/{result.green}  flips {run.flips_ok} ok "
                f"{run.flips_failed} failed",
                file=sys.stderr,
            )
            if errors or run.flips_failed:
                statuses.fail(
                    bg.name,
                    f"flip rep {rep}: {errors} request errors, {run.flips_failed} failed flips"
                    + (f" ({run.flip_errors[0]})" if run.flip_errors else ""),
                )
    return runs
