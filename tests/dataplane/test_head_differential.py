"""No parser differential: the data plane, which asks llhttp for no header callbacks and takes each request head
whole, against the per-header path it replaced (per_header_reference.py, the code as it was), fed the same bytes in
the same reads. Hypothesis draws random and hostile request streams: pipelined requests, bodies by Content-Length
and chunked (extensions, trailers), every header the proxy looks at, in any case and with any whitespace, duplicates,
Connection tokens, upgrades, heads near and over MAX_REQUEST_LINE and MAX_HEADER_BYTES, and then bytes inserted,
removed or replaced anywhere (CR, LF, NUL, colons, spaces, tabs, high bytes), split into reads at random.

Both run on a real `ProxyServer` (not listening) with one idle upstream connection, on transports that record what
is written. What must be equal: the bytes the upstream gets (the first request's head and body; the heads and bodies
of the requests queued behind it), and the statuses the proxy answers itself, in order. The one difference by
design: a forwarded header line keeps the whitespace it came with after its colon (the per-header path wrote
"name: value"), so heads are compared with that whitespace normalised, and each forwarded line must be one the
client sent. Where the two paths may refuse differently, and why, is in `explained`.

The reference is a Python subclass of the data plane's classes, which a compiled build refuses (compiled classes
check the types they are handed): the comparison runs on the pure-Python build, as CI's second pass tests it; the
logic compared is the same source either way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgproxy import build
from bgproxy.core.model import Color, State, initial_state
from bgproxy.dataplane.client import HEAD, ClientConnection
from bgproxy.dataplane.exchange import Exchange
from bgproxy.dataplane.server import ProxyServer
from bgproxy.dataplane.upstream import UpstreamConnection
from bgproxy.metrics import Metrics
from bgproxy.settings import load_settings
from tests.dataplane.per_header_reference import PerHeaderClient, PerHeaderUpstream

pytestmark = pytest.mark.skipif(
    build.compiled(),
    reason="the reference subclasses compiled classes: the pure build runs it",
)

MAX_REQUEST_LINE = 256  # the smallest the settings allow, so that random heads reach the limits
MAX_HEADER_BYTES = 1024
EXAMPLES = 3000


class Recorder(asyncio.Transport):
    """A transport that keeps what is written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False
        self.paused = False
        self.protocol: asyncio.BaseProtocol | None = None

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.written.extend(bytes(d) for d in list_of_data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("10.9.8.7", 40000) if name == "peername" else default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol


INITIAL = initial_state(Color.BLUE, now=0.0)


class Holder:
    def __init__(self) -> None:
        self.current: State = INITIAL


@pytest.fixture(scope="module")
def server() -> Iterator[ProxyServer]:
    loop = asyncio.new_event_loop()

    async def make() -> ProxyServer:
        settings = load_settings(
            blue_url="http://127.0.0.1:9",
            green_url="http://127.0.0.1:10",
            listen="127.0.0.1:0",
            admin_listen="127.0.0.1:0",
            state_backend="memory",
            max_request_line=str(MAX_REQUEST_LINE),
            max_header_bytes=str(MAX_HEADER_BYTES),
            sticky_header="X-User",
        )
        return ProxyServer(settings, Holder(), Metrics())

    yield loop.run_until_complete(make())
    loop.close()


@dataclass
class Transcript:
    upstream: bytes = b""  # what the upstream connections got: the heads and bodies of the requests started
    queued: list[bytes] = field(default_factory=list)  # heads and bodies of the requests queued behind them
    statuses: list[int] = field(default_factory=list)  # what the proxy answered itself
    reasons: list[bytes] = field(default_factory=list)  # ...and the body it said why in
    head_pending: bool = False  # the input ended inside a head that was neither forwarded nor refused
    exchanges: list[tuple[Any, ...]] = field(default_factory=list)  # what each request's exchange was told


def run(make: Callable[[ProxyServer], Any], srv: ProxyServer, reads: list[bytes], weight: int = 0) -> Transcript:
    srv.chooser.state.current = dataclasses.replace(INITIAL, weight=weight)
    random.seed(7)  # a request without a sticky bucket draws one
    upstreams = []
    for pool in srv.pools.values():  # idle connections for the requests that start, on either colour
        pool.idle[:] = [UpstreamConnection(pool) for _ in range(8)]
        for upstream in pool.idle:
            upstream.connection_made(Recorder())
        upstreams += pool.idle[::-1]
    conn = make(srv)
    client_transport = Recorder()
    client_transport.protocol = conn
    conn.connection_made(client_transport)
    seen: dict[int, Exchange] = {}
    for data in reads:
        if conn.closed or conn.gate.stopped:  # a refused connection is not read any more
            break
        cast(asyncio.Protocol, client_transport.get_protocol()).data_received(data)  # an upgrade hands it over
        seen.update((id(ex), ex) for ex in conn.queue)
    t = Transcript()
    t.exchanges = [
        (ex.method, ex.path, ex.pool.color, ex.http10, ex.keep_alive, ex.chunked, ex.expect_continue, ex.websocket)
        for ex in seen.values()
    ]
    t.exchanges += [(ex.ignore_upgrade, ex.head_request, ex.preview, ex.set_cookie) for ex in seen.values()]
    t.upstream = b"".join(b"".join(cast(Recorder, u.transport).written) for u in upstreams)
    t.queued = [ex.head + b"".join(ex.pending) for ex in conn.queue if ex.upstream is None]
    answers = [w for w in client_transport.written if w.startswith(b"HTTP/1.1 ")]
    t.statuses = [int(w.split(b" ", 2)[1]) for w in answers]
    t.reasons = [w.partition(b"\r\n\r\n")[2] for w in answers]
    t.head_pending = (conn.fstate == HEAD) if isinstance(conn, ClientConnection) else conn.in_head
    srv.connections.discard(conn)  # (it counts towards MAX_CONNECTIONS)
    return t


def normalised(stream: bytes) -> bytes:
    """Every head in these bytes with its header lines written "name: value" (llhttp's value: leading whitespace
    dropped), as the per-header path wrote them; bodies as they are."""
    out = []
    rest = stream
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        fixed = [lines[0]]
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fixed.append(name + b": " + value.lstrip(b" \t"))
        out.append(b"\r\n".join(fixed) + sep)
        if b"Transfer-Encoding: chunked\r\n" in head or b"Content-Length: " in head:
            out.append(rest)  # a body (in these tests, nothing follows it on one upstream connection)
            break
    return b"".join(out)


def explained(old: Transcript, new: Transcript, data: bytes) -> bool:
    """Refusals that may differ by design, for requests that are too large; both paths forwarded the same
    (normalised) bytes before them.

    The per-header path judged a target's length as soon as llhttp reported it, and counted header bytes as llhttp
    reported each header (in reads longer than 4/5 of the limit), refusing as soon as they passed the limit; the new
    path judges a head whole when it ends (exactly), and bounds one that has not ended by its raw bytes
    (MAX_REQUEST_LINE + MAX_HEADER_BYTES). So for a head too large, the old path may have refused it (414, 431)
    before llhttp found something malformed further on (new: 400), or before it ended (new: still pending); and
    when the raw bound refuses, "request line not complete" (new: 414) and "no header reported yet" (old: 414) are
    not quite the same (414 against 431). And a PRI request, which llhttp never finishes, is refused at once."""
    if normalised(old.upstream) != normalised(new.upstream) or len(old.queued) != len(new.queued):
        return False
    if old.statuses == new.statuses[:-1] and old.head_pending and new.statuses[-1:] == [400] and b"PRI " in data:
        # llhttp takes a PRI request (HTTP/2's preface) as unfinished after its empty line: the per-header path waited
        # for more (to time out), the new one refuses it at once, as its framing is out of step with the parser.
        return True
    if not old.statuses or old.statuses[:-1] != new.statuses[:-1]:
        return False
    last = old.statuses[-1]
    if last == 414:
        too_large = any(len(token) > MAX_REQUEST_LINE for token in data.split(b" "))
    elif last == 431:
        too_large = len(data) > MAX_HEADER_BYTES * 4 // 5
    else:
        return False
    new_last = new.statuses[-1] if len(new.statuses) == len(old.statuses) else None
    return too_large and ((new_last is None and new.head_pending) or new_last in (400, 414, 431))


# -- what hypothesis draws ------------------------------------------------------------------------------------

NAMES = [
    b"Host",
    b"X-Forwarded-For",
    b"X-Forwarded-Proto",
    b"X-Forwarded-Host",
    b"Cookie",
    b"Connection",
    b"Keep-Alive",
    b"Proxy-Connection",
    b"TE",
    b"Trailer",
    b"Transfer-Encoding",
    b"Content-Length",
    b"Upgrade",
    b"Expect",
    b"Proxy-Authorization",
    b"X-Preview",
    b"X-User",
    b"Accept",
    b"User-Agent",
    b"X-Request-ID",
    b"X-Drop-Me",
    b"HTTP2-Settings",
    b"a",
]
VALUES = [
    b"h",
    b"example.com:8080",
    b"10.1.2.3",
    b"1.2.3.4, 5.6.7.8",
    b"https",
    b"close",
    b"keep-alive",
    b"Upgrade",
    b"upgrade, X-Drop-Me",
    b"keep-alive, Keep-Alive, te",
    b"websocket",
    b"h2c",
    b"chunked",
    b"gzip, chunked",
    b"chunked, identity",
    b"0",
    b"5",
    b"007",
    b"12",
    b"100-continue",
    b"green",
    b"bg-preview=green; bg-sticky=7",
    b"session=abc; theme=dark",
    b"",
    b"trailers",
    b"x" * 300,
]
# Values that make sense for a name (drawn half the time; the other half, any value).
LIKELY = {
    b"Connection": [b"close", b"keep-alive", b"Upgrade", b"upgrade, X-Drop-Me", b"X-Drop-Me, te", b"HTTP2-Settings"],
    b"Upgrade": [b"websocket", b"h2c", b"WebSocket"],
    b"Content-Length": [b"0", b"5", b"007", b"12", b"0 "],
    b"Transfer-Encoding": [b"chunked", b"gzip, chunked", b"chunked, identity", b"Chunked "],
    b"Cookie": [b"bg-preview=green", b"session=abc; theme=dark", b"bg-sticky=7"],
    b"X-Preview": [b"green", b"blue", b""],
    b"Expect": [b"100-continue", b"100-Continue "],
}
# Mostly requests a server takes, so that most examples reach the upstream; the rest are refused somewhere.
# Headers that mean something together.
GROUPS = [
    [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")],
    [(b"Upgrade", b"websocket"), (b"Connection", b"keep-alive")],
    [(b"Connection", b"upgrade, keep-alive"), (b"Upgrade", b"WebSocket, h2c")],
    [(b"Upgrade", b"h2c"), (b"Connection", b"Upgrade, HTTP2-Settings"), (b"HTTP2-Settings", b"AAMAAABkAAQ")],
    [(b"X-Preview", b"green")],
    [(b"Cookie", b"a=1; bg-preview=blue"), (b"Cookie", b"bg-sticky=42")],
    [(b"X-User", b"alice")],
    [(b"Expect", b"100-CONTINUE")],
    [(b"Connection", b"X-Drop-Me"), (b"X-Drop-Me", b"1"), (b"Connection", b"te")],
    [(b"Proxy-Connection", b"keep-alive")],
    [(b"X-Forwarded-For", b"1.1.1.1"), (b"X-Forwarded-For", b"2.2.2.2")],
]
METHODS = [b"GET"] * 6 + [b"POST"] * 3 + [b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"get", b"PRI"]
TARGETS = [b"/", b"/a/b?c=d", b"*", b"http://example.com/x", b"/a%20b", b"/" + b"p" * 250, b"/" + b"q" * 300]
VERSIONS = [b" HTTP/1.1"] * 6 + [b" HTTP/1.0", b"", b" HTTP/2.0", b" HTTP/1.1 ", b"  HTTP/1.1"]
OWS = [b" ", b"", b"  ", b"\t", b" \t ", b"   "]
NOISE = [b"\r", b"\n", b"\r\n", b"\x00", b":", b" ", b"\t", b"\xff", b"\x7f", b"a", b"0", b";", b"\r\n\r\n", b"\r\n "]


def case(name: bytes, draw: st.DrawFn) -> bytes:
    mode = draw(st.sampled_from(["as-is", "lower", "upper", "mixed"]))
    if mode == "lower":
        return name.lower()
    if mode == "upper":
        return name.upper()
    if mode == "mixed":
        return bytes(c ^ 0x20 if 65 <= (c | 0x20) <= 122 and draw(st.booleans()) else c for c in name)
    return name


@st.composite
def bodies(draw: st.DrawFn) -> tuple[list[bytes], bytes]:
    """Framing headers and the body that goes with them (or does not quite)."""
    kind = draw(st.sampled_from(["none", "none", "length", "length", "chunked", "chunked", "chunked", "odd"]))
    if kind == "none":
        return [], b""
    if kind == "length":
        body = draw(st.binary(max_size=40))
        return [b"Content-Length: %d" % len(body)], body
    if kind == "chunked":
        chunks = draw(st.lists(st.binary(min_size=1, max_size=20), max_size=3))
        out = b""
        for c in chunks:
            ext = draw(st.sampled_from([b"", b";x=y", b';q="a;b"', b";e"]))
            out += b"%x%s\r\n%s\r\n" % (len(c), ext, c)
        trailers = draw(st.lists(st.sampled_from([b"X-T: 1", b"X-Long: " + b"t" * 200, b"T:\t v "]), max_size=6))
        out += b"0\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"
        return [b"Transfer-Encoding: chunked"], out
    te = draw(st.sampled_from([b"Content-Length: 3", b"Transfer-Encoding: chunked", b"Content-Length: 1, 1"]))
    return [te], draw(st.binary(max_size=30))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    lead = draw(st.sampled_from([b"", b"", b"", b"\r\n", b"\n", b"\r\n\r\n"]))
    line = draw(st.sampled_from(METHODS)) + draw(st.sampled_from([b" ", b"  "]))
    line += draw(st.sampled_from(TARGETS)) + draw(st.sampled_from(VERSIONS))
    headers = []
    if draw(st.integers(0, 5)):
        headers.append(b"Host: h")
    for _ in range(draw(st.integers(0, 8))):
        name = draw(st.sampled_from(NAMES))
        value = draw(st.sampled_from(LIKELY.get(name, VALUES) if draw(st.integers(0, 3)) else VALUES))
        trail = draw(st.sampled_from([b"", b"", b" ", b"\t"]))
        headers.append(case(name, draw) + b":" + draw(st.sampled_from(OWS)) + value + trail)
    for group in draw(st.lists(st.sampled_from(GROUPS), max_size=2)):
        headers += [case(name, draw) + b":" + draw(st.sampled_from(OWS)) + value for name, value in group]
    framing, body = draw(bodies())
    headers[draw(st.integers(0, len(headers))) : 0] = framing
    if draw(st.integers(0, 7)) == 0:  # many small headers: near the limit as it is counted (5 per "a:")
        headers += [b"a:" + draw(st.sampled_from(OWS))] * draw(st.integers(150, 260))
    return lead + b"\r\n".join([line, *headers]) + b"\r\n\r\n" + body


@st.composite
def streams(draw: st.DrawFn) -> list[bytes]:
    """Requests, perhaps broken, split into reads."""
    data = b"".join(draw(requests()) for _ in range(draw(st.sampled_from([1, 1, 2, 3]))))
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 2, 3]))):  # hostile edits
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["insert", "delete", "replace"]))
        noise = draw(st.sampled_from(NOISE))
        if edit == "insert":
            data = data[:at] + noise + data[at:]
        elif edit == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 4)) :]
        else:
            data = data[:at] + noise + data[at + len(noise) :]
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=4, unique=True)))
    reads = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return [r for r in reads if r]


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(reads=streams(), weight=st.sampled_from([0, 0, 50]))
def test_the_upstream_gets_what_the_per_header_path_sent(server: ProxyServer, reads: list[bytes], weight: int) -> None:
    old = run(PerHeaderClient, server, reads, weight)
    new = run(ClientConnection, server, reads, weight)
    same = (
        normalised(old.upstream) == normalised(new.upstream)
        and [normalised(q) for q in old.queued] == [normalised(q) for q in new.queued]
        and old.statuses == new.statuses
    )
    assert same or explained(old, new, b"".join(reads)), (reads, old, new)
    assert old.exchanges == new.exchanges, (reads, old, new)
    # Forwarded header lines are lines the client sent, byte for byte (or lines the proxy adds).
    sent = set(b"".join(reads).split(b"\r\n"))
    for stream in [new.upstream, *new.queued]:
        head = stream.partition(b"\r\n\r\n")[0]
        for line in head.split(b"\r\n")[1:]:
            assert line in sent or line.startswith(ADDED), line


