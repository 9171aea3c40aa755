"""HTTP/1.1 rules shared by both directions of the data plane: hop-by-hop headers (RFC 9110 §7.6.1), chunk framing.

Names are compared as lower-case bytes, straight from the parser, with no decoding on the hot path. The constants
are Final: compiled, a Final is a C static rather than a lookup in the module's dict on every use.
"""

from __future__ import annotations

from collections.abc import Iterable
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
    # Nearly every message says just this; the compare costs less than hashing a fresh bytes into the set.
    if value == b"keep-alive" or value in PLAIN_CONNECTION:
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
# of no interest to the proxy: a line whose first and third bytes begin no name of interest needs no look at all (most
# lines, and among them those that change with every request, such as X-Request-ID); any other line seen before is
# classified, and the value of one of interest found, without hashing it or finding its name: a slot picked by its
# length and two of its bytes holds the last line seen there, compared whole (a collision is only a miss).
# Bounded: a fixed number of slots, and lines no longer than KNOWN_LINE_LENGTH (lines are the peers' to choose).
KNOWN_SLOTS: Final = 1024  # a power of two
KNOWN_LINE_LENGTH: Final = 256
_EMPTY_SLOT: Final = (b"", 0, b"")


class LineKinds:
    """Header lines (as sent, without CRLF) -> what kind of header they are (0: none the proxy looks at), and the
    value of those of some kind, as llhttp reports it: leading whitespace dropped."""

    __slots__ = ("names", "pairs", "slots")

    def __init__(self, names: dict[bytes, int]) -> None:
        self.names = names  # lower-case header name -> kind
        self.pairs = pair_table(names)
        self.slots: list[tuple[bytes, int, bytes]] = [_EMPTY_SLOT] * KNOWN_SLOTS  # (line, kind, value)

    def get(self, line: bytes) -> tuple[int, bytes]:
        """The kind and value of a header line (not empty)."""
        n = len(line)
        slot = (n << 3 ^ line[n - 1] << 1 ^ line[n >> 1]) & (KNOWN_SLOTS - 1)
        seen, kind, value = self.slots[slot]
        if seen == line:
            return kind, value
        name, _, rest = line.partition(b":")
        kind = self.names.get(name.lower(), 0)
        value = rest.lstrip(b" \t") if kind else b""
        if n <= KNOWN_LINE_LENGTH:
            self.slots[slot] = (line, kind, value)
        return kind, value


def pair_table(names: Iterable[bytes]) -> bytes:
    """1 at `line[0] << 8 | line[2]` for the lines (at least three bytes long) that may begin with one of these names,
    in any case: their first and third bytes (a name of two bytes is followed by its colon; one of one byte, by
    anything)."""
    table = bytearray(1 << 16)
    for name in names:
        thirds = name[2:3] or (b":" if len(name) == 2 else bytes(range(256)))
        for first in {name[0], *name[:1].upper(), *name[:1].lower()}:
            for third in {*thirds, *thirds.upper(), *thirds.lower()}:
                table[first << 8 | third] = 1
    return bytes(table)
