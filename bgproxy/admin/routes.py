"""The admin API's handlers and its route table, which the app and the OpenAPI document are both built from.

Reads answer from the state holder; a mutating call parses its body into its model (`body.py`), lets a pure
decision of `core.routing` pick the new state through the holder, and answers the state. The guard (token,
cross-site) is the middleware's job, not theirs. A new call is one model in `schemas.py` and one `Route` here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from aiohttp import web
from pydantic import BaseModel

from .. import __version__, build
from ..core import rollout, routing
from ..core.analysis import Figures
from ..core.checks import ChecksFailed, skipped
from ..core.model import Color, Health, InvalidPlan, RoutingError, State
from ..log import log
from ..metrics import CONTENT_TYPE
from ..stores import StoreError
from . import page
from .body import read_body
from .events import HUB, Views
from .keys import AUTO_PROMOTE, CHECKS, HOLDER, LIVE, METRICS, OPENAPI, READY, SETTINGS
from .middleware import Handler, error
from .schemas import (
    BackendView,
    BuildView,
    ErrorBody,
    FlipBody,
    HistoryView,
    PromoteBody,
    ReasonBody,
    ReleaseBody,
    RequestBody,
    ShiftBody,
    StateView,
    StatusView,
    StoreView,
    SwitchBody,
)

logger = logging.getLogger("bgproxy.admin")

Body = TypeVar("Body", bound=RequestBody)
Body_contra = TypeVar("Body_contra", bound=RequestBody, contravariant=True)


def answer(view: BaseModel, status: int = 200) -> web.Response:
    """A response model as JSON; fields a view leaves unset (a store's optional ones) stay absent."""
    return web.json_response(dumped(view), status=status)


def state_view(app: web.Application) -> StateView:
    holder, settings, metrics, live = app[HOLDER], app[SETTINGS], app[METRICS], app[LIVE]
    urls, figures = settings.upstreams(), live.figures()
    return StateView.model_validate(
        {
            **holder.current.to_dict(),
            "store": StoreView.model_validate(holder.store.describe()),
            "backends": {
                c: backend_view(urls[c].url, metrics.healthy[c], figures[c], live.drained_since(c), kept=live.kept)
                for c in Color
            },
            "auto_promote": app[AUTO_PROMOTE](),
            "build": BuildView(version=__version__, compiled=build.compiled()),
        }
    )


def backend_view(url: str, healthy: bool, f: Figures, drained_since: float | None, *, kept: bool) -> BackendView:
    """A colour's view; the window's figures are null when none are kept (ANALYSIS_ENABLED=false)."""
    return BackendView(
        url=url,
        healthy=healthy,
        inflight=f.inflight,
        requests=f.requests if kept else None,
        rps=round(f.rps, 3) if kept else None,
        error_rate=round(f.error_rate, 4) if kept else None,
        p50=None if f.p50 is None else round(f.p50, 6),
        p99=None if f.p99 is None else round(f.p99, 6),
        drained_since=drained_since,
    )


async def get_state(request: web.Request) -> web.Response:
    return answer(state_view(request.app))


def history_view(app: web.Application) -> HistoryView:
    return HistoryView.model_validate({"history": list(app[HOLDER].history)})


async def get_history(request: web.Request) -> web.Response:
    return answer(history_view(request.app))


def dumped(view: BaseModel) -> dict[str, Any]:
    """A response model as JSON data, as `answer` sends it."""
    return view.model_dump(mode="json", by_alias=True, exclude_unset=True)


def event_views(app: web.Application) -> Views:
    """What the dashboard's events carry: the answers of /state and /history."""
    return Views(state=lambda: dumped(state_view(app)), history=lambda: dumped(history_view(app)))


async def events(request: web.Request) -> web.StreamResponse:
    return await request.app[HUB].stream(request)


async def healthz(request: web.Request) -> web.Response:
    return answer(StatusView(status="ok"))


async def readyz(request: web.Request) -> web.Response:
    if request.app[READY]():
        return answer(StatusView(status="ready"))
    return answer(StatusView(status="not ready"), status=503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


class Decide(Protocol[Body_contra]):
    """What a mutating call does to the state: pure, from `core.routing`; raises RoutingError to refuse."""

    def __call__(self, state: State, body: Body_contra, *, now: float, healthy: Health) -> State: ...


class Receiver(Protocol[Body_contra]):
    """The colour a mutating call is about to send traffic to (a promote, a shift from 0), whose pre-promotion
    checks must pass first; None when the call sends none there."""

    def __call__(self, state: State, body: Body_contra) -> Color | None: ...


def mutation(model: type[Body], decide: Decide[Body], receives: Receiver[Body] | None = None) -> Handler:
    """The handler of one mutating call: its body as `model`, the pre-promotion checks of the colour it sends traffic
    to (unless forced), its decision through the holder, the new state."""

    async def handler(request: web.Request) -> web.Response:
        body = await read_body(request, model)  # BadBody: 400, by the middleware
        holder = request.app[HOLDER]
        if not holder.loaded:
            return error(503, "not ready: the state is still being loaded from the store; try again shortly")
        healthy = request.app[METRICS].healthy
        checks = request.app[CHECKS]
        before = holder.current
        target = receives(before, body) if receives is not None and checks.configured else None

        def decided(state: State) -> State:
            if receives is not None and target is not None and receives(state, body) not in (None, target):
                raise RoutingError(f"the state changed while the checks of {target.value} ran; try again")
            new = decide(state, body, now=time.time(), healthy=healthy)
            return skipped(state, new) if target is not None and body.force else new

        try:
            # A colour that is down is refused by the decision itself, sooner than a check could time out.
            if target is not None and not body.force and healthy[target]:
                await checks.verify(target)
            after = await holder.change(decided)
        except InvalidPlan as exc:
            return error(400, str(exc))
        except ChecksFailed as exc:
            return error(409, f'{exc}; fix it, or send "force": true to skip the checks')
        except RoutingError as exc:
            return error(409, str(exc))
        except StoreError as exc:
            log(logger, "flip_failed", level=logging.ERROR, path=request.path, error=str(exc))
            return error(503, f"the state store refused the change, nothing was switched: {exc}")
        if after is before:
            log(logger, "flip_noop", path=request.path, active=after.active.value)
        elif target is not None and body.force:
            log(logger, "promote_checks_skipped", level=logging.WARNING, path=request.path, color=target.value)
        return answer(state_view(request.app))

    return handler


def switch(state: State, body: SwitchBody, *, now: float, healthy: Health) -> State:
    return routing.switch(
        state, body.to, source="admin", reason=body.reason, now=now, healthy=healthy, force=body.force
    )


DEFAULT_INTERVAL = 60.0  # seconds each step holds when a stepped promotion names none


def promote(state: State, body: PromoteBody, *, now: float, healthy: Health) -> State:
    if body.steps is None:
        return routing.promote(state, source="admin", reason=body.reason, now=now, healthy=healthy, force=body.force)
    interval = DEFAULT_INTERVAL if body.interval is None else body.interval
    return rollout.start(
        state, body.steps, interval, source="admin", reason=body.reason, now=now, healthy=healthy, force=body.force
    )


def shift(state: State, body: ShiftBody, *, now: float, healthy: Health) -> State:
    return routing.shift(
        state, body.weight, source="admin", reason=body.reason, now=now, healthy=healthy, force=body.force
    )


def release(state: State, body: ReleaseBody, *, now: float, healthy: Health) -> State:
    return routing.set_release(state, body.release, source="admin", reason=body.reason, now=now)


def to_standby(state: State, body: RequestBody) -> Color | None:
    return state.standby


def switch_receives(state: State, body: SwitchBody) -> Color | None:
    return body.to if body.to is not state.active else None


def shift_receives(state: State, body: ShiftBody) -> Color | None:
    return state.standby if state.weight == 0 and body.weight > 0 else None


def pause(state: State, body: ReasonBody, *, now: float, healthy: Health) -> State:
    return rollout.pause(state, source="admin", reason=body.reason, now=now)


def resume(state: State, body: ReasonBody, *, now: float, healthy: Health) -> State:
    return rollout.resume(state, source="admin", reason=body.reason, now=now)


def abort(state: State, body: ReasonBody, *, now: float, healthy: Health) -> State:
    return routing.abort(state, source="admin", reason=body.reason, now=now)


def rollback(state: State, body: FlipBody, *, now: float, healthy: Health) -> State:
    return routing.rollback(state, source="admin", reason=body.reason, now=now, healthy=healthy, force=body.force)


@dataclass(frozen=True, slots=True)
class Route:
    """One call: how it is served and how the OpenAPI document describes it."""

    method: Literal["GET", "POST"]
    path: str
    summary: str
    handler: Handler
    response: type[BaseModel] | None  # the 200 answer; None: not a model (the metrics text, this document, a page)
    body: type[RequestBody] | None = None
    media_type: str = "application/json"
    also: tuple[tuple[int, str, type[BaseModel]], ...] = ()  # other documented answers besides the usual errors


def post(
    path: str, summary: str, model: type[Body], decide: Decide[Body], receives: Receiver[Body] | None = None
) -> Route:
    return Route("POST", path, summary, mutation(model, decide, receives), StateView, body=model)


def dashboard_file(path: str, name: str, media_type: str, summary: str) -> Route:
    return Route("GET", path, summary, page.serve(name, media_type), None, media_type=media_type)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/state", "The routing state", get_state, StateView),
    post(
        "/switch",
        "Make the named colour active (no change if it already is)",
        SwitchBody,
        switch,
        switch_receives,
    ),
    post(
        "/promote",
        "Make the standby colour active, at once or (with steps) through a stepped promotion",
        PromoteBody,
        promote,
        to_standby,
    ),
    post(
        "/rollback",
        "Make the previous colour active again; during a shift or stepped promotion, abort it",
        FlipBody,
        rollback,
    ),
    post(
        "/shift",
        "Send a percent of ordinary traffic to the standby colour (ends a stepped promotion)",
        ShiftBody,
        shift,
        shift_receives,
    ),
    post("/pause", "Hold the stepped promotion at its current step (409 when none runs)", ReasonBody, pause),
    post("/resume", "Continue a paused stepped promotion (409 when none is paused)", ReasonBody, resume),
    post(
        "/abort",
        "All ordinary traffic back to the active colour and the stepped promotion ended, or an auto-promotion's wait "
        "(409 when nothing to abort)",
        ReasonBody,
        abort,
    ),
    post(
        "/release",
        "Record the release now deployed on the standby colour (with AUTO_PROMOTE_AFTER, it is then auto-promoted)",
        ReleaseBody,
        release,
    ),
    Route("GET", "/history", "The recent switches, newest first", get_history, HistoryView),
    Route("GET", "/healthz", "Liveness", healthz, StatusView),
    Route(
        "GET",
        "/readyz",
        "Readiness: state loaded, listening, not draining",
        readyz,
        StatusView,
        also=((503, "not ready", StatusView),),
    ),
    Route("GET", "/metrics", "Prometheus text exposition", metrics, None, media_type="text/plain"),
    Route("GET", "/openapi.json", "This document", openapi, None),
    dashboard_file(
        "/", "index.html", "text/html", "The dashboard: the state, the figures and the history, live, and buttons"
    ),
    dashboard_file("/dashboard/app.js", "app.js", "text/javascript", "The dashboard's script"),
    dashboard_file("/dashboard/style.css", "style.css", "text/css", "The dashboard's style"),
    Route(
        "GET",
        "/events",
        "Server-Sent Events: `state` and `history` (the answers of /state and /history) at once on every change, "
        "`figures` (the live figures, the store, an auto-promotion's wait) once a second, and on connecting the "
        "`series` of the last minutes' figures; never ends until the replica stops",
        events,
        None,
        media_type="text/event-stream",
        also=((503, "too many streams open on this replica, or it is shutting down", ErrorBody),),
    ),
)


def add_routes(app: web.Application, routes: tuple[Route, ...] = ROUTES) -> None:
    for route in routes:
        if route.method == "GET":
            app.router.add_get(route.path, route.handler)  # and HEAD, as every GET
        else:
            app.router.add_route(route.method, route.path, route.handler)
