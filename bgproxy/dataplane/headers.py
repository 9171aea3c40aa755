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
# The lengths of RESPONSE_DROP's names, one bit each: a name of another length (Date, Server, Content-Type, ETag...,
# most of a response's headers) cannot be among them, and is passed on without lowering and hashing it.
RESPONSE_DROP_LENGTHS: Final = sum(1 << n for n in {len(name) for name in RESPONSE_DROP})
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


def drop_named(lines: list[bytes], drop: frozenset[bytes]) -> list[bytes]:
    """Header lines (name, ": ", value, CRLF per header), in order, without the named ones."""
    out: list[bytes] = []
    for i in range(0, len(lines), 4):
        if lines[i].lower() not in drop:
            out += lines[i : i + 4]
    return out


def has_token(value: bytes, token: bytes) -> bool:
    return any(t.strip().lower() == token for t in value.split(b","))


def chunk(body: bytes) -> tuple[bytes, bytes, bytes]:
    """A body piece framed as one chunk (RFC 9112 §7.1), for a body the proxy re-declares as chunked."""
    return (b"%x\r\n" % len(body), body, b"\r\n")


LAST_CHUNK: Final = b"0\r\n\r\n"
