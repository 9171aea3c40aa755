"""The colour of one request, decided once when its head is complete, on the state object of that instant.

Ordinary requests go to the active colour; a request carrying the preview header or cookie goes where it asks, if
the preview policy admits it (the rules are the pure core's: `routing.choose`, `PreviewPolicy.admit`).
"""

from __future__ import annotations

from typing import Protocol

from ..core.preview import PreviewPolicy, cookie_value, forwarded_client
from ..core.routing import Color, State, choose
from .pool import UpstreamPool


class CurrentState(Protocol):
    """Where the state of this instant is read: the one object a flip swaps."""

    current: State


class Chooser:
    def __init__(
        self,
        state: CurrentState,
        pools: dict[Color, UpstreamPool],
        *,
        preview_cookie: str,
        policy: PreviewPolicy,
    ) -> None:
        self.state = state
        self.pools = pools
        self.cookie = preview_cookie
        self.cookie_bytes = preview_cookie.encode()
        self.policy = policy

    def pool(self, preview: bytes | None, cookie: bytes | None, xff: bytes | None, peer: bytes) -> UpstreamPool:
        """The pool of the colour that serves this request. The common case costs one look at the state."""
        state = self.state.current
        if preview is None and (cookie is None or self.cookie_bytes not in cookie):
            return self.pools[state.active]
        return self.pools[self._preview(state, preview, cookie, xff, peer)]

    def _preview(
        self, state: State, preview: bytes | None, cookie: bytes | None, xff: bytes | None, peer: bytes
    ) -> Color:
        """The colour for a request that asks to preview (the header wins over the cookie), if it may."""
        if preview is not None:
            value: str | None = preview.decode("latin-1")
        else:
            assert cookie is not None
            value = cookie_value(cookie.decode("latin-1"), self.cookie)
        if not value:
            return state.active
        policy = self.policy
        if not policy.open:
            client = forwarded_client(xff.decode("latin-1") if xff else None, peer.decode())
            value = policy.admit(value, client)
            if value is None:
                return state.active
        return choose(state, value)
