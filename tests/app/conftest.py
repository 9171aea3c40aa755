"""Fixtures of the app tests: two colours whose health the test controls."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.health import HealthApp


@pytest.fixture
async def colors() -> AsyncIterator[dict[str, HealthApp]]:
    apps = {c: await HealthApp(c).start() for c in ("blue", "green")}
    yield apps
    for a in apps.values():
        await a.stop()
