"""Debian's real `prometheus` for the tests: its own config and storage in a temp dir, on a free loopback port.

It scrapes its targets every second and evaluates the given rule files every second; retention is bounded and
nothing is remote (no remote write or read, no Alertmanager). Queries go through its HTTP API, as Grafana's would.
Every wait is bounded: start-up by /-/ready, "has it scraped yet" by the timestamp of the target's `up`.

Prometheus 2 takes about 5 seconds from start to its first scrape (its discovery and scrape managers apply new
targets on a 5-second tick), so one process serves a whole test module: its targets are fixed up front, one job
per test, each on an admin port reserved for the bgproxy that test starts (scraped as down until then).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support.servers import free_port
from tests.support.tools import require_tool

START_TIMEOUT = 20.0
SCRAPE_TIMEOUT = 15.0  # for a scrape after a given moment: a few scrape intervals, on a busy machine
# Prometheus may move a scrape's timestamp by up to 2 ms towards its schedule (--scrape.adjust-timestamps): a
# scrape is taken as "after" a moment only with this margin, so that it surely started after it.
TIMESTAMP_SLACK = 0.01


class Prometheus:
    """One `prometheus` process scraping `jobs` ({job name: admin port on 127.0.0.1}); its log goes to a file."""

    def __init__(self, workdir: Path, jobs: dict[str, int], *, rule_files: list[Path]) -> None:
        self.binary = require_tool("prometheus")
        self.dir = workdir
        self.jobs = dict(jobs)
        self.free = list(jobs)  # jobs no test has taken yet
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = self.dir / "prometheus.log"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]} for job, port in jobs.items()
            ],
        }
        self.config_path = self.dir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self) -> Prometheus:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.dir / 'data'}",
                    "--storage.tsdb.retention.time=1h",
                    "--storage.tsdb.retention.size=256MB",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        end = time.monotonic() + START_TIMEOUT
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited with {self.proc.returncode}:\n{self.log}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return self
            time.sleep(0.05)  # between polls of a bounded wait
        pytest.fail(f"prometheus not ready within {START_TIMEOUT}s:\n{self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def take(self) -> tuple[str, int]:
        """A job of its own for one test: (job name, the admin port its bgproxy must listen on)."""
        assert self.free, f"every job of this Prometheus is taken: give it more than {len(self.jobs)}"
        job = self.free.pop(0)
        return job, self.jobs[job]


@contextlib.contextmanager
def prometheus(workdir: Path, jobs: int, *, rule_files: list[Path]) -> Iterator[Prometheus]:
    """A started Prometheus with `jobs` jobs (`bgproxy-0`, ...) on admin ports reserved now."""
    server = Prometheus(workdir, {f"bgproxy-{i}": free_port() for i in range(jobs)}, rule_files=rule_files)
    try:
        yield server.start()
    finally:
        server.stop()


class PrometheusAPI:
    """Prometheus's HTTP API as one test sees it: `job` is that test's bgproxy."""

    def __init__(self, server: Prometheus, job: str, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.job = job
        self.http = http

    async def api(self, path: str, **params: str) -> Any:
        """The `data` of a successful /api/v1 answer; fails the test with Prometheus's error otherwise."""
        async with self.http.get(f"{self.server.base}/api/v1/{path}", params=params) as r:
            body = await r.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    async def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result (at `at`, seconds, else now); a vector, as a list of {metric, value}."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = await self.api("query", **params)
        assert data["resultType"] == "vector", data
        return data["result"]  # type: ignore[no-any-return]

    async def values(self, expr: str, by: tuple[str, ...], at: float | None = None) -> dict[tuple[str, ...], float]:
        """An instant query's result as {label values in `by` order: value}."""
        return {
            tuple(r["metric"].get(label, "") for label in by): float(r["value"][1]) for r in await self.query(expr, at)
        }

    async def scrape_after(self, moment: float) -> float:
        """The timestamp (seconds, millisecond precision) of the first successful scrape of this job that started
        after `moment` (time.time()), once its samples are stored: every sample of the target at that timestamp
        shows what the target had done before `moment`."""
        end = time.monotonic() + SCRAPE_TIMEOUT
        up = f'up{{job="{self.job}"}}'
        while time.monotonic() < end:
            # timestamp() of a plain selector is the sample's own (a filter like `up == 1` would give "now").
            result = await self.query(f"timestamp({up})")
            if result and (scraped := float(result[0]["value"][1])) > moment + TIMESTAMP_SLACK:
                value = await self.query(up, scraped)
                if value and value[0]["value"][1] == "1":  # a failed scrape brings no news: wait for a good one
                    return scraped
            await asyncio.sleep(0.1)  # between polls of a bounded wait
        targets = await self.api("targets")
        pytest.fail(f"no scrape of {self.job} after {moment} within {SCRAPE_TIMEOUT}s: {targets}\n{self.server.log}")
