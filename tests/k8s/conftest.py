"""Fixtures for the Kubernetes tests: the fake API server, kubectl against it, and replicas of bgproxy on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.configmap import WAIT, until
from tests.support.kubeapi import KubeAPIServer, kubectl_runner
from tests.support.replicas import Kubectl, Replica, both_watching
from tests.support.replicas import replica_env as make_replica_env
from tests.support.servers import Upstream


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
    return make_replica_env(kubeconfig, tmp_path, {c: up.url for c, up in upstreams.items()})


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
