"""What every notification of a change shares: the `Notice` (the change, named and identified once) and the `Outbox`
that delivers notices in the background, so that a slow or dead receiver never delays a flip or the data plane.

A holder listener only puts a notice into the outbox's bounded queue (full: the notice is dropped and counted); the
outbox's task sends one notice at a time, with a few tries and a backoff between them, then counts it as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from prometheus_client import Counter

from ..core.model import State
from ..core.routing import event
from ..log import log
from ..metrics import NOTICE_RESULTS

logger = logging.getLogger("bgproxy.notify")
QUEUE_SIZE = 256  # notices waiting per receiver; changes are rare (people, timers), so this is minutes of them
TRIES = 3  # a notice is sent at most this often
BACKOFF = 1.0  # seconds before the second try; doubles before each further one

Result = Literal["ok", "failed", "dropped"]  # NOTICE_RESULTS


class DeliveryError(Exception):
    """A try did not succeed; the message says why (a status, a refusal, an unreachable receiver)."""


@dataclass(frozen=True, slots=True)
class Notice:
    """One change, as every notifier tells it. `id` comes from the state alone (its revision and the moment it was
    made, which every replica reads from the store alike), so a receiver can drop a repeat."""

    id: str
    event: str
    old: State
    new: State

    @classmethod
    def of(cls, old: State, new: State) -> Notice:
        return cls(change_id(new), event(old, new), old, new)


def change_id(state: State) -> str:
    return f"{state.revision}-{state.updated_at:.6f}"


class Outbox:
    """A bounded queue of notices and the task that sends them: started and stopped by its owner (the notifier),
    cancelled and awaited at stop; a bug in one send is logged, counted as failed, and the next notice goes on."""

    def __init__(
        self,
        what: str,
        send: Callable[[Notice], Awaitable[None]],
        counter: Counter,
        *,
        timeout: float | None,
        size: int = QUEUE_SIZE,
        tries: int = TRIES,
        backoff: float = BACKOFF,
        fields: dict[str, object] | None = None,
    ) -> None:
        self.what = what  # for logs: `webhook`, `kubernetes_event`
        self.send = send
        self.timeout = timeout  # seconds per try; None: `send` bounds itself
        self.tries = tries
        self.backoff = backoff
        self.fields = fields or {}  # logged with every line (which receiver)
        self._counts = {r: counter.labels(r) for r in NOTICE_RESULTS}
        self._queue: asyncio.Queue[Notice] = asyncio.Queue(maxsize=size)
        self._task: asyncio.Task[None] | None = None
        self._sending = False  # a notice is out of the queue and not yet counted

    def put(self, notice: Notice) -> None:
        """Never waits: a full queue drops the notice (counted, logged)."""
        try:
            self._queue.put_nowait(notice)
        except asyncio.QueueFull:
            self._counts["dropped"].inc()
            log(
                logger,
                f"{self.what}_dropped",
                level=logging.WARNING,
                id=notice.id,
                change=notice.event,
                queued=self._queue.qsize(),
                why="queue full: the receiver is slower than the changes",
                **self.fields,
            )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"bgproxy-{self.what}")
        self._task.add_done_callback(self._ended)

    async def stop(self) -> None:
        """Cancel the task; what is queued or was being sent counts as dropped (it may have arrived unanswered)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        unsent = self._queue.qsize() + self._sending
        self._sending = False
        if unsent:
            self._counts["dropped"].inc(unsent)
            log(logger, f"{self.what}_unsent", level=logging.WARNING, count=unsent, why="stopping", **self.fields)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log(logger, f"{self.what}_task_died", level=logging.ERROR, error=repr(task.exception()), **self.fields)

    async def _run(self) -> None:
        while True:
            notice = await self._queue.get()
            self._sending = True
            try:
                result = await self.deliver(notice)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug of ours: this notice is lost, the next ones still go out
                logger.exception(f"{self.what}_failed_unexpectedly")
                result = "failed"
            self._sending = False
            self._counts[result].inc()

    async def deliver(self, notice: Notice) -> Result:
        """Send one notice: up to `tries` tries, waiting `backoff`, then twice that, ... between them."""
        wait = self.backoff
        for attempt in range(1, self.tries + 1):
            try:
                async with asyncio.timeout(self.timeout):
                    await self.send(notice)
            except DeliveryError as exc:
                error = str(exc)
            except TimeoutError:
                error = f"no answer within {self.timeout:g}s" if self.timeout is not None else "timed out"
            else:
                log(logger, f"{self.what}_sent", level=logging.DEBUG, id=notice.id, tries=attempt, **self.fields)
                return "ok"
            last = attempt == self.tries
            log(
                logger,
                f"{self.what}_failed" if last else f"{self.what}_retry",
                level=logging.WARNING if last else logging.DEBUG,
                id=notice.id,
                change=notice.event,
                tries=attempt,
                error=error,
                **({} if last else {"retry_in": wait}),
                **self.fields,
            )
            if last:
                break
            await asyncio.sleep(wait)
            wait *= 2
        return "failed"
