"""The fake API server in tests/support/kubeapi.py, checked against the real official Python client and real kubectl.

If these pass, a bgproxy test that uses the fake server exercises the same requests, errors and watch behaviour
a real cluster would give it.
"""

from __future__ import annotations

import asyncio
import json
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.support.kubeapi import KubeAPIServer, decode_configmap_protobuf

NS = "default"
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
WAIT = 10.0  # upper bound for anything we wait for

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def api() -> Iterator[KubeAPIServer]:
    with KubeAPIServer(bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
def kubeconfig(api: KubeAPIServer, tmp_path: Path) -> Path:
    return api.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def v1(kubeconfig: Path) -> Iterator[client.CoreV1Api]:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    with client.ApiClient(configuration) as api_client:  # closes the urllib3 pool: no ResourceWarning
        yield client.CoreV1Api(api_client)


@pytest.fixture
def kubectl(kubeconfig: Path, tmp_path: Path) -> Kubectl:
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.skip("kubectl not installed")
    home = tmp_path / "home"
    home.mkdir()

    def run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [binary, "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "kcache"), *args]
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=WAIT,
                              env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {done.stderr}")
        return done

    return run


def configmap(name: str, data: dict[str, str], labels: dict[str, str] | None = None) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels=labels), data=data)


def status(exc: pytest.ExceptionInfo[ApiException]) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.value.body)
    assert body["kind"] == "Status" and body["status"] == "Failure" and body["code"] == exc.value.status
    return body


def rv(obj: client.V1ConfigMap) -> int:
    return int(obj.metadata.resource_version)


# --- the official Python client: CRUD, resourceVersion, errors -----------------------------------------------

def test_create_read_list_replace_delete(v1: client.CoreV1Api, api: KubeAPIServer) -> None:
    created = v1.create_namespaced_config_map(NS, configmap("state", {"active": "blue"}))
    meta = created.metadata
    assert (meta.name, meta.namespace, created.data) == ("state", NS, {"active": "blue"})
    assert meta.uid and meta.creation_timestamp is not None and rv(created) == api.resource_version

    read = v1.read_namespaced_config_map("state", NS)
    assert read.to_dict() == created.to_dict()

    listed = v1.list_namespaced_config_map(NS)
    assert listed.kind == "ConfigMapList" and int(listed.metadata.resource_version) == rv(created)
    assert [cm.metadata.name for cm in listed.items] == ["state"]

    read.data = {"active": "green"}
    replaced = v1.replace_namespaced_config_map("state", NS, read)
    assert replaced.data == {"active": "green"} and rv(replaced) == rv(created) + 1
    assert replaced.metadata.uid == meta.uid and replaced.metadata.creation_timestamp == meta.creation_timestamp

    deleted = v1.delete_namespaced_config_map("state", NS)
    assert deleted["kind"] == "Status" and deleted["status"] == "Success"  # this client returns a plain dict
    assert deleted["details"] == {"name": "state", "kind": "configmaps", "uid": meta.uid}
    assert api.resource_version == rv(replaced) + 1
    with pytest.raises(ApiException) as exc:
        v1.read_namespaced_config_map("state", NS)
    assert exc.value.status == 404 and status(exc)["reason"] == "NotFound"
    assert status(exc)["message"] == 'configmaps "state" not found'


def test_one_global_resource_version_and_noop_writes_keep_it(v1: client.CoreV1Api) -> None:
    a = v1.create_namespaced_config_map(NS, configmap("a", {"k": "1"}))
    b = v1.create_namespaced_config_map("other", configmap("b", {"k": "1"}))
    assert rv(b) == rv(a) + 1 and b.metadata.namespace == "other"
    patched = v1.patch_namespaced_config_map("a", NS, {"data": {"k": "2"}}, _content_type=MERGE)
    assert rv(patched) == rv(b) + 1
    same = v1.patch_namespaced_config_map("a", NS, {"data": {"k": "2"}}, _content_type=MERGE)
    assert rv(same) == rv(patched)  # like etcd: an identical write is not a write
    assert int(v1.list_config_map_for_all_namespaces().metadata.resource_version) == rv(patched)


