"""State kept in this process only: for the demo, tests, and single-replica setups that may forget."""

from __future__ import annotations

from ..core.model import State
from .interface import SingleWriter, StoreConflict


class MemoryStore(SingleWriter):
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

    def describe(self) -> dict[str, object]:
        return {"backend": self.name}
