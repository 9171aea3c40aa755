"""What every admin request goes through: errors as JSON, and the guard of every mutating call.

The guard applies to every route whose method is not a safe one, so a call added later cannot be left open:
the bearer token when one is set (401), then the refusal of requests a browser sends for another site (403).
"""

from __future__ import annotations

import hmac
import logging
import traceback
from collections.abc import Awaitable, Callable

from aiohttp import web
from yarl import URL

from ..core.addresses import is_loopback_host
from ..log import log
from .body import MAX_BODY, BadBody
from .keys import SETTINGS

logger = logging.getLogger("bgproxy.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
UNAUTHORIZED = "missing or wrong bearer token: send 'Authorization: Bearer <BGPROXY_ADMIN_TOKEN>'"


def needs_guard(method: str) -> bool:
    """Whether a call changes something, and so needs the token and a same-site caller (also in the document)."""
    return method.upper() not in SAFE_METHODS


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as `{"error": ...}`: a bad body (400), aiohttp's own 404, 405 and 413, and anything unforeseen."""
    try:
        return await handler(request)
    except BadBody as exc:
        resp = error(400, str(exc))
        if exc.close_connection:
            # Answer with Connection: close, and give up the rest of the body: aiohttp would otherwise try to drain
            # it after the answer, meet the same error again and log it as unhandled.
            request.content.feed_eof()
            resp.force_close()
        return resp
    except web.HTTPRequestEntityTooLarge:
        return error(413, f"request body too large: at most {MAX_BODY} bytes")
    except web.HTTPMethodNotAllowed as exc:
        allowed = sorted(exc.allowed_methods)
        resp = error(405, f"{request.method} not allowed on {request.path}; use {', '.join(allowed)}")
        resp.headers["Allow"] = ",".join(allowed)
        return resp
    except web.HTTPNotFound:
        return error(404, f"no such endpoint {request.path}; see /openapi.json")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error(exc.status, exc.reason)
        raise
    except Exception as exc:  # a bug of ours: still JSON, and logged with its traceback
        log(
            logger,
            "admin_error",
            level=logging.ERROR,
            method=request.method,
            path=request.path,
            error=repr(exc),
            traceback=traceback.format_exc(),
        )
        return error(500, "internal error in the admin API; the logs have the details")


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The token, then the cross-site checks, for every mutating route (unknown paths and methods fall through)."""
    if not needs_guard(request.method) or request.match_info.http_exception is not None:
        return await handler(request)
    if not _authorized(request):
        return web.json_response(
            {"error": UNAUTHORIZED}, status=401, headers={"WWW-Authenticate": 'Bearer realm="bgproxy"'}
        )
    refused = _cross_site(request)
    if refused is not None:
        log(logger, "flip_refused", level=logging.WARNING, path=request.path, reason=refused)
        return error(403, refused)
    return await handler(request)


def _authorized(request: web.Request) -> bool:
    token = request.app[SETTINGS].admin_token
    if token is None:
        return True
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    # aiohttp keeps undecodable header bytes as surrogate escapes: compare the bytes that were sent.
    given = value.strip().encode("utf-8", "surrogateescape")
    return scheme.lower() == "bearer" and hmac.compare_digest(given, token.get_secret_value().encode())


def _cross_site(request: web.Request) -> str | None:
    """Why a mutating call looks like a browser sent it for another site, or None.

    The admin API sends no CORS headers, so a web page cannot read its answers, but a browser still *sends* a
    "simple" cross-site POST (a form, or `fetch` in no-cors mode) without asking first: any page an operator opens
    could flip traffic through a loopback admin port that has no token (the default, e.g. behind
    `kubectl port-forward`). Browsers name the page in `Origin` and `Sec-Fetch-Site`; curl and the CLI send neither.
    Without a token, a Host that is not a loopback name is refused too: that is a DNS-rebinding page.
    """
    authority = host_and_port(request.host, default_port=443 if request.secure else 80)
    origin = request.headers.get("Origin")
    if origin is not None and (authority is None or _origin_authority(origin) != authority):
        return f"cross-origin request from {origin!r} refused: the admin API is not for web pages"
    if request.headers.get("Sec-Fetch-Site", "").lower() in ("cross-site", "same-site"):
        return "cross-site request refused: the admin API is not for web pages"
    if request.app[SETTINGS].admin_token is None and (authority is None or not is_loopback_host(authority[0])):
        return (
            f"request for Host {request.host!r} refused: without BGPROXY_ADMIN_TOKEN the admin API only takes "
            "flips addressed to 127.0.0.1, [::1] or localhost"
        )
    return None


def _origin_authority(origin: str) -> tuple[str, int] | None:
    try:
        page = URL(origin)
        host, port = page.host, page.port
    except ValueError:  # UnicodeError (IDNA) is a ValueError too
        return None
    return None if host is None or port is None else (host.lower(), port)


def host_and_port(authority: str, *, default_port: int) -> tuple[str, int] | None:
    """A Host header as (lower-case host, port), or None when it is not a well-formed one."""
    if authority.startswith("["):  # an IPv6 literal: [::1] or [::1]:9090
        host, bracket, port = authority[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            return None
        port = port[1:]
    else:
        host, _, port = authority.partition(":")
        if ":" in port:
            return None
    if not host or not host.isascii() or any(c in host for c in " /\\@[]"):
        return None
    if port and not (port.isascii() and port.isdigit() and len(port) <= 5):
        return None
    number = int(port) if port else default_port
    return (host.lower(), number) if 0 < number < 65536 else None