def test_already_exists_and_not_found(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_config_map(NS, configmap("a", {}))
    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_config_map(NS, configmap("a", {}))
    assert exc.value.status == 409 and status(exc)["reason"] == "AlreadyExists"
    assert status(exc)["details"] == {"name": "a", "kind": "configmaps"}
    for call in (lambda: v1.patch_namespaced_config_map("nope", NS, {"data": {}}, _content_type=MERGE),
                 lambda: v1.replace_namespaced_config_map("nope", NS, configmap("nope", {})),
                 lambda: v1.delete_namespaced_config_map("nope", NS)):
        with pytest.raises(ApiException) as exc:
            call()
        assert exc.value.status == 404 and status(exc)["reason"] == "NotFound"


def test_stale_resource_version_is_a_conflict(v1: client.CoreV1Api) -> None:
    old = v1.create_namespaced_config_map(NS, configmap("state", {"active": "blue"}))
    new = v1.patch_namespaced_config_map("state", NS, {"data": {"active": "green"}}, _content_type=MERGE)

    stale_patch = {"metadata": {"resourceVersion": old.metadata.resource_version}, "data": {"active": "blue"}}
    for content_type in (MERGE, STRATEGIC):
        with pytest.raises(ApiException) as exc:
            v1.patch_namespaced_config_map("state", NS, stale_patch, _content_type=content_type)
        assert exc.value.status == 409 and status(exc)["reason"] == "Conflict"
        assert "the object has been modified" in status(exc)["message"]
    with pytest.raises(ApiException) as exc:
        v1.replace_namespaced_config_map("state", NS, old)
    assert exc.value.status == 409 and status(exc)["reason"] == "Conflict"
    stale_json_patch = [{"op": "replace", "path": "/metadata/resourceVersion", "value": old.metadata.resource_version}]
    with pytest.raises(ApiException) as exc:
        v1.patch_namespaced_config_map("state", NS, stale_json_patch, _content_type=JSON_PATCH)
    assert exc.value.status == 409

    fresh_patch = {"metadata": {"resourceVersion": new.metadata.resource_version}, "data": {"active": "blue"}}
    done = v1.patch_namespaced_config_map("state", NS, fresh_patch, _content_type=MERGE)
    assert done.data == {"active": "blue"} and rv(done) == rv(new) + 1


def test_patch_content_types(v1: client.CoreV1Api, api: KubeAPIServer) -> None:
    v1.create_namespaced_config_map(NS, configmap("cm", {"a": "1", "b": "2"}))
    merged = v1.patch_namespaced_config_map("cm", NS, {"data": {"a": None, "c": "3"}}, _content_type=MERGE)
    assert merged.data == {"b": "2", "c": "3"}
    strategic = v1.patch_namespaced_config_map("cm", NS, {"data": {"b": None}}, _content_type=STRATEGIC)
    assert strategic.data == {"c": "3"}
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": strategic.metadata.resource_version},
           {"op": "add", "path": "/data/d", "value": "4"}, {"op": "remove", "path": "/data/c"}]
    assert v1.patch_namespaced_config_map("cm", NS, ops).data == {"d": "4"}  # a list body is sent as JSON patch
    with pytest.raises(ApiException) as exc:  # ...and a test op on a stale version fails the whole patch
        v1.patch_namespaced_config_map("cm", NS, ops)
    assert exc.value.status == 422 and status(exc)["reason"] == "Invalid"
    assert v1.patch_namespaced_config_map("cm", NS, {"data": {"x": "1"}}).data == {"d": "4", "x": "1"}
    assert api.requests[-1].content_type == STRATEGIC  # the client's default for a dict body


def test_list_selectors_and_resource_version_match(v1: client.CoreV1Api, api: KubeAPIServer) -> None:
    first = v1.create_namespaced_config_map(NS, configmap("a", {"v": "1"}, labels={"app": "x"}))
    v1.create_namespaced_config_map(NS, configmap("b", {}, labels={"app": "y"}))
    v1.patch_namespaced_config_map("a", NS, {"data": {"v": "2"}}, _content_type=MERGE)

    def names(**kwargs: Any) -> list[str]:
        return [cm.metadata.name for cm in v1.list_namespaced_config_map(NS, **kwargs).items]

    assert names(field_selector="metadata.name=a") == names(field_selector="metadata.name==a") == ["a"]
    assert names(field_selector="metadata.name!=a") == ["b"]
    assert names(label_selector="app=y") == ["b"] and names(label_selector="app") == ["a", "b"]
    with pytest.raises(ApiException) as exc:
        names(field_selector="data.v=1")
    assert exc.value.status == 400

    old = first.metadata.resource_version
    current = v1.list_namespaced_config_map(NS, field_selector="metadata.name=a", resource_version=old)
    assert current.items[0].data == {"v": "2"}  # a plain list with an old RV serves current data
    exact = v1.list_namespaced_config_map(NS, resource_version=old, resource_version_match="Exact")
    assert exact.metadata.resource_version == old and [(c.metadata.name, c.data) for c in exact.items] == [
        ("a", {"v": "1"})]
    api.compact()
    with pytest.raises(ApiException) as exc:
        v1.list_namespaced_config_map(NS, resource_version=old, resource_version_match="Exact")
    assert exc.value.status == 410 and status(exc)["reason"] == "Expired"
    newer = v1.list_namespaced_config_map(NS, resource_version=old, resource_version_match="NotOlderThan")
    assert int(newer.metadata.resource_version) == api.resource_version


