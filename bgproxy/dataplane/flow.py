"""Flow control of a client connection's reads: several reasons to pause may overlap; reading resumes when none is
left, and never once the connection was refused (nothing after a refused request is read).

The upstream side's own pause (a client whose socket is full) is a plain flag on the upstream connection.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Final


class Pause(enum.IntFlag):
    """Why the client side is not being read."""

    UPSTREAM_FULL = 1  # the upstream's write buffer is full: the body must wait
    QUEUE = 2  # requests are pipelined behind the one being answered
    PENDING = 4  # body bytes held while no upstream connection is attached (or a websocket is not open yet)


# Module constants for the per-request path: Final, so that compiled each is a C static, not a class attribute
# lookup (nor a lookup in the module's dict).
UPSTREAM_FULL: Final = Pause.UPSTREAM_FULL
QUEUE: Final = Pause.QUEUE
PENDING: Final = Pause.PENDING
PENDING_LIMIT: Final = 256 * 1024  # request body bytes held while no upstream connection is attached


class ReadGate:
    """Pauses and resumes one transport's reading by reason."""

    __slots__ = ("reasons", "stopped", "transport")

    def __init__(self) -> None:
        self.reasons = 0
        self.stopped = False  # a refused connection: reading never resumes
        self.transport: asyncio.Transport | None = None

    def pause(self, reason: int) -> None:
        if not self.reasons and not self.stopped and self.transport is not None:
            self.transport.pause_reading()
        self.reasons |= reason

    def resume(self, reason: int) -> None:
        if self.stopped:
            return
        was = self.reasons
        self.reasons &= ~reason
        if was and not self.reasons and self.transport is not None:
            self.transport.resume_reading()

    def stop(self) -> None:
        if not self.stopped and self.transport is not None:
            self.transport.pause_reading()
        self.stopped = True
