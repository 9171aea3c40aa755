"""The data plane: the proxy every request goes through, on asyncio protocols and httptools.

`server.ProxyServer` listens and holds what spans connections; `client.ClientConnection` is one request's path,
top to bottom; `upstream.UpstreamConnection` and `pool.UpstreamPool` are the upstream side; the cold paths have
rooms of their own (`refusals`, `tunnel`, `flow`, `request_head`, `choose`).
"""

from .server import ProxyServer

__all__ = ["ProxyServer"]
