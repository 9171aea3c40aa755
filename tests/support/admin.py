"""A small client of a running bgproxy's admin API for the tests: calls, the state, the history, a metric, and
bounded waits for the state to reach a condition."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from bgproxy.app import Bgproxy

POLL = 0.02  # seconds between looks of a bounded wait
# What /state answers besides the state a store keeps: this replica's own view of the store, the backends, its
# auto-promotion and its build.
NOT_STORED = ("backends", "store", "auto_promote", "build")


class Admin:
    def __init__(self, session: aiohttp.ClientSession, app: Bgproxy) -> None:
        self.s = session
        self.app = app
        self.base = f"http://127.0.0.1:{app.admin_port}"

    async def call(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        kw: dict[str, Any] = {} if body is None else {"json": body}
        async with self.s.request(method, self.base + path, **kw) as r:
            return r.status, await r.json()

    async def post(self, path: str, body: object = None) -> dict[str, Any]:
        """A call that must succeed: the new state."""
        status, answer = await self.call("POST", path, body)
        assert status == 200, (path, body, answer)
        return dict(answer)

    async def state(self) -> dict[str, Any]:
        status, body = await self.call("GET", "/state")
        assert status == 200
        return dict(body)

    async def history(self) -> list[dict[str, Any]]:
        """The history, oldest first."""
        status, body = await self.call("GET", "/history")
        assert status == 200
        return list(reversed(body["history"]))

    async def metric(self, name: str, **labels: str) -> float | None:
        async with self.s.get(self.base + "/metrics") as r:
            text = await r.text()
        if labels:
            want = ",".join(f'{k}="{v}"' for k, v in labels.items())
            m = re.search(rf"^{re.escape(name)}{{{re.escape(want)}}} (\S+)$", text, re.M)
        else:
            m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(m.group(1)) if m else None

    async def wait_state(
        self, what: str, ok: Callable[[dict[str, Any]], bool], *, within: float = 10.0
    ) -> dict[str, Any]:
        """Poll /state until `ok(state)`; fails the test after `within` seconds."""
        end = time.monotonic() + within
        while True:
            state = await self.state()
            if ok(state):
                return state
            if time.monotonic() > end:
                pytest.fail(f"not {what} within {within}s; state: {state}")
            await asyncio.sleep(POLL)  # bounded poll

    async def holds(self, expected: dict[str, Any], *, until: float) -> None:
        """The state's revision, weight and rollout stay as in `expected` until the wall-clock time `until`: watching
        that nothing happens (a step not taken), for a bounded time."""
        want = (expected["revision"], expected["weight"], expected["rollout"])
        while time.time() < until:
            state = await self.state()
            assert (state["revision"], state["weight"], state["rollout"]) == want, state
            await asyncio.sleep(POLL * 2)


def routing_part(state: dict[str, Any]) -> dict[str, Any]:
    """The routing part of a /state answer (without the backends' live figures)."""
    return {k: v for k, v in state.items() if k != "backends"}