# --- the official Python client: watch -------------------------------------------------------------------------

def test_watch_resumes_strictly_after_resource_version(v1: client.CoreV1Api) -> None:
    created = v1.create_namespaced_config_map(NS, configmap("state", {"active": "blue"}))
    v1.patch_namespaced_config_map("state", NS, {"data": {"active": "green"}}, _content_type=MERGE)
    v1.patch_namespaced_config_map("state", NS, {"data": {"reason": "x"}}, _content_type=MERGE)
    v1.delete_namespaced_config_map("state", NS)
    w = watch.Watch()
    seen = []
    for event in w.stream(v1.list_namespaced_config_map, NS, resource_version=created.metadata.resource_version,
                          timeout_seconds=int(WAIT)):
        seen.append((event["type"], event["object"].data, rv(event["object"])))
        if event["type"] == "DELETED":
            w.stop()
    base = rv(created)
    assert seen == [("MODIFIED", {"active": "green"}, base + 1),
                    ("MODIFIED", {"active": "green", "reason": "x"}, base + 2),
                    ("DELETED", {"active": "green", "reason": "x"}, base + 3)]


def test_watch_without_resource_version_sends_state_then_changes(v1: client.CoreV1Api, api: KubeAPIServer) -> None:
    v1.create_namespaced_config_map(NS, configmap("a", {"k": "1"}))
    v1.create_namespaced_config_map(NS, configmap("b", {"k": "1"}))
    v1.create_namespaced_config_map("elsewhere", configmap("c", {"k": "1"}))
    w = watch.Watch()
    events = w.stream(v1.list_namespaced_config_map, NS, field_selector="metadata.name!=b",
                      timeout_seconds=int(WAIT))
    first = next(events)
    assert (first["type"], first["object"].metadata.name) == ("ADDED", "a")
    api.set_configmap("b", {"k": "2"})  # filtered out by the field selector
    api.set_configmap("c", {"k": "2"}, namespace="elsewhere")  # another namespace
    api.set_configmap("a", {"k": "2"})
    second = next(events)
    assert (second["type"], second["object"].data) == ("MODIFIED", {"k": "2"})
    assert rv(second["object"]) == api.resource_version
    w.stop()
    events.close()


def test_watch_label_selector_turns_moves_into_added_and_deleted(v1: client.CoreV1Api, api: KubeAPIServer
                                                                ) -> None:
    api.set_configmap("a", {"k": "1"})
    w = watch.Watch()
    events = w.stream(v1.list_namespaced_config_map, NS, label_selector="app=x",
                      resource_version=str(api.resource_version), timeout_seconds=int(WAIT))
    api.set_configmap("a", {"k": "2"}, labels={"app": "x"})
    api.set_configmap("a", {"k": "3"}, labels={"app": "x"})
    api.set_configmap("a", {"k": "4"}, labels={})
    seen = [(e["type"], e["object"].data["k"]) for e in (next(events), next(events), next(events))]
    assert seen == [("ADDED", "2"), ("MODIFIED", "3"), ("DELETED", "4")]
    w.stop()
    events.close()


def test_watch_timeout_seconds_ends_the_stream(v1: client.CoreV1Api, api: KubeAPIServer) -> None:
    start = time.monotonic()
    events = list(watch.Watch().stream(v1.list_namespaced_config_map, NS,
                                       resource_version=str(api.resource_version), timeout_seconds=1))
    assert events == [] and 0.9 <= time.monotonic() - start < WAIT


