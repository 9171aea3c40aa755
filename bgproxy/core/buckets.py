"""Sticky buckets: each ordinary request belongs to a bucket 0-99, and goes to the standby colour when its bucket is
below the weight, so a client that keeps its bucket keeps its colour while the weight holds (and raising the weight
never moves it back).

A bucket comes from the sticky cookie when it is valid, else from a hash of the sticky header (the same value lands
in the same bucket on every replica, across restarts), else from a fresh draw that the response hands back as the
cookie. Pure: the draw itself is the caller's.
"""

from __future__ import annotations

import zlib
from typing import Final

BUCKETS: Final = 100  # one per percent of weight


def from_cookie(value: bytes | str | None) -> int | None:
    """The bucket a sticky cookie holds, or None when it holds none (absent, empty, not 0-99 in plain digits)."""
    if not value:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if not (1 <= len(text) <= 2 and text.isascii() and text.isdigit()):
        return None
    return int(text)


def from_header(value: bytes) -> int:
    """A stable bucket for a header value (a user id, a session): the same on every replica and after restarts."""
    return zlib.crc32(value) % BUCKETS


def set_cookie_line(name: str, bucket: int) -> bytes:
    """The response header line that hands a freshly drawn bucket to the client."""
    return f"Set-Cookie: {name}={bucket}; Path=/; HttpOnly; SameSite=Lax\r\n".encode()
