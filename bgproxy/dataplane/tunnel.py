"""Websocket tunnels: after the upstream's 101, both sockets become a byte pipe pinned to the colour that answered.

The transports are handed to a pair of `TunnelEnd` protocols with `set_protocol`, so the HTTP protocols' per-read
path never asks "am I a tunnel now?". Between the client's upgrade request and the upstream's answer, `UpgradeWait`
holds what the client sends (bounded). The tunnel counts as one request in flight on its colour until it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from .exchange import Exchange
from .flow import PENDING, PENDING_LIMIT
from .websocket import FrameTracker, close_frame

if TYPE_CHECKING:
    from .client import ClientConnection
    from .upstream import UpstreamConnection


class UpgradeWait(asyncio.Protocol):
    """The client side from its upgrade request until the upstream answers: early frames are held, not parsed.

    The client connection stays in charge (its exchange is still being answered); only reads are diverted.
    """

    def __init__(self, client: ClientConnection, rest: bytes) -> None:
        self.client = client
        self.held: list[bytes] = []
        self.held_bytes = 0
        if rest:
            self.data_received(rest)

    def data_received(self, data: bytes) -> None:
        self.held.append(data)
        self.held_bytes += len(data)
        if self.held_bytes > PENDING_LIMIT:
            self.client.gate.pause(PENDING)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.connection_lost(exc)

    def pause_writing(self) -> None:
        self.client.pause_writing()

    def resume_writing(self) -> None:
        self.client.resume_writing()


class TunnelEnd(asyncio.Protocol):
    """One side of a tunnel: what it reads goes to the other side's transport as it is."""

    def __init__(self, tunnel: Tunnel, peer: asyncio.Transport, frames: FrameTracker, *, client_side: bool) -> None:
        self.tunnel = tunnel
        self.peer = peer
        self.frames = frames  # the frames this side sends, to know when a close frame may go between them
        self.client_side = client_side

    def data_received(self, data: bytes) -> None:
        if self.tunnel.closing:
            if self.client_side:  # the client's answer to our close frame: the handshake is complete
                self.tunnel.client.close()
            return
        self.frames.feed(data)
        self.peer.write(data)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.side_closed(client_side=self.client_side)

    def pause_writing(self) -> None:
        self.peer.pause_reading()

    def resume_writing(self) -> None:
        self.peer.resume_reading()


class Tunnel:
    """A websocket between a client and an upstream of one colour, from the 101 until either side closes."""

    def __init__(
        self, ex: Exchange, client: asyncio.Transport, upstream: asyncio.Transport, on_end: Callable[[Tunnel], None]
    ) -> None:
        self.ex = ex
        self.client = client
        self.upstream = upstream
        self.on_end = on_end
        self.closing = False  # our close frames went out at the end of a drain
        self.ended = False
        self.inbound = FrameTracker()  # client -> upstream
        self.outbound = FrameTracker()  # upstream -> client

    def open(self, rest: bytes, held: list[bytes]) -> None:
        """Hand both transports over: `rest` is what the upstream sent after its 101, `held` what the client sent
        before it."""
        self.client.set_protocol(TunnelEnd(self, self.upstream, self.inbound, client_side=True))
        self.upstream.set_protocol(TunnelEnd(self, self.client, self.outbound, client_side=False))
        if rest:
            self.outbound.feed(rest)
            self.client.write(rest)
        for data in held:
            self.inbound.feed(data)
        if held:
            self.upstream.writelines(held)
        # Reading the client was paused while the upgrade was pending; the upstream's reading follows the client's
        # write buffer as before (a resume_writing reaches the new protocol).
        self.client.resume_reading()

    def side_closed(self, *, client_side: bool) -> None:
        if self.ended or (self.closing and not client_side):
            return  # after our close frames the client's answer (or the drain's end) ends the tunnel, not the upstream
        self.ended = True
        self.ex.finish(101)
        self.on_end(self)
        if client_side:
            self.upstream.close()
        else:
            self.client.close()

    def close_gracefully(self) -> None:
        """End of a drain: a close frame (1001, going away) to both sides, if that fits between frames."""
        if self.closing:
            return
        if self.inbound.at_boundary and self.outbound.at_boundary:
            # RFC 6455 §7.1.1: the client answers with its own close frame before the TCP connection ends, so
            # stop relaying and close only once it spoke (or the drain's last second is up).
            self.closing = True
            self.client.write(close_frame(masked=False))
            self.upstream.write(close_frame(masked=True))
            self.upstream.close()
        else:  # mid-frame: a close frame now would corrupt the stream
            self.abort()

    def abort(self) -> None:
        self.client.abort()
        self.upstream.abort()


def start_tunnel(
    client: ClientConnection, ex: Exchange, conn: UpstreamConnection, rest: bytes, on_end: Callable[[Tunnel], None]
) -> Tunnel:
    """The upstream answered 101: the exchange's two connections become a tunnel, pinned to its colour."""
    wait = client.transport.get_protocol()
    held = wait.held if isinstance(wait, UpgradeWait) else []
    conn.detach()
    ex.upstream = None
    tunnel = Tunnel(ex, client.transport, conn.transport, on_end)
    tunnel.open(rest, held)
    return tunnel