def test_watch_bookmarks_carry_only_the_resource_version(v1: client.CoreV1Api, api: KubeAPIServer) -> None:
    start = v1.create_namespaced_config_map(NS, configmap("a", {})).metadata.resource_version
    changed = api.set_configmap("a", {"k": "1"})["metadata"]["resourceVersion"]  # replayed to the watch
    # filtered out by the field selector: only a bookmark can tell the client that this version exists
    newest = api.set_configmap("b", {"k": "1"})["metadata"]["resourceVersion"]
    w = watch.Watch()
    seen = []
    for event in w.stream(v1.list_namespaced_config_map, NS, field_selector="metadata.name=a",
                          resource_version=start, allow_watch_bookmarks=True, timeout_seconds=int(WAIT)):
        seen.append(event)
        if [e["type"] for e in seen].count("BOOKMARK") == 2:
            w.stop()
    assert [e["type"] for e in seen] == ["MODIFIED", "BOOKMARK", "BOOKMARK"]
    assert seen[0]["object"].metadata.resource_version == changed
    bookmark = {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"resourceVersion": newest}}
    assert [e["raw_object"] for e in seen[1:]] == [bookmark, bookmark]
    assert newest != changed and w.resource_version == newest  # the client resumes from the bookmark


def test_watch_from_a_compacted_resource_version_is_410(v1: client.CoreV1Api, api: KubeAPIServer) -> None:
    old = v1.create_namespaced_config_map(NS, configmap("a", {})).metadata.resource_version
    v1.patch_namespaced_config_map("a", NS, {"data": {"k": "v"}}, _content_type=MERGE)
    api.compact()
    with pytest.raises(ApiException) as exc:  # the client retries a 410 once by itself, then gives up
        list(watch.Watch().stream(v1.list_namespaced_config_map, NS, resource_version=old))
    assert exc.value.status == 410 and "too old resource version" in str(exc.value.reason)
    assert api.request_count("watch") == 2


def test_history_size_bounds_watchable_versions(tmp_path: Path) -> None:
    with KubeAPIServer(history_size=2) as api:
        versions = [int(api.set_configmap("a", {"n": str(n)})["metadata"]["resourceVersion"]) for n in range(4)]
        configuration = client.Configuration()
        config.load_kube_config(str(api.write_kubeconfig(tmp_path / "kc")), client_configuration=configuration)
        with client.ApiClient(configuration) as api_client:
            v1 = client.CoreV1Api(api_client)
            with pytest.raises(ApiException) as exc:
                list(watch.Watch().stream(v1.list_namespaced_config_map, NS, resource_version=str(versions[0]),
                                          timeout_seconds=5))
            assert exc.value.status == 410
            w = watch.Watch()
            seen = []
            for event in w.stream(v1.list_namespaced_config_map, NS, resource_version=str(versions[1]),
                                  timeout_seconds=5):
                seen.append((event["type"], rv(event["object"]), event["object"].data))
                if len(seen) == 2:
                    w.stop()
            # the oldest version still held is watchable, and everything after it is replayed
            assert seen == [("MODIFIED", versions[2], {"n": "2"}), ("MODIFIED", versions[3], {"n": "3"})]


# --- raw protocol details ----------------------------------------------------------------------------------

async def test_watch_expired_is_one_error_event_then_end(api: KubeAPIServer) -> None:
    old = api.set_configmap("a", {})["metadata"]["resourceVersion"]
    api.set_configmap("a", {"k": "v"})
    api.compact()
    async with aiohttp.ClientSession() as http, http.get(
            f"{api.url}/api/v1/namespaces/{NS}/configmaps", params={"watch": "true", "resourceVersion": old},
            timeout=aiohttp.ClientTimeout(total=WAIT)) as resp:
        assert resp.status == 200
        lines = (await resp.text()).splitlines()
    assert [json.loads(line) for line in lines] == [{"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Expired",
        "message": f"too old resource version: {old} ({api.store.compacted_rv})", "details": {}, "code": 410}}]


@pytest.mark.parametrize(("content_type", "body", "code"), [
    (JSON_PATCH, {"data": {}}, 400),  # a JSON patch must be a list
    (MERGE, [{"op": "add", "path": "/data/x", "value": "1"}], 400),  # a merge patch must be an object
    (MERGE, "{", 400),
    ("application/apply-patch+yaml", "data: {}", 415),  # server-side apply is not implemented
])
async def test_malformed_patches(api: KubeAPIServer, content_type: str, body: object, code: int) -> None:
    api.set_configmap("a", {})
    data = body if isinstance(body, str) else json.dumps(body)
    async with aiohttp.ClientSession() as http, http.patch(
            f"{api.url}/api/v1/namespaces/{NS}/configmaps/a", data=data, headers={"Content-Type": content_type},
            timeout=aiohttp.ClientTimeout(total=WAIT)) as resp:
        assert resp.status == code and (await resp.json())["code"] == code


