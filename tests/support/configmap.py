"""Helpers for tests against the `configmap` store: bounded polling, what a replica serves and reports."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bgproxy.app import Bgproxy
from tests.support.kubeapi import KubeAPIServer

NS = "default"
CM = "bgproxy-state"
WAIT = 10.0  # upper bound for anything we wait for


async def until(check: Callable[[], object], what: str, within: float = WAIT) -> float:
    """Poll `check` (sync or async) until it is true; returns the seconds it took, fails after `within`."""
    start = time.monotonic()
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > within:
            pytest.fail(f"not within {within}s: {what}")
        await asyncio.sleep(0.005)


async def colour(http: aiohttp.ClientSession, port: int) -> str:
    async with http.get(f"http://127.0.0.1:{port}/") as resp:
        assert resp.status == 200
        return resp.headers["X-Bg-Color"]


async def serves(http: aiohttp.ClientSession, app: Bgproxy, want: str) -> bool:
    return await colour(http, app.port) == want


async def admin(http: aiohttp.ClientSession, app: Bgproxy, method: str, path: str, **body: Any) -> tuple[int, Any]:
    async with http.request(method, f"http://127.0.0.1:{app.admin_port}{path}", json=body or None) as resp:
        return resp.status, await resp.json()


async def readyz(http: aiohttp.ClientSession, admin_port: int, want: int) -> bool:
    try:
        async with http.get(f"http://127.0.0.1:{admin_port}/readyz") as resp:
            return resp.status == want
    except aiohttp.ClientConnectionError:  # not listening yet
        return False


async def store_info(http: aiohttp.ClientSession, app: Bgproxy) -> dict[str, Any]:
    _, body = await admin(http, app, "GET", "/state")
    store: dict[str, Any] = body["store"]
    return store


async def resource_version_is(http: aiohttp.ClientSession, app: Bgproxy, want: str | None) -> bool:
    return (await store_info(http, app))["resource_version"] == want


async def metric(http: aiohttp.ClientSession, app: Bgproxy | int, name: str, **labels: str) -> float:
    port = app if isinstance(app, int) else app.admin_port
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        return parse_metric(await resp.text(), name, **labels)


def parse_metric(text: str, name: str, **labels: str) -> float:
    """A sample's value from a Prometheus exposition (0 when absent, as Prometheus would treat a counter)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def metric_is(http: aiohttp.ClientSession, app: Bgproxy | int, name: str, want: float, **labels: str) -> bool:
    return await metric(http, app, name, **labels) == want


async def watching(http: aiohttp.ClientSession, app: Bgproxy) -> bool:
    connected = (await store_info(http, app))["connected"]
    return bool(connected) and await metric(http, app, "bgproxy_configmap_watch_connected") == 1


async def not_watching(http: aiohttp.ClientSession, app: Bgproxy) -> bool:
    connected = (await store_info(http, app))["connected"]
    return not connected and await metric(http, app, "bgproxy_configmap_watch_connected") == 0


def stored(api: KubeAPIServer) -> dict[str, Any]:
    """The ConfigMap's data, with the state blob parsed."""
    cm = api.get_configmap(CM)
    assert cm is not None, "the ConfigMap does not exist"
    data: dict[str, Any] = dict(cm["data"])
    data["state"] = json.loads(data["state"]) if "state" in data else None
    return data
