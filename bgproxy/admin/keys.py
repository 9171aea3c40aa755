"""The typed keys under which the admin app holds what its routes and middlewares share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..metrics import Metrics
from ..release.live import LiveFigures
from ..settings import Settings
from ..state import StateHolder

HOLDER = web.AppKey("holder", StateHolder)
METRICS = web.AppKey("metrics", Metrics)
LIVE = web.AppKey("live", LiveFigures)
SETTINGS = web.AppKey("settings", Settings)
ReadyCheck = Callable[[], bool]
READY: web.AppKey[ReadyCheck] = web.AppKey("ready")
OPENAPI: web.AppKey[dict[str, Any]] = web.AppKey("openapi")