@pytest.mark.parametrize("value", ["true", "True", "1", "t", "false", "0", "maybe"])
async def test_watch_parameter_is_a_go_boolean(api: KubeAPIServer, value: str) -> None:
    api.set_configmap("a", {})
    async with aiohttp.ClientSession() as http, http.get(
            f"{api.url}/api/v1/namespaces/{NS}/configmaps", params={"watch": value},
            timeout=aiohttp.ClientTimeout(total=WAIT)) as resp:
        first = json.loads(await resp.content.readline())  # a list is one line too
    if value == "maybe":
        assert resp.status == 400 and first["reason"] == "BadRequest"
    elif value in ("false", "0"):
        assert first["kind"] == "ConfigMapList"
    else:
        assert first["type"] == "ADDED"


async def test_async_context_manager_and_close_watches() -> None:
    async with KubeAPIServer() as api, aiohttp.ClientSession() as http:
        api.set_configmap("a", {"k": "1"})
        async with http.get(f"{api.url}/api/v1/namespaces/{NS}/configmaps",
                            params={"watch": "1", "resourceVersion": str(api.resource_version)},
                            timeout=aiohttp.ClientTimeout(total=WAIT)) as resp:
            await api.await_for(lambda: api.watch_count == 1, WAIT)
            api.set_configmap("a", {"k": "2"})
            event = json.loads(await resp.content.readline())
            assert event["type"] == "MODIFIED" and event["object"]["data"] == {"k": "2"}
            await asyncio.to_thread(api.close_watches)
            assert await resp.content.read() == b""  # a clean end of the stream
        await api.await_for(lambda: api.watch_count == 0, WAIT)
        async with http.get(f"{api.url}/api/v1/namespaces/{NS}/configmaps", params={"watch": "1"},
                            timeout=aiohttp.ClientTimeout(total=WAIT)) as resp:
            assert json.loads(await resp.content.readline())["type"] == "ADDED"
            await asyncio.to_thread(api.close_watches, abort=True)
            with pytest.raises(aiohttp.ClientPayloadError):  # a reset, as when an apiserver dies
                await resp.content.read()


async def test_send_initial_events_ends_with_an_annotated_bookmark(api: KubeAPIServer) -> None:
    api.set_configmap("a", {})
    api.set_configmap("b", {})
    params = {"watch": "true", "sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan",
              "allowWatchBookmarks": "true"}
    async with aiohttp.ClientSession() as http, http.get(
            f"{api.url}/api/v1/namespaces/{NS}/configmaps", params=params,
            timeout=aiohttp.ClientTimeout(total=WAIT)) as resp:
        events = [json.loads(await resp.content.readline()) for _ in range(3)]
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in events] == [
        ("ADDED", "a"), ("ADDED", "b"), ("BOOKMARK", None)]
    assert events[2]["object"]["metadata"] == {"resourceVersion": str(api.resource_version),
                                               "annotations": {"k8s.io/initial-events-end": "true"}}


def test_protobuf_create_body_is_decoded() -> None:
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    meta = field(1, b"cm") + field(11, field(1, b"app") + field(2, b"x"))
    cm = field(1, meta) + field(2, field(1, b"active") + field(2, b"blue")) + field(3, field(1, b"b") + field(2, b"\0"))
    body = b"k8s\x00" + field(1, field(1, b"v1") + field(2, b"ConfigMap")) + field(2, cm)
    assert decode_configmap_protobuf(body) == {
        "kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "cm", "labels": {"app": "x"}},
        "data": {"active": "blue"}, "binaryData": {"b": "AA=="}}


# --- test controls: restart, faults, counts --------------------------------------------------------------------

def test_stop_ends_watches_refuses_connections_and_restarts_on_the_same_port(
        v1: client.CoreV1Api, api: KubeAPIServer) -> None:
    api.set_configmap("state", {"active": "blue"})
    results: queue.Queue[list[str] | BaseException] = queue.Queue()

    def watcher() -> None:
        try:
            results.put([e["type"] for e in watch.Watch().stream(
                v1.list_namespaced_config_map, NS, resource_version=str(api.resource_version),
                timeout_seconds=int(WAIT) * 3)])
        except BaseException as exc:
            results.put(exc)

    thread = threading.Thread(target=watcher)
    thread.start()
    api.wait_for(lambda: api.watch_count == 1, WAIT)
    port, version = api.port, api.resource_version
    api.stop()
    assert results.get(timeout=WAIT) == []  # the stream ended cleanly, long before its timeout
    thread.join(WAIT)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()

    api.start()
    assert api.port == port
    assert v1.read_namespaced_config_map("state", NS).data == {"active": "blue"}
    patched = v1.patch_namespaced_config_map("state", NS, {"data": {"active": "green"}}, _content_type=MERGE)
    assert rv(patched) == version + 1


