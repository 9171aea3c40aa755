"""Many requests through the proxy, fast: keep-alive connections that speak bytes and may pipeline, for the tests
that count colours over thousands of requests (weights, sticky buckets, a stepped promotion under load)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tests.support.servers import TIMEOUT, RawClient


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    color: str  # the X-Bg-Color header ("" when absent)
    body: bytes
    set_cookies: tuple[str, ...]  # every Set-Cookie line's value, in order
    sent: float  # time.time() when the request was written
    done: float  # time.time() when its response was read

    def sticky(self, name: str = "bg-sticky") -> list[int]:
        """The buckets this answer handed out in Set-Cookie `name=...` lines."""
        prefix = f"{name}="
        return [int(c[len(prefix) :].split(";", 1)[0]) for c in self.set_cookies if c.startswith(prefix)]


def get(path: str = "/", *headers: str) -> bytes:
    """A GET request's bytes, with extra header lines such as "Cookie: bg-sticky=5"."""
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()


class Connection(RawClient):
    """One keep-alive client connection to the proxy, reading responses into `Answer`s."""

    async def exchange(self, requests: Sequence[bytes]) -> list[Answer]:
        """Send the requests pipelined in one write, read their responses in order."""
        sent = time.time()
        self.writer.write(b"".join(requests))
        answers = []
        async with asyncio.timeout(TIMEOUT):
            await self.writer.drain()
            for _ in requests:
                answers.append(await self._response(sent))
        return answers

    async def _response(self, sent: float) -> Answer:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        color, length, cookies = "", 0, []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "x-bg-color":
                color = value
            elif name == "content-length":
                length = int(value)
            elif name == "set-cookie":
                cookies.append(value)
            elif name == "transfer-encoding":
                raise AssertionError("the test upstreams answer with Content-Length")
        body = await self.reader.readexactly(length) if length else b""
        return Answer(status, color, body, tuple(cookies), sent, time.time())


async def send_all(port: int, requests: Sequence[bytes], *, connections: int = 16, batch: int = 32) -> list[Answer]:
    """Every request through `connections` keep-alive connections, `batch` pipelined at a time; the answers in the
    order of the requests."""
    answers: list[Answer | None] = [None] * len(requests)
    chunks = [range(i, min(i + batch, len(requests))) for i in range(0, len(requests), batch)]
    queue = iter(chunks)

    async def worker() -> None:
        conn = await Connection.connect(port)
        try:
            for chunk in queue:
                for i, answer in zip(chunk, await conn.exchange([requests[i] for i in chunk]), strict=True):
                    answers[i] = answer
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(min(connections, len(chunks)))))
    assert all(a is not None for a in answers)
    return answers  # type: ignore[return-value]


async def keep_sending(
    port: int, stop: asyncio.Event, make: Callable[[], bytes], on_answer: Callable[[Answer], None]
) -> list[str]:
    """One client: requests on one keep-alive connection, one at a time, until `stop`; returns the connection
    errors met (a broken connection is reopened)."""
    errors: list[str] = []
    conn = await Connection.connect(port)
    try:
        while not stop.is_set():
            try:
                (answer,) = await conn.exchange([make()])
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
                errors.append(repr(exc))
                await conn.close()
                conn = await Connection.connect(port)
                continue
            on_answer(answer)
    finally:
        await conn.close()
    return errors
