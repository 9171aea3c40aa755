"""Shared fixtures: real upstream servers (aiohttp) and a real bgproxy on 127.0.0.1, talked to over sockets.

What the fixtures are built from lives in tests/support/ (servers, subprocesses, the Kubernetes API server).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvloop
from aiohttp import web

from bgproxy.app import Bgproxy
from bgproxy.settings import load_settings
from tests.support.build import stale_extensions
from tests.support.receiver import Receiver
from tests.support.servers import RawClient, StartProxy, Upstream, upstream_app

# A skip for a missing tool fails under CI (CI=true), which installs them all: tests/support/tools.py.
from tests.support.tools import pytest_addoption, pytest_make_collect_report, pytest_runtest_makereport

__all__ = ["pytest_addoption", "pytest_make_collect_report", "pytest_runtest_makereport"]


def pytest_sessionstart(session: pytest.Session) -> None:
    """An editable compiled install runs the extension modules built from the sources as they were then: after an
    edit (or a new module) the tests would test the old code. Stop before any test runs."""
    stale = stale_extensions()
    if stale:
        pytest.exit(
            f"{', '.join(stale)}: changed or new since the build was compiled; reinstall (pip install -e '.[test]'), "
            "or install the pure build while editing (BGPROXY_PURE=1 pip install -e '.[test]')",
            returncode=4,
        )


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    # Production runs on uvloop; so do the tests.
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def upstreams() -> AsyncIterator[dict[str, Upstream]]:
    runners = []
    ups = {}
    for color in ("blue", "green"):
        up = Upstream(color)
        runner = web.AppRunner(upstream_app(up), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        up.port = runner.addresses[0][1]
        up.url = f"http://127.0.0.1:{up.port}"
        ups[color] = up
        runners.append(runner)
    yield ups
    for up in ups.values():
        for ev in up.gates.values():
            ev.set()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A real webhook receiver on loopback (tests/support/receiver.py)."""
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest.fixture
async def start_proxy(upstreams: dict[str, Upstream]) -> AsyncIterator[StartProxy]:
    """Start a real bgproxy in this event loop; settings as keyword overrides (strings, like env/flags)."""
    started: list[Bgproxy] = []

    async def start(**overrides: Any) -> Bgproxy:
        values: dict[str, Any] = {
            "blue_url": upstreams["blue"].url,
            "green_url": upstreams["green"].url,
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "state_backend": "memory",
        }
        values.update(overrides)
        app = Bgproxy(load_settings(**values))
        try:
            await app.start()
        except BaseException:
            await app.stop()
            raise
        started.append(app)
        return app

    yield start
    for app in started:
        await app.stop()


@pytest.fixture
async def proxy(start_proxy: StartProxy) -> Bgproxy:
    return await start_proxy()


@pytest.fixture
async def raw(proxy: Bgproxy) -> AsyncIterator[Callable[[], Awaitable[RawClient]]]:
    clients: list[RawClient] = []

    async def connect() -> RawClient:
        c = await RawClient.connect(proxy.port)
        clients.append(c)
        return c

    yield connect
    for c in clients:
        await c.close()