def test_injected_failures_and_hangs(v1: client.CoreV1Api, api: KubeAPIServer) -> None:
    api.set_configmap("state", {"active": "blue"})
    api.fail("patch", times=2, status=500)
    for _ in range(2):
        with pytest.raises(ApiException) as exc:
            v1.patch_namespaced_config_map("state", NS, {"data": {"active": "green"}}, _content_type=MERGE)
        assert exc.value.status == 500 and status(exc)["reason"] == "InternalError"
    v1.patch_namespaced_config_map("state", NS, {"data": {"active": "green"}}, _content_type=MERGE)

    api.fail("get", status=503)
    with pytest.raises(ApiException) as exc:
        v1.read_namespaced_config_map("state", NS)
    assert exc.value.status == 503 and status(exc)["reason"] == "ServiceUnavailable"

    api.hang("get", times=100)
    with pytest.raises(urllib3.exceptions.HTTPError):  # a read timeout (urllib3 may retry it first)
        v1.read_namespaced_config_map("state", NS, _request_timeout=0.3)
    api.clear_faults()
    api.release_hung()
    assert v1.read_namespaced_config_map("state", NS).data == {"active": "green"}


def test_request_counts_and_direct_access(v1: client.CoreV1Api, api: KubeAPIServer) -> None:
    api.set_configmap("a", {"k": "1"}, labels={"app": "x"})
    v1.read_namespaced_config_map("a", NS)
    v1.list_namespaced_config_map(NS)
    v1.patch_namespaced_config_map("a", NS, {"data": {"k": "2"}}, _content_type=MERGE)
    assert (api.request_count("get"), api.request_count("list"), api.request_count("patch")) == (1, 1, 1)
    assert api.request_count(method="GET") == 2 and api.requests[-1].content_type == MERGE
    assert api.get_configmap("a")["data"] == {"k": "2"}
    assert [cm["metadata"]["name"] for cm in api.configmaps()] == ["a"]
    api.delete_configmap("a")
    assert api.get_configmap("a") is None and api.configmaps() == []


# --- kubectl ---------------------------------------------------------------------------------------------------

def test_kubectl_create_get_patch_apply_delete(kubectl: Kubectl, api: KubeAPIServer) -> None:
    assert "created" in kubectl("create", "configmap", "state", "--from-literal=active=blue").stdout
    assert api.get_configmap("state")["data"] == {"active": "blue"}

    got = json.loads(kubectl("get", "cm", "state", "-o", "json").stdout)
    assert got["data"] == {"active": "blue"} and got["metadata"] == api.get_configmap("state")["metadata"]

    kubectl("patch", "cm", "state", "--type", "merge", "-p", '{"data":{"active":"green"}}')
    assert api.get_configmap("state")["data"] == {"active": "green"}

    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "state"},
                "data": {"active": "blue", "reason": "rollback"}}
    assert "configured" in kubectl("apply", "-f", "-", stdin=json.dumps(manifest)).stdout
    assert api.get_configmap("state")["data"] == {"active": "blue", "reason": "rollback"}
    manifest["metadata"]["name"] = "other"
    assert "created" in kubectl("apply", "-f", "-", stdin=json.dumps(manifest)).stdout

    assert kubectl("get", "cm").stdout.split("\n")[0].split() == ["NAME", "DATA", "AGE"]
    assert "deleted" in kubectl("delete", "cm", "state").stdout
    assert api.get_configmap("state") is None
    missing = kubectl("get", "cm", "state", check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr


def test_kubectl_sees_conflicts(kubectl: Kubectl, api: KubeAPIServer) -> None:
    old = api.set_configmap("state", {"active": "blue"})["metadata"]["resourceVersion"]
    api.set_configmap("state", {"active": "green"})
    stale = json.dumps({"metadata": {"resourceVersion": old}, "data": {"active": "blue"}})
    done = kubectl("patch", "cm", "state", "--type", "merge", "-p", stale, check=False)
    assert done.returncode != 0 and "the object has been modified" in done.stderr
    again = kubectl("create", "configmap", "state", "--from-literal=active=blue", check=False)
    assert again.returncode != 0 and 'configmaps "state" already exists' in again.stderr


def test_kubectl_get_watch(kubeconfig: Path, kubectl: Kubectl, api: KubeAPIServer, tmp_path: Path) -> None:
    kubectl("get", "cm")  # warm the discovery cache so the watch starts quickly
    api.set_configmap("state", {"active": "blue"})
    proc = subprocess.Popen(
        ["kubectl", "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "kcache"),
         "get", "cm", "-w", "--output-watch-events"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={"HOME": str(tmp_path), "PATH": "/usr/bin"})
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or []], daemon=True)
    reader.start()
    try:
        assert lines.get(timeout=WAIT).split() == ["EVENT", "NAME", "DATA", "AGE"]
        assert lines.get(timeout=WAIT).split()[:3] == ["ADDED", "state", "1"]
        api.wait_for(lambda: api.watch_count == 1, WAIT)
        api.set_configmap("state", {"active": "green", "reason": "flip"})
        assert lines.get(timeout=WAIT).split()[:3] == ["MODIFIED", "state", "2"]
        api.delete_configmap("state")
        assert lines.get(timeout=WAIT).split()[:3] == ["DELETED", "state", "2"]
    finally:
        proc.terminate()
        proc.communicate(timeout=WAIT)
        reader.join(WAIT)
    watches = [r for r in api.requests if r.verb == "watch"]
    assert watches and watches[0].query["resourceVersion"] == str(api.resource_version - 2)


