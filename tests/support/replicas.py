"""Real `python -m bgproxy serve` replicas on the `configmap` store, as a Deployment runs them.

Shared by the replica tests (tests/k8s) and the chaos soak (tests/soak): one process per `start()`, so a replica
can be stopped and started again (a rolling restart) on the same ports, each run a new process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.admin import NOT_STORED
from tests.support.configmap import CM, NS, WAIT, parse_metric, until
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
MERGE = "merge"
Kubectl = Callable[..., Awaitable[subprocess.CompletedProcess[str]]]
START = 20.0  # seconds a replica may take to become ready (imports included)


def replica_env(kubeconfig: Path, home: Path, urls: Mapping[str, str], **settings: str) -> dict[str, str]:
    """This process's environment for a replica: never a real cluster, this checkout first, `configmap` store.

    `settings` are BGPROXY_* variables without the prefix (`DRAIN_GRACE="2"`), over the defaults below.
    """
    drop = ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BGPROXY_") and k not in drop}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(KUBECONFIG=str(kubeconfig), HOME=str(home))
    values = {
        "BLUE_URL": urls["blue"],
        "GREEN_URL": urls["green"],
        "STATE_BACKEND": "configmap",
        "CONFIGMAP_NAMESPACE": NS,
        "CONFIGMAP_TIMEOUT": "2",
        "DRAIN_GRACE": "0",
        "DRAIN_TIMEOUT": "1",
        "LOG_FORMAT": "json",
    }
    values.update(settings)
    env.update({f"BGPROXY_{k}": v for k, v in values.items()})
    return env


class Replica:
    """One replica; stderr (JSON logs) goes to a file, never a pipe that could fill. Its ports survive restarts."""

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
        """Start a new process (after the previous one, if any, has exited); its log is appended to."""
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bgproxy", "serve", env=self.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

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
        return {k: v for k, v in body.items() if k not in (*NOT_STORED, "standby")} | {"store": body["store"]}

    async def metric(self, http: aiohttp.ClientSession, name: str, **labels: str) -> float:
        async with http.get(f"http://127.0.0.1:{self.admin_port}/metrics") as resp:
            return parse_metric(await resp.text(), name, **labels)

    async def kill(self) -> None:
        """SIGKILL: no drain and no last write, as when a node is lost or the kernel's OOM killer strikes."""
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()

    def terminate(self) -> None:
        """SIGTERM, as the kubelet sends it; the process drains and exits on its own."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)

    async def stop(self, within: float = WAIT) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), within)
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
