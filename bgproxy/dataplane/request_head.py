"""The request head as the upstream gets it: which headers need a look, the checks that refuse a request before it
is forwarded, and the rewrite (hop-by-hop headers out; X-Forwarded-*, Host and framing declared by the proxy).

llhttp (httptools) validates every request, but the proxy asks it for no header callbacks (a Python call per
header was most of the per-request cost): once llhttp reports a head complete, `ClientConnection` hands over the
head's bytes whole (client.py tracks where each head begins and ends) and `read_request` reads its lines once.
Each line's kind comes from the server's `LineKinds` (one slot compared for a line seen before, nothing for a line
whose first and third bytes begin no name of interest); lines of no interest go to the upstream as they came (the
whitespace after the colon included), as pieces of the head between the lines left out.
tests/dataplane/test_head_differential.py holds this against the per-header path it replaced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import httptools

from . import refusals
from .exchange import Exchange
from .headers import IDEMPOTENT, REQUEST_DROP, connection_tokens, has_token
from .refusals import Reject

if TYPE_CHECKING:
    from .client import ClientConnection
    from .server import ProxyServer


# Request headers that need a look: below DROP they are forwarded as they came; from DROP on they are not. Plain-int
# module constants for the per-request path (comparing two exact ints is CPython's fast path; mypyc inlines Final ints).
HOST: Final = 1
XF_PROTO: Final = 2
XF_HOST: Final = 3
EXPECT: Final = 4
COOKIE: Final = 5
PREVIEW: Final = 6
STICKY: Final = 7
DROP: Final = 10  # hop-by-hop, or framing the proxy declares itself
CONNECTION: Final = 11
TRANSFER_ENCODING: Final = 12
CONTENT_LENGTH: Final = 13
UPGRADE: Final = 14
XF_FOR: Final = 15  # appended to, not passed through
PROXY_CONNECTION: Final = 16

# What a header counts towards MAX_HEADER_BYTES beyond its name and its value (as llhttp reports the value: leading
# whitespace dropped): ": " and CRLF.
HEADER_OVERHEAD: Final = 4
SPACE: Final = 32


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


def field_bytes(line: bytes) -> int:
    """What one header (or trailer) line, without its CRLF, counts towards MAX_HEADER_BYTES."""
    name, _, value = line.partition(b":")
    return len(name) + len(value.lstrip(b" \t")) + HEADER_OVERHEAD


def request_target(line: bytes, method: bytes) -> bytes:
    """The request target of a request line llhttp accepted: after the method and its spaces, up to the next space
    (or the line's end, for HTTP/0.9)."""
    rest = line[len(method) + 1 :]
    if rest[:1] == b" ":
        rest = rest.lstrip(b" ")
    return rest.partition(b" ")[0]


class NotOneHead(Exception):
    """What was handed over as a request head goes on after its empty line (a pipelined request or a body follows):
    the read is parsed again, in pieces."""


def read_request(parser: httptools.HttpRequestParser, head: bytes, peer: bytes, srv: ProxyServer) -> Exchange:
    """The exchange for a complete request head (its bytes from the method to the empty line): checked, its colour
    chosen, its head rewritten for the upstream. Raises `Reject` for a request that must not be forwarded."""
    method = parser.get_method()
    lines = head.split(b"\r\n")  # the request line, each header line, then the empty line and b""
    end = len(lines) - 2  # (an empty line before that is found below: NotOneHead)
    line = lines[0]
    url = line[len(method) + 1 : -9]  # most request lines: the method, one space, the target, " HTTP/1.1"
    http11 = line.endswith(b" HTTP/1.1")
    # llhttp refuses a space inside the target but takes more than one around it: those show at the slice's ends.
    if not http11 or not url or url[0] == SPACE or url[-1] == SPACE:
        url = request_target(line, method)
    if len(url) > srv.max_request_line:
        raise Reject(414, "request target too long")
    line_kinds = srv.line_kinds
    pairs = line_kinds.pairs
    host = xff = conn_value = upgrade = te = length = preview = cookie = sticky = None
    has_xfp = has_xfh = expect = proxy_connection = two_hosts = False
    cuts: list[int] = []  # where each line left out begins and ends in the head, with the CRLF before it
    at = len(line)  # where the CRLF before the next line is
    for field in lines[1:end]:
        start = at
        at += len(field) + 2
        if not field:  # an empty line before the end of what was handed over as one head
            raise NotOneHead
        if len(field) > 2 and not pairs[field[0] << 8 | field[2]]:  # most lines: no name of interest begins so
            continue
        kind, value = line_kinds.get(field)
        if not kind:
            continue
        if kind < DROP:
            if kind == HOST:
                two_hosts = two_hosts or host is not None
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
            continue
        cuts.append(start)
        cuts.append(at)
        if kind == CONNECTION:
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
    # Header bytes as MAX_HEADER_BYTES counts them are at most the lines' bytes and one per line (a line "a:"
    # counts 5): only a head that close to the limit is counted line by line.
    if len(head) + end > srv.max_header_bytes:
        if sum(map(field_bytes, lines[1:end])) > srv.max_header_bytes:
            raise Reject(431, "request headers too large")
    if two_hosts:
        raise Reject(400, "more than one Host header")
    if http11 and conn_value is None and not proxy_connection:
        # HTTP/1.1 with no Connection header (nor Proxy-Connection, which llhttp reads alike) is kept alive: no
        # call to ask llhttp that.
        keep_alive = True
        http10 = False
    else:
        keep_alive = parser.should_keep_alive()
        # Keep-alive without a Connection header is HTTP/1.1: 1.0 needs "Connection: keep-alive". That spares
        # get_http_version, which formats a string.
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
    # The request line, then the lines forwarded as they came, whitespace and all: pieces of the head between the
    # lines left out.
    out = [method, b" ", url, b" HTTP/1.1"]
    pos = len(line)
    for i in range(0, len(cuts), 2):
        if cuts[i] > pos:
            out.append(head[pos : cuts[i]])
        pos = cuts[i + 1]
    out.append(head[pos : len(head) - 2])  # (up to the CRLF that ends the last line)
    if conn_value is not None:
        extra = connection_tokens(conn_value)
        if extra:  # more hop-by-hop headers, by name (rare): the lines kept so far, filtered
            kept = b"".join(out[4:]).split(b"\r\n")  # b"", each line, b""
            out[4:] = [b"\r\n".join([f for f in kept if f.partition(b":")[0].lower() not in extra])]
    websocket = (
        upgrade is not None
        and conn_value is not None
        and has_token(upgrade, b"websocket")
        and has_token(conn_value, b"upgrade")
    )
    chunked = te is not None
    body = int(length) if length is not None else 0  # llhttp accepted it: digits, perhaps trailing whitespace
    has_body = chunked or body > 0
    ignore_upgrade = upgrade is not None and not websocket and parser.should_upgrade()
    if ignore_upgrade and has_body:
        raise Reject(501, "protocol upgrade with a request body is not supported")

    # The colour: the common case (no preview asked for, all ordinary traffic on the active colour) inline.
    chooser = srv.chooser
    state = chooser.state.current
    if preview is None and not state.weight and (cookie is None or cookie.find(chooser.preview_bytes) < 0):
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
    ex.length = -1 if chunked else body
    ex.chunked = chunked
    ex.expect_continue = expect
    ex.websocket = websocket
    ex.ignore_upgrade = ignore_upgrade
    ex.retryable = not has_body and (method == b"GET" or method in IDEMPOTENT)  # (GET: no hash of a new bytes)
    ex.set_cookie = set_cookie
    if previewed:
        ex.preview = True
    return ex


def head_incomplete(conn: ClientConnection) -> None:
    """A read ended inside a request head: bound what is held of it (an overlong target is refused as soon as its
    request line ends, by `ClientConnection._head_piece`)."""
    srv = conn.server
    if conn.held > srv.max_request_line + srv.max_header_bytes:
        refusals.refuse_request(conn, Reject(414 if conn.line_open else 431, "request head too large"))
        return
    if conn.deadline_kind != refusals.Deadline.HEAD and not conn.queue:  # behind an exchange, its deadline rules
        conn.set_head_deadline()
