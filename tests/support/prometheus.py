"""Debian's real `prometheus` for the tests: its own config and storage in a temp dir, on a free loopback port.

It scrapes the given targets every second and evaluates the given rule files every second; retention is bounded
and nothing is remote (no remote write or read, no Alertmanager). Queries go through its HTTP API, as Grafana's
would. Every wait is bounded: start-up by /-/ready, "has it scraped yet" by the timestamp of the target's `up`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support.servers import free_port
from tests.support.tools import require_tool

JOB = "bgproxy"
START_TIMEOUT = 20.0
SCRAPE_TIMEOUT = 15.0  # for a scrape after a given moment: a few scrape intervals, on a busy machine
# Prometheus may move a scrape's timestamp by up to 2 ms towards its schedule (--scrape.adjust-timestamps): a
# scrape is taken as "after" a moment only with this margin, so that it surely started after it.
TIMESTAMP_SLACK = 0.01


class Prometheus:
    """One `prometheus` process; its log goes to a file (never a pipe that could fill)."""

    def __init__(self, tmp_path: Path, targets: Sequence[str], *, rule_files: Sequence[Path] = ()) -> None:
        self.binary = require_tool("prometheus")
        self.dir = tmp_path / "prometheus"
        self.dir.mkdir()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = self.dir / "prometheus.log"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": list(targets)}]}],
        }
        self.config_path = self.dir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.proc: asyncio.subprocess.Process | None = None
        self.http: aiohttp.ClientSession | None = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def start(self) -> Prometheus:
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                self.binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                "--storage.tsdb.retention.time=1h",
                "--storage.tsdb.retention.size=256MB",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        end = time.monotonic() + START_TIMEOUT
        while time.monotonic() < end:
            if self.proc.returncode is not None:
                pytest.fail(f"prometheus exited with {self.proc.returncode}:\n{self.log}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.http.get(f"{self.base}/-/ready") as r:
                    if r.status == 200:
                        return self
            await asyncio.sleep(0.05)  # between polls of a bounded wait
        pytest.fail(f"prometheus not ready within {START_TIMEOUT}s:\n{self.log}")

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def api(self, path: str, **params: str) -> Any:
        """The `data` of a successful /api/v1 answer; fails the test with Prometheus's error otherwise."""
        assert self.http is not None
        async with self.http.get(f"{self.base}/api/v1/{path}", params=params) as r:
            body = await r.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    async def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result (at `at`, seconds, else now); a vector, as a list of {metric, value}."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = await self.api("query", **params)
        assert data["resultType"] == "vector", data
        return data["result"]  # type: ignore[no-any-return]

    async def values(self, expr: str, by: Sequence[str], at: float | None = None) -> dict[tuple[str, ...], float]:
        """An instant query's result as {label values in `by` order: value}."""
        return {
            tuple(r["metric"].get(label, "") for label in by): float(r["value"][1])
            for r in await self.query(expr, at)
        }

    async def scrape_after(self, moment: float) -> float:
        """The timestamp (seconds, millisecond precision) of the first successful scrape that started after
        `moment` (time.time()), once its samples are stored: every sample of the target at that timestamp shows
        what the target had done before `moment`."""
        end = time.monotonic() + SCRAPE_TIMEOUT
        while time.monotonic() < end:
            result = await self.query(f'timestamp(up{{job="{JOB}"}} == 1)')
            if result and float(result[0]["value"][1]) > moment + TIMESTAMP_SLACK:
                return float(result[0]["value"][1])
            await asyncio.sleep(0.1)  # between polls of a bounded wait
        targets = await self.api("targets")
        pytest.fail(f"no scrape after {moment} within {SCRAPE_TIMEOUT}s: {targets}\n{self.log}")


@contextlib.asynccontextmanager
async def prometheus(
    tmp_path: Path, targets: Sequence[str], *, rule_files: Sequence[Path] = ()
) -> AsyncIterator[Prometheus]:
    server = Prometheus(tmp_path, targets, rule_files=rule_files)
    try:
        yield await server.start()
    finally:
        await server.stop()
