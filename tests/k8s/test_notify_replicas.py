"""Two replicas (real `python -m bgproxy serve` processes on one ConfigMap): one webhook delivery and one Kubernetes
Event per change, whichever replica made it, and for `kubectl patch` edits too, which no replica made.

The proof that no second delivery is still on its way: each replica sends in order, so once a change made on each
replica last (a marker) has arrived, everything either replica had queued before it has arrived too.

The figures and the `kubectl get events` output of the closing note are printed (lines starting with "measured:").
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.configmap import CM, NS, stored, until
from tests.support.kubeapi import KubeAPIServer
from tests.support.receiver import Receiver
from tests.support.replicas import Kubectl, Replica, both_watching, measured, patch_active

pytestmark = pytest.mark.slow

SECRET = "whsec-replicas"


@pytest.fixture
async def pair(
    api: KubeAPIServer, replica_env: dict[str, str], receiver: Receiver, tmp_path: Path, http: aiohttp.ClientSession
) -> AsyncIterator[tuple[Replica, Replica]]:
    env = {**replica_env, "BGPROXY_WEBHOOK_URLS": receiver.url, "BGPROXY_WEBHOOK_SECRET": SECRET}
    a, b = Replica("a", tmp_path, env), Replica("b", tmp_path, env)
    try:
        await asyncio.gather(a.start(), b.start())
        await asyncio.gather(a.ready(http), b.ready(http))
        await until(lambda: both_watching(http, a, b), "both replicas watch the ConfigMap")
        yield a, b
    finally:
        await asyncio.gather(a.stop(), b.stop())


class Steps:
    """Changes made one at a time: each is applied by both replicas (and written back to the ConfigMap) before the
    next, so every change is one revision that exactly one replica owns."""

    def __init__(self, api: KubeAPIServer, http: aiohttp.ClientSession, a: Replica, b: Replica) -> None:
        self.api, self.http, self.replicas = api, http, (a, b)
        self.revision = 0

    async def settled(self, revision: int) -> None:
        async def both() -> bool:
            states = [await r.state(self.http) for r in self.replicas]
            return all(s["revision"] == revision for s in states) and stored(self.api)["state"]["revision"] == revision

        await until(both, f"both replicas and the ConfigMap at revision {revision}")
        self.revision = revision

    async def admin(self, replica: Replica, path: str, changes: int = 1, **body: Any) -> None:
        status, answer = await replica.admin(self.http, "POST", path, **body)
        assert status == 200, answer
        await self.settled(self.revision + changes)

    async def kubectl(self, kubectl: Kubectl, *args: str) -> None:
        await kubectl(*args)
        await self.settled(self.revision + 1)

    async def history(self) -> list[dict[str, Any]]:
        _, body = await self.replicas[0].admin(self.http, "GET", "/history")
        entries: list[dict[str, Any]] = list(reversed(body["history"] if isinstance(body, dict) else body))
        return entries


async def ok_counts(http: aiohttp.ClientSession, name: str, *replicas: Replica) -> list[float]:
    return [await r.metric(http, name, result="ok") for r in replicas]


async def all_counted(http: aiohttp.ClientSession, name: str, want: int, *replicas: Replica) -> bool:
    return sum(await ok_counts(http, name, *replicas)) >= want


async def test_two_replicas_deliver_one_webhook_per_change_for_admin_flips_steps_and_kubectl_edits(
    api: KubeAPIServer,
    pair: tuple[Replica, Replica],
    receiver: Receiver,
    http: aiohttp.ClientSession,
    kubectl: Kubectl,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = pair
    steps = Steps(api, http, a, b)
    await steps.admin(a, "/switch", to="green", reason="release 42")
    await steps.admin(b, "/shift", weight=20, reason="canary 43")
    await steps.kubectl(kubectl, "patch", "configmap", CM, "--type", "merge", "-p", '{"data":{"weight":"0"}}')
    await steps.kubectl(kubectl, *patch_active("blue"))
    await steps.kubectl(kubectl, *patch_active("green", reason="from git"))
    # A stepped promotion started on a: its step, then the promote that whichever replica's timer wrote.
    await steps.admin(a, "/promote", changes=2, steps=[50], interval=1, reason="release 44")
    await steps.admin(a, "/switch", to="green", reason="marker a")
    await steps.admin(b, "/switch", to="blue", reason="marker b")
    history = await steps.history()
    assert [e["event"] for e in history] == [
        "switch", "shift", "aborted", "switch", "switch", "step", "promoted", "switch", "switch"
    ]  # fmt: skip
    assert [e["source"] for e in history][2:5] == ["configmap"] * 3

    got = await receiver.received(len(history))
    name = "bgproxy_webhook_deliveries_total"
    await until(lambda: all_counted(http, name, len(history), a, b), "every delivery counted")
    ids = [d.json["id"] for d in got]
    assert len(got) == len(history) and len(set(ids)) == len(ids), collections.Counter(ids)
    assert sorted(ids) == sorted(f"{e['revision']}-{e['when']:.6f}" for e in history)
    assert all(d.signed_with(SECRET) for d in got)
    per_replica = await ok_counts(http, name, a, b)
    assert sum(per_replica) == len(history)
    edits = [d.json for d in got if d.json["source"] == "configmap"]
    assert [(e["event"], e["active"], e["weight"]) for e in edits] == [
        ("aborted", "green", 0), ("switch", "blue", 0), ("switch", "green", 0)
    ]  # fmt: skip
    assert edits[2]["reason"] == "from git"
    measured(
        capsys,
        f"webhooks, two replicas: {len(history)} changes (3 of them kubectl patch edits, 1 a step's promote) -> "
        f"{len(got)} deliveries, {len(set(ids))} distinct ids; delivered by replica a {per_replica[0]:.0f}, "
        f"b {per_replica[1]:.0f}",
    )


async def test_two_replicas_write_one_kubernetes_event_per_change_and_count_repeats(
    api: KubeAPIServer,
    pair: tuple[Replica, Replica],
    http: aiohttp.ClientSession,
    kubectl: Kubectl,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = pair
    steps = Steps(api, http, a, b)
    await steps.admin(a, "/switch", to="green", reason="release 42")
    await steps.kubectl(kubectl, *patch_active("blue"))
    await steps.admin(b, "/switch", to="green", reason="release 42")  # the first Event again, counted by b
    await steps.kubectl(kubectl, *patch_active("blue"))  # the second again
    await steps.admin(a, "/shift", weight=20, reason="canary 43")
    await steps.admin(b, "/abort", reason="p99 doubled")
    await steps.admin(b, "/switch", to="green", reason="marker b")
    await steps.admin(a, "/switch", to="blue", reason="marker a")
    want = {
        ("Switched", "green is active (was blue): release 42"): 2,
        ("Switched", "blue is active (was green): ConfigMap edited"): 2,
        ("Shifted", "20% to green: canary 43"): 1,
        ("Aborted", "all traffic on blue: p99 doubled"): 1,
        ("Switched", "green is active (was blue): marker b"): 1,
        ("Switched", "blue is active (was green): marker a"): 1,
    }

    def counts() -> dict[tuple[str, str], int]:
        return {(e["reason"], e["message"]): e["count"] for e in api.events(NS)}

    await until(lambda: counts() == want, f"the Events {want}")
    name = "bgproxy_kubernetes_events_total"
    await until(lambda: all_counted(http, name, steps.revision, a, b), "every Event counted")
    per_replica = await ok_counts(http, name, a, b)
    assert sum(per_replica) == steps.revision == sum(want.values())
    assert counts() == want  # and nothing came after the markers

    # What a person sees.
    wide = await kubectl("get", "events", "-o", "wide", "--field-selector", f"involvedObject.name={CM}")
    rows = wide.stdout.splitlines()
    assert rows[0].split()[-2:] == ["COUNT", "NAME"] and len(rows) == 1 + len(want)
    switched = next(row for row in rows if "blue is active (was green): ConfigMap edited" in row)
    assert switched.split()[1:4] == ["Normal", "Switched", f"configmap/{CM}"] and switched.split()[-2] == "2"
    listed = await kubectl("events", "--for", f"configmap/{CM}")
    assert any("(x2 over" in line and "ConfigMap edited" in line for line in listed.stdout.splitlines())
    plain = await kubectl("get", "events")
    measured(
        capsys,
        f"Kubernetes Events, two replicas, {steps.revision} changes -> {len(want)} Events (written by replica a "
        f"{per_replica[0]:.0f}, b {per_replica[1]:.0f}):\n$ kubectl get events\n{plain.stdout}"
        f"$ kubectl get events -o wide --field-selector involvedObject.name={CM}\n{wide.stdout}"
        f"$ kubectl events --for configmap/{CM}\n{listed.stdout}",
    )
