"""The ConfigMap watch's one-attempt functions and its reconnect policy, against the fake Kubernetes API server.

`relist` and `watch_once` run here one at a time, with the real official client, as the watch thread runs them;
what they hand on is collected from the callback. `Reconnect` (how long to wait between attempts) is a table.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bgproxy.metrics import Metrics
from bgproxy.stores import StoreError
from bgproxy.stores.configmap.client import BACKOFF_CAP, BACKOFF_START, ConfigMapApi, Refused
from bgproxy.stores.configmap.watch import HEALTHY_WATCH, ConfigMapWatch, Reconnect
from tests.support.configmap import CM, NS, WAIT, until
from tests.support.kubeapi import KubeAPIServer

SERVER_TIMEOUT = 2  # seconds: the watch's timeoutSeconds here, so the server ends it within the test
Events = list[tuple[str, dict[str, Any] | None, str]]


@pytest.fixture
def api() -> Iterator[KubeAPIServer]:
    # Bookmarks well inside the server's timeout: a watch always learns the newest version before it ends.
    with KubeAPIServer(bookmark_interval=0.1) as server:
        yield server


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def events() -> Events:
    return []


@pytest.fixture
async def watch(kubeconfig: Path, metrics: Metrics, events: Events) -> AsyncIterator[ConfigMapWatch]:
    client = ConfigMapApi(CM, NS, timeout=1)
    on_event = lambda kind, obj, rv: events.append((kind, obj, rv))  # noqa: E731 - called on the watching thread
    yield ConfigMapWatch(client, metrics, on_event, timeout=(SERVER_TIMEOUT, SERVER_TIMEOUT))
    client.close()


def connected_gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("bgproxy_configmap_watch_connected")


async def test_relist_hands_on_a_missing_configmap_as_none_with_a_version_to_watch_from(
    api: KubeAPIServer, watch: ConfigMapWatch, events: Events
) -> None:
    api.set_configmap("other", {"x": "1"})  # another ConfigMap in the namespace: never listed
    rv = await asyncio.to_thread(watch.relist)
    assert events == [("SNAPSHOT", None, rv)]
    assert int(rv) == api.resource_version
    listed = next(r for r in api.requests if r.verb == "list")
    assert listed.query["fieldSelector"] == f"metadata.name={CM}"


async def test_relist_hands_on_the_configmap(api: KubeAPIServer, watch: ConfigMapWatch, events: Events) -> None:
    created = api.set_configmap(CM, {"active": "green"})
    rv = await asyncio.to_thread(watch.relist)
    ((kind, obj, at),) = events
    assert (kind, at, rv) == ("SNAPSHOT", rv, created["metadata"]["resourceVersion"])
    assert obj is not None and obj["data"] == {"active": "green"}


async def test_watch_ended_by_the_server_returns_the_version_to_resume_from(
    api: KubeAPIServer, watch: ConfigMapWatch, events: Events, metrics: Metrics
) -> None:
    api.set_configmap(CM, {"active": "blue"})
    listed = await asyncio.to_thread(watch.relist)
    started = time.monotonic()
    watching = asyncio.create_task(asyncio.to_thread(watch.watch_once, listed))
    await api.await_for(lambda: api.watch_count == 1, WAIT)
    await until(lambda: watch.connected and connected_gauge(metrics) == 1, "the watch reports itself connected")
    changed = api.set_configmap(CM, {"active": "green"})
    api.set_configmap("other", {"x": "1"})  # not ours: no event, but a bookmark carries its version
    resume = await asyncio.wait_for(watching, SERVER_TIMEOUT + WAIT)
    assert time.monotonic() - started >= SERVER_TIMEOUT - 0.5  # the server's timeout ended it, not an error
    assert resume == str(api.resource_version) != changed["metadata"]["resourceVersion"]
    assert [(kind, at) for kind, _, at in events[1:]] == [("MODIFIED", changed["metadata"]["resourceVersion"])]
    assert not watch.connected and connected_gauge(metrics) == 0
    watched = next(r for r in api.requests if r.verb == "watch")
    assert watched.query["resourceVersion"] == listed and watched.query["timeoutSeconds"] == str(SERVER_TIMEOUT)


async def test_watch_from_a_compacted_version_returns_none_to_relist(
    api: KubeAPIServer, watch: ConfigMapWatch, events: Events
) -> None:
    api.set_configmap(CM, {"active": "blue"})
    listed = await asyncio.to_thread(watch.relist)
    api.set_configmap(CM, {"active": "green"})
    api.compact()
    resume = await asyncio.wait_for(asyncio.to_thread(watch.watch_once, listed), WAIT)
    assert resume is None
    assert [kind for kind, _, _ in events] == ["SNAPSHOT"]  # the change comes with the relist, not from here


async def test_refused_watch_raises_the_refusal_worded_for_people(
    api: KubeAPIServer, watch: ConfigMapWatch, metrics: Metrics
) -> None:
    listed = await asyncio.to_thread(watch.relist)
    api.fail("watch", status=403, message="configmaps is forbidden")
    with pytest.raises(Refused) as refused:
        await asyncio.wait_for(asyncio.to_thread(watch.watch_once, listed), WAIT)
    assert refused.value.status == 403
    assert f"refused to watch ConfigMap {NS}/{CM}: 403 configmaps is forbidden" in str(refused.value)
    assert "rbac.yaml" in str(refused.value)
    assert not watch.connected and connected_gauge(metrics) == 0


async def test_unreachable_api_server_is_a_store_error_naming_it(api: KubeAPIServer, watch: ConfigMapWatch) -> None:
    listed = await asyncio.to_thread(watch.relist)
    await asyncio.to_thread(api.stop)
    with pytest.raises(StoreError, match=f"cannot reach the Kubernetes API server at {api.url} ") as error:
        await asyncio.wait_for(asyncio.to_thread(watch.watch_once, listed), WAIT)
    assert not isinstance(error.value, Refused)
    with pytest.raises(StoreError, match=rf"\(list ConfigMap {NS}/{CM}\)"):
        await asyncio.wait_for(asyncio.to_thread(watch.relist), WAIT)


async def test_stop_cuts_a_watch_in_progress_at_once(api: KubeAPIServer, watch: ConfigMapWatch, events: Events) -> None:
    listed = await asyncio.to_thread(watch.relist)
    watching = asyncio.create_task(asyncio.to_thread(watch.watch_once, listed))
    await until(lambda: watch.connected, "the watch is reading its stream")
    started = time.monotonic()
    watch.stop()
    with contextlib.suppress(StoreError):  # a cut stream may read as a broken one: either way it ends
        await asyncio.wait_for(watching, WAIT)
    assert time.monotonic() - started < 1.0  # not at the server's timeout


# --- how long to wait before the next attempt ------------------------------------------------------------------

FAIL = {"failed": True, "expired": False, "lasted": 0.0}
EXPIRED = {"failed": False, "expired": True, "lasted": 0.0}
HEALTHY = {"failed": False, "expired": False, "lasted": HEALTHY_WATCH}  # ended by the server's timeout
SHORT = {"failed": False, "expired": False, "lasted": HEALTHY_WATCH / 10}  # ended at once, without an error


def backoff(n: int) -> tuple[float, float]:
    """The range of the n-th delay in a run (from 1): doubling from BACKOFF_START, capped, jittered down to half."""
    d = min(BACKOFF_CAP, BACKOFF_START * 2 ** (n - 1))
    return d / 2, d


AT_ONCE = (0.0, 0.0)

RECONNECTS: list[tuple[str, list[dict[str, Any]], list[tuple[float, float]]]] = [
    ("failures back off, doubling up to the cap", [FAIL] * 6, [backoff(n) for n in range(1, 7)]),
    ("a watch the server ended resumes at once", [HEALTHY, HEALTHY], [AT_ONCE, AT_ONCE]),
    ("...and resets the backoff", [FAIL, FAIL, HEALTHY, FAIL], [backoff(1), backoff(2), AT_ONCE, backoff(1)]),
    ("a watch that ends at once backs off", [SHORT, SHORT], [backoff(1), backoff(2)]),
    ("410: relist at once", [EXPIRED], [AT_ONCE]),
    ("410 again: no tight loop", [EXPIRED, EXPIRED, EXPIRED], [AT_ONCE, backoff(1), backoff(2)]),
    ("a failure between 410s does not reset the count", [EXPIRED, FAIL, EXPIRED], [AT_ONCE, backoff(1), backoff(2)]),
    ("a watch between two 410s does", [EXPIRED, HEALTHY, EXPIRED], [AT_ONCE, AT_ONCE, AT_ONCE]),
]


@pytest.mark.parametrize(("outcomes", "waits"), [r[1:] for r in RECONNECTS], ids=[r[0] for r in RECONNECTS])
def test_reconnect_waits(outcomes: list[dict[str, Any]], waits: list[tuple[float, float]]) -> None:
    reconnect = Reconnect()
    got = [reconnect.wait(**outcome) for outcome in outcomes]
    assert all(low <= wait <= high for wait, (low, high) in zip(got, waits, strict=True)), got
