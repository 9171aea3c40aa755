"""Replicas for the tests: real `python -m bgproxy serve` processes on the `configmap` store, and what the tests ask
of them (the colour served, /state, metrics, their JSON logs)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.configmap import CM, WAIT, parse_metric, until
from tests.support.servers import free_port

START = 20.0  # seconds a replica may take to become ready (imports included)
MERGE = "merge"

Kubectl = Callable[..., Awaitable[subprocess.CompletedProcess[str]]]


class Replica:
    """One `python -m bgproxy serve` process; stderr (JSON logs) goes to a file, never a pipe that could fill."""

    def __init__(self, name: str, tmp_path: Path, env: dict[str, str]) -> None:
        self.name = name
        self.port, self.admin_port = free_port(), free_port()
        self.env = {
            **env,
            "BGPROXY_LISTEN": f"127.0.0.1:{self.port}",
            "BGPROXY_ADMIN_LISTEN": f"127.0.0.1:{self.admin_port}",
        }
        self.log_path = tmp_path / f"replica-{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Replica:
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bgproxy", "serve", env=self.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        return self

    @property
    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines, parsed (a line cut short by SIGKILL is skipped)."""
        out = []
        for line in self.logs.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "event" in record:
                out.append(record)
        return out

    def events(self) -> list[str]:
        return [record["event"] for record in self.records()]

    async def readyz(self, http: aiohttp.ClientSession) -> int | None:
        """The /readyz status, or None while the admin port does not answer."""
        assert self.proc is not None
        if self.proc.returncode is not None:
            pytest.fail(f"replica {self.name} exited with {self.proc.returncode}:\n{self.logs}")
        try:
            async with http.get(f"http://127.0.0.1:{self.admin_port}/readyz") as resp:
                return resp.status
        except aiohttp.ClientConnectionError:
            return None

    async def ready(self, http: aiohttp.ClientSession, within: float = START) -> float:
        async def check() -> bool:
            return await self.readyz(http) == 200

        return await until(check, f"replica {self.name} ready", within)

    async def colour(self, http: aiohttp.ClientSession) -> str:
        async with http.get(f"http://127.0.0.1:{self.port}/") as resp:
            assert resp.status == 200, await resp.text()
            return resp.headers["X-Bg-Color"]

    async def serves(self, http: aiohttp.ClientSession, want: str) -> bool:
        return await self.colour(http) == want

    async def admin(self, http: aiohttp.ClientSession, method: str, path: str, **body: Any) -> tuple[int, Any]:
        async with http.request(method, f"http://127.0.0.1:{self.admin_port}{path}", json=body or None) as resp:
            return resp.status, await resp.json()

    async def state(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        status, body = await self.admin(http, "GET", "/state")
        assert status == 200
        return {k: v for k, v in body.items() if k not in ("standby", "store", "backends")} | {"store": body["store"]}

    async def metric(self, http: aiohttp.ClientSession, name: str, **labels: str) -> float:
        async with http.get(f"http://127.0.0.1:{self.admin_port}/metrics") as resp:
            return parse_metric(await resp.text(), name, **labels)

    async def kill(self) -> None:
        """SIGKILL: no drain and no last write, as when a node is lost or the kernel's OOM killer strikes."""
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), WAIT)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            pytest.fail(f"replica {self.name} ignored SIGTERM:\n{self.logs}")


def patch_active(colour: str, **extra: str) -> tuple[str, ...]:
    return ("patch", "configmap", CM, "--type", MERGE, "-p", json.dumps({"data": {"active": colour, **extra}}))


async def both_watching(http: aiohttp.ClientSession, *replicas: Replica) -> bool:
    for r in replicas:
        if not (await r.state(http))["store"]["connected"]:
            return False
        if await r.metric(http, "bgproxy_configmap_watch_connected") != 1:
            return False
    return True


async def all_serve(http: aiohttp.ClientSession, want: str, *replicas: Replica) -> bool:
    for r in replicas:
        if await r.colour(http) != want:
            return False
    return True


def measured(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\nmeasured: {text}")


async def first_serving(http: aiohttp.ClientSession, replica: Replica, want: str) -> float:
    """Requests back to back through the replica until one is served by `want`; the moment it was."""
    end = time.monotonic() + WAIT
    while time.monotonic() < end:
        if await replica.colour(http) == want:
            return time.monotonic()
    pytest.fail(f"replica {replica.name} did not serve {want} within {WAIT}s")
