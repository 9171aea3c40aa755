"""The admin API (aiohttp): read the state, flip it, health, readiness, metrics, and its own OpenAPI document.

Handlers validate input and delegate the decision to `routing` through the state holder; errors are JSON
`{"error": ...}` with a message a person can act on. It listens on its own port, never behind the Ingress.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from yarl import URL

from .core import routing
from .core.routing import MAX_REASON, Color, RoutingError
from .log import log
from .metrics import CONTENT_TYPE, Metrics
from .openapi import OPENAPI
from .settings import Settings, is_loopback_host
from .state import StateHolder
from .stores import StoreError

logger = logging.getLogger("bgproxy.admin")
# Room for a reason at its maximum length however a client encodes it: JSON may escape each character as a
# surrogate pair, 12 bytes (\ud83d\ude80), so 4 KiB refused bodies the OpenAPI document allows.
MAX_BODY = 16384

HOLDER = web.AppKey("holder", StateHolder)
METRICS = web.AppKey("metrics", Metrics)
SETTINGS = web.AppKey("settings", Settings)
ReadyCheck = Callable[[], bool]
READY: web.AppKey[ReadyCheck] = web.AppKey("ready")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, 413) as JSON, like ours."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return error(413, f"request body too large: at most {MAX_BODY} bytes")
    except web.HTTPMethodNotAllowed as exc:
        resp = error(
            405, f"{request.method} not allowed on {request.path}; use {', '.join(sorted(exc.allowed_methods))}"
        )
        resp.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        return resp
    except web.HTTPNotFound:
        return error(404, f"no such endpoint {request.path}; see /openapi.json")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error(exc.status, exc.reason)
        raise


def _authorized(request: web.Request) -> bool:
    token = request.app[SETTINGS].admin_token
    if token is None:
        return True
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.get_secret_value().encode())


def _cross_site(request: web.Request) -> str | None:
    """Why a mutating call looks like a browser sent it for another site, or None.

    The admin API sends no CORS headers, so a web page cannot read its answers, but a browser still *sends* a
    "simple" cross-site POST (a form, or `fetch` in no-cors mode) without asking first: any page an operator opens
    could flip traffic through a loopback admin port that has no token (the default, e.g. behind
    `kubectl port-forward`). Browsers name the page in `Origin` and `Sec-Fetch-Site`; curl and the CLI send neither.
    Without a token, a Host that is not a loopback name is refused too: that is a DNS-rebinding page.
    """
    origin = request.headers.get("Origin")
    if origin is not None:
        try:
            page = URL(origin)
            same = page.host is not None and (page.host, page.port) == (request.url.host, request.url.port)
        except ValueError:
            same = False
        if not same:
            return f"cross-origin request from {origin!r} refused: the admin API is not for web pages"
    if request.headers.get("Sec-Fetch-Site", "").lower() in ("cross-site", "same-site"):
        return "cross-site request refused: the admin API is not for web pages"
    if request.app[SETTINGS].admin_token is None and not is_loopback_host(request.url.host):
        return (
            f"request for Host {request.host!r} refused: without BGPROXY_ADMIN_TOKEN the admin API only takes "
            "flips addressed to 127.0.0.1, [::1] or localhost"
        )
    return None


def state_body(request: web.Request) -> dict[str, Any]:
    holder, settings = request.app[HOLDER], request.app[SETTINGS]
    body = holder.current.to_dict()
    urls = settings.upstreams()
    healthy = request.app[METRICS].healthy
    body["store"] = holder.store.describe()
    body["backends"] = {c.value: {"url": urls[c].url, "healthy": healthy[c]} for c in Color}
    return body


async def get_state(request: web.Request) -> web.Response:
    return web.json_response(state_body(request))


async def get_history(request: web.Request) -> web.Response:
    return web.json_response({"history": list(request.app[HOLDER].history)})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if request.app[READY]():
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "not ready"}, status=503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


async def _read_body(request: web.Request, *, required: tuple[str, ...]) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        if required:
            raise _BadRequest(f"expected a JSON object with {', '.join(repr(k) for k in required)}")
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise _BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _BadRequest("expected a JSON object")
    unknown = set(body) - {"to", "reason", "force"}
    if unknown:
        raise _BadRequest(f"unknown field(s) {', '.join(sorted(unknown))}; allowed: 'to', 'reason', 'force'")
    if not isinstance(body.get("force", False), bool):
        raise _BadRequest("'force' must be true or false")
    for key in required:
        if key not in body:
            raise _BadRequest(f"missing field {key!r}")
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise _BadRequest(f"'reason' must be a string of at most {MAX_REASON} characters")
    return body


class _BadRequest(Exception):
    pass


def _flip(kind: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        if not _authorized(request):
            return web.json_response(
                {"error": "missing or wrong bearer token: send 'Authorization: Bearer <BGPROXY_ADMIN_TOKEN>'"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="bgproxy"'},
            )
        refused = _cross_site(request)
        if refused is not None:
            log(logger, "flip_refused", level=logging.WARNING, kind=kind, reason=refused)
            return error(403, refused)
        try:
            body = await _read_body(request, required=("to",) if kind == "switch" else ())
            if kind != "switch" and "to" in body:
                raise _BadRequest(f"/{kind} takes no 'to'; use /switch to name a colour")
            to = Color.parse(body["to"]) if kind == "switch" else None
        except (_BadRequest, RoutingError) as exc:
            return error(400, str(exc))
        reason, force = body.get("reason", ""), body.get("force", False)
        healthy = request.app[METRICS].healthy

        def decide(state: routing.State) -> routing.State:
            now = time.time()
            if to is not None:
                return routing.switch(state, to, source="admin", reason=reason, now=now, healthy=healthy, force=force)
            flip = routing.promote if kind == "promote" else routing.rollback
            return flip(state, source="admin", reason=reason, now=now, healthy=healthy, force=force)

        holder = request.app[HOLDER]
        if not holder.loaded:
            return error(503, "not ready: the state is still being loaded from the store; try again shortly")
        before = holder.current
        try:
            after = await holder.change(decide)
        except RoutingError as exc:
            return error(409, str(exc))
        except StoreError as exc:
            log(logger, "flip_failed", level=logging.ERROR, kind=kind, error=str(exc))
            return error(503, f"the state store refused the change, nothing was switched: {exc}")
        if after is before:
            log(logger, "flip_noop", kind=kind, active=after.active.value)
        return web.json_response(state_body(request))

    return handler


def build_admin_app(
    settings: Settings, holder: StateHolder, metrics_: Metrics, ready: Callable[[], bool]
) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[json_errors])
    app[SETTINGS] = settings
    app[HOLDER] = holder
    app[METRICS] = metrics_
    app[READY] = ready
    app.router.add_get("/state", get_state)
    app.router.add_post("/switch", _flip("switch"))
    app.router.add_post("/promote", _flip("promote"))
    app.router.add_post("/rollback", _flip("rollback"))
    app.router.add_get("/history", get_history)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    return app
