"""The request head as the upstream gets it: which headers need a look, the checks that refuse a request before it
is forwarded, and the rewrite (hop-by-hop headers out; X-Forwarded-*, Host and framing declared by the proxy).

Headers are sorted as they arrive (`ClientConnection.on_header`): most go straight into the upstream's head in
their order; the few in `watch_table` are collected as (kind, name, value) and looked at once, here.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import httptools

from . import refusals
from .choose import Chooser
from .exchange import Exchange
from .headers import IDEMPOTENT, REQUEST_DROP, connection_tokens, drop_named, has_token
from .refusals import Reject

if TYPE_CHECKING:
    from .client import ClientConnection


class HeaderKind(enum.IntEnum):
    """Request headers that need a look. Below DROP they are forwarded as they came; from DROP on they are not."""

    HOST = 1
    XF_PROTO = 2
    XF_HOST = 3
    EXPECT = 4
    COOKIE = 5
    PREVIEW = 6
    STICKY = 7
    DROP = 10  # hop-by-hop, or framing the proxy declares itself
    CONNECTION = 11
    TRANSFER_ENCODING = 12
    CONTENT_LENGTH = 13
    UPGRADE = 14
    XF_FOR = 15  # appended to, not passed through
    PROXY_CONNECTION = 16


# Plain-int module constants for the per-request path: comparing two exact ints is CPython's fast path, an IntEnum
# member is not.
HOST, XF_PROTO, XF_HOST, EXPECT, COOKIE, PREVIEW, STICKY = (int(k) for k in HeaderKind if k < HeaderKind.DROP)
DROP, CONNECTION, TRANSFER_ENCODING, CONTENT_LENGTH, UPGRADE, XF_FOR, PROXY_CONNECTION = (
    int(k) for k in HeaderKind if k >= HeaderKind.DROP
)
Special = tuple[int, bytes, bytes]  # (kind, name as sent, value)


def watch_table(preview_header: str, sticky_header: str) -> dict[bytes, int]:
    """Lower-case header name -> kind, for the headers a request's head needs a look at."""
    table: dict[bytes, int] = {name: DROP for name in REQUEST_DROP}
    table |= {
        b"host": HOST,
        b"x-forwarded-proto": XF_PROTO,
        b"x-forwarded-host": XF_HOST,
        b"expect": EXPECT,
        b"cookie": COOKIE,
        b"connection": CONNECTION,
        b"transfer-encoding": TRANSFER_ENCODING,
        b"content-length": CONTENT_LENGTH,
        b"upgrade": UPGRADE,
        b"x-forwarded-for": XF_FOR,
        b"proxy-connection": PROXY_CONNECTION,
    }
    if sticky_header:
        table[sticky_header.lower().encode()] = STICKY
    if preview_header:
        table[preview_header.lower().encode()] = PREVIEW
    return table


def head_bytes(head: list[bytes], special: list[Special]) -> int:
    """Header bytes of a head (name, value and 4 per header), as MAX_HEADER_BYTES counts them."""
    dropped = [(name, value) for kind, name, value in special if kind >= DROP]
    return sum(map(len, head)) + sum(len(name) + len(value) + 4 for name, value in dropped)


def head_incomplete(conn: ClientConnection, received: int) -> None:
    """A read ended inside a request head: bound the head's size (httptools buffers a header until it ends)."""
    if conn.head_raw:
        conn.head_raw += received
    else:  # the head began in this read, perhaps after the body of the request before it: count its own part
        conn.head_raw = len(conn.url) + head_bytes(conn.head, conn.special)
    srv = conn.server
    if conn.head_raw > srv.max_request_line + srv.max_header_bytes:
        refusals.refuse(conn, 431 if len(conn.head) > 4 or conn.special else 414, "request head too large")
        return
    if conn.deadline_kind != refusals.Deadline.HEAD and not conn.queue:  # behind an exchange, its deadline rules
        conn.set_head_deadline()


