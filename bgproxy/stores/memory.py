"""State kept in this process only: for the demo, tests, and single-replica setups that may forget."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ..core.routing import State
from . import StoreConflict


class MemoryStore:
    name = "memory"

    def __init__(self) -> None:
        self._state: State | None = None

    async def load(self) -> State | None:
        return self._state

    async def write(self, new: State, *, expected_revision: int) -> State:
        if self._state is not None and self._state.revision != expected_revision:
            raise StoreConflict(self._state)
        self._state = new
        return new

    async def changes(self) -> AsyncIterator[State]:
        # Nobody else writes to this process's memory.
        await asyncio.Event().wait()
        yield  # type: ignore[misc]  # pragma: no cover - makes this an async generator

    def describe(self) -> dict[str, object]:
        return {"backend": self.name}

    async def close(self) -> None:
        return None
