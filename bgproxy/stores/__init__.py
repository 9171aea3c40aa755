"""Where the routing state lives between flips and restarts, behind one small interface.

`memory` forgets on restart, `file` survives it, `configmap` is shared by every replica. The state holder
only ever calls `load`, `write` (with the revision its decision was based on) and `changes`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

from ..core.routing import State

if TYPE_CHECKING:
    from ..metrics import Metrics
    from ..settings import Settings


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

    def describe(self) -> dict[str, object]:
        """What /state shows about the store: at least {"backend": name}."""

    async def close(self) -> None: ...


def open_store(settings: Settings, metrics: Metrics) -> Store:
    """The store the settings ask for; imports lazily so `memory` never loads the kubernetes client."""
    if settings.state_backend == "memory":
        from .memory import MemoryStore

        return MemoryStore()
    if settings.state_backend == "file":
        from .file import FileStore

        return FileStore(settings.state_file)
    from .configmap import ConfigMapStore

    return ConfigMapStore(settings.configmap_name, settings.namespace, metrics, timeout=settings.configmap_timeout)
