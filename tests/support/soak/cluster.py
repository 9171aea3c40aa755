"""What the soak runs against: the test API server, the blue/green apps, two replicas and the Ingress.

`Cluster` owns every process and the two loops a cluster runs by itself: the endpoints controller (a readiness
probe of each replica every PROBE_EVERY seconds; the ready ones become the Ingress's endpoints, pushed without a
reload, as the endpoints controller and ingress-nginx do) and the resource sampler. Chaos actions use its
primitives: a rolling restart of one replica, an API server outage, a health flap of one colour.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp

from tests.support.configmap import CM
from tests.support.ingress import Ingress
from tests.support.kubeapi import AsyncKubectl, KubeAPIServer, kubectl_runner
from tests.support.replicas import ROOT, START, Replica, replica_env
from tests.support.servers import free_port
from tests.support.soak.resources import Generation, probe_env

Phase = Literal["stopped", "starting", "serving", "draining"]
PROBE_EVERY = 0.25  # seconds between readiness probes: how fast endpoints follow readiness
CONVERGE = 30.0  # seconds the replicas may take to agree on a state (a restart during an outage included)
EXIT = 30.0  # seconds a SIGTERM'd replica may take to exit (drain grace + drain timeout + margin)


@dataclass
class Member:
    """A replica and its life: phases with their start times, and one resource `Generation` per process."""

    replica: Replica
    phases: list[tuple[float, Phase]] = field(default_factory=list)
    generations: list[Generation] = field(default_factory=list)
    ready: bool = False  # the last readiness probe said 200

    @property
    def name(self) -> str:
        return self.replica.name

    @property
    def phase(self) -> Phase:
        return self.phases[-1][1] if self.phases else "stopped"

    def set_phase(self, phase: Phase) -> None:
        if phase != self.phase:
            self.phases.append((time.monotonic(), phase))

    def phases_during(self, start: float, end: float) -> set[Phase]:
        """The phases the member was in at some moment of [start, end]."""
        out: set[Phase] = set()
        for i, (since, phase) in enumerate(self.phases):
            until = self.phases[i + 1][0] if i + 1 < len(self.phases) else float("inf")
            if since <= end and until >= start:
                out.add(phase)
        return out


class Cluster:
    def __init__(self, workdir: Path, *, settings: dict[str, str], endpoints: str = "readiness") -> None:
        self.dir = workdir
        # The soak's apps answer 503 on ~8% of requests and the chaos driver alone changes the state (chaos.py):
        # the automatic rollback would take traffic off a colour on its own, outside the timeline's windows.
        self.settings = {"ANALYSIS_ENABLED": "false", **settings}
        self.endpoints_mode = endpoints  # "readiness" (as Kubernetes) or "passive" (both always; nginx fails over)
        self.t0 = time.monotonic()
        self.api = KubeAPIServer(bookmark_interval=0.5)
        self.ingress = Ingress(workdir, workers=2)
        self.colour_ports = {"blue": free_port(), "green": free_port()}
        self.members: list[Member] = []
        self.events: list[tuple[float, str]] = []  # (seconds since start, what happened)
        self.anomalies: list[str] = []  # what a cluster should never do (a replica exiting non-zero, ...)
        self.kubectl: AsyncKubectl | None = None
        self._upstream: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False

    # --- lifecycle ------------------------------------------------------------------------------------------

    def rel(self, t: float | None = None) -> float:
        return (time.monotonic() if t is None else t) - self.t0

    def event(self, text: str) -> None:
        self.events.append((round(self.rel(), 3), text))

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None
        return self._http

    def upstream_url(self, colour: str) -> str:
        return f"http://127.0.0.1:{self.colour_ports[colour]}"

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3))
        await asyncio.to_thread(self.api.start)
        self.api.set_configmap(CM, {"active": "blue"})  # as deploy/base ships it
        kubeconfig = self.api.write_kubeconfig(self.dir / "kubeconfig")
        self.kubectl = kubectl_runner(kubeconfig, self.dir, timeout=20.0)
        await self._start_upstreams()
        urls = {c: self.upstream_url(c) for c in self.colour_ports}
        for name in ("a", "b"):
            env = replica_env(kubeconfig, self.dir, urls, **self.settings)
            probe = self.dir / f"tasks-{name}"
            env.update(probe_env(probe))
            env["PYTHONPATH"] = f"{env['SOAK_PROBE_DIR']}:{env['PYTHONPATH']}"
            self.members.append(Member(Replica(name, self.dir, env)))
        await asyncio.gather(*(self._launch(m) for m in self.members))
        await self.ingress.start()
        self._loops = [
            asyncio.create_task(self._endpoints_loop(), name="soak-endpoints"),
        ]
        await self.wait_serving(*self.members, within=START)
        self.event("cluster up")

    async def _start_upstreams(self) -> None:
        ports = [str(self.colour_ports[c]) for c in ("blue", "green")]
        with (self.dir / "upstreams.log").open("ab") as log:
            self._upstream = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.support.soak.upstream", *ports, cwd=ROOT,
                stdout=asyncio.subprocess.PIPE, stderr=log,
            )  # fmt: skip
        assert self._upstream.stdout is not None
        line = await asyncio.wait_for(self._upstream.stdout.readline(), START)
        if line.strip() != b"ready":
            raise RuntimeError(f"the blue/green apps did not start: {(self.dir / 'upstreams.log').read_text()}")

    async def close(self) -> None:
        self._stopping = True
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(self._stop_member(m) for m in self.members), return_exceptions=True)
        await self.ingress.stop()
        if self._upstream is not None and self._upstream.returncode is None:
            self._upstream.terminate()
            await asyncio.wait_for(self._upstream.wait(), 10)
        await asyncio.to_thread(self.api.stop)
        if self._http is not None:
            await self._http.close()

    async def _stop_member(self, m: Member) -> None:
        proc = m.replica.proc
        if proc is None or proc.returncode is not None:
            return
        self._draining(m)
        try:
            await asyncio.wait_for(proc.wait(), EXIT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        self._exited(m)

    # --- replicas -------------------------------------------------------------------------------------------

    async def _launch(self, m: Member) -> None:
        await m.replica.start()
        proc = m.replica.proc
        assert proc is not None
        probe = Path(m.replica.env["SOAK_PROBE_FILE"])
        await asyncio.to_thread(probe.unlink, missing_ok=True)
        m.generations.append(Generation(m.name, len(m.generations) + 1, proc.pid, probe, self.rel()))
        m.ready = False
        m.set_phase("starting")
        self.event(f"replica {m.name} started (pid {proc.pid})")

    def _draining(self, m: Member) -> None:
        m.set_phase("draining")
        if m.generations:
            m.generations[-1].draining = self.rel()
        m.replica.terminate()
        self.event(f"replica {m.name} SIGTERM")

    def _exited(self, m: Member) -> None:
        proc = m.replica.proc
        if m.generations and m.generations[-1].ended is None:
            m.generations[-1].ended = self.rel()
        m.ready = False
        m.set_phase("stopped")
        code = proc.returncode if proc is not None else None
        self.event(f"replica {m.name} exited ({code})")
        if code != 0:
            self.anomalies.append(f"replica {m.name} exited with {code} after SIGTERM (expected 0)")

    async def wait_serving(self, *members: Member, within: float) -> None:
        deadline = time.monotonic() + within
        while any(m.phase != "serving" for m in members):
            for m in members:
                proc = m.replica.proc
                if proc is not None and proc.returncode is not None and m.phase == "starting":
                    raise RuntimeError(f"replica {m.name} exited with {proc.returncode}:\n{m.replica.logs[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"replicas not ready within {within}s: {[(m.name, m.phase) for m in members]}")
            await asyncio.sleep(PROBE_EVERY / 2)  # between polls of a bounded wait

    async def rolling_restart_one(self, m: Member) -> str:
        """As the kubelet does on a new image: SIGTERM, wait for the exit, start again, wait until ready."""
        proc = m.replica.proc
        assert proc is not None
        started = time.monotonic()
        self._draining(m)
        try:
            await asyncio.wait_for(proc.wait(), EXIT)
        except TimeoutError:
            self.anomalies.append(f"replica {m.name} still running {EXIT:g}s after SIGTERM")
            proc.kill()
            await proc.wait()
        drained = time.monotonic() - started
        self._exited(m)
        await self._launch(m)
        await self.wait_serving(m, within=START + CONVERGE)
        back = time.monotonic() - started
        return f"{m.name}: drained and exited in {drained:.1f}s, ready again {back:.1f}s after SIGTERM"

    async def _endpoints_loop(self) -> None:
        """Readiness probes -> endpoints -> the Ingress, as the kubelet, the endpoints controller and
        ingress-nginx's controller do together (there, in about a second; here, within PROBE_EVERY)."""
        while True:
            for m in self.members:
                proc = m.replica.proc
                if proc is not None and proc.returncode is not None and m.phase != "stopped":
                    if m.phase != "draining":
                        self.anomalies.append(f"replica {m.name} exited ({proc.returncode}) without SIGTERM")
                    self._exited(m)
                if m.phase in ("starting", "serving", "draining") and proc is not None and proc.returncode is None:
                    m.ready = await self._probe(m)
                    if m.ready and m.phase == "starting":
                        m.set_phase("serving")
                        m.generations[-1].ready = self.rel()
                        self.event(f"replica {m.name} ready")
                    elif not m.ready and m.phase == "serving":
                        self.anomalies.append(f"replica {m.name} became not ready without SIGTERM")
            if self.endpoints_mode == "passive":
                wanted = [f"127.0.0.1:{m.replica.port}" for m in self.members]
            else:
                wanted = [f"127.0.0.1:{m.replica.port}" for m in self.members if m.ready and m.phase == "serving"]
            if tuple(wanted) != self.ingress.endpoints and not self._stopping:
                await self.ingress.set_endpoints(wanted)
                self.event(f"endpoints: {', '.join(self.name_of(e) for e in wanted) or 'none'}")
            await asyncio.sleep(PROBE_EVERY)

    async def _probe(self, m: Member) -> bool:
        try:
            async with self.http.get(
                f"http://127.0.0.1:{m.replica.admin_port}/readyz", timeout=aiohttp.ClientTimeout(total=1)
            ) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def name_of(self, addr: str) -> str:
        """The replica behind an upstream address as nginx reports it (`127.0.0.1:PORT`)."""
        for m in self.members:
            if addr.strip().endswith(f":{m.replica.port}"):
                return m.name
        return addr.strip()

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)

    # --- state --------------------------------------------------------------------------------------------

    async def states(self) -> dict[str, dict[str, Any] | None]:
        """Each member's /state (None when its admin port does not answer)."""
        out: dict[str, dict[str, Any] | None] = {}
        for m in self.members:
            try:
                async with self.http.get(f"http://127.0.0.1:{m.replica.admin_port}/state") as resp:
                    out[m.name] = await resp.json() if resp.status == 200 else None
            except (aiohttp.ClientError, TimeoutError, ValueError):
                out[m.name] = None
        return out

    def stored_active(self) -> str | None:
        cm = self.api.get_configmap(CM)
        return None if cm is None else (cm.get("data") or {}).get("active")

    async def agreed_state(self) -> dict[str, Any] | None:
        """The state every running replica holds, if they agree with each other and with the ConfigMap's
        `active`; None while one is starting (it will serve what it loads) or they disagree."""
        if any(m.phase == "starting" for m in self.members):
            return None
        states = await self.states()
        agreed: dict[str, Any] | None = None
        for m in self.members:
            if m.phase == "stopped":
                continue
            state = states[m.name]
            if state is None:
                if m.phase == "draining":
                    continue  # exiting: it serves nothing new
                return None
            if agreed is None:
                agreed = state
            elif (state["revision"], state["active"], state.get("weight")) != (
                agreed["revision"],
                agreed["active"],
                agreed.get("weight"),
            ):
                return None
        if agreed is None or agreed["active"] != self.stored_active():
            return None
        return agreed

    async def all_watching(self, within: float = CONVERGE) -> bool:
        """Whether every running replica reports its ConfigMap watch connected, within `within` seconds."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            states = await self.states()
            running = [states[m.name] for m in self.members if m.phase != "stopped"]
            if running and all(s is not None and s["store"]["connected"] for s in running):
                return True
            await asyncio.sleep(0.05)  # between polls of a bounded wait
        return False

    async def converge(self, within: float = CONVERGE) -> dict[str, Any] | None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            state = await self.agreed_state()
            if state is not None:
                return state
            await asyncio.sleep(0.02)  # between polls of a bounded wait
        return None

    # --- faults -------------------------------------------------------------------------------------------

    async def api_down(self) -> None:
        await asyncio.to_thread(self.api.stop)
        self.event("API server stopped")

    async def api_up(self) -> None:
        await asyncio.to_thread(self.api.start)
        self.event("API server started")

    async def set_health(self, colour: str, ok: bool) -> None:
        url = f"{self.upstream_url(colour)}/_control/health"
        async with self.http.post(url, data="ok" if ok else "fail") as resp:
            resp.raise_for_status()
        self.event(f"{colour} health {'restored' if ok else 'failing'}")

    # --- resources ------------------------------------------------------------------------------------------

    def sample(self) -> None:
        now = self.rel()
        for m in self.members:
            if m.generations and m.generations[-1].ended is None:
                m.generations[-1].sample(now)

    def start_sampler(self, every: float, stop: Callable[[], bool]) -> None:
        async def loop() -> None:
            while not stop():
                self.sample()
                await asyncio.sleep(every)

        self._loops.append(asyncio.create_task(loop(), name="soak-sampler"))
