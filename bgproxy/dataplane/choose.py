"""The colour of one request, decided once when its head is complete, on the state object of that instant.

A request carrying the preview header or cookie goes where it asks, if the preview policy admits it. Ordinary
requests go to the active colour while the weight is 0 (the common case is decided inline by `read_request`,
without a call); while the weight splits traffic, by their sticky bucket: the sticky cookie, else a hash of the
sticky header, else a fresh draw handed back as the cookie. The rules are the pure core's (`routing.choose`,
`PreviewPolicy.admit`, `buckets`).
"""

from __future__ import annotations

import random
from typing import Protocol

from ..core import buckets
from ..core.model import MAX_WEIGHT, Color, State
from ..core.preview import PreviewPolicy, cookie_value, forwarded_client
from ..core.routing import choose, preview_color
from .pool import UpstreamPool


class CurrentState(Protocol):
    """Where the state of this instant is read: the one object a change swaps."""

    current: State


class Chooser:
    def __init__(
        self,
        state: CurrentState,
        pools: dict[Color, UpstreamPool],
        *,
        preview_cookie: str,
        policy: PreviewPolicy,
        sticky_cookie: str,
    ) -> None:
        self.state = state
        self.pools = pools
        self.preview_cookie = preview_cookie
        self.preview_bytes = preview_cookie.encode()
        self.policy = policy
        self.sticky_cookie = sticky_cookie
        self.sticky_bytes = sticky_cookie.encode()
        # The Set-Cookie line of each bucket, made once: under a split every request without a bucket gets one.
        self.cookie_lines = (
            [buckets.set_cookie_line(sticky_cookie, b) for b in range(buckets.BUCKETS)] if sticky_cookie else []
        )

    def choose(
        self,
        state: State,
        preview: bytes | None,
        cookie: bytes | None,
        sticky: bytes | None,
        xff: bytes | None,
        peer: bytes,
    ) -> tuple[UpstreamPool, bytes, bool]:
        """The pool of the colour that serves this request, the Set-Cookie line its response carries (or b""), and
        whether it goes there as a preview (not live traffic: it does not keep a colour from being drained)."""
        # (bytes.find, not `in`: `in` first tries the needle as an int and formats the TypeError it clears)
        if preview is not None or (cookie is not None and cookie.find(self.preview_bytes) >= 0):
            asked = preview_color(state, self._preview(preview, cookie, xff, peer))
            if asked is not None:
                return self.pools[asked], b"", True
        weight = state.weight
        if weight <= 0 or weight >= MAX_WEIGHT:
            return self.pools[choose(state, None, 0)], b"", False
        bucket = None
        if cookie is not None and self.sticky_bytes and cookie.find(self.sticky_bytes) >= 0:
            bucket = buckets.from_cookie(cookie_value(cookie.decode("latin-1"), self.sticky_cookie))
        if bucket is None and sticky:  # an empty value is no id: hashed, it would put every such client in one bucket
            bucket = buckets.from_header(sticky)
        line = b""
        if bucket is None:
            bucket = int(random.random() * buckets.BUCKETS)  # (random() is C; randrange is Python code, ~20x slower)
            if self.sticky_cookie:
                line = self.cookie_lines[bucket]
        return self.pools[choose(state, None, bucket)], line, False

    def _preview(self, preview: bytes | None, cookie: bytes | None, xff: bytes | None, peer: bytes) -> str | None:
        """The preview value a request may route by (the header wins over the cookie), or None/"" when it may not."""
        if preview is not None:
            value: str | None = preview.decode("latin-1")
        else:
            assert cookie is not None
            value = cookie_value(cookie.decode("latin-1"), self.preview_cookie)
        if not value:
            return None
        policy = self.policy
        if not policy.open:
            client = forwarded_client(xff.decode("latin-1") if xff else None, peer.decode())
            return policy.admit(value, client)
        return value
