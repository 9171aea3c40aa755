"""Auto-promotion and holds across two replicas: real `python -m bgproxy serve` processes sharing one ConfigMap on the
fake Kubernetes API server, driven by real kubectl as a GitOps tool drives it.

- A `kubectl patch` of `release` (what one commit does) is promoted once AUTO_PROMOTE_AFTER has passed: exactly one
  promotion in the API server's commits and in each replica's history.
- A hold, written into the ConfigMap as the automatic rollback writes it (its own pure function,
  `core.analysis.roll_back`, and the codec's patch: the live figures that trigger it come with the analysis task),
  survives a `kubectl apply` of the unchanged manifest (what Argo CD's self-heal does) and is cleared by a changed
  `release`.

Figures are printed on lines starting with "measured:".
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bgproxy.core.analysis import Breach, roll_back
from bgproxy.core.model import Color, State
from bgproxy.stores.configmap.codec import configmap_patch
from tests.k8s.test_release_replicas import Commits, colour_of, commits, history, logged_at, patch_data
from tests.support.configmap import CM, NS, stored, until
from tests.support.kubeapi import KubeAPIServer
from tests.support.replicas import Kubectl, Replica, all_serve, measured
from tests.support.replicas import replica_env as make_replica_env
from tests.support.servers import Upstream

__all__ = ["commits"]  # the fixture, shared with the other replica tests
pytestmark = pytest.mark.slow

AFTER = 2.0  # AUTO_PROMOTE_AFTER, seconds
AUTO = {"AUTO_PROMOTE_AFTER": f"{AFTER:g}", "PROMOTE_CHECKS": json.dumps([{"path": "/ctl/ready", "status": 200}])}


@pytest.fixture
def replica_env(
    kubeconfig: Path, upstreams: dict[str, Upstream], tmp_path: Path, request: pytest.FixtureRequest
) -> dict[str, str]:
    """The replicas' environment, with the settings a test asks for (`indirect` parametrization)."""
    extra: dict[str, str] = getattr(request, "param", {})
    return make_replica_env(kubeconfig, tmp_path, {c: up.url for c, up in upstreams.items()}, **extra)


def events(replica: Replica, kind: str) -> list[dict[str, Any]]:
    return [r for r in replica.records() if r["event"] == kind]


@pytest.mark.parametrize("replica_env", [AUTO], indirect=True, ids=["auto-promote"])
async def test_a_kubectl_patch_of_release_is_promoted_once_across_replicas(
    replicas: tuple[Replica, Replica],
    http: aiohttp.ClientSession,
    kubectl: Kubectl,
    commits: Commits,
    upstreams: dict[str, Upstream],
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = replicas
    base = (await a.state(http))["revision"]
    await kubectl(*patch_data(release="v43", reason="deploy v43 to green"))
    await until(lambda: all_serve(http, "green", a, b), "both replicas promoted green", within=AFTER + 10)

    patched = next(c for c in commits.all if c.data.get("release") == "v43")
    promotions = [c for c in commits.states(after=base) if c.state is not None and c.state["source"] == "auto"]
    assert len(promotions) == 1, [c.state for c in commits.states(after=base)]
    (promotion,) = promotions
    assert promotion.state is not None and (promotion.state["active"], promotion.state["release"]) == ("green", "v43")
    assert promotion.data["active"] == "green"  # an auto-promotion is bgproxy's flip: the key follows it
    assert promotion.at - patched.at >= AFTER  # not before...
    commits.assert_no_revision_written_twice()
    for r in (a, b):
        entries = [(e["event"], e["source"], e["revision"]) for e in await history(http, r, base)]
        assert entries == [("release", "configmap", base + 1), ("auto-promote", "auto", promotion.revision)]
        state = await r.state(http)
        assert (state["active"], state["release"], state["release_pending"]) == ("green", "v43", False)
    assert len(events(a, "auto_promoted") + events(b, "auto_promoted")) == 1  # one replica wrote it
    assert len(upstreams["green"].hits["ready"]) >= 2 * (AFTER - 1)  # both replicas checked green as they waited
    applied = [logged_at(events(r, "auto-promote")[0]) - promotion.at for r in (a, b)]
    measured(
        capsys,
        f"two replicas, AUTO_PROMOTE_AFTER={AFTER:g}: kubectl patch of release to the promotion's commit "
        f"{promotion.at - patched.at:.3f}s; applied by a {applied[0] * 1000:.0f} ms and b {applied[1] * 1000:.0f} ms "
        f"after it; 1 promotion in the commits and in each history",
    )


def manifest(path: Path, *, release: str, labels: dict[str, str] | None = None) -> Path:
    """The ConfigMap as Git holds it under "Git drives the weights": a canary of `release` at 20%."""
    meta: dict[str, Any] = {"name": CM, "namespace": NS}
    if labels:
        meta["labels"] = labels
    doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}
    doc["data"] = {"active": "blue", "weight": "20", "release": release}
    path.write_text(json.dumps(doc))
    return path


