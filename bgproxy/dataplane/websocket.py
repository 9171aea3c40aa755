"""Just enough of RFC 6455 for a proxy: where frames begin, and a close frame of our own.

A tunnel is a byte pipe, but at the end of a drain bgproxy says goodbye with a close frame (1001, "going
away"), and a frame may only go between frames. `FrameTracker` follows frame headers in one direction
without buffering payloads, so the drain knows whether it is between frames.
"""

from __future__ import annotations

import os
import struct
from typing import Final

GOING_AWAY: Final = 1001


class FrameTracker:
    __slots__ = ("_header", "_remaining")

    def __init__(self) -> None:
        self._remaining = 0  # payload bytes of the current frame still to come
        self._header = b""  # a frame header split across reads

    @property
    def at_boundary(self) -> bool:
        return self._remaining == 0 and not self._header

    def feed(self, data: bytes) -> None:
        n = len(data)
        pos = min(self._remaining, n)
        remaining = self._remaining - pos
        while remaining == 0 and pos < n:
            header = self._header + data[pos : pos + 14]
            if len(header) < 2:
                self._header, self._remaining = header, 0
                return
            length = header[1] & 0x7F
            need = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if header[1] & 0x80 else 0)
            if len(header) < need:
                self._header, self._remaining = header, 0
                return
            if length == 126:
                length = struct.unpack_from("!H", header, 2)[0]
            elif length == 127:
                length = struct.unpack_from("!Q", header, 2)[0]
            pos += need - len(self._header)
            self._header = b""
            take = min(length, n - pos)
            pos += take
            remaining = length - take
        self._remaining = remaining


def close_frame(code: int = GOING_AWAY, *, masked: bool) -> bytes:
    """A close frame; frames from the client side (to the upstream) must be masked."""
    payload = struct.pack("!H", code)
    if not masked:
        return bytes((0x88, len(payload))) + payload
    mask = os.urandom(4)
    return bytes((0x88, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
