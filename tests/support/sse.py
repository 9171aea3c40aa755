"""A Server-Sent Events reader for the tests: the admin API's `GET /events`, read the way EventSource reads it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.support.servers import TIMEOUT


@dataclass
class Event:
    name: str
    data: Any  # the JSON of its data lines; None for a block without data (`retry:` alone)
    retry: int | None
    at: float  # time.monotonic() when it was read whole


class EventStream:
    """One open `GET /events`; `next()` reads the next event (bounded)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, *, within: float = TIMEOUT) -> Event:
        name, data, retry = "message", [], None
        async with asyncio.timeout(within):
            while True:
                line = await self.response.content.readline()
                if not line:
                    raise EOFError("the event stream ended")
                text = line.decode().rstrip("\r\n")
                if text:
                    field, _, value = text.partition(":")
                    value = value.removeprefix(" ")
                    if field == "event":
                        name = value
                    elif field == "data":
                        data.append(value)
                    elif field == "retry":
                        retry = int(value)
                    continue
                if data or retry is not None:
                    payload = json.loads("\n".join(data)) if data else None
                    return Event(name, payload, retry, time.monotonic())

    async def until(self, what: str, ok: Callable[[Event], bool], *, within: float = TIMEOUT) -> Event:
        """Read events until one satisfies `ok`; fails the test after `within` seconds."""
        end = time.monotonic() + within
        while True:
            left = end - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {what} within {within}s")
            try:
                event = await self.next(within=left)
            except TimeoutError:
                pytest.fail(f"no {what} within {within}s")
            if ok(event):
                return event

    async def ended(self, *, within: float = TIMEOUT) -> bool:
        """True once the server ended the stream (cleanly), within the bound."""
        async with asyncio.timeout(within):
            while True:
                if not await self.response.content.readline():
                    return True
