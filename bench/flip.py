"""bgproxy under wrk load while the admin API flips the active colour every 100 ms, against runs
without flips, interleaved. Errors are counted by a wrk Lua response() hook (non-2xx) plus socket errors.

Each bgproxy variant runs (systems.BGPROXY_VARIANTS): as the benchmark runs it (memory store, warning logs)
and at the defaults (file store, which fsyncs every flip, and info logs, a line per flip)."""

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
    variant: str  # a key of systems.BGPROXY_VARIANTS
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
            "variant": self.variant,
            "flipping": self.flipping,
            "flips_ok": self.flips_ok,
            "flips_failed": self.flips_failed,
            "flip_errors": self.flip_errors[:5],
            "switch_p99_ms": self.switch_p99_ms,
        }


def run(
    h: Harness,
    variants: list[Running],
    statuses: Statuses,
    script: Path,
    *,
    reps: int,
    duration: int,
    connections: int,
    interval: float,
    path: str = "/small",
) -> list[FlipRun]:
    """Per rep and per bgproxy variant: a steady run, then one with flips."""
    runs: list[FlipRun] = []
    for rep in range(1, reps + 1):
        for bg in variants:
            assert bg.admin_url is not None
            for flipping in (False, True):
                try:
                    if flipping:
                        with Flipper(bg.admin_url, interval) as flipper:
                            sample = measure(h, bg, rep, path, script, duration, connections)
                        lat = sorted(flipper.latencies_ms)
                        run = FlipRun(
                            rep,
                            bg.variant,
                            True,
                            sample,
                            flipper.ok,
                            len(flipper.failed),
                            flipper.failed,
                            lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
                        )
                    else:
                        run = FlipRun(rep, bg.variant, False, measure(h, bg, rep, path, script, duration, connections))
                except BenchError as exc:
                    statuses.fail(bg.name, f"flip rep {rep} ({bg.variant}): {exc}")
                    return runs
                runs.append(run)
                result = run.wrk
                errors = (result.non2xx or 0) + result.socket_errors
                print(
                    f"[flip {rep}/{reps}] {bg.variant:<8} {'flipping' if flipping else 'steady':<8} "
                    f"{result.rps:9.0f} rps  p99 {result.p99_ms:6.2f} ms  non-2xx {result.non2xx}  socket errors "
                    f"{result.socket_errors}  served blue/green {result.blue}/{result.green}  flips "
                    f"{run.flips_ok} ok {run.flips_failed} failed"
                    + (f"  switch p99 {run.switch_p99_ms:.1f} ms" if run.switch_p99_ms is not None else ""),
                    file=sys.stderr,
                )
                if errors or run.flips_failed:
                    statuses.fail(
                        bg.name,
                        f"flip rep {rep} ({bg.variant}): {errors} request errors, {run.flips_failed} failed flips"
                        + (f" ({run.flip_errors[0]})" if run.flip_errors else ""),
                    )
    return runs