ADDED = (b"X-Forwarded-For: ", b"X-Forwarded-Proto: ", b"Host: ", b"X-Forwarded-Host: ", b"Transfer-Encoding: ")
ADDED += (b"Content-Length: ", b"Connection: Upgrade", b"Upgrade: ")


@pytest.mark.parametrize(
    "reads",
    [
        # Each of these once hid a difference in a draft of the new path.
        [b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"],
        [b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nGET /s HTTP/1.1\r\nHost: h\r\n\r\n"],
        [b"GET / HTTP/1.1\r\nHost: h\r", b"\n\r\n"],
        [b"GET / HTTP/1.1\r\nHost: h\r\n\r", b"\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"],
        [b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r", b"\nabc\r\n0\r\n\r", b"\n"],
        [b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n\r\n\r\n0\r\nX: \t y\r\n\r\nGET / "],
        [b"\r\n\n\rGET /a HTTP/1.1\r\nHost:\th\r\nX-Forwarded-For:1.1.1.1 \r\n\r\n"],
        [b"GET /h2c HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\nGET /n HTTP/1.1"],
        [b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nGET /n HTTP/1.1\r\nHost: h\r\n\r\n"],
        [
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: h\r\nUpgrade: websocket\r\n",
            b"Connection: upgrade\r\n\r\n1\r\n",
        ],
    ],
)
def test_known_cases(server: ProxyServer, reads: list[bytes]) -> None:
    old = run(PerHeaderClient, server, reads)
    new = run(ClientConnection, server, reads)
    assert normalised(old.upstream) == normalised(new.upstream) and old.statuses == new.statuses, (old, new)
    assert [normalised(q) for q in old.queued] == [normalised(q) for q in new.queued]


# -- the upstream side: what reaches the client ----------------------------------------------------------------

REQUESTS = {
    "get": b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    "get-1.0": b"GET / HTTP/1.0\r\n\r\n",
    "get-close": b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    "head": b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n",
    "expect": b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab",
    "websocket": b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
}
RESPONSE_NAMES = [
    b"Content-Type",
    b"Server",
    b"Set-Cookie",
    b"X-Foo",
    b"Connection",
    b"Keep-Alive",
    b"Content-Length",
    b"Transfer-Encoding",
    b"Upgrade",
    b"Proxy-Authenticate",
    b"Trailer",
    b"TE",
    b"ETag",
]
RESPONSE_VALUES = {
    b"Connection": [b"keep-alive", b"close", b"Upgrade", b"X-Foo", b"keep-alive, X-Foo, ETag", b"Keep-Alive"],
    b"Content-Length": [b"0", b"3", b"10"],
    b"Transfer-Encoding": [b"chunked", b"gzip, chunked", b"identity"],
    b"Upgrade": [b"websocket", b"h2c"],
}
STATUS_LINES = [
    b"HTTP/1.1 200 OK",
    b"HTTP/1.1 200",
    b"HTTP/1.1 200 ",
    b"HTTP/1.1 201  Made it ",
    b"HTTP/1.0 200 OK",
    b"HTTP/1.1 204 No Content",
    b"HTTP/1.1 304 Not Modified",
    b"HTTP/1.1 404 Nope",
    b"HTTP/1.1 101 Switching Protocols",
    b"HTTP/1.1 099 Odd",
    b"HTTP/1.1 500 \xe9rreur",
]
INTERIM = [b"", b"", b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"]


@st.composite
def responses(draw: st.DrawFn) -> tuple[str, list[bytes], bool]:
    """A request, the upstream's answer to it (perhaps broken, perhaps with more after it) in reads, and whether
    the upstream then closes the connection."""
    request = draw(st.sampled_from(sorted(REQUESTS)))
    headers = []
    for _ in range(draw(st.integers(0, 7))):
        name = draw(st.sampled_from(RESPONSE_NAMES))
        values = RESPONSE_VALUES.get(name, [b"text/plain", b"nginx", b"a=b; Path=/", b"1", b"", b'"etag"'])
        value = draw(st.sampled_from(values))
        headers.append(case(name, draw) + b":" + draw(st.sampled_from(OWS)) + value + draw(st.sampled_from(OWS[:2])))
    framing = draw(st.sampled_from(["length", "length", "chunked", "none"]))
    body = draw(st.binary(max_size=12))
    if framing == "length":
        headers.append(b"Content-Length: %d" % len(body))
    elif framing == "chunked":
        headers.append(b"Transfer-Encoding: chunked")
        trailers = draw(st.sampled_from([b"", b"X-T: 1\r\n", b"Server:  x\r\n"]))
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n" + trailers + b"\r\n"
    head = draw(st.sampled_from(STATUS_LINES)) + b"".join(b"\r\n" + h for h in headers) + b"\r\n\r\n"
    data = draw(st.sampled_from(INTERIM)) + head + body
    data += draw(st.sampled_from([b"", b"", b"", b"HTTP/1.", b"HTTP/1.1 200 OK\r\nContent-Le", b"junk"]))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # hostile edits
        at = draw(st.integers(0, len(data)))
        noise = draw(st.sampled_from(NOISE))
        data = data[:at] + noise + data[at + draw(st.integers(0, len(noise))) :]
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=4, unique=True)))
    reads = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return request, [r for r in reads if r], draw(st.booleans())


@dataclass
class Answer:
    client_got: bytes = b""  # everything written to the client: the proxy's head, then the body
    client_closed: bool = False
    status: int = 0  # the exchange's
    done: bool = False  # the exchange was answered and is gone from the queue
    reused: bool = False  # the upstream connection went back to the pool


def answer(make: Callable[[Any], Any], srv: ProxyServer, request: str, reads: list[bytes], eof: bool) -> Answer:
    srv.chooser.state.current = INITIAL
    pool = srv.pools[Color.BLUE]
    upstream = make(pool)
    upstream.connection_made(Recorder())
    pool.idle[:] = [upstream]
    conn = ClientConnection(srv)
    client_transport = Recorder()
    client_transport.protocol = conn
    conn.connection_made(client_transport)
    conn.data_received(REQUESTS[request])
    ex = conn.queue[0]
    for data in reads:
        if upstream.client is None:  # answered (or failed): what follows goes nowhere
            break
        upstream.data_received(data)
    if eof and upstream.client is not None:
        upstream.connection_lost(None)
    got = b"".join(client_transport.written)
    srv.connections.discard(conn)  # (it counts towards MAX_CONNECTIONS)
    return Answer(got, client_transport.closed, ex.status, not conn.queue, pool.idle == [upstream])


def normalised_response(got: bytes) -> bytes:
    """The client's bytes with each head's header lines written "name: value" (as the per-header path did)."""
    out = []
    rest = got
    while rest.startswith(b"HTTP/1.1 1"):  # interim heads first
        head, _, rest = rest.partition(b"\r\n\r\n")
        out.append(normalised(head + b"\r\n\r\n"))
    head, sep, rest = rest.partition(b"\r\n\r\n")
    out.append(normalised(head + sep) + rest)
    return b"".join(out)


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case_=responses())
def test_the_client_gets_what_the_per_header_path_sent(
    server: ProxyServer, case_: tuple[str, list[bytes], bool]
) -> None:
    request, reads, eof = case_
    old = answer(PerHeaderUpstream, server, request, reads, eof)
    new = answer(UpstreamConnection, server, request, reads, eof)
    assert normalised_response(old.client_got) == normalised_response(new.client_got), (case_, old, new)
    assert (old.client_closed, old.status, old.done, old.reused) == (
        new.client_closed,
        new.status,
        new.done,
        new.reused,
    ), (case_, old, new)
