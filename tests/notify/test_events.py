"""Kubernetes Events from a real bgproxy on the `configmap` store: one Event per change on the ConfigMap, a repeat
counted on the same Event, and an API server that refuses or hangs never delays a flip."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bgproxy.app import Bgproxy
from tests.support.configmap import CM, NS, WAIT, admin, metric, metric_is, until
from tests.support.kubeapi import KubeAPIServer
from tests.support.servers import StartProxy

CM_SETTINGS = {"state_backend": "configmap", "configmap_namespace": NS, "configmap_timeout": "1"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
        yield session


@pytest.fixture
async def cm_proxy(api: KubeAPIServer, kubeconfig: Path, start_proxy: StartProxy) -> Bgproxy:
    return await start_proxy(**CM_SETTINGS)


async def flip(http: aiohttp.ClientSession, app: Bgproxy, path: str, **body: Any) -> float:
    start = time.monotonic()
    status, answer = await admin(http, app, "POST", path, **body)
    assert status == 200, answer
    return time.monotonic() - start


async def events(http: aiohttp.ClientSession, app: Bgproxy, result: str) -> float:
    return await metric(http, app, "bgproxy_kubernetes_events_total", result=result)


def counts(api: KubeAPIServer) -> dict[tuple[str, str], int]:
    return {(e["reason"], e["message"]): e["count"] for e in api.events(NS)}


async def test_each_change_is_one_event_on_the_configmap_and_a_repeat_counts(
    api: KubeAPIServer, cm_proxy: Bgproxy, http: aiohttp.ClientSession
) -> None:
    app = cm_proxy
    await flip(http, app, "/switch", to="green", reason="release 42")
    await flip(http, app, "/switch", to="blue", reason="release 42")
    await flip(http, app, "/switch", to="green", reason="release 42")  # the first Event again
    await flip(http, app, "/shift", weight=20, reason="canary 43")
    await flip(http, app, "/abort", reason="p99 doubled")
    want = {
        ("Switched", "green is active (was blue): release 42"): 2,
        ("Switched", "blue is active (was green): release 42"): 1,
        ("Shifted", "20% to blue: canary 43"): 1,
        ("Aborted", "all traffic on green: p99 doubled"): 1,
    }
    await until(lambda: counts(api) == want, f"the Events {want}")
    cm = api.get_configmap(CM)
    assert cm is not None
    for event in api.events(NS):
        involved = event["involvedObject"]
        assert (involved["kind"], involved["name"], involved["namespace"]) == ("ConfigMap", CM, NS)
        assert involved["uid"] == cm["metadata"]["uid"] and involved["apiVersion"] == "v1"
        assert event["type"] == "Normal" and event["source"] == {"component": "bgproxy"}
        assert event["metadata"]["name"].startswith(f"{CM}.")
    repeated = next(e for e in api.events(NS) if e["count"] == 2)
    assert repeated["lastTimestamp"] >= repeated["firstTimestamp"]
    await until(lambda: metric_is(http, app, "bgproxy_kubernetes_events_total", 5, result="ok"), "5 counted", 2)
    assert await events(http, app, "failed") == 0
    assert await events(http, app, "dropped") == 0


async def test_events_the_api_server_refuses_are_logged_and_counted_and_never_delay_a_flip(
    api: KubeAPIServer, cm_proxy: Bgproxy, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    app = cm_proxy
    api.hang("create", resource="events")
    took = [await flip(http, app, "/switch", to="green", reason="while the API server hangs on Events")]
    await api.await_for(lambda: api.request_count("create", resource="events") == 1)
    api.fail("create", times=3, status=403, message="events is forbidden", resource="events")
    took.append(await flip(http, app, "/switch", to="blue", reason="while RBAC refuses Events"))
    assert max(took) < 1.0, took  # a flip waits for the ConfigMap's patch only, never for an Event
    assert [c["data"]["active"] for c in api.configmaps(NS)] == ["blue"]
    api.release_hung()  # the first Event goes through; the second is refused three times, then given up
    await until(lambda: events(http, app, "failed"), "the refused Event counted as failed", 1 + 2 + WAIT)
    assert (await events(http, app, "ok"), await events(http, app, "failed")) == (1, 1)
    assert [e["reason"] for e in api.events(NS)] == ["Switched"]
    (failed,) = [r for r in caplog.records if r.getMessage() == "kubernetes_event_failed"]
    assert failed.levelno == logging.WARNING
    assert "create and patch on events" in failed.bg_fields["error"]  # what to fix: RBAC
