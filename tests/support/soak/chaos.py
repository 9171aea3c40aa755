"""The chaos driver: lanes of actions that run side by side for the whole soak.

A `Lane` picks one of its actions (each in turn until it has been done once, then weighted), runs it, waits a
random pause, and again, until the soak ends. An action is any `async (Soak) -> (result, detail)` with a name;
`result` is `done`, `refused` (an answer that is right given the other faults in progress, e.g. 409 for a flip to a
colour whose health is failing, 503 while the API server is down), or `failed` (what bgproxy should not have
answered: it fails the soak).

An action that changes the state goes through `Soak.state_change`: the timeline allows both colours from the
moment it is asked for until every replica holds the same state again, and those changes never overlap. That is
all a new kind of change needs, one more entry in the flips lane: a shift is an Action whose attempt calls
`/shift` (`timeline.serving_colours` already reads the weight); a stepped promotion one whose attempt starts it and
waits until it has completed or was aborted, so that the window covers every step. The state must change only
through the driver: features that change it on their own clock (automatic rollback, auto-promotion) stay off in
the soak's settings, or get an action of their own.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from tests.support.configmap import CM
from tests.support.soak.cluster import Cluster, Member
from tests.support.soak.timeline import COLOURS, Timeline, serving_colours

Result = tuple[str, str]  # (done | refused | failed | skipped, detail)
RECOVERY = 3.0  # seconds after a health flap ends during which its colour may still count as down


@dataclass
class ChaosEvent:
    lane: str
    action: str
    start: float  # seconds since the soak started
    end: float
    result: str
    detail: str


@dataclass
class Window:
    start: float  # time.monotonic()
    end: float | None = None

    def overlaps(self, start: float, end: float, margin: float = 0.0) -> bool:
        return self.start <= end and (self.end is None or self.end + margin >= start)


@dataclass
class Soak:
    """What the actions share: the cluster, the timeline, the fault windows in progress, and the log."""

    cluster: Cluster
    timeline: Timeline
    rng: random.Random
    api_outages: list[Window] = field(default_factory=list)
    flaps: dict[str, list[Window]] = field(default_factory=lambda: {c: [] for c in COLOURS})
    events: list[ChaosEvent] = field(default_factory=list)
    unconverged: list[str] = field(default_factory=list)
    _changing: asyncio.Lock = field(default_factory=asyncio.Lock)

    def api_down_during(self, start: float, end: float) -> bool:
        return any(w.overlaps(start, end, margin=0.5) for w in self.api_outages)

    def down_during(self, colour: str, start: float, end: float) -> bool:
        return any(w.overlaps(start, end, margin=RECOVERY) for w in self.flaps[colour])

    async def state_change(self, label: str, attempt: Callable[[], Awaitable[Result]]) -> Result:
        """Run `attempt` inside a window where either colour may answer, closed once the replicas agree."""
        async with self._changing:
            self.timeline.changing(label)
            result = await attempt()
            state = await self.cluster.converge()
            if state is None:
                self.unconverged.append(f"{self.cluster.rel():.1f}s after {label}: {result}")
                return "failed", f"{result[1]}; the replicas did not agree on a state within the bound"
            self.timeline.settled(serving_colours(state), f"revision {state['revision']}: {state['active']}")
            return result

    def serving(self) -> list[Member]:
        return [m for m in self.cluster.members if m.phase == "serving"]


class Action(Protocol):
    name: str

    async def __call__(self, soak: Soak) -> Result: ...


@dataclass
class Lane:
    name: str
    actions: Sequence[tuple[Action, float]]  # (action, weight)
    pause: tuple[float, float]  # seconds between two actions
    first: float  # seconds before the first one

    async def run(self, soak: Soak, stop: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(stop.wait(), self.first)
            return
        except TimeoutError:
            pass
        actions = [a for a, _ in self.actions]
        weights = [w for _, w in self.actions]
        # Every kind in turn until it has been done once (one refused during an outage comes round again), then the
        # weighted draw: a short soak cannot leave a kind out by chance.
        pending = list(actions)
        soak.rng.shuffle(pending)
        while not stop.is_set():
            turn = bool(pending)
            action = pending.pop(0) if turn else soak.rng.choices(actions, weights)[0]
            start = time.monotonic()
            try:
                result, detail = await action(soak)
            except Exception as exc:  # an action's own bug must not end the soak silently
                result, detail = "failed", f"{type(exc).__name__}: {exc}"
            if turn and result != "done":
                pending.append(action)
            c = soak.cluster
            soak.events.append(ChaosEvent(self.name, action.name, c.rel(start), c.rel(), result, detail))
            try:
                await asyncio.wait_for(stop.wait(), soak.rng.uniform(*self.pause))
            except TimeoutError:
                pass


# --- flips ------------------------------------------------------------------------------------------------

SHIFTS = (0, 10, 30, 50, 90, 100)  # the weights a shift picks from


class AdminFlip:
    """POST /switch (to the other colour), /promote, /rollback or /shift (a random weight) on a random serving
    replica."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = f"admin {kind}"

    async def __call__(self, soak: Soak) -> Result:
        members = soak.serving()
        if not members:
            return "skipped", "no serving replica"
        m = soak.rng.choice(members)
        return await soak.state_change(f"{self.name} on {m.name}", lambda: self._attempt(soak, m))

    async def _attempt(self, soak: Soak, m: Member) -> Result:
        start = time.monotonic()
        states = await soak.cluster.states()
        current = (states.get(m.name) or {}).get("active")
        body: dict[str, Any] = {"reason": f"soak {self.name} at {soak.cluster.rel():.1f}s"}
        target = next(iter(COLOURS - {current})) if current in COLOURS else None
        if self.kind == "switch":
            body["to"] = target
        elif self.kind == "rollback":
            target = (states.get(m.name) or {}).get("previous")
        elif self.kind == "shift":
            body["weight"] = soak.rng.choice(SHIFTS)  # the standby colour (`target`) gets that share
        status, answer = await self._post(soak, m, body)
        if status == 409 and target is not None and soak.down_during(target, start, time.monotonic()):
            if soak.rng.random() < 0.5:
                return "refused", f"{m.name}: 409 for {target}, whose health is failing: {answer}"
            status, answer = await self._post(soak, m, body | {"force": True})
            if status == 200:
                return "done", f"{m.name}: {target} is down, forced: revision {answer.get('revision')}"
        if status == 200:
            return "done", f"{m.name}: active {answer.get('active')}, revision {answer.get('revision')}"
        if status == 409 and self.kind == "rollback" and target is None:
            return "refused", f"{m.name}: 409, nothing to roll back to yet: {answer}"
        end = time.monotonic()
        if status == 503 and soak.api_down_during(start, end):
            return "refused", f"{m.name}: 503 while the API server is down: {answer}"
        if status is None and m.phases_during(start, end) & {"draining", "stopped"}:
            return "refused", f"{m.name} is shutting down: {answer}"
        return "failed", f"{m.name}: {status} {answer}"

    async def _post(self, soak: Soak, m: Member, body: dict[str, Any]) -> tuple[int | None, Any]:
        url = f"http://127.0.0.1:{m.replica.admin_port}/{self.kind}"
        try:
            async with soak.cluster.http.post(url, json=body, timeout=aiohttp.ClientTimeout(total=15)) as resp:
                return resp.status, await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return None, f"{type(exc).__name__}: {exc}"


