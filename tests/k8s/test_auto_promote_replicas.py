"""Auto-promotion across two replicas: real `python -m bgproxy serve` processes sharing one ConfigMap on the fake
Kubernetes API server, driven by real kubectl as a GitOps tool drives it.

A `kubectl patch` of `release` (what one commit does) is promoted once AUTO_PROMOTE_AFTER has passed: exactly one
promotion in the API server's commits and in each replica's history. (The automatic rollback of a failing release
and its hold through re-syncs, across two replicas: test_auto_rollback_replicas.py.)

Figures are printed on lines starting with "measured:".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.k8s.test_release_replicas import Commits, commits, history, logged_at, patch_data
from tests.support.configmap import until
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