# --- Events (core/v1): what bgproxy's Events notifier and kubectl get/events/describe use ------------------------

def event_body(name: str, cm: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body = {
        "metadata": {"name": name},
        "involvedObject": {"apiVersion": "v1", "kind": "ConfigMap", "namespace": NS,
                           "name": cm["metadata"]["name"], "uid": cm["metadata"]["uid"]},
        "reason": "Switched", "message": "green is active (was blue): release 42", "type": "Normal",
        "source": {"component": "bgproxy"}, "reportingComponent": "bgproxy", "reportingInstance": "pod-a",
        "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z", "count": 1,
    }
    body.update(fields)
    return body


def test_events_share_the_resource_version_and_keep_the_usual_semantics(
        v1: client.CoreV1Api, api: KubeAPIServer) -> None:
    cm = api.set_configmap("state", {"active": "blue"})
    created = v1.create_namespaced_event(NS, event_body("state.1", cm))
    assert isinstance(created, client.CoreV1Event) and created.count == 1
    assert int(created.metadata.resource_version) == int(cm["metadata"]["resourceVersion"]) + 1 == api.resource_version
    assert created.metadata.uid and created.involved_object.uid == cm["metadata"]["uid"]
    assert v1.read_namespaced_event("state.1", NS).to_dict() == created.to_dict()

    with pytest.raises(ApiException) as exc:  # a second create of one name: what the notifier counts as a repeat
        v1.create_namespaced_event(NS, event_body("state.1", cm))
    assert exc.value.status == 409 and status(exc)["reason"] == "AlreadyExists"
    assert status(exc)["message"] == 'events "state.1" already exists'
    assert status(exc)["details"] == {"name": "state.1", "kind": "events"}

    # An empty patch changes nothing (no new resourceVersion) and answers the Event: the notifier's read.
    version = api.resource_version
    assert v1.patch_namespaced_event("state.1", NS, {}, _content_type=MERGE).to_dict() == created.to_dict()
    assert api.resource_version == version
    repeat = {"metadata": {"resourceVersion": created.metadata.resource_version}, "count": 2,
              "lastTimestamp": "2026-01-01T00:01:00Z"}
    counted = v1.patch_namespaced_event("state.1", NS, repeat, _content_type=MERGE)
    assert counted.count == 2 and counted.last_timestamp.minute == 1 and rv(counted) == version + 1
    with pytest.raises(ApiException) as exc:  # the same precondition again: someone counted first
        v1.patch_namespaced_event("state.1", NS, repeat, _content_type=MERGE)
    assert exc.value.status == 409 and 'on events "state.1"' in status(exc)["message"]

    with pytest.raises(ApiException) as exc:
        v1.read_namespaced_event("missing", NS)
    assert exc.value.status == 404 and status(exc)["message"] == 'events "missing" not found'
    with pytest.raises(ApiException) as exc:
        v1.patch_namespaced_event("missing", NS, {}, _content_type=MERGE)
    assert exc.value.status == 404
    wrong_ns = event_body("state.2", cm, involvedObject={"kind": "ConfigMap", "namespace": "other", "name": "state"})
    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_event(NS, wrong_ns)
    assert exc.value.status == 422 and "does not match event.namespace" in status(exc)["message"]
    # The client refuses a count that is not a number; the server does too (a decode error).
    resp = urllib3.request("POST", f"{api.url}/api/v1/namespaces/{NS}/events",
                           body=json.dumps(event_body("state.3", cm, count="many")),
                           headers={"Content-Type": "application/json"})
    assert resp.status == 400 and resp.json()["reason"] == "BadRequest"
    assert [cm["metadata"]["name"] for cm in api.configmaps()] == ["state"]  # Events are not ConfigMaps


def test_events_are_selected_by_their_fields(v1: client.CoreV1Api, api: KubeAPIServer) -> None:
    cm = api.set_configmap("state", {"active": "blue"})
    other = api.set_configmap("other", {})
    v1.create_namespaced_event(NS, event_body("state.1", cm))
    v1.create_namespaced_event(NS, event_body("state.2", cm, reason="AutoRollback", type="Warning"))
    v1.create_namespaced_event(NS, event_body("other.1", other))

    def names(selector: str) -> list[str]:
        return [e.metadata.name for e in v1.list_namespaced_event(NS, field_selector=selector).items]

    assert names("involvedObject.name=state") == ["state.1", "state.2"]
    assert names("involvedObject.kind=ConfigMap,involvedObject.name=state,type=Warning") == ["state.2"]
    assert names(f"involvedObject.uid={cm['metadata']['uid']},reason!=AutoRollback") == ["state.1"]
    assert names("source=bgproxy,reportingComponent=bgproxy") == ["other.1", "state.1", "state.2"]
    listed = v1.list_namespaced_event(NS)
    assert listed.kind == "EventList" and int(listed.metadata.resource_version) == api.resource_version
    with pytest.raises(ApiException) as exc:
        v1.list_namespaced_event(NS, field_selector="message=x")
    assert exc.value.status == 400 and status(exc)["message"] == "field label not supported: message"
    with pytest.raises(ApiException) as exc:  # a ConfigMap has no such field
        v1.list_namespaced_config_map(NS, field_selector="involvedObject.name=state")
    assert exc.value.status == 400


def test_faults_and_counts_name_their_resource(v1: client.CoreV1Api, api: KubeAPIServer) -> None:
    cm = api.set_configmap("state", {"active": "blue"})
    api.fail("create", resource="events")
    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_event(NS, event_body("state.1", cm))
    assert exc.value.status == 500
    v1.create_namespaced_event(NS, event_body("state.1", cm))
    v1.create_namespaced_config_map(NS, configmap("b", {}))  # a ConfigMap fault is not spent on Events
    assert (api.request_count("create"), api.request_count("create", resource="events")) == (1, 2)
    assert api.request_count("create", resource=None) == 3
    assert [e["metadata"]["name"] for e in api.events()] == ["state.1"]


def test_kubectl_shows_events_and_their_count(kubectl: Kubectl, v1: client.CoreV1Api, api: KubeAPIServer) -> None:
    cm = api.set_configmap("state", {"active": "blue"})
    v1.create_namespaced_event(NS, event_body("state.1", cm, count=3))
    v1.create_namespaced_event(NS, event_body("state.2", cm, reason="AutoRollback", type="Warning",
                                              message="blue is active (was green): 5xx share 30%"))
    lines = kubectl("get", "events").stdout.splitlines()
    assert lines[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert lines[1].split()[1:4] == ["Normal", "Switched", "configmap/state"]
    assert lines[1].endswith("green is active (was blue): release 42")
    assert lines[2].split()[1:4] == ["Warning", "AutoRollback", "configmap/state"]

    wide = kubectl("get", "events", "-o", "wide", "--field-selector", "type=Normal").stdout.splitlines()
    assert wide[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "SUBOBJECT", "SOURCE", "MESSAGE",
                               "FIRST", "SEEN", "COUNT", "NAME"]
    assert len(wide) == 2 and "bgproxy, pod-a" in wide[1] and wide[1].split()[-2:] == ["3", "state.1"]

    listed = kubectl("events", "--for", "configmap/state").stdout.splitlines()
    assert listed[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert any("(x3 over" in line and "Switched" in line for line in listed[1:]), listed

    described = kubectl("describe", "configmap", "state").stdout
    events = described[described.index("Events:"):].splitlines()
    assert events[1].split() == ["Type", "Reason", "Age", "From", "Message"]
    assert any("Switched" in line and "(x3 over" in line and "bgproxy" in line for line in events), events
