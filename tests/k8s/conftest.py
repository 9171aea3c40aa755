"""Fixtures for the Kubernetes tests: the fake API server, kubectl against it, and replicas of bgproxy on it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.configmap import NS, WAIT, until
from tests.support.kubeapi import KubeAPIServer, kubectl_runner
from tests.support.replicas import Kubectl, Replica, both_watching
from tests.support.servers import Upstream

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def api() -> Iterator[KubeAPIServer]:
    with KubeAPIServer(bookmark_interval=0.5) as server:
        yield server


@pytest.fixture
def kubeconfig(api: KubeAPIServer, tmp_path: Path) -> Path:
    return api.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def kubectl(kubeconfig: Path, tmp_path: Path) -> Kubectl:
    run = kubectl_runner(kubeconfig, tmp_path, timeout=WAIT)
    if run is None:
        pytest.skip("kubectl not installed")
    return run


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
        yield session


@pytest.fixture
def replica_env(kubeconfig: Path, upstreams: dict[str, Upstream], tmp_path: Path) -> dict[str, str]:
    drop = ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG")  # never a real cluster
    env = {k: v for k, v in os.environ.items() if not k.startswith("BGPROXY_") and k not in drop}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(
        KUBECONFIG=str(kubeconfig),
        HOME=str(tmp_path),
        BGPROXY_BLUE_URL=upstreams["blue"].url,
        BGPROXY_GREEN_URL=upstreams["green"].url,
        BGPROXY_STATE_BACKEND="configmap",
        BGPROXY_CONFIGMAP_NAMESPACE=NS,
        BGPROXY_CONFIGMAP_TIMEOUT="2",
        BGPROXY_DRAIN_GRACE="0",
        BGPROXY_DRAIN_TIMEOUT="1",
        BGPROXY_LOG_FORMAT="json",
    )
    return env


@pytest.fixture
async def start_replica(replica_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Callable[[str], Replica]]:
    started: list[Replica] = []

    def make(name: str) -> Replica:
        replica = Replica(name, tmp_path, replica_env)
        started.append(replica)
        return replica

    yield make
    await asyncio.gather(*(r.stop() for r in started))


@pytest.fixture
async def replicas(
    api: KubeAPIServer, start_replica: Callable[[str], Replica], http: aiohttp.ClientSession
) -> tuple[Replica, Replica]:
    a, b = start_replica("a"), start_replica("b")
    await asyncio.gather(a.start(), b.start())
    await asyncio.gather(a.ready(http), b.ready(http))
    await until(lambda: both_watching(http, a, b), "both replicas watch the ConfigMap")
    return a, b
