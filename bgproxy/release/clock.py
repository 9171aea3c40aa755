"""What every task of release control shares: it runs on its own clock, looks at the state (`tick`), then sleeps as
long as that look asked, or until the state changes. Its owner starts and stops it; a bug in one look is logged and
the look retried, so it cannot stop this replica's releases for good.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging

from ..core.model import State
from ..state import StateHolder


class StateClock(abc.ABC):
    def __init__(self, holder: StateHolder, *, name: str, logger: logging.Logger, retry: float) -> None:
        self.holder = holder
        self._name = name  # of the task, and (with "_failed") of the log line of a look that raised
        self._logger = logger
        self._retry = retry  # seconds before the next look after one that raised
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @abc.abstractmethod
    async def tick(self) -> float | None:
        """One look. Returns how long to wait before the next one (None: until the state changes)."""

    def start(self) -> None:
        self.holder.listeners.append(self._changed)
        self._task = asyncio.create_task(self._run(), name=f"bgproxy-{self._name}")

    async def stop(self) -> None:
        if self._changed in self.holder.listeners:
            self.holder.listeners.remove(self._changed)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _changed(self, old: State, new: State) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                delay = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug of ours must not stop this replica's releases for good
                self._logger.exception(f"{self._name.replace('-', '_')}_failed")
                delay = self._retry
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
