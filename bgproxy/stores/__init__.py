"""Where the routing state lives between flips and restarts, behind one small interface (`interface.py`).

`memory` forgets on restart, `file` survives it, `configmap` is shared by every replica; `open_store` picks one.
The state holder only ever calls `load`, `write` (with the revision its decision was based on) and `changes`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .interface import Store, StoreConflict, StoreError

if TYPE_CHECKING:
    from ..metrics import Metrics
    from ..settings import Settings

__all__ = ["Store", "StoreConflict", "StoreError", "open_store"]


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
