"""State in a local JSON file, so the active colour survives a restart.

Written atomically (temp file, fsync, rename, fsync of the directory): after a crash at any point the file
holds either the old state or the new one. A file that cannot be parsed stops the start: silently
resetting to blue could send production traffic to a colour nobody chose.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path

from ..core.model import State
from .interface import SingleWriter, StoreConflict, StoreError


class FileStore(SingleWriter):
    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path

    async def load(self) -> State | None:
        return await asyncio.to_thread(self._load)

    def _load(self) -> State | None:
        # A process killed mid-write leaves its temp file behind; the state itself is whole either way.
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            try:
                stale.unlink()
            except OSError:
                pass
        return self._read()

    async def write(self, new: State, *, expected_revision: int) -> State:
        return await asyncio.to_thread(self._write, new, expected_revision)

    def describe(self) -> dict[str, object]:
        return {"backend": self.name, "path": str(self.path)}

    def _read(self) -> State | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read state file {self.path}: {exc.strerror}") from None
        try:
            return State.from_dict(json.loads(raw))
        except ValueError as exc:
            raise StoreError(
                f"state file {self.path} is corrupt ({exc}); fix it or remove it to start from BGPROXY_INITIAL_ACTIVE"
            ) from None

    def _write(self, new: State, expected_revision: int) -> State:
        current = self._read()
        if current is not None and current.revision != expected_revision:
            raise StoreConflict(current)
        data = json.dumps(new.to_dict(), indent=2).encode() + b"\n"
        directory = self.path.parent  # "." for a bare file name
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            tmp = None
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise StoreError(f"cannot write state file {self.path}: {exc.strerror or exc}") from None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        return new
