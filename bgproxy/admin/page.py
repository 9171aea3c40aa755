"""The dashboard's files (`dashboard/`: one page, its script and its style), served as the package installed them.

No CDN and no build step: an air-gapped cluster gets the same page. The page may run scripts and open connections
to its own origin only (Content-Security-Policy), and no other site may frame it, so its buttons cannot be
clicked through someone else's page.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from aiohttp import web

from .middleware import Handler

FILES = resources.files(__package__) / "dashboard"
HEADERS = {
    "Cache-Control": "no-cache",  # a new version of bgproxy serves its own page at once
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
}


@cache
def read(name: str) -> bytes:
    return (FILES / name).read_bytes()


def serve(name: str, content_type: str) -> Handler:
    """The handler of one of the dashboard's files."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=read(name), content_type=content_type, charset="utf-8", headers=HEADERS)

    return handler