class SteppedPromotion:
    """POST /promote with steps of 1 s on a random serving replica, then wait until the plan has completed (or
    ended otherwise): the state-change window covers every step, which the replicas' timers take on their own."""

    name = "stepped promotion"

    async def __call__(self, soak: Soak) -> Result:
        members = soak.serving()
        if not members:
            return "skipped", "no serving replica"
        m = soak.rng.choice(members)
        return await soak.state_change(f"{self.name} on {m.name}", lambda: self._attempt(soak, m))

    async def _attempt(self, soak: Soak, m: Member) -> Result:
        steps = sorted(soak.rng.sample([5, 10, 25, 50, 75, 100], k=soak.rng.randint(1, 4)))
        start = time.monotonic()
        states = await soak.cluster.states()
        current = (states.get(m.name) or {}).get("active")
        target = next(iter(COLOURS - {current})) if current in COLOURS else None
        body = {"steps": steps, "interval": 1, "reason": f"soak steps {steps} at {soak.cluster.rel():.1f}s"}
        url = f"http://127.0.0.1:{m.replica.admin_port}/promote"
        try:
            async with soak.cluster.http.post(url, json=body, timeout=aiohttp.ClientTimeout(total=15)) as resp:
                status, answer = resp.status, await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            status, answer = None, f"{type(exc).__name__}: {exc}"
        end = time.monotonic()
        if status == 409 and target is not None and soak.down_during(target, start, end):
            return "refused", f"{m.name}: 409 for {target}, whose health is failing: {answer}"
        if status == 503 and soak.api_down_during(start, end):
            return "refused", f"{m.name}: 503 while the API server is down: {answer}"
        if status is None and m.phases_during(start, end) & {"draining", "stopped"}:
            return "refused", f"{m.name} is shutting down: {answer}"
        if status != 200:
            return "failed", f"{m.name}: {status} {answer}"
        # Bounded: each step may be held by a health flap or an API server outage for a while.
        deadline = time.monotonic() + len(steps) * 1.0 + 60.0
        while time.monotonic() < deadline:
            answering = [s for s in (await soak.cluster.states()).values() if s is not None]
            if answering and all(s.get("rollout") is None for s in answering):
                final = answering[0]
                return "done", f"{m.name}: steps {steps}, now active {final.get('active')} weight {final.get('weight')}"
            await asyncio.sleep(0.2)  # polling a bounded wait, not synchronisation
        return "failed", f"{m.name}: steps {steps} still running after {len(steps) + 60}s"


