"""The pre-promotion checks, run: each check's request against a colour's upstream, all at once, each bounded by its
own timeout, through one aiohttp session the app owns. What a check is and whether its answer passes is decided in
`core.checks`; a failure names the check and what came back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

import aiohttp

from ..core.addresses import Upstream
from ..core.checks import ChecksFailed, PromoteCheck
from ..core.model import Color
from ..log import log

logger = logging.getLogger("bgproxy.release")
BODY_LIMIT = 64 * 1024  # bytes of an answer a body pattern is matched against


class PromoteChecks:
    """`await checks.verify(colour)` raises ChecksFailed unless every check passes on that colour."""

    def __init__(self, checks: Sequence[PromoteCheck], upstreams: Mapping[Color, Upstream]) -> None:
        self.checks = tuple(checks)
        self.upstreams = upstreams
        self._session: aiohttp.ClientSession | None = None

    @property
    def configured(self) -> bool:
        return bool(self.checks)

    async def start(self) -> None:
        if self.checks:
            # No cookies kept between checks, no redirects followed: each check sees what a first visitor would.
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(), headers={"User-Agent": "bgproxy-promote-check"}
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def failure(self, color: Color) -> str | None:
        """What failed on `color` (the first failing check in list order, and how many more failed); None: all
        passed (or none are configured)."""
        if not self.checks:
            return None
        found = await asyncio.gather(*(self._run(check, color) for check in self.checks))
        failed = [(i, check, what) for i, (check, what) in enumerate(zip(self.checks, found, strict=True)) if what]
        if not failed:
            return None
        index, check, what = failed[0]
        more = f" (and {len(failed) - 1} more of the {len(self.checks)} checks)" if len(failed) > 1 else ""
        return f"pre-promotion check {index + 1} ({check.name}) failed on {color.value}: {what}{more}"

    async def verify(self, color: Color) -> None:
        problem = await self.failure(color)
        if problem is not None:
            log(logger, "promote_checks_failed", level=logging.WARNING, color=color.value, problem=problem)
            raise ChecksFailed(problem)

    async def _run(self, check: PromoteCheck, color: Color) -> str | None:
        assert self._session is not None
        url = self.upstreams[color].url + check.path
        try:
            async with asyncio.timeout(check.timeout):  # the whole exchange, body included
                async with self._session.request(
                    check.method, url, headers=check.headers, allow_redirects=False
                ) as resp:
                    body = await _head_of(resp)
                    status = resp.status
        except TimeoutError:
            return f"no answer within {check.timeout:g}s"
        except aiohttp.ClientConnectionError as exc:
            return f"cannot connect to {self.upstreams[color].url}: {exc}"
        except aiohttp.ClientError as exc:
            return f"{type(exc).__name__}: {exc}"
        return check.failure(status, body.decode("utf-8", "replace"))


async def _head_of(resp: aiohttp.ClientResponse) -> bytes:
    """Up to BODY_LIMIT bytes of the body: a check must not buffer whatever a broken upstream streams at it."""
    head = bytearray()
    while len(head) < BODY_LIMIT:
        chunk = await resp.content.read(BODY_LIMIT - len(head))
        if not chunk:
            break
        head += chunk
    return bytes(head)