async def at_resource_version(http: aiohttp.ClientSession, api: KubeAPIServer, *replicas: Replica) -> bool:
    rv = api.get_configmap(CM)["metadata"]["resourceVersion"]
    return all([(await r.state(http))["store"]["resource_version"] == rv for r in replicas])


async def test_a_hold_survives_a_kubectl_apply_of_the_unchanged_manifest_and_a_changed_release_clears_it(
    api: KubeAPIServer,
    replicas: tuple[Replica, Replica],
    http: aiohttp.ClientSession,
    kubectl: Kubectl,
    commits: Commits,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = replicas
    git = manifest(tmp_path / "bgproxy-state.json", release="v43")
    await kubectl("apply", "-f", str(git))
    await until(lambda: _both(http, a, b, weight=20, release="v43"), "both replicas run the canary of v43")

    # The automatic rollback's write: traffic off green, the keys' request held, only `state` and `hold` changed.
    canary = State.from_dict(stored(api)["state"])
    breach = Breach(Color.GREEN, "error_rate", "green: 5xx share 30.0% (30 of 100) over the last 30s is above 5.0%")
    held = roll_back(canary, breach, now=time.time())
    assert held.hold is not None
    await kubectl(*patch_data(**{k: v for k, v in configmap_patch(held).items() if v is not None}))
    hold_commit = await commits.wait(held.revision)
    await until(lambda: _both(http, a, b, weight=0, hold=True), "both replicas hold")
    applied = [logged_at(events(r, "auto-rollback")[0]) - hold_commit.at for r in (a, b)]
    data = stored(api)
    assert (data["active"], data["weight"], data["release"]) == ("blue", "20", "v43")  # Git's keys, untouched
    assert json.loads(data["hold"]) == held.hold.to_dict()

    # A re-sync of the unchanged manifest: nothing to change. Then one that relabels the ConfigMap (Argo CD's
    # tracking label): the API server reports a change, each replica reads it, and still holds.
    await kubectl("apply", "-f", str(git))
    await kubectl("apply", "-f", str(manifest(git, release="v43", labels={"argocd.argoproj.io/instance": "shop"})))
    await until(lambda: at_resource_version(http, api, a, b), "both replicas read the re-applied ConfigMap")
    for r in (a, b):
        state = await r.state(http)
        assert (state["revision"], state["weight"], state["source"]) == (held.revision, 0, "analysis")
        assert state["hold"] == held.hold.to_dict()
        assert await colour_of(http, r, 0) == "blue"  # bucket 0 would be green at the weight Git asks for
    assert [c.revision for c in commits.states(after=held.revision)] == []

    # A fix, committed: a new release clears the hold; it waits on the standby colour with no traffic.
    started = time.time()
    await kubectl("apply", "-f", str(manifest(git, release="v44", labels={"argocd.argoproj.io/instance": "shop"})))
    await until(lambda: _both(http, a, b, weight=0, hold=False, release="v44"), "both replicas cleared the hold")
    cleared = time.time() - started
    for r in (a, b):
        state = await r.state(http)
        assert (state["revision"], state["source"], state["release_pending"]) == (held.revision + 1, "configmap", True)
        (entry,) = await history(http, r, held.revision)
        assert entry["event"] == "release"
    await until(lambda: "hold" not in stored(api) and stored(api)["weight"] == "0", "the hold key removed")
    # Git still asks for 20%: the next sync applies it, to v44 now.
    await kubectl("apply", "-f", str(git))
    await until(lambda: _both(http, a, b, weight=20, hold=False, release="v44"), "Git's weight applied again")
    measured(
        capsys,
        f"hold on two replicas: applied by a {applied[0] * 1000:.0f} ms and b {applied[1] * 1000:.0f} ms after its "
        "commit; kept through "
        f"2 re-applies of the unchanged manifest (revision {held.revision} throughout); a changed release cleared it "
        f"on both {cleared * 1000:.0f} ms after kubectl apply started",
    )


async def _both(
    http: aiohttp.ClientSession,
    *replicas: Replica,
    weight: int,
    hold: bool | None = None,
    release: str | None = None,
) -> bool:
    for r in replicas:
        state = await r.state(http)
        if state["weight"] != weight or (hold is not None and (state["hold"] is not None) != hold):
            return False
        if release is not None and state["release"] != release:
            return False
    return True
