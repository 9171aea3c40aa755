"""What every store is: the `Store` interface the state holder calls, the errors it may raise, and the part
that stores this process alone writes share. The stores import this module, never the package's picker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from ..core.model import State


class StoreError(Exception):
    """The store could not be read or written; the message says what to fix."""


class StoreConflict(StoreError):
    """Someone else wrote first: decide again from `current`, never overwrite blindly."""

    def __init__(self, current: State) -> None:
        super().__init__(f"state changed concurrently (now revision {current.revision})")
        self.current = current


class Store(Protocol):
    name: str

    async def load(self) -> State | None:
        """The stored state, or None when nothing was stored yet."""

    async def write(self, new: State, *, expected_revision: int) -> State:
        """Store `new` if the stored revision is still `expected_revision`; returns what was stored."""

    def changes(self) -> AsyncIterator[State]:
        """States written by others (other replicas, GitOps), in the order they happened; runs until cancelled."""

    def on_owned(self, callback: Callable[[State], None]) -> None:
        """Call `callback` with each change made outside bgproxy (an edit by a person or Git) that this replica's
        write settled: exactly one replica's write wins, and that replica owns the change (its webhook, its Event).
        Changes written through `write` are owned by the replica that wrote them and are not reported here."""

    def describe(self) -> dict[str, object]:
        """What /state shows about the store: at least {"backend": name}."""

    async def close(self) -> None:
        """Stop what the store runs (a watch, its connections); the stored state stays as it is."""


class SingleWriter:
    """The `changes`, `on_owned` and `close` of a store this process alone writes: nothing changes behind its back,
    so every change goes through `write` and no outside change is ever owned."""

    async def changes(self) -> AsyncIterator[State]:
        await asyncio.Event().wait()  # until cancelled
        yield  # type: ignore[misc]  # pragma: no cover - makes this an async generator

    def on_owned(self, callback: Callable[[State], None]) -> None:
        return None

    async def close(self) -> None:
        return None
