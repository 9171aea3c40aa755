"""The admin API (aiohttp): read the state, flip it, health, readiness, metrics, its own OpenAPI document, and the
dashboard.

`schemas` holds the bodies (pydantic), `body` reads them strictly, `middleware` turns errors into JSON and guards
every mutating call, `routes` has the handlers and the route table, `openapi` generates the document from both.
`page` serves the dashboard's files (`dashboard/`) and `events` the stream it lives on. It listens on its own
port, never behind the Ingress.
"""

from __future__ import annotations

from aiohttp import web

from ..metrics import Metrics
from ..release.checks import PromoteChecks
from ..release.live import LiveFigures
from ..settings import Settings
from ..state import StateHolder
from .body import MAX_BODY
from .events import HUB, EventHub
from .keys import (
    AUTO_PROMOTE,
    CHECKS,
    HOLDER,
    LIVE,
    METRICS,
    OPENAPI,
    READY,
    SETTINGS,
    AutoPromoteStatus,
    ReadyCheck,
)
from .middleware import guard, json_errors
from .openapi import openapi_document
from .routes import ROUTES, add_routes, event_views

__all__ = ["MAX_BODY", "build_admin_app", "openapi_document"]


def build_admin_app(
    settings: Settings,
    holder: StateHolder,
    metrics: Metrics,
    ready: ReadyCheck,
    *,
    live: LiveFigures,
    checks: PromoteChecks | None = None,
    auto_promote: AutoPromoteStatus = lambda: None,
) -> web.Application:
    # json_errors is outermost, so the guard's refusals and aiohttp's own errors come out as JSON alike.
    app = web.Application(client_max_size=MAX_BODY, middlewares=[json_errors, guard])
    app[SETTINGS] = settings
    app[HOLDER] = holder
    app[METRICS] = metrics
    app[LIVE] = live
    app[READY] = ready
    app[CHECKS] = checks if checks is not None else PromoteChecks((), settings.upstreams())
    app[AUTO_PROMOTE] = auto_promote
    app[OPENAPI] = openapi_document(ROUTES)
    hub = app[HUB] = EventHub(holder, event_views(app))
    hub.attach(app)
    add_routes(app, ROUTES)
    return app
