"""The automatic rollback across two replicas: real `python -m bgproxy serve` processes sharing one ConfigMap on the
fake Kubernetes API server, real kubectl changing it as Argo CD does, a steady load of clients through BOTH replicas,
and a green upstream that starts failing.

- A canary (Git's manifest shifts 50% to green) of a green that fails 30% of its requests: each replica sees the
  failures in its own live figures, the first to judge them writes the rollback (one commit, one history entry, one
  counter increment and one webhook across both), and both serve blue; a re-apply of the unchanged manifest (Argo CD's
  self-heal) keeps blue, the hold; a manifest with a new `release` clears it, and the next sync applies Git's weight
  to the new release.
- Auto-promotion, then the promoted release fails inside the watch: back on blue and held, and the refused release is
  not promoted again; a fixed release clears the hold and is promoted.

Figures are printed on lines starting with "measured:".
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bgproxy.release.analysis import INTERVAL as LOOK
from bgproxy.release.auto_promote import POLL
from tests.app.test_auto_rollback import BASE_DELAY, MIN_REQUESTS, WINDOW
from tests.k8s.test_release_replicas import Commit, Commits, colour_of, commits, history, logged_at, patch_data
from tests.support.configmap import CM, NS, stored, until
from tests.support.kubeapi import KubeAPIServer
from tests.support.receiver import Receiver
from tests.support.replicas import Kubectl, Replica, all_serve, measured
from tests.support.replicas import replica_env as make_replica_env
from tests.support.traffic import Faults, Load, faulty_app, serving

__all__ = ["commits"]  # the fixture, shared with the other replica tests
pytestmark = pytest.mark.slow

CLIENTS = 6  # load clients per replica: enough for MIN_REQUESTS to green within a second or two at weight 50
CANARY = 50  # the weight Git's manifest asks for
LABELS = {"argocd.argoproj.io/instance": "shop"}  # what Argo CD's tracking adds to a manifest
AFTER = 2.0  # AUTO_PROMOTE_AFTER, seconds
AUTO = {"AUTO_PROMOTE_AFTER": f"{AFTER:g}", "ANALYSIS_WATCH": "60"}


@dataclass
class Colour:
    faults: Faults
    url: str


@pytest.fixture
async def colours() -> AsyncIterator[dict[str, Colour]]:
    """Blue and green upstreams whose faults the test turns on and off (tests/support/traffic.py)."""
    blue, green = Faults(delay=BASE_DELAY), Faults(delay=BASE_DELAY)
    async with serving(faulty_app("blue", blue)) as b, serving(faulty_app("green", green)) as g:
        yield {"blue": Colour(blue, b), "green": Colour(green, g)}


@pytest.fixture
def replica_env(
    kubeconfig: Path,
    colours: dict[str, Colour],
    receiver: Receiver,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> dict[str, str]:
    """The replicas' environment: the faulty upstreams, the analysis of tests/app/test_auto_rollback.py (a 5 s
    window, 50 requests, 5% 5xx), a webhook receiver, and the settings a test asks for (`indirect`)."""
    extra: dict[str, str] = getattr(request, "param", {})
    return make_replica_env(
        kubeconfig,
        tmp_path,
        {c: colour.url for c, colour in colours.items()},
        ANALYSIS_WINDOW=f"{WINDOW:g}",
        ANALYSIS_MIN_REQUESTS=str(MIN_REQUESTS),
        WEBHOOK_URLS=receiver.url,
        **extra,
    )


def manifest(path: Path, *, release: str, labels: dict[str, str] | None = None) -> Path:
    """The ConfigMap as Git holds it under "Git drives the weights": a canary of `release` at CANARY%."""
    meta: dict[str, Any] = {"name": CM, "namespace": NS}
    if labels:
        meta["labels"] = labels
    doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}
    doc["data"] = {"active": "blue", "weight": str(CANARY), "release": release}
    path.write_text(json.dumps(doc))
    return path


async def full_state(http: aiohttp.ClientSession, replica: Replica) -> dict[str, Any]:
    """/state with the live figures and the auto-promotion wait (`Replica.state` leaves them out)."""
    status, body = await replica.admin(http, "GET", "/state")
    assert status == 200
    state: dict[str, Any] = body
    return state


async def at_resource_version(http: aiohttp.ClientSession, api: KubeAPIServer, *replicas: Replica) -> bool:
    rv = api.get_configmap(CM)["metadata"]["resourceVersion"]
    return all([(await r.state(http))["store"]["resource_version"] == rv for r in replicas])


async def both(
    http: aiohttp.ClientSession,
    *replicas: Replica,
    weight: int | None = None,
    hold: bool | None = None,
    release: str | None = None,
    active: str | None = None,
) -> bool:
    for r in replicas:
        state = await r.state(http)
        if weight is not None and state["weight"] != weight:
            return False
        if hold is not None and (state["hold"] is not None) != hold:
            return False
        if release is not None and state["release"] != release:
            return False
        if active is not None and state["active"] != active:
            return False
    return True


async def committed(commits: Commits, source: str, after: int) -> Commit:
    """The one revision above `after` that `source` wrote (waiting for it); fails if there are several."""

    def written() -> list[Commit]:
        return [c for c in commits.states(after) if c.state is not None and c.state["source"] == source]

    await until(written, f"a {source} write")
    found = written()
    assert len(found) == 1, [c.state for c in commits.states(after)]
    return found[0]


def applied(replica: Replica, revision: int) -> float:
    """When the replica applied `revision` (its holder logs every change it applies, the kind as the event)."""
    for record in replica.records():
        if record.get("revision") == revision and record["event"] in ("auto-rollback", "release", "auto-promote"):
            return logged_at(record)
    pytest.fail(f"replica {replica.name} did not log revision {revision}")


def stays(http: aiohttp.ClientSession, *replicas: Replica, revision: int) -> Callable[[], Awaitable[bool]]:
    """A check for `until`: every replica stays at `revision` (asserted at each look) until each has judged green on
    a full sample (MIN_REQUESTS in its window) and then looked at its figures twice more."""
    full: float | None = None

    async def check() -> bool:
        nonlocal full
        sampled = True
        for r in replicas:
            state = await full_state(http, r)
            assert (state["revision"], state["hold"]) == (revision, None), (r.name, state["reason"])
            sampled = sampled and state["backends"]["green"]["requests"] >= MIN_REQUESTS
        if full is None and sampled:
            full = time.time()
        return full is not None and time.time() > full + 2 * LOOK

    return check


async def one_rollback_each(http: aiohttp.ClientSession, rollback: Commit, *replicas: Replica) -> str:
    """Exactly one automatic rollback, written by one replica: in each history, the counters, the log lines. Returns
    the writer's name."""
    for r in replicas:
        entries = [e for e in await history(http, r, 0) if e["event"] == "auto-rollback"]
        assert [(e["revision"], e["source"]) for e in entries] == [(rollback.revision, "analysis")], r.name
    counted = [
        await r.metric(http, "bgproxy_auto_rollbacks_total", color="green", reason="error_rate") for r in replicas
    ]
    assert sorted(counted) == [0.0, 1.0], counted
    writers = [r.name for r in replicas for record in r.records() if record["event"] == "auto_rollback"]
    assert len(writers) == 1, writers
    return writers[0]