class KubectlFlip:
    """`kubectl patch configmap bgproxy-state` to the other colour, as a person or a GitOps sync would."""

    name = "kubectl patch"

    async def __call__(self, soak: Soak) -> Result:
        return await soak.state_change(self.name, lambda: self._attempt(soak))

    async def _attempt(self, soak: Soak) -> Result:
        kubectl = soak.cluster.kubectl
        if kubectl is None:
            return "skipped", "kubectl not installed"
        current = soak.cluster.stored_active()
        target = next(iter(COLOURS - {current})) if current in COLOURS else "blue"
        patch = {"data": {"active": target, "reason": f"soak kubectl at {soak.cluster.rel():.1f}s"}}
        start = time.monotonic()
        done = await kubectl("patch", "configmap", CM, "--type", "merge", "-p", json.dumps(patch), check=False)
        if done.returncode == 0:
            return "done", f"active {target}"
        if soak.api_down_during(start, time.monotonic()):
            return "refused", f"the API server is down: {done.stderr.strip()[:200]}"
        return "failed", f"kubectl: {done.stderr.strip()[:300]}"


# --- faults -----------------------------------------------------------------------------------------------


class HealthFlap:
    """One colour's health endpoint fails for a few seconds, then recovers; traffic itself is unaffected."""

    name = "health flap"

    def __init__(self, seconds: tuple[float, float]) -> None:
        self.seconds = seconds

    async def __call__(self, soak: Soak) -> Result:
        colour = soak.rng.choice(sorted(COLOURS))
        length = await _for_a_while(
            soak,
            soak.flaps[colour],
            lambda: soak.cluster.set_health(colour, ok=False),
            lambda: soak.cluster.set_health(colour, ok=True),
            self.seconds,
        )
        return "done", f"{colour} failing for {length:.1f}s"


class ApiOutage:
    """The API server stops (watches end, connections refused) and starts again on the same port."""

    name = "API server outage"

    def __init__(self, seconds: tuple[float, float]) -> None:
        self.seconds = seconds

    async def __call__(self, soak: Soak) -> Result:
        length = await _for_a_while(soak, soak.api_outages, soak.cluster.api_down, soak.cluster.api_up, self.seconds)
        return "done", f"down for {length:.1f}s"


async def _for_a_while(
    soak: Soak,
    windows: list[Window],
    begin: Callable[[], Awaitable[None]],
    end: Callable[[], Awaitable[None]],
    seconds: tuple[float, float],
) -> float:
    """A fault that lasts a random while, recorded as a window in which its consequences are expected."""
    window = Window(time.monotonic())
    windows.append(window)
    await begin()
    length = soak.rng.uniform(*seconds)
    await asyncio.sleep(length)
    await end()
    window.end = time.monotonic()
    return length


class RollingRestart:
    """As a Deployment rolls out a new image: one replica at a time, the next once the previous is ready."""

    name = "rolling restart"

    async def __call__(self, soak: Soak) -> Result:
        notes = []
        for m in soak.cluster.members:
            notes.append(await soak.cluster.rolling_restart_one(m))
        return "done", "; ".join(notes)


def lanes(*, duration: float, restart_every: float) -> list[Lane]:
    """The soak's lanes. Pauses are short enough that a 60-second run sees every kind of fault."""
    flips: list[tuple[Action, float]] = [
        (AdminFlip("switch"), 3),
        (AdminFlip("promote"), 1),
        (AdminFlip("rollback"), 1),
        (AdminFlip("shift"), 2),
        (SteppedPromotion(), 1),
        (KubectlFlip(), 3),
    ]
    return [
        Lane("flips", flips, pause=(1.5, 4.0), first=1.0),
        Lane("health", [(HealthFlap((3.0, 6.0)), 1)], pause=(5.0, 10.0), first=3.0),
        Lane("api", [(ApiOutage((1.5, 4.0)), 1)], pause=(12.0, 20.0), first=8.0),
        Lane("restarts", [(RollingRestart(), 1)], pause=(restart_every, restart_every), first=min(10.0, duration / 4)),
    ]
