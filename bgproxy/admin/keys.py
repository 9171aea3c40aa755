"""The typed keys under which the admin app holds what its routes and middlewares share."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from ..metrics import Metrics
from ..release.checks import PromoteChecks
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
CHECKS = web.AppKey("checks", PromoteChecks)
AutoPromoteStatus = Callable[[], Mapping[str, object] | None]  # the wait of an auto-promotion, None when none
AUTO_PROMOTE: web.AppKey[AutoPromoteStatus] = web.AppKey("auto_promote")