async def one_delivery_per_change(http: aiohttp.ClientSession, receiver: Receiver, *replicas: Replica) -> list[str]:
    """Every change in the history reached the receiver once, whichever replica delivered it; their events."""
    changes = await history(http, replicas[0], 0)

    async def all_delivered() -> bool:
        delivered = [await r.metric(http, "bgproxy_webhook_deliveries_total", result="ok") for r in replicas]
        return sum(delivered) >= len(changes)

    await until(all_delivered, f"{len(changes)} webhook deliveries counted")
    got = [d.json for d in receiver.deliveries]
    assert sorted(d["id"] for d in got) == sorted(f"{e['revision']}-{e['when']:.6f}" for e in changes)
    return [d["event"] for d in sorted(got, key=lambda d: d["revision"])]


async def test_two_replicas_roll_a_failing_canary_back_once_and_hold_it_until_git_changes_the_release(
    api: KubeAPIServer,
    replicas: tuple[Replica, Replica],
    http: aiohttp.ClientSession,
    kubectl: Kubectl,
    commits: Commits,
    colours: dict[str, Colour],
    receiver: Receiver,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = replicas
    green = colours["green"].faults
    green.fail_per_10 = 3  # v43 is broken: 30% of its requests answer 500
    git = manifest(tmp_path / "bgproxy-state.json", release="v43")
    base = (await a.state(http))["revision"]
    async with Load(a, clients=CLIENTS) as load_a, Load(b, clients=CLIENTS) as load_b:
        loads = {"a": load_a, "b": load_b}
        await until(lambda: all(len(load.answers) >= 20 for load in loads.values()), "the load running on both")

        # The canary: Git's manifest, applied as Argo CD applies it.
        await kubectl("apply", "-f", str(git))
        rollback = await committed(commits, "analysis", base)
        await until(lambda: both(http, a, b, weight=0, hold=True), "both replicas hold")
        first = green.first_failure
        assert first is not None
        rolled = {r.name: applied(r, rollback.revision) for r in (a, b)}
        # Each replica saw the failures itself: in what its clients got, and in its own live figures.
        for r in (a, b):
            figures = (await full_state(http, r))["backends"]["green"]
            assert figures["requests"] > 0 and figures["error_rate"] > 0.05, (r.name, figures)
            assert any(x.color == "green" and x.status == 500 for x in loads[r.name].answers), r.name
        writer = await one_rollback_each(http, rollback, a, b)
        assert rollback.state is not None
        hold = rollback.state["hold"]
        assert (hold["active"], hold["weight"], hold["release"]) == ("blue", CANARY, "v43")
        assert hold["reason"] == rollback.state["reason"] and "5xx share" in hold["reason"]
        data = stored(api)
        assert (data["active"], data["weight"], data["release"]) == ("blue", str(CANARY), "v43")  # Git's keys
        assert json.loads(data["hold"]) == hold

        # Argo CD's self-heal: the unchanged manifest again (no change), then relabelled (a change every replica
        # reads): the hold stays, traffic stays on blue.
        await kubectl("apply", "-f", str(git))
        await kubectl("apply", "-f", str(manifest(git, release="v43", labels=LABELS)))
        await until(lambda: at_resource_version(http, api, a, b), "both replicas read the re-applied ConfigMap")
        for r in (a, b):
            state = await r.state(http)
            assert (state["revision"], state["weight"], state["source"]) == (rollback.revision, 0, "analysis")
            assert state["hold"] == hold
            assert await colour_of(http, r, 0) == "blue"  # bucket 0 would be green at the weight Git asks for
        assert commits.states(after=rollback.revision) == []
        resynced = time.time()
        await until(lambda: all(load.since(resynced) for load in loads.values()), "requests after the re-sync")
        assert {x.color for load in loads.values() for x in load.since(resynced)} == {"blue"}

        # The fix, committed: a new release clears the hold, and waits on green with no traffic.
        green.fail_per_10 = 0
        started = time.time()
        await kubectl("apply", "-f", str(manifest(git, release="v44", labels=LABELS)))
        await until(lambda: both(http, a, b, weight=0, hold=False, release="v44"), "both replicas cleared the hold")
        cleared = {r.name: applied(r, rollback.revision + 1) - started for r in (a, b)}
        held_until = time.time()
        for r in (a, b):
            state = await r.state(http)
            assert (state["source"], state["release_pending"]) == ("configmap", True)
            # Every request from the rollback to the new release went to blue, through either replica (those that
            # started once the replica had applied the rollback; its log stamp is cut to the millisecond).
            assert {x.color for x in loads[r.name].since(rolled[r.name] + 0.002) if x.ended < started} == {"blue"}
        await until(lambda: "hold" not in stored(api) and stored(api)["weight"] == "0", "the keys rewritten")

        # The next sync applies Git's weight, to v44 now; judged on fresh figures, it stays.
        await kubectl("apply", "-f", str(git))
        await until(lambda: both(http, a, b, weight=CANARY, hold=False, release="v44"), "Git's weight on v44")
        shifted = time.time()

        await until(stays(http, a, b, revision=(await a.state(http))["revision"]), "v44 judged healthy on both")
    for r in (a, b):
        assert loads[r.name].errors == []
        assert any(x.color == "green" for x in loads[r.name].since(shifted)), r.name
        assert all(x.status == 200 for x in loads[r.name].since(held_until))
    commits.assert_no_revision_written_twice()
    events = await one_delivery_per_change(http, receiver, a, b)
    assert events == ["shift", "auto-rollback", "release", "shift"], events
    took = {name: at - first for name, at in rolled.items()}
    assert max(took.values()) <= WINDOW + 2, took
    lag = {name: max(0.0, at - rollback.at) * 1000 for name, at in rolled.items()}  # log stamps are cut to the ms
    measured(
        capsys,
        f"two replicas, a canary at {CANARY}% of a green failing 30% under load through both "
        f"(ANALYSIS_WINDOW {WINDOW:g}s, MIN_REQUESTS {MIN_REQUESTS}): from the first failure to the rollback's "
        f"commit {rollback.at - first:.2f}s (written by {writer}), applied by a {lag['a']:.0f} ms and b "
        f"{lag['b']:.0f} ms after the commit; 1 rollback in the commits, each history, the counters and the "
        f"webhooks; the hold kept through 2 re-applies of the manifest (revision {rollback.revision} "
        f"throughout); kubectl apply of a new release cleared it on a {cleared['a'] * 1000:.0f} ms and b "
        f"{cleared['b'] * 1000:.0f} ms after kubectl started",
    )


@pytest.mark.parametrize("replica_env", [AUTO], indirect=True, ids=["auto-promote"])
async def test_an_auto_promoted_release_failing_inside_the_watch_is_rolled_back_held_and_not_promoted_again(
    api: KubeAPIServer,
    replicas: tuple[Replica, Replica],
    http: aiohttp.ClientSession,
    kubectl: Kubectl,
    commits: Commits,
    colours: dict[str, Colour],
    receiver: Receiver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = replicas
    green = colours["green"].faults
    base = (await a.state(http))["revision"]
    async with Load(a, clients=CLIENTS) as load_a, Load(b, clients=CLIENTS) as load_b:
        loads = {"a": load_a, "b": load_b}
        await until(lambda: all(len(load.answers) >= 20 for load in loads.values()), "the load running on both")
        await kubectl(*patch_data(release="v43", reason="deploy v43 to green"))
        released = next(c for c in commits.all if c.data.get("release") == "v43")
        promotion = await committed(commits, "auto", base)
        await until(lambda: all_serve(http, "green", a, b), "both replicas promoted green")
        served = green.requests
        await until(lambda: green.requests >= served + 2 * MIN_REQUESTS, "green serving the load through both")

        # v43 starts failing inside the watch.
        green.fail_per_10 = 3
        rollback = await committed(commits, "analysis", promotion.revision)
        await until(lambda: both(http, a, b, active="blue", hold=True), "both replicas back on blue, held")
        first = green.first_failure
        assert first is not None
        rolled = {r.name: applied(r, rollback.revision) for r in (a, b)}
        writer = await one_rollback_each(http, rollback, a, b)
        for r in (a, b):
            state = await full_state(http, r)
            assert (state["active"], state["previous"], state["weight"]) == ("blue", "green", 0)
            assert (state["source"], state["release"], state["release_pending"]) == ("analysis", "v43", False)
            assert state["hold"] == {
                "active": "green", "weight": 0, "release": "v43", "reason": state["reason"],
                "since": state["hold"]["since"],
            }  # fmt: skip
            assert state["reason"].startswith("green: 5xx share") and "ANALYSIS_MAX_ERROR_RATE" in state["reason"]
            assert state["auto_promote"] is None  # v43 waits for nothing: it was refused
        data = stored(api)
        assert (data["active"], data["release"]) == ("green", "v43")  # the promotion's key, held

        # Not promoted again: well past the moment a new wait for v43 would have ended.
        async def still_held() -> bool:
            for r in (a, b):
                state = await full_state(http, r)
                assert (state["revision"], state["active"], state["auto_promote"]) == (rollback.revision, "blue", None)
            return time.time() > rollback.at + AFTER + 2 * POLL + 1

        await until(still_held, "the hold outlasting AUTO_PROMOTE_AFTER")
        assert {x.color for load in loads.values() for x in load.since(max(rolled.values()) + 0.5)} == {"blue"}

        # The fix, on the standby colour (green again) and `release: v44`: the hold clears and v44 is promoted.
        green.fail_per_10 = 0
        await kubectl(*patch_data(release="v44", reason="deploy v44 to green"))
        bumped = next(c for c in commits.all if c.data.get("release") == "v44")
        fixed = await committed(commits, "auto", rollback.revision)
        await until(lambda: both(http, a, b, active="green", hold=False, release="v44"), "v44 promoted on both")
        await until(stays(http, a, b, revision=fixed.revision), "v44 judged healthy on both")
    for r in (a, b):
        assert loads[r.name].errors == []
        entries = [(e["event"], e["source"]) for e in await history(http, r, base)]
        assert entries == [
            ("release", "configmap"), ("auto-promote", "auto"), ("auto-rollback", "analysis"),
            ("release", "configmap"), ("auto-promote", "auto"),
        ], r.name  # fmt: skip
    commits.assert_no_revision_written_twice()
    events = await one_delivery_per_change(http, receiver, a, b)
    assert events == ["release", "auto-promote", "auto-rollback", "release", "auto-promote"], events
    took = {name: at - first for name, at in rolled.items()}
    assert max(took.values()) <= WINDOW + 2, took
    lag = {name: max(0.0, at - rollback.at) * 1000 for name, at in rolled.items()}  # log stamps are cut to the ms
    measured(
        capsys,
        f"two replicas, AUTO_PROMOTE_AFTER {AFTER:g}s: v43 auto-promoted {promotion.at - released.at:.2f}s "
        f"after kubectl patched its release; it failed 30% inside the watch: from the first failure to the rollback's "
        f"commit {rollback.at - first:.2f}s (written by {writer}), applied by a {lag['a']:.0f} ms and b "
        f"{lag['b']:.0f} ms after the commit; held and "
        f"not promoted again for {AFTER + 2 * POLL + 1:g}s; v44 cleared the hold and was promoted "
        f"{fixed.at - bumped.at:.2f}s after kubectl patched its release",
    )
