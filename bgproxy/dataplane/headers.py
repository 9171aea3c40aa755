"""HTTP/1.1 rules shared by both directions of the data plane: hop-by-hop headers (RFC 9110 §7.6.1), chunk framing.

Names are compared as lower-case bytes, straight from the parser, with no decoding on the hot path. The constants
are Final: compiled, a Final is a C static rather than a lookup in the module's dict on every use.
"""

from __future__ import annotations

from typing import Final

# Never forwarded as received: hop-by-hop, or framing that the proxy declares itself from what it parsed.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)
RESPONSE_DROP: Final = HOP_BY_HOP | {b"content-length"}
# X-Forwarded-For is rewritten (appended to) rather than passed through.
REQUEST_DROP: Final = RESPONSE_DROP | {b"x-forwarded-for"}
_CONNECTION_OPTIONS: Final = frozenset({b"close", b"keep-alive", b"upgrade", b""})
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


_NO_TOKENS: Final[frozenset[bytes]] = frozenset()
# Connection values that name no other header.
PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"Keep-Alive", b"close", b"Close", b"upgrade", b"Upgrade"})


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """Header names listed in a Connection header, beyond the options everyone uses: they are hop-by-hop too."""
    if value in PLAIN_CONNECTION:  # nearly every response says just this
        return _NO_TOKENS
    names = {t.strip().lower() for t in value.split(b",")}
    return frozenset(names - _CONNECTION_OPTIONS)


def has_token(value: bytes, token: bytes) -> bool:
    return any(t.strip().lower() == token for t in value.split(b","))


def chunk(body: bytes) -> tuple[bytes, bytes, bytes]:
    """A body piece framed as one chunk (RFC 9112 §7.1), for a body the proxy re-declares as chunked."""
    return (b"%x\r\n" % len(body), body, b"\r\n")


LAST_CHUNK: Final = b"0\r\n\r\n"


# Header lines repeat from message to message (the same client, the same Ingress, the same upstream), and most are
# of no interest to the proxy: a line seen before is classified by one dict lookup, without finding its name, and
# the value of one of interest is looked up too. Bounded in count and length (lines are the peers' to choose);
# emptied when full.
KNOWN_LINES: Final = 1024
KNOWN_LINE_LENGTH: Final = 256


class LineKinds:
    """Header lines (as sent, without CRLF) -> what kind of header they are (0: none the proxy looks at), and the
    value of those of some kind (as llhttp reports it: leading whitespace dropped)."""

    __slots__ = ("kinds", "names", "values")

    def __init__(self, names: dict[bytes, int]) -> None:
        self.names = names  # lower-case header name -> kind
        self.kinds: dict[bytes, int] = {}
        self.values: dict[bytes, bytes] = {}

    def kind(self, line: bytes) -> int:
        """The kind of a line not seen before (the fast path is `kinds.get(line)`, then `values[line]`)."""
        name, _, value = line.partition(b":")
        kind = self.names.get(name.lower(), 0)
        kinds = self.kinds
        if len(kinds) >= KNOWN_LINES:
            kinds.clear()
            self.values.clear()
        if len(line) <= KNOWN_LINE_LENGTH:
            kinds[line] = kind
            if kind:
                self.values[line] = value.lstrip(b" \t")
        return kind

    def value(self, line: bytes) -> bytes:
        """The value of a line of some kind (as llhttp reports it: leading whitespace dropped)."""
        value = self.values.get(line)
        return value if value is not None else line.partition(b":")[2].lstrip(b" \t")
