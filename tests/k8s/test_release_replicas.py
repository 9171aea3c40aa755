"""Gradual releases across two replicas: real `python -m bgproxy serve` processes sharing one ConfigMap on the fake
Kubernetes API server, driven by real kubectl and the admin API.

What a cluster relies on: a `kubectl patch` of `weight` splits traffic on every replica, and a sticky client keeps its
colour whichever replica answers; a stepped promotion started on one replica advances on all, each step written once
(the store's precondition makes every other attempt a no-op) and applied by every replica within a second; losing
the replica that took the last step neither stalls nor repeats the rollout, and a restarted replica carries on with
it; an API server outage holds the current step (no replica takes a step it cannot write) and the rollout goes on
once it is back; a `kubectl patch` of `weight` ends a stepped promotion on every replica.

The API server's commits are recorded as they happen (`Commits`), so every check of "once", "in order" and "how long
after" is against what was really written. Figures are printed on lines starting with "measured:".
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import statistics
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from bgproxy.release.steps import RETRY
from bgproxy.stores.configmap.client import BACKOFF_CAP
from tests.support.configmap import CM, WAIT, stored, until
from tests.support.kubeapi import Event, KubeAPIServer
from tests.support.replicas import Kubectl, Replica, measured

pytestmark = pytest.mark.slow

INTERVAL = 1  # seconds each step holds: the shortest a plan may ask for
STICKY = "bg-sticky"
CHANGES = {"step", "promoted", "shift", "aborted", "switch", "paused", "resumed"}  # what the holder logs per revision


# --- what the API server committed, and what each replica did with it ------------------------------------------


@dataclass(frozen=True)
class Commit:
    at: float  # wall clock when the API server committed it
    rv: int
    data: dict[str, str]
    state: dict[str, Any] | None  # the `state` blob, parsed

    @property
    def revision(self) -> int:
        return -1 if self.state is None else int(self.state["revision"])


class Commits:
    """Every write the API server commits to the ConfigMap, timed by the API server itself (it runs in this process,
    so its clock is the replicas' clock)."""

    def __init__(self, api: KubeAPIServer) -> None:
        self.api = api
        self._lock = threading.Lock()
        self._list: list[Commit] = []
        api.store.subscribe(self._on_commit, str(api.store.rv))

    def _on_commit(self, event: Event) -> None:
        data = dict(event.obj.get("data") or {})
        try:
            blob = json.loads(data["state"]) if "state" in data else None
        except ValueError:
            blob = None
        with self._lock:
            self._list.append(Commit(time.time(), event.rv, data, blob))

    def close(self) -> None:
        self.api.store.unsubscribe(self._on_commit)

    @property
    def all(self) -> list[Commit]:
        with self._lock:
            return list(self._list)

    def states(self, after: int) -> list[Commit]:
        """The first commit of each revision above `after`, in commit order (a later commit of the same revision is
        the blob written back after an edit)."""
        seen: dict[int, Commit] = {}
        for commit in self.all:
            if commit.revision > after and commit.revision not in seen:
                seen[commit.revision] = commit
        return list(seen.values())

    def of(self, revision: int) -> Commit | None:
        return next((c for c in self.all if c.revision == revision), None)

    async def wait(self, revision: int, within: float = WAIT) -> Commit:
        await until(lambda: self.of(revision) is not None, f"revision {revision} committed", within)
        commit = self.of(revision)
        assert commit is not None
        return commit

    def assert_no_revision_written_twice(self) -> None:
        """Each revision was written with one content only: no step taken twice, no two replicas' versions of one."""
        by_revision: dict[int, dict[str, Any]] = {}
        for commit in self.all:
            if commit.state is None:
                continue
            first = by_revision.setdefault(commit.revision, commit.state)
            assert commit.state == first, f"revision {commit.revision} written twice: {first} then {commit.state}"
        revisions = [c.revision for c in self.all if c.state is not None]
        distinct = [r for i, r in enumerate(revisions) if i == 0 or r != revisions[i - 1]]
        assert all(b == a + 1 for a, b in itertools.pairwise(distinct)), revisions


@pytest.fixture
def commits(api: KubeAPIServer) -> Iterator[Commits]:
    recorder = Commits(api)
    yield recorder
    recorder.close()


def logged_at(record: dict[str, Any]) -> float:
    """A JSON log line's timestamp (milliseconds, UTC) as wall-clock seconds."""
    return datetime.strptime(record["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def applied_at(replica: Replica, revision: int) -> float | None:
    """When the replica swapped in `revision` (the holder logs every new revision it applies), or None."""
    for record in replica.records():
        if record["event"] in CHANGES and record.get("revision") == revision:
            return logged_at(record)
    return None


def took(replica: Replica) -> set[int]:
    """The revisions this replica's step timer wrote itself."""
    return {r["revision"] for r in replica.records() if r["event"] == "step_taken"}


async def history(http: aiohttp.ClientSession, replica: Replica, after: int) -> list[dict[str, Any]]:
    """The replica's history entries above revision `after`, oldest first."""
    status, body = await replica.admin(http, "GET", "/history")
    assert status == 200
    return [e for e in reversed(body["history"]) if e["revision"] > after]


async def colour_of(http: aiohttp.ClientSession, replica: Replica, bucket: int) -> str:
    """The colour a client holding the sticky cookie for `bucket` gets from this replica."""
    async with http.get(f"http://127.0.0.1:{replica.port}/", headers={"Cookie": f"{STICKY}={bucket}"}) as resp:
        assert resp.status == 200
        return resp.headers["X-Bg-Color"]


async def serves_weight(http: aiohttp.ClientSession, weight: int, *replicas: Replica) -> bool:
    """Sticky clients on either side of the weight get the colour it gives them (standby green below it)."""
    for r in replicas:
        for bucket in {max(weight - 1, 0), min(weight, 99)}:
            want = "green" if bucket < weight else "blue"
            if await colour_of(http, r, bucket) != want:
                return False
    return True


async def serves_its_state(http: aiohttp.ClientSession, replica: Replica) -> bool:
    """The replica's data plane splits at the weight its /state shows; False when a step landed meanwhile (look
    again), a failure when it does not."""
    before = await replica.state(http)
    splits = await serves_weight(http, before["weight"], replica)
    if (await replica.state(http))["revision"] != before["revision"]:
        return False
    assert splits, (replica.name, before)
    return True


async def states(http: aiohttp.ClientSession, *replicas: Replica) -> list[dict[str, Any]]:
    return [await r.state(http) for r in replicas]


async def all_at(http: aiohttp.ClientSession, revision: int, *replicas: Replica) -> bool:
    return all(s["revision"] == revision for s in await states(http, *replicas))


async def all_past(http: aiohttp.ClientSession, revision: int, *replicas: Replica) -> bool:
    """Every replica at `revision` or a later one (a step may fall due while the test waits)."""
    return all(s["revision"] >= revision for s in await states(http, *replicas))


def patch_data(**data: str) -> tuple[str, ...]:
    return ("patch", "configmap", CM, "--type", "merge", "-p", json.dumps({"data": data}))


async def start_rollout(
    http: aiohttp.ClientSession, replica: Replica, steps: list[int], reason: str = "release 43"
) -> dict[str, Any]:
    status, body = await replica.admin(http, "POST", "/promote", steps=steps, interval=INTERVAL, reason=reason)
    assert status == 200, body
    assert (body["weight"], body["rollout"]["step"], body["rollout"]["steps"]) == (steps[0], 0, steps)
    return body


def ms(seconds: list[float]) -> str:
    return f"median {statistics.median(seconds) * 1000:.0f} ms, max {max(seconds) * 1000:.0f} ms"


# --- a kubectl patch of `weight` ---------------------------------------------------------------------------------

SHARE_REQUESTS = 2000  # per replica
# Percentage points: the share of n=2000 fresh draws at p=0.2 has sigma 0.89 points, so 4 points is 4.5 sigma (a
# false failure about once in 100,000 runs), and still far tighter than any misrouting would pass (weight 10 or 30).
SHARE_BOUND = 4.0


@pytest.fixture
async def cookieless() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that never keeps a cookie: every request is a new user, drawing a fresh bucket."""
    timeout = aiohttp.ClientTimeout(total=WAIT)
    async with aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def fresh_draws(
    session: aiohttp.ClientSession, replica: Replica, n: int, clients: int = 16
) -> list[tuple[str, int]]:
    """`n` ordinary requests without a cookie, from `clients` concurrent keep-alive clients: the colour of each answer
    and the bucket its Set-Cookie hands out."""
    out: list[tuple[str, int]] = []

    async def client(count: int) -> None:
        for _ in range(count):
            async with session.get(f"http://127.0.0.1:{replica.port}/") as resp:
                assert resp.status == 200
                cookie = re.fullmatch(rf"{STICKY}=(\d+); Path=/; HttpOnly; SameSite=Lax", resp.headers["Set-Cookie"])
                assert cookie is not None, resp.headers["Set-Cookie"]
                out.append((resp.headers["X-Bg-Color"], int(cookie.group(1))))

    await asyncio.gather(*(client(n // clients) for _ in range(clients)))
    return out


async def test_kubectl_patch_of_weight_splits_traffic_on_both_replicas(
    api: KubeAPIServer,
    replicas: tuple[Replica, Replica],
    http: aiohttp.ClientSession,
    cookieless: aiohttp.ClientSession,
    kubectl: Kubectl,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = replicas
    await kubectl(*patch_data(weight="20", reason="canary 42"))
    await until(lambda: serves_weight(http, 20, a, b), "both replicas split at 20")
    for s in await states(http, a, b):
        assert (s["active"], s["weight"], s["rollout"], s["source"], s["reason"]) == (
            "blue", 20, None, "configmap", "canary 42"
        )  # fmt: skip
    for r in (a, b):
        (entry,) = await history(http, r, 0)
        assert (entry["event"], entry["weight"], entry["source"]) == ("shift", 20, "configmap")

    shares = []
    for r in (a, b):
        draws = await fresh_draws(cookieless, r, SHARE_REQUESTS)
        assert len(draws) == SHARE_REQUESTS
        # Exact, per request: the bucket handed out decides the colour.
        assert all((colour == "green") == (bucket < 20) for colour, bucket in draws)
        share = 100 * sum(colour == "green" for colour, _ in draws) / len(draws)
        assert abs(share - 20) <= SHARE_BOUND, (r.name, share)
        shares.append(share)
        # A client keeps its colour whichever replica answers next: replay its cookie on the other one.
        other = b if r is a else a
        for colour, bucket in draws[:100]:
            assert await colour_of(http, other, bucket) == colour
    for bucket in range(100):  # every sticky client, on both replicas
        want = "green" if bucket < 20 else "blue"
        assert await colour_of(http, a, bucket) == want and await colour_of(http, b, bucket) == want

    data = stored(api)
    assert data["weight"] == "20" and data["state"]["weight"] == 20  # the edit was written back in the blob
    measured(
        capsys,
        f"kubectl patch weight=20, {SHARE_REQUESTS} fresh clients per replica: green {shares[0]:.1f}% on a, "
        f"{shares[1]:.1f}% on b (bound 20 +/- {SHARE_BOUND:g}); 100 sticky buckets and 200 replayed cookies got "
        "the same colour from both",
    )


# --- a stepped promotion ----------------------------------------------------------------------------------------


async def test_stepped_promotion_started_on_one_replica_advances_pauses_and_resumes_on_both(
    api: KubeAPIServer,
    replicas: tuple[Replica, Replica],
    http: aiohttp.ClientSession,
    commits: Commits,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Started on A, paused on B, resumed on A: every replica follows every change, each written once."""
    a, b = replicas
    base = (await a.state(http))["revision"]
    steps = [10, 50, 100]
    await start_rollout(http, a, steps)
    await until(lambda: all_at(http, base + 2, a, b), "both replicas at the second step")
    status, body = await b.admin(http, "POST", "/pause", reason="looking at the error rate")
    assert status == 200 and body["rollout"]["paused"], body
    paused = await commits.wait(base + 3)

    await until(lambda: all_at(http, base + 3, a, b), "both replicas paused")

    async def held() -> bool:  # past the moment the next step would have been due, and then some
        assert await all_at(http, base + 3, a, b)
        return time.time() > paused.at + INTERVAL + RETRY

    await until(held, "the pause holds on both replicas")
    status, body = await a.admin(http, "POST", "/resume", reason="looks fine")
    assert status == 200 and not body["rollout"]["paused"], body
    await until(lambda: all_at(http, base + 6, a, b), "both replicas promoted", within=WAIT)

    written = commits.states(after=base)
    assert [c.revision for c in written] == list(range(base + 1, base + 7))
    assert [c.state["weight"] for c in written if c.state] == [10, 50, 50, 50, 100, 0]
    assert [(c.state["rollout"] or {}).get("step") for c in written if c.state] == [0, 1, 1, 1, 2, None]
    assert [c.state["source"] for c in written if c.state] == [
        "admin",
        "rollout",
        "admin",
        "admin",
        "rollout",
        "rollout",
    ]
    assert written[-1].state is not None and (written[-1].state["active"], written[-1].state["previous"]) == (
        "green", "blue"
    )  # fmt: skip
    assert [c.data["weight"] for c in written] == ["10", "50", "50", "50", "100", "0"]  # the key follows every step
    commits.assert_no_revision_written_twice()
    # Each step held its interval from the step (or the resume) before it, on the writer's clock, the plan's clock.
    started = {c.revision: c.state["updated_at"] for c in written if c.state}
    for earlier, later in ((base + 1, base + 2), (base + 4, base + 5), (base + 5, base + 6)):
        assert started[later] - started[earlier] >= INTERVAL, started

    # One history entry per change on each replica, the same on both.
    for r in (a, b):
        got = await history(http, r, base)
        assert [(e["revision"], e["event"], e["weight"]) for e in got] == [
            (base + 1, "step", 10),
            (base + 2, "step", 50),
            (base + 3, "paused", 50),
            (base + 4, "resumed", 50),
            (base + 5, "step", 100),
            (base + 6, "promoted", 0),
        ], r.name
    # Each step was taken by exactly one replica's timer.
    timers = took(a), took(b)
    assert not timers[0] & timers[1] and timers[0] | timers[1] == {base + 2, base + 5, base + 6}, timers

    delays: dict[str, list[float]] = {"a": [], "b": []}
    for commit in written:
        for r in (a, b):
            at = applied_at(r, commit.revision)
            assert at is not None, (r.name, commit.revision)
            delays[r.name].append(max(0.0, at - commit.at))  # log stamps are cut to the millisecond
    for name, seen in delays.items():
        assert max(seen) < 1.0, (name, seen)
    measured(
        capsys,
        f"stepped promotion {steps} every {INTERVAL}s on two replicas, paused on b and resumed on a: each of the "
        f"{len(written)} changes applied after the API server's commit by a: {ms(delays['a'])}, by b: "
        f"{ms(delays['b'])}; steps taken by a: {len(timers[0])}, by b: {len(timers[1])}",
    )
    for r in (a, b):
        assert await r.metric(http, "bgproxy_rollout_step") == -1 and await r.metric(http, "bgproxy_weight") == 0
        assert await r.colour(http) == "green"


async def test_losing_the_replica_that_took_the_last_step_neither_stalls_nor_repeats_the_rollout(
    api: KubeAPIServer,
    replicas: tuple[Replica, Replica],
    start_replica: Callable[[str], Replica],
    http: aiohttp.ClientSession,
    commits: Commits,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Kill (SIGKILL) whichever replica took step 2: a live one takes step 3 once due (the other, or the restarted
    one if it started within the interval). Restart the killed one: it carries on with the plan; then kill the other
    one too: the restarted replica alone takes the next steps."""
    a, b = replicas
    base = (await a.state(http))["revision"]
    steps = list(range(5, 101, 5))  # long enough to outlast a restart; promoted by hand once proven
    await start_rollout(http, a, steps)

    second = await commits.wait(base + 2)
    await until(lambda: took(a) | took(b) >= {base + 2}, "the step's writer logged it")
    first, other = (a, b) if base + 2 in took(a) else (b, a)
    await first.kill()
    killed_at = time.time()
    restarted = start_replica(f"{first.name}-restarted")
    await restarted.start()

    third = await commits.wait(base + 3)
    await until(lambda: base + 3 in took(other) | took(restarted), "a live replica took the next step")
    by = "the other replica" if base + 3 in took(other) else "the restarted replica"
    assert second.state is not None
    due = second.state["rollout"]["step_started_at"] + INTERVAL
    late = third.at - due

    await restarted.ready(http)
    ready_at = time.time()
    state = await restarted.state(http)
    assert state["rollout"] is not None, "the rollout ended before the restarted replica was ready: too slow a start"
    committed = commits.of(state["revision"])  # it serves a state the API server holds, plan and all
    assert committed is not None and committed.state is not None
    assert (state["weight"], state["rollout"]) == (committed.state["weight"], committed.state["rollout"])
    await until(lambda: serves_its_state(http, restarted), "the restarted replica serves its step's weight")

    # The restarted replica follows the next step, then carries the rollout alone.
    follow = await commits.wait(state["revision"] + 1)
    await until(lambda: applied_at(restarted, follow.revision) is not None, "the restarted replica follows a step")
    await other.kill()
    last_seen = stored(api)["state"]["revision"]
    alone = {(await commits.wait(last_seen + 1)).revision, (await commits.wait(last_seen + 2)).revision}
    await until(lambda: alone <= took(restarted), "the restarted replica took the steps after the other was lost")
    status, body = await restarted.admin(http, "POST", "/promote", reason="enough steps: finish now")
    assert status == 200 and (body["active"], body["weight"], body["rollout"]) == ("green", 0, None)

    # What was written: every step once, in order, revisions consecutive, then the promote.
    written = commits.states(after=base)
    commits.assert_no_revision_written_twice()
    indexes = [(c.state["rollout"] or {}).get("step") for c in written if c.state]
    assert indexes == [*range(len(written) - 1), None], indexes
    assert [c.revision for c in written] == list(range(base + 1, base + 1 + len(written)))
    assert len(took(first) | took(other) | took(restarted)) == len(written) - 2  # all but the start and the promote
    # The restarted replica's history: one entry per revision it saw, none twice, none missing.
    mine = await history(http, restarted, state["revision"])
    assert [e["revision"] for e in mine] == list(range(state["revision"] + 1, base + 1 + len(written)))
    measured(
        capsys,
        f"stepped promotion every {INTERVAL}s, the step-taker SIGKILLed: {by} took the next step "
        f"{late * 1000:.0f} ms after it was due; the restarted replica was ready {ready_at - killed_at:.1f} s "
        f"after the kill at step {state['rollout']['step'] + 1} (the plan's), and carried on alone after the other "
        f"was killed; {len(written) - 1} revisions, none repeated",
    )


# --- an API server outage during a rollout ----------------------------------------------------------------------

OUTAGE = 3.0  # seconds: several intervals, so every replica's timer finds a step due and cannot write it


async def test_api_server_outage_holds_the_step_and_the_rollout_resumes_after(
    api: KubeAPIServer,
    replicas: tuple[Replica, Replica],
    http: aiohttp.ClientSession,
    commits: Commits,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = replicas
    base = (await a.state(http))["revision"]
    steps = [10, 50, 100]
    await start_rollout(http, a, steps)
    await until(lambda: all_at(http, base + 1, a, b), "both replicas at the first step")
    await asyncio.to_thread(api.stop)
    outage_start = time.time()
    held = stored(api)["state"]  # the step the outage holds (the start, unless the machine was very slow)
    held_rv = api.resource_version

    async def holding() -> bool:
        for s in await states(http, a, b):
            assert (s["revision"], s["weight"], s["rollout"]) == (held["revision"], held["weight"], held["rollout"])
        assert await serves_weight(http, held["weight"], a, b)  # the last good state, nothing guessed
        return time.time() - outage_start >= OUTAGE

    await until(holding, f"a {OUTAGE:g} s outage", within=OUTAGE + WAIT)
    for r in (a, b):
        assert "step_not_written" in r.events(), r.name  # due, tried, and not taken
    assert api.resource_version == held_rv  # nothing was written meanwhile (the store outlives the server)

    await asyncio.to_thread(api.start)
    back = time.time()
    resumed = await commits.wait(held["revision"] + 1)
    await until(lambda: all_at(http, resumed.revision, a, b), "both replicas apply the step taken after the outage")
    applied = [applied_at(r, resumed.revision) for r in (a, b)]
    assert all(at is not None for at in applied)
    await until(lambda: all_at(http, base + len(steps) + 1, a, b), "the rollout finishes", within=WAIT)

    written = commits.states(after=base)
    commits.assert_no_revision_written_twice()
    assert [(c.state["rollout"] or {}).get("step") for c in written if c.state] == [0, 1, 2, None]
    # The step after the outage holds a full interval from when it was really taken: no burst of late steps.
    after = commits.of(resumed.revision + 1)
    assert after is not None and after.state is not None and resumed.state is not None
    assert after.state["updated_at"] - resumed.state["updated_at"] >= INTERVAL
    for r in (a, b):
        got = await history(http, r, base)
        assert [e["revision"] for e in got] == [base + 1, base + 2, base + 3, base + 4], r.name
    delay = resumed.at - back
    assert delay < RETRY + 1.5, delay
    apply = [max(0.0, at - resumed.at) for at in applied if at is not None]  # log stamps are cut to the ms
    assert max(apply) < BACKOFF_CAP + 1.0, apply
    measured(
        capsys,
        f"API server down {back - outage_start:.1f} s during a stepped promotion every {INTERVAL}s: step "
        f"{held['rollout']['step'] + 1} held on both replicas, no write; the next step was written "
        f"{delay * 1000:.0f} ms after the API server was back (timer retry {RETRY:g} s) and applied by a/b "
        f"{apply[0] * 1000:.0f}/{apply[1] * 1000:.0f} ms after",
    )


# --- a kubectl patch of `weight` during a stepped promotion -------------------------------------------------------


async def test_kubectl_patch_of_weight_during_a_stepped_promotion_ends_it_on_both_replicas(
    api: KubeAPIServer,
    replicas: tuple[Replica, Replica],
    http: aiohttp.ClientSession,
    kubectl: Kubectl,
    commits: Commits,
) -> None:
    a, b = replicas
    base = (await a.state(http))["revision"]
    await start_rollout(http, b, [10, 20, 30, 40, 50, 60, 70, 80])  # long enough for kubectl on a busy machine

    # An invalid weight is counted and ignored by both; the rollout goes on and its next step writes the key back.
    await kubectl(*patch_data(weight="5.5"))

    async def counted() -> bool:
        return all([await r.metric(http, "bgproxy_config_errors_total", source="configmap") == 1 for r in (a, b)])

    await until(counted, "both replicas count the invalid weight")
    step = await commits.wait(base + 2)
    assert step.data["weight"] == "20"
    # At least that step: a slow kubectl (above) may have let the next one fall due meanwhile.
    await until(lambda: all_past(http, base + 2, a, b), "both replicas take the next step")

    await kubectl(*patch_data(weight="35", reason="hold at 35"))

    async def ended() -> bool:
        for s in await states(http, a, b):
            if (s["weight"], s["rollout"], s["source"]) != (35, None, "configmap"):
                return False
        return True

    await until(ended, "the stepped promotion ended on both replicas")
    final = stored(api)["state"]
    assert final["active"] == "blue" and stored(api)["weight"] == "35"
    before = commits.of(final["revision"] - 1)
    assert before is not None and before.state is not None and before.state["rollout"] is not None  # it was running
    for r in (a, b):
        got = await history(http, r, base)
        assert [e["revision"] for e in got] == list(range(base + 1, final["revision"] + 1)), r.name
        assert (got[-1]["event"], got[-1]["weight"], got[-1]["reason"]) == ("shift", 35, "hold at 35")
    assert await serves_weight(http, 35, a, b)

    # No timer steps any more: watch past the moment the next step would have been due, and then some.
    async def still() -> bool:
        assert await all_at(http, final["revision"], a, b)
        return time.time() > commits.all[-1].at + 2 * INTERVAL + RETRY

    await until(still, "the ended rollout stays ended")
    commits.assert_no_revision_written_twice()
    assert stored(api)["state"]["revision"] == final["revision"]
