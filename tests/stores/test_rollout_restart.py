"""A stepped promotion on the file store survives a restart: the plan is read back, a step that fell due while the
proxy was down is taken once at start, and the rest follows on time; nothing is repeated or skipped."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bgproxy.app import Bgproxy
from bgproxy.settings import load_settings
from tests.support.admin import Admin
from tests.support.servers import TIMEOUT, StartProxy, Upstream


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        yield s


async def test_a_stepped_promotion_goes_on_after_a_restart_with_the_file_store(
    start_proxy: StartProxy, upstreams: dict[str, Upstream], session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    path = tmp_path / "state.json"
    interval = 1.0
    settings = {
        "blue_url": upstreams["blue"].url,
        "green_url": upstreams["green"].url,
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "state_backend": "file",
        "state_file": str(path),
    }
    async with Bgproxy(load_settings(**settings)) as first:
        started = await Admin(session, first).post("/promote", {"steps": [10, 50, 100], "interval": interval})
    stored = json.loads(path.read_text())
    assert (stored["weight"], stored["rollout"]["step"], stored["revision"]) == (10, 0, started["revision"])

    # Down across the first step's due time: the restarted proxy takes that step at once, and only that one.
    due = started["rollout"]["step_started_at"] + interval
    await asyncio.sleep(max(0.0, due + 0.3 - time.time()))  # the outage itself: what this test is about
    second = await start_proxy(**settings)
    ready = time.time()  # the step may be taken before this: the timer's first look comes with the state's load
    admin = Admin(session, second)
    await admin.wait_state("promoted", lambda s: s["rollout"] is None, within=interval * 3 + 5)

    # The restarted proxy's history: each remaining step once, on time, then the promote.
    history = await admin.history()
    assert [(h["event"], h["weight"], h["revision"]) for h in history] == [
        ("step", 50, started["revision"] + 1),
        ("step", 100, started["revision"] + 2),
        ("promoted", 0, started["revision"] + 3),
    ]
    when = [h["when"] for h in history]
    # The overdue step at once, not a whole interval after the restart (however long the start itself took).
    assert when[0] - ready < interval / 2
    assert all(b - a >= interval for a, b in itertools.pairwise(when))
    final = json.loads(path.read_text())
    assert (final["active"], final["weight"], final["rollout"], final["source"]) == ("green", 0, None, "rollout")
    assert final["revision"] == started["revision"] + 3
