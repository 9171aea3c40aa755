"""`GET /events`: the Server-Sent Events stream the dashboard lives on.

One hub per admin app hears every state change from the holder and samples the live figures once a second; each
event is encoded once and queued to every open stream. A stream starts with the full state, the history and the
last minutes of figures, so a page (re)connecting needs nothing else. The number of streams is bounded, a stream
that cannot keep up is closed (EventSource reconnects and starts again from the full state), and the app's shutdown
ends every stream first, so a stop never waits on a dashboard left open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..core.model import State
from ..log import log
from ..state import StateHolder
from .middleware import error

logger = logging.getLogger("bgproxy.admin")

MAX_STREAMS = 32  # dashboards open at once on one replica; more are refused (503) rather than slow every one
TICK = 1.0  # seconds between two samples of the live figures
SERIES = 300  # samples kept (five minutes at one a second): what a page opened now draws at once
RETRY_MS = 1000  # how soon EventSource reconnects after the stream ends (a restart, a stuck stream closed)
BACKLOG = 32  # events queued for one stream; beyond that it is stuck, and closed
WRITE_TIMEOUT = 10.0  # seconds one write may wait on a client that reads nothing before its stream is closed
SAMPLED = ("rps", "error_rate", "p50", "p99", "inflight")  # per colour, in each sample of the series

Json = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Views:
    """What the events carry, rendered by the routes (the same answers as `GET /state` and `GET /history`)."""

    state: Callable[[], Json]
    history: Callable[[], Json]


def encode(event: str, data: object) -> bytes:
    # Compact JSON has no newline, so one `data:` line carries it whole.
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def figures_of(state: Json) -> dict[str, Any]:
    """The parts of the state that move without a new revision (live figures, the store, an auto-promotion's wait),
    with the time they were read."""
    return {"at": time.time(), **{k: state[k] for k in ("backends", "store", "auto_promote") if k in state}}


def sample_of(figures: Json) -> dict[str, Any]:
    """One point of the series: the time and each colour's charted figures."""
    backends = figures["backends"]
    return {"at": figures["at"], **{c: {k: b[k] for k in SAMPLED} for c, b in backends.items()}}


class EventHub:
    def __init__(self, holder: StateHolder, views: Views) -> None:
        self.holder = holder
        self.views = views
        self.series: deque[dict[str, Any]] = deque(maxlen=SERIES)
        self.streams: set[asyncio.Queue[bytes | None]] = set()
        self.closing = False
        self._change_pending = False
        self._told_loaded = False  # the state has been sent since the store was loaded (that is not a change)

    def attach(self, app: web.Application) -> None:
        """Run with `app`: hear the holder and sample while it serves; end every stream when it shuts down."""
        app.cleanup_ctx.append(self._running)
        app.on_shutdown.append(self._close)

    async def _running(self, app: web.Application) -> AsyncIterator[None]:
        self.holder.listeners.append(self._changed)
        task = asyncio.create_task(self._sample(), name="bgproxy-dashboard-figures")
        try:
            yield
        finally:
            if self._changed in self.holder.listeners:
                self.holder.listeners.remove(self._changed)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _close(self, app: web.Application) -> None:
        self.closing = True
        for queue in self.streams:
            _end(queue)

    def _changed(self, old: State, new: State) -> None:
        # After the other listeners (the live figures mark their window), and once for a burst of changes: the state
        # event carries the whole state, so the last one says everything.
        if self.streams and not self._change_pending:
            self._change_pending = True
            asyncio.get_running_loop().call_soon(self._publish_change)

    def _publish_change(self) -> None:
        self._change_pending = False
        try:
            self._broadcast(encode("state", self.views.state()) + encode("history", self.views.history()))
        except Exception:  # a bug of ours: the streams miss a change, the next one (or a reconnect) repairs it
            logger.exception("dashboard_event_failed")

    async def _sample(self) -> None:
        while True:
            try:
                self._tick()
            except Exception:  # a bug of ours must not stop the figures for good
                logger.exception("dashboard_figures_failed")
            await asyncio.sleep(TICK)

    def _tick(self) -> None:
        if not self.holder.loaded:
            return
        state = self.views.state()
        figures = figures_of(state)
        self.series.append(sample_of(figures))
        if not self._told_loaded:
            # Streams opened while the store was loading have no state yet; loading is not a change they hear of.
            self._told_loaded = True
            self._broadcast(encode("state", state) + encode("history", self.views.history()))
        self._broadcast(encode("figures", figures))

    def _broadcast(self, data: bytes) -> None:
        stuck = []
        for queue in self.streams:
            try:
                queue.put_nowait(data)
            except asyncio.QueueFull:
                stuck.append(queue)
        for queue in stuck:  # told to end once, and no longer sent to
            log(logger, "dashboard_stream_stuck", level=logging.WARNING, backlog=BACKLOG)
            self.streams.discard(queue)
            _end(queue)

    def opening(self) -> bytes:
        """What a new stream starts with: the reconnect delay, the series, then (once loaded) state and history."""
        out = f"retry: {RETRY_MS}\n\n".encode() + encode("series", list(self.series))
        if self.holder.loaded:
            out += encode("state", self.views.state()) + encode("history", self.views.history())
        return out

    async def stream(self, request: web.Request) -> web.StreamResponse:
        if self.closing:
            return error(503, "shutting down; the dashboard reconnects by itself")
        if len(self.streams) >= MAX_STREAMS:
            return error(503, f"too many event streams open on this replica (at most {MAX_STREAMS}); close a tab")
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(BACKLOG)
        self.streams.add(queue)  # before the opening: a change from here on is queued, none is missed
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # an nginx in front must pass each event on at once
            }
        )
        resp.force_close()  # a stream ends only to be reconnected: its connection is not kept for another request
        try:
            await resp.prepare(request)
            data: bytes | None = self.opening()
            while data is not None:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await resp.write(data)
                data = await queue.get()
            async with asyncio.timeout(WRITE_TIMEOUT):
                await resp.write_eof()
        except ConnectionError:
            pass  # the page went away: its stream ends here
        except TimeoutError:
            # A client that reads nothing: let go of its connection, whatever was half written.
            log(logger, "dashboard_stream_stuck", level=logging.WARNING, write_timeout=WRITE_TIMEOUT)
            if request.transport is not None:
                request.transport.close()
        finally:
            self.streams.discard(queue)
        return resp


HUB = web.AppKey("event_hub", EventHub)


def _end(queue: asyncio.Queue[bytes | None]) -> None:
    """Drop what a stream has not sent yet and tell it to end."""
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(None)
