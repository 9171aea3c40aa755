"""The `configmap` state store, in-process, against the fake Kubernetes API server (tests/support/kubeapi.py).

bgproxy runs in this event loop with the real official client; people act with real `kubectl`; traffic goes
through the proxy's real socket. The pure rules that turn ConfigMap data into a state are in
test_configmap_codec.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from bgproxy.app import Bgproxy
from bgproxy.core.model import Color, State
from bgproxy.settings import load_settings
from bgproxy.stores import StoreError
from bgproxy.stores.configmap.client import BACKOFF_CAP
from bgproxy.stores.configmap.codec import EDITED, configmap_data
from tests.support.admin import NOT_STORED
from tests.support.configmap import (
    CM,
    NS,
    WAIT,
    admin,
    colour,
    metric,
    metric_is,
    not_watching,
    readyz,
    resource_version_is,
    serves,
    store_info,
    stored,
    until,
    watching,
)
from tests.support.kubeapi import KubeAPIServer, kubectl_runner
from tests.support.servers import StartProxy, Upstream, free_port

Kubectl = Callable[..., Awaitable[subprocess.CompletedProcess[str]]]


# --- in-process bgproxy against the fake API server ----------------------------------------------------------


@pytest.fixture
def kubectl(kubeconfig: Path, tmp_path: Path) -> Kubectl:
    run = kubectl_runner(kubeconfig, tmp_path, timeout=WAIT)
    if run is None:
        pytest.skip("kubectl not installed")
    return run


CM_SETTINGS = {"state_backend": "configmap", "configmap_namespace": NS, "configmap_timeout": "1"}


@pytest.fixture
async def cm_proxy(api: KubeAPIServer, kubeconfig: Path, start_proxy: StartProxy) -> Bgproxy:
    return await start_proxy(**CM_SETTINGS)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
        yield session


async def test_existing_state_is_loaded_as_stored(
    api: KubeAPIServer, kubeconfig: Path, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    state = State(Color.GREEN, Color.BLUE, 7, 50.0, "admin", "release 42")
    api.set_configmap(CM, configmap_data(state))
    app = await start_proxy(**CM_SETTINGS)
    assert app.holder.current == state
    assert await colour(http, app.port) == "green"
    assert api.request_count("patch") == api.request_count("create") == 0  # nothing to write


async def test_start_keeps_trying_to_create_the_configmap(
    api: KubeAPIServer,
    kubeconfig: Path,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="bgproxy")
    api.fail("create", times=3, status=403)  # e.g. RBAC not applied yet: not ready, retry with backoff
    app = await start_proxy(**CM_SETTINGS)
    assert api.request_count("create") == 4
    assert stored(api)["active"] == "blue" and await colour(http, app.port) == "blue"
    failures = [r for r in caplog.records if r.getMessage() == "configmap_create_failed"]
    assert [r.levelno for r in failures] == [logging.WARNING, logging.DEBUG, logging.DEBUG]  # no log flood
    assert "403" in failures[0].bg_fields["error"] and "rbac.yaml" in failures[0].bg_fields["error"]


async def test_creates_the_configmap_when_missing(
    api: KubeAPIServer, cm_proxy: Bgproxy, http: aiohttp.ClientSession
) -> None:
    data = stored(api)
    assert data["active"] == "blue" and data["state"]["active"] == "blue"
    assert (data["state"]["revision"], data["state"]["source"]) == (0, "initial")
    assert await colour(http, cm_proxy.port) == "blue"
    store = await store_info(http, cm_proxy)
    assert (store["backend"], store["name"], store["namespace"]) == ("configmap", CM, NS)
    assert store["resource_version"] == api.get_configmap(CM)["metadata"]["resourceVersion"]  # type: ignore[index]
    await until(lambda: watching(http, cm_proxy), "the watch connects")
    watch = next(r for r in api.requests if r.verb == "watch")
    assert watch.query["fieldSelector"] == f"metadata.name={CM}" and watch.query["resourceVersion"]
    assert watch.query["allowWatchBookmarks"].lower() == "true" and int(watch.query["timeoutSeconds"]) > 0
    listed = next(r for r in api.requests if r.verb == "list")
    assert listed.query["fieldSelector"] == f"metadata.name={CM}"  # RBAC: one ConfigMap, never the namespace


async def test_kubectl_patch_flips_traffic(
    api: KubeAPIServer, cm_proxy: Bgproxy, http: aiohttp.ClientSession, kubectl: Kubectl
) -> None:
    await kubectl("patch", "cm", CM, "--type", "merge", "-p", '{"data":{"active":"green"}}')
    await until(lambda: serves(http, cm_proxy, "green"), "traffic goes to green")
    assert await metric(http, cm_proxy, "bgproxy_switches_total", source="configmap", to="green") == 1
    _, body = await admin(http, cm_proxy, "GET", "/state")
    assert (body["active"], body["previous"], body["revision"]) == ("green", "blue", 1)
    assert (body["source"], body["reason"]) == ("configmap", EDITED)
    # The replica writes the normalised state back: every replica then holds the very same state object.
    await until(lambda: (stored(api)["state"] or {}).get("active") == "green", "the state blob is written back")
    assert stored(api)["state"] == {k: v for k, v in body.items() if k not in (*NOT_STORED, "standby")}

    await kubectl("patch", "cm", CM, "--type", "merge", "-p", '{"data":{"active":"blue","reason":"bad release"}}')
    await until(lambda: serves(http, cm_proxy, "blue"), "traffic goes back to blue")
    _, body = await admin(http, cm_proxy, "GET", "/state")
    assert (body["active"], body["previous"], body["revision"], body["reason"]) == ("blue", "green", 2, "bad release")
    _, history = await admin(http, cm_proxy, "GET", "/history")
    assert [(h["to"], h["source"]) for h in history["history"]] == [("blue", "configmap"), ("green", "configmap")]


async def test_invalid_values_are_ignored(
    api: KubeAPIServer, cm_proxy: Bgproxy, http: aiohttp.ClientSession, kubectl: Kubectl
) -> None:
    errors = {"source": "configmap"}
    # Exported at 0 before the first error, so that Prometheus sees the first one as an increase (the alert on it).
    async with http.get(f"http://127.0.0.1:{cm_proxy.admin_port}/metrics") as resp:
        assert 'bgproxy_config_errors_total{source="configmap"} 0.0' in (await resp.text()).splitlines()
    await kubectl("patch", "cm", CM, "--type", "merge", "-p", '{"data":{"active":"red"}}')
    await until(lambda: metric_is(http, cm_proxy, "bgproxy_config_errors_total", 1, **errors), "an error counted")
    assert await colour(http, cm_proxy.port) == "blue"
    await kubectl("patch", "cm", CM, "--type", "json", "-p", '[{"op":"remove","path":"/data/active"}]')
    await until(lambda: metric_is(http, cm_proxy, "bgproxy_config_errors_total", 2, **errors), "a second error")
    assert await colour(http, cm_proxy.port) == "blue"
    _, body = await admin(http, cm_proxy, "GET", "/state")
    assert (body["active"], body["revision"]) == ("blue", 0)
    assert await metric(http, cm_proxy, "bgproxy_switches_total", source="configmap", to="green") == 0

    await kubectl("patch", "cm", CM, "--type", "merge", "-p", '{"data":{"active":"green"}}')
    await until(lambda: serves(http, cm_proxy, "green"), "a valid value applies again")
    assert await metric(http, cm_proxy, "bgproxy_config_errors_total", **errors) == 2


async def test_deleted_configmap_keeps_the_state_and_is_put_back(
    api: KubeAPIServer,
    cm_proxy: Bgproxy,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    kubectl: Kubectl,
) -> None:
    await kubectl("patch", "cm", CM, "--type", "merge", "-p", '{"data":{"active":"green"}}')
    await until(lambda: (stored(api)["state"] or {}).get("active") == "green", "green, written back")
    uid = api.get_configmap(CM)["metadata"]["uid"]  # type: ignore[index]
    serving = cm_proxy.holder.current
    api.fail("create")  # the first attempt to put it back fails: retried with backoff
    await kubectl("delete", "cm", CM)

    def recreated() -> bool:
        cm = api.get_configmap(CM)
        return cm is not None and cm["metadata"]["uid"] != uid

    await until(recreated, "the replica puts the ConfigMap back")
    assert cm_proxy.holder.current == serving
    assert stored(api)["state"] == {k: v for k, v in serving.to_dict().items() if k != "standby"}
    for _ in range(10):
        assert await colour(http, cm_proxy.port) == "green"
    # A replica starting now reads green, not BGPROXY_INITIAL_ACTIVE (which would flip everyone to blue).
    second = await start_proxy(**CM_SETTINGS)
    assert second.holder.current == serving and await colour(http, second.port) == "green"
    assert await colour(http, cm_proxy.port) == "green"
    status, body = await admin(http, cm_proxy, "POST", "/switch", to="blue", reason="after delete")
    assert status == 200 and body["active"] == "blue" and stored(api)["reason"] == "after delete"
    await until(lambda: serves(http, second, "blue"), "the other replica follows")


async def test_admin_flip_patches_the_configmap_with_a_precondition(
    api: KubeAPIServer, cm_proxy: Bgproxy, http: aiohttp.ClientSession, kubectl: Kubectl
) -> None:
    status, body = await admin(http, cm_proxy, "POST", "/switch", to="green", reason="release 42")
    assert status == 200 and (body["active"], body["revision"]) == ("green", 1)
    got = json.loads((await kubectl("get", "cm", CM, "-o", "json")).stdout)
    assert (got["data"]["active"], got["data"]["reason"]) == ("green", "release 42")
    blob_ = json.loads(got["data"]["state"])
    assert (blob_["active"], blob_["previous"], blob_["revision"], blob_["source"]) == ("green", "blue", 1, "admin")
    patch = [r for r in api.requests if r.verb == "patch"][-1]
    assert patch.content_type == "application/merge-patch+json"
    assert await colour(http, cm_proxy.port) == "green"

    # Someone flips to blue while this replica's watch is stuck, so it still believes green is live. Its promote
    # (green -> blue) carries the resourceVersion it saw: 409. It re-reads, sees blue, and promotes from there.
    watches = api.request_count("watch")
    api.hang("watch", times=100)
    await asyncio.to_thread(api.close_watches)
    await api.await_for(lambda: api.request_count("watch") > watches, WAIT)
    await kubectl("patch", "cm", CM, "--type", "merge", "-p", '{"data":{"active":"blue"}}')
    assert await colour(http, cm_proxy.port) == "green"  # not seen yet
    patches = api.request_count("patch")
    status, body = await admin(http, cm_proxy, "POST", "/promote")
    assert status == 200
    assert (body["active"], body["previous"], body["revision"]) == ("green", "blue", 3)
    assert api.request_count("patch") == patches + 2  # refused once, then applied
    assert stored(api)["state"]["revision"] == 3 and stored(api)["active"] == "green"
    _, history = await admin(http, cm_proxy, "GET", "/history")
    assert [(h["to"], h["source"]) for h in history["history"]] == [
        ("green", "admin"),
        ("blue", "configmap"),
        ("green", "admin"),
    ]
    # The stuck watch now resumes and delivers, late, the kubectl flip and our own write. Both are older than
    # what the replica applied when its write was accepted: neither may flip it again.
    api.clear_faults()
    api.release_hung()
    await until(lambda: watching(http, cm_proxy), "the watch comes back")
    await kubectl("patch", "cm", CM, "--type", "merge", "-p", '{"data":{"note":"sync"}}')
    marker = api.get_configmap(CM)["metadata"]["resourceVersion"]  # type: ignore[index]
    await until(lambda: resource_version_is(http, cm_proxy, marker), "the replica has seen every event")
    _, history = await admin(http, cm_proxy, "GET", "/history")
    assert len(history["history"]) == 3 and cm_proxy.holder.current.revision == 3
    assert stored(api)["state"]["revision"] == 3 and await colour(http, cm_proxy.port) == "green"


@pytest.mark.parametrize("code", [403, 500])
async def test_api_refusing_the_patch_fails_the_flip(
    api: KubeAPIServer, cm_proxy: Bgproxy, http: aiohttp.ClientSession, code: int
) -> None:
    api.fail("patch", status=code, message="injected refusal")
    status, body = await admin(http, cm_proxy, "POST", "/switch", to="green")
    assert status == 503
    assert f"refused to patch ConfigMap {NS}/{CM}: {code} injected refusal" in body["error"]
    if code == 403:
        assert "rbac.yaml" in body["error"]
    _, state = await admin(http, cm_proxy, "GET", "/state")
    assert state["active"] == "blue" and stored(api)["active"] == "blue"
    assert await colour(http, cm_proxy.port) == "blue"
    status, body = await admin(http, cm_proxy, "POST", "/switch", to="green")  # the next one goes through
    assert status == 200 and stored(api)["active"] == "green"


async def test_hanging_api_server_fails_the_flip_in_bounded_time(
    api: KubeAPIServer, cm_proxy: Bgproxy, http: aiohttp.ClientSession
) -> None:
    api.hang("patch")
    start = time.monotonic()
    status, body = await admin(http, cm_proxy, "POST", "/switch", to="green")
    took = time.monotonic() - start
    assert status == 503 and "did not answer within 1s" in body["error"]
    assert 0.9 < took < 4.0
    _, state = await admin(http, cm_proxy, "GET", "/state")
    assert state["active"] == "blue" and stored(api)["active"] == "blue"
    assert await colour(http, cm_proxy.port) == "blue"
    status, body = await admin(http, cm_proxy, "POST", "/switch", to="green")
    assert status == 200 and body["active"] == "green"


async def test_compacted_history_relists(
    api: KubeAPIServer, cm_proxy: Bgproxy, http: aiohttp.ClientSession, kubectl: Kubectl
) -> None:
    await until(lambda: watching(http, cm_proxy), "the watch connects")
    watches, lists = api.request_count("watch"), api.request_count("list")
    api.hang("watch")  # the replica's next watch waits while the history moves on and is compacted
    await asyncio.to_thread(api.close_watches)
    await api.await_for(lambda: api.request_count("watch") > watches, WAIT)
    await kubectl("patch", "cm", CM, "--type", "merge", "-p", '{"data":{"active":"green"}}')
    api.compact()
    api.release_hung()  # ...and now asks for a resourceVersion that is gone: 410, relist
    await until(lambda: serves(http, cm_proxy, "green"), "the relist finds green")
    assert api.request_count("list") > lists
    await until(lambda: watching(http, cm_proxy), "the watch resumes")


async def test_api_server_outage_keeps_serving_and_reconverges(
    api: KubeAPIServer, cm_proxy: Bgproxy, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bgproxy")
    await until(lambda: watching(http, cm_proxy), "the watch connects")
    await asyncio.to_thread(api.stop)
    await until(lambda: not_watching(http, cm_proxy), "the replica reports the lost watch")
    outage_end = time.monotonic() + 1.5  # an outage long enough for a few reconnect attempts
    while time.monotonic() < outage_end:
        assert await colour(http, cm_proxy.port) == "blue"
    assert "configmap_watch_failed" in caplog.messages
    start = time.monotonic()
    status, body = await admin(http, cm_proxy, "POST", "/switch", to="green")
    assert status == 503 and "cannot reach the Kubernetes API server" in body["error"]
    assert time.monotonic() - start < 4.0
    assert await colour(http, cm_proxy.port) == "blue"
    # Meanwhile the ConfigMap changes (as through another API server of the control plane).
    data = dict(api.get_configmap(CM)["data"])  # type: ignore[index]
    api.set_configmap(CM, {**data, "active": "green"})
    await asyncio.to_thread(api.start)
    took = await until(lambda: serves(http, cm_proxy, "green"), "the replica catches up after the outage")
    assert took < BACKOFF_CAP + 1.0  # at most one capped backoff plus the reconnect
    await until(lambda: watching(http, cm_proxy), "the watch is connected again")
    assert "configmap_watch_reconnected" in caplog.messages


async def test_not_ready_until_the_configmap_holds_a_valid_colour(
    api: KubeAPIServer, kubeconfig: Path, upstreams: dict[str, Upstream], http: aiohttp.ClientSession, kubectl: Kubectl
) -> None:
    api.set_configmap(CM, {"active": "purple"})
    admin_port = free_port()
    settings = load_settings(
        blue_url=upstreams["blue"].url,
        green_url=upstreams["green"].url,
        listen="127.0.0.1:0",
        admin_listen=f"127.0.0.1:{admin_port}",
        **CM_SETTINGS,
    )
    app = Bgproxy(settings)
    starting = asyncio.create_task(app.start())
    try:
        await until(lambda: readyz(http, admin_port, 503), "the admin port answers, not ready")
        errors = {"source": "configmap"}
        await until(lambda: metric_is(http, admin_port, "bgproxy_config_errors_total", 1, **errors), "counted")
        assert not starting.done() and app.proxy is None  # the data plane does not listen
        await kubectl("patch", "cm", CM, "--type", "merge", "-p", '{"data":{"active":"green"}}')
        await asyncio.wait_for(starting, WAIT)
        assert await readyz(http, admin_port, 200)
        assert await colour(http, app.port) == "green"
        assert (app.holder.current.source, app.holder.current.revision) == ("configmap", 1)
    finally:
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        await app.stop()


def test_no_client_configuration_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, upstreams_urls: dict[str, str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings = load_settings(**upstreams_urls, **CM_SETTINGS)
    with pytest.raises(
        StoreError, match=r"needs a Kubernetes client configuration; KUBECONFIG=.*missing could not be loaded"
    ):
        Bgproxy(settings)


@pytest.fixture
def upstreams_urls() -> dict[str, str]:
    return {"blue_url": "http://127.0.0.1:1", "green_url": "http://127.0.0.1:2"}