def read_request(
    parser: httptools.HttpRequestParser,
    url: bytes,
    out: list[bytes],
    special: list[Special],
    peer: bytes,
    chooser: Chooser,
) -> Exchange:
    """The exchange for a complete request head: checked, its colour chosen, its head rewritten for the upstream.

    `out` holds 4 empty slots for the request line, then name, ": ", value, CRLF per forwarded header. Raises
    `Reject` for a request that must not be forwarded.
    """
    method = parser.get_method()
    out[0] = method
    out[1] = b" "
    out[2] = url
    out[3] = b" HTTP/1.1\r\n"
    host = xff = conn_value = upgrade = te = length = preview = cookie = sticky = None
    has_xfp = has_xfh = expect = proxy_connection = False
    for kind, _, value in special:
        if kind < DROP:
            if kind == HOST:
                if host is not None:
                    raise Reject(400, "more than one Host header")
                host = value
            elif kind == PREVIEW:
                preview = value
            elif kind == COOKIE:
                cookie = value if cookie is None else cookie + b"; " + value
            elif kind == XF_PROTO:
                has_xfp = True
            elif kind == XF_HOST:
                has_xfh = True
            elif kind == EXPECT:
                expect = value.lower() == b"100-continue"
            elif kind == STICKY:
                sticky = value
        elif kind == CONNECTION:
            conn_value = value if conn_value is None else conn_value + b"," + value
        elif kind == XF_FOR:
            xff = value if xff is None else xff + b", " + value
        elif kind == CONTENT_LENGTH:
            length = value
        elif kind == TRANSFER_ENCODING:
            te = value
        elif kind == UPGRADE:
            upgrade = value
        elif kind == PROXY_CONNECTION:
            proxy_connection = True
    keep_alive = parser.should_keep_alive()
    # Keep-alive without a Connection (or Proxy-Connection, which llhttp reads alike) header is HTTP/1.1:
    # 1.0 needs "Connection: keep-alive". That spares get_http_version, which formats a string.
    if keep_alive and conn_value is None and not proxy_connection:
        http10 = False
    else:
        http10 = parser.get_http_version() == "1.0"
    if host is None and not http10:
        raise Reject(400, "missing Host header")
    if te is not None and te.strip().lower() != b"chunked":
        raise Reject(501, f"Transfer-Encoding {te.decode('latin-1')!r} is not supported; use chunked")
    if method == b"CONNECT":
        raise Reject(405, "CONNECT is not supported by this proxy")
    if conn_value is not None:
        extra = connection_tokens(conn_value)
        if extra:
            out[4:] = drop_named(out[4:], extra)
    websocket = (
        upgrade is not None
        and conn_value is not None
        and has_token(upgrade, b"websocket")
        and has_token(conn_value, b"upgrade")
    )
    chunked = te is not None
    has_body = chunked or (length is not None and length.strip(b"0") != b"")
    ignore_upgrade = upgrade is not None and not websocket and parser.should_upgrade()
    if ignore_upgrade and has_body:
        raise Reject(501, "protocol upgrade with a request body is not supported")

    # The colour: the common case (no preview asked for, all ordinary traffic on the active colour) inline.
    state = chooser.state.current
    if preview is None and not state.weight and (cookie is None or chooser.preview_bytes not in cookie):
        pool = chooser.pools[state.active]
        set_cookie = b""
        previewed = False
    else:
        pool, set_cookie, previewed = chooser.choose(state, preview, cookie, sticky, xff, peer)

    out += (b"X-Forwarded-For: ", xff + b", " + peer if xff else peer, b"\r\n")
    if not has_xfp:
        out.append(b"X-Forwarded-Proto: http\r\n")
    if host is None:
        host = pool.host_header
        out += (b"Host: ", host, b"\r\n")
    if not has_xfh:
        out += (b"X-Forwarded-Host: ", host, b"\r\n")
    if chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    elif length is not None:
        out += (b"Content-Length: ", length, b"\r\n")
    if websocket:
        assert upgrade is not None
        out += (b"Connection: Upgrade\r\nUpgrade: ", upgrade, b"\r\n")
    out.append(b"\r\n")

    ex = Exchange(method, url, pool, b"".join(out))
    ex.http10 = http10
    ex.keep_alive = keep_alive and not websocket
    ex.has_body = has_body
    ex.chunked = chunked
    ex.expect_continue = expect
    ex.websocket = websocket
    ex.ignore_upgrade = ignore_upgrade
    ex.retryable = not has_body and method in IDEMPOTENT
    ex.set_cookie = set_cookie
    if previewed:
        ex.preview = True
    return ex
