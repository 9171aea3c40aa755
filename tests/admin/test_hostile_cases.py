"""Each JSON and header oddity by name: its status, its message, and the state unchanged after a refusal.

The hypothesis fuzzer (test_hostile_json.py) sends many variations; this table pins what each kind of input gets.
Several cases answered 500 before the admin API read bodies strictly: nesting past Python's recursion limit, a gzip
body that does not decompress, a non-ASCII Authorization header when a token is set, a Host header with a bad port.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bgproxy.admin.body import MAX_BODY, MAX_DEPTH, MAX_NUMBER_LENGTH
from bgproxy.app import Bgproxy
from bgproxy.core.model import MAX_REASON
from tests.support.servers import TIMEOUT, RawClient, StartProxy

TOKEN = "hostile-cases-token-0d3e"
MAX_MESSAGE = 300  # characters: a refusal names the problem; it does not echo the input back


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        yield s


async def state(session: aiohttp.ClientSession, app: Bgproxy) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{app.admin_port}/state") as r:
        assert r.status == 200
        body: dict[str, Any] = await r.json()
        return body


def deep(opener: str, closer: str, levels: int, *, closed: bool = True) -> bytes:
    return (opener * levels + "1" + (closer * levels if closed else "")).encode()


# (id, call, body, status, what the message must say)
CASES = [
    # nesting: refused before json.loads, which would hit Python's recursion limit (a 500 before)
    ("deep-arrays-10k", "/switch", deep("[", "]", 5000), 400, f"deeper than {MAX_DEPTH} levels"),
    ("deep-objects", "/promote", deep('{"a":', "}", 2500), 400, f"deeper than {MAX_DEPTH} levels"),
    ("deep-in-a-field", "/switch", b'{"to": "green", "reason": ' + deep("[", "]", 4000) + b"}", 400, "deeper than"),
    ("deep-unclosed", "/rollback", b"[" * 12000, 400, "deeper than"),
    ("deep-just-over", "/promote", deep("[", "]", MAX_DEPTH + 1), 400, "deeper than"),
    ("deep-at-the-limit", "/promote", deep("[", "]", MAX_DEPTH), 400, "expected a JSON object"),
    ("brackets-in-a-string", "/promote", json.dumps({"reason": "[" * 5000}).encode(), 400, f"at most {MAX_REASON}"),
    # numbers
    ("huge-int", "/switch", b'{"to": ' + b"1" * 5000 + b"}", 400, "'to': a number of 5000 characters"),
    ("huge-int-in-reason", "/promote", b'{"reason": -' + b"9" * 10000 + b"}", 400, f"at most {MAX_NUMBER_LENGTH}"),
    ("huge-int-unknown-field", "/promote", b'{"n": ' + b"9" * 4301 + b"}", 400, "'n': a number of 4301"),
    ("long-fraction", "/promote", b'{"reason": 0.' + b"1" * 100 + b"}", 400, "too long"),
    ("float-overflow", "/switch", b'{"to": "green", "reason": 1e999}', 400, "'reason': 1e999 is beyond the range"),
    ("negative-overflow", "/promote", b'{"force": -1E400}', 400, "'force': -1E400 is beyond the range"),
    ("nan", "/switch", b'{"to": NaN}', 400, "'to': NaN is not a number JSON allows"),
    ("infinity", "/promote", b'{"force": Infinity}', 400, "'force': Infinity is not a number JSON allows"),
    ("minus-infinity-in-array", "/promote", b'{"reason": [1, -Infinity]}', 400, "'reason[1]': -Infinity"),
    # duplicate keys: json.loads keeps the last silently (it was accepted before)
    ("duplicate-to", "/switch", b'{"to": "green", "to": "blue"}', 400, "the key 'to' appears twice"),
    ("duplicate-reason", "/promote", b'{"reason": "a", "reason": "b"}', 400, "the key 'reason' appears twice"),
    ("duplicate-nested", "/promote", b'{"x": {"a": 1, "a": 2}}', 400, "'x': the key 'a' appears twice"),
    # UTF-8
    ("invalid-byte", "/switch", b'{"to": "green", "reason": "\xff"}', 400, "not valid UTF-8 (byte 27)"),
    ("overlong-slash", "/promote", b'{"reason": "\xc0\xaf"}', 400, "not valid UTF-8"),
    ("encoded-surrogate", "/promote", b'{"reason": "\xed\xa0\x80"}', 400, "not valid UTF-8"),
    ("truncated-sequence", "/promote", b'{"reason": "\xe2\x82"}', 400, "not valid UTF-8"),
    ("utf-16", "/switch", '{"to": "green"}'.encode("utf-16"), 400, "not valid UTF-8"),
    ("bom", "/switch", b'\xef\xbb\xbf{"to": "green"}', 400, "BOM"),
    # lone surrogates: not characters; they were stored in the state before
    ("lone-high", "/switch", b'{"to": "green", "reason": "\\ud800"}', 400, "'reason': '\\ud800' contains a lone"),
    ("lone-low", "/promote", b'{"reason": "a\\udfffb"}', 400, "lone surrogate"),
    ("high-then-letter", "/promote", b'{"reason": "\\ud83dA"}', 400, "lone surrogate"),
    ("surrogate-in-a-key", "/promote", b'{"\\udc00": 1}', 400, "the key '\\udc00' contains a lone surrogate"),
    ("surrogate-in-an-array", "/promote", b'{"reason": ["ok", "\\ud800"]}', 400, "'reason[1]'"),
    # JSON syntax
    ("raw-control-character", "/promote", b'{"reason": "a\nb"}', 400, "Invalid control character"),
    ("trailing-data", "/promote", b"{} x", 400, "Extra data"),
    ("single-quotes", "/switch", b"{'to': 'green'}", 400, "not valid JSON"),
    ("trailing-comma", "/switch", b'{"to": "green",}', 400, "not valid JSON"),
    ("comment", "/switch", b'{"to": "green"} // go', 400, "not valid JSON"),
    # not an object, or nothing where something is required
    ("array", "/promote", b"[]", 400, "expected a JSON object, got an array"),
    ("null", "/promote", b"null", 400, "expected a JSON object, got null"),
    ("number", "/switch", b"42", 400, "expected a JSON object with 'to', got 42"),
    ("empty-switch", "/switch", b"", 400, "expected a JSON object with 'to', got an empty body"),
    ("whitespace-switch", "/switch", b" \r\n\t ", 400, "got an empty body"),
    # wrong types in every field, each named with what it expects
    ("to-array", "/switch", b'{"to": ["green"]}', 400, "'to': unknown colour ['green']: expected 'blue' or 'green'"),
    ("to-object", "/switch", b'{"to": {"colour": "green"}}', 400, "expected 'blue' or 'green'"),
    ("to-true", "/switch", b'{"to": true}', 400, "unknown colour True"),
    ("reason-array", "/promote", b'{"reason": ["a"]}', 400, "'reason' must be a string, got an array"),
    ("reason-object", "/promote", b'{"reason": {}}', 400, "'reason' must be a string, got an object"),
    ("reason-bool", "/promote", b'{"reason": false}', 400, "'reason' must be a string, got false"),
    ("reason-float", "/promote", b'{"reason": 1.5}', 400, "'reason' must be a string, got 1.5"),
    ("force-string", "/promote", b'{"force": "true"}', 400, "'force' must be true or false, got 'true'"),
    ("force-one", "/promote", b'{"force": 1}', 400, "'force' must be true or false, got 1"),
    ("force-null", "/promote", b'{"force": null}', 400, "'force' must be true or false, got null"),
    ("every-field-wrong", "/switch", b'{"to": 1, "reason": 2, "force": 3, "x": 4}', 400, "(and 1 more)"),
    ("unknown-field", "/promote", b'{"reasons": "typo"}', 400, "unknown field 'reasons'; allowed: 'reason', 'force'"),
    ("to-on-promote", "/promote", b'{"to": "green"}', 400, "/promote takes no 'to'; use /switch"),
    # huge strings: refused with a short message, however long the input
    ("huge-reason", "/promote", json.dumps({"reason": "x" * 16000}).encode(), 400, f"at most {MAX_REASON} characters"),
    ("huge-colour", "/switch", json.dumps({"to": "g" * 16000}).encode(), 400, "expected 'blue' or 'green'"),
    ("huge-unknown-field-name", "/promote", json.dumps({"k" * 16000: 1}).encode(), 400, "unknown field"),
    ("over-the-size-limit", "/promote", b" " * (MAX_BODY + 1), 413, f"at most {MAX_BODY} bytes"),
]


@pytest.mark.parametrize(("call", "body", "status", "says"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_an_odd_body_is_refused_with_a_message_and_changes_nothing(
    proxy: Bgproxy, session: aiohttp.ClientSession, call: str, body: bytes, status: int, says: str
) -> None:
    async with session.post(f"http://127.0.0.1:{proxy.admin_port}/switch", json={"to": "green"}) as r:
        assert r.status == 200  # a flip first, so that /rollback could act if the body let it
    before = await state(session, proxy)
    async with session.post(f"http://127.0.0.1:{proxy.admin_port}{call}", data=body) as r:
        assert r.content_type == "application/json", await r.text()
        answer = await r.json()
        assert (r.status, set(answer)) == (status, {"error"}), answer
    assert says in answer["error"]
    assert len(answer["error"]) <= MAX_MESSAGE, answer["error"]
    assert await state(session, proxy) == before


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"to": "green"}', {"Content-Type": "text/plain"}),  # what a no-cors fetch would send, minus the Origin
        (b'{"to": "green"}', {"Content-Type": "application/x-www-form-urlencoded"}),  # curl -d
        (b'{"to": "green"}', {"Content-Type": "application/json; charset=utf-16"}),  # the charset is not believed
        (b'{"to": "green"}', {"Content-Type": "multipart/form-data; boundary=x"}),
        (b'{"to": "green", "reason": "\\ud83d\\ude80 \\u0000 \\u202e \xe2\x80\x8b"}', {}),  # odd but valid text
    ],
    ids=["text-plain", "form", "utf-16-charset", "multipart", "odd-valid-unicode"],
)
async def test_the_content_type_is_not_looked_at_and_odd_valid_text_is_taken(
    proxy: Bgproxy, session: aiohttp.ClientSession, body: bytes, headers: dict[str, str]
) -> None:
    """Documented: the body is read as UTF-8 JSON whatever the Content-Type says (cross-site requests are the
    guard's business, by their Origin and Sec-Fetch-Site headers)."""
    async with session.post(f"http://127.0.0.1:{proxy.admin_port}/switch", data=body, headers=headers) as r:
        assert r.status == 200, await r.text()
        answer = await r.json()
    assert answer["active"] == "green"
    assert answer["reason"] == json.loads(body).get("reason", "")


async def test_a_body_whose_content_encoding_does_not_decode_is_a_400(
    proxy: Bgproxy, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp decompresses gzip and deflate bodies itself; garbage under those names was a 500. The rest of such
    a body cannot be read, so the answer closes the connection (and nothing is logged as unhandled)."""
    before = await state(session, proxy)
    for encoding in ("gzip", "deflate"):
        headers = {"Content-Encoding": encoding}
        async with session.post(
            f"http://127.0.0.1:{proxy.admin_port}/promote", data=b"not compressed at all", headers=headers
        ) as r:
            assert r.status == 400, await r.text()
            assert "cannot read the request body" in (await r.json())["error"]
            assert r.headers["Connection"] == "close"
    assert await state(session, proxy) == before
    assert [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR] == []


async def test_a_compressed_body_counts_against_the_limit_once_decompressed(
    proxy: Bgproxy, session: aiohttp.ClientSession
) -> None:
    """A gzip bomb: 16 MiB of spaces squeeze into a few KiB, and still get the 413 of a body over the limit."""
    before = await state(session, proxy)
    bomb = gzip.compress(b'{"reason": "x"' + b" " * (16 << 20) + b"}")
    assert len(bomb) < MAX_BODY
    async with session.post(
        f"http://127.0.0.1:{proxy.admin_port}/promote", data=bomb, headers={"Content-Encoding": "gzip"}
    ) as r:
        assert r.status == 413, await r.text()
        assert "too large" in (await r.json())["error"]
    small = gzip.compress(b'{"reason": "zipped"}')
    async with session.post(
        f"http://127.0.0.1:{proxy.admin_port}/promote", data=small, headers={"Content-Encoding": "gzip"}
    ) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["reason"] == "zipped"
    assert (await state(session, proxy))["revision"] == before["revision"] + 1


async def raw_post(app: Bgproxy, head: bytes, body: bytes = b'{"to": "green"}') -> tuple[int, dict[str, Any]]:
    """A POST /switch with header bytes no HTTP library would send; (status, JSON answer)."""
    client = await RawClient.connect(app.admin_port)
    try:
        await client.send(b"POST /switch HTTP/1.1\r\n" + head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        status, headers, answer = await client.read_response()
    finally:
        await client.close()
    assert headers["content-type"][0].startswith("application/json"), answer
    return status, json.loads(answer)


@pytest.mark.parametrize(
    "authorization",
    [b"Bearer \xff\xfe", "Bearer é".encode(), b"Bearer " + TOKEN.encode() + b"\x80", b"\xffearer " + TOKEN.encode()],
    ids=["latin-1-bytes", "utf-8", "token-then-a-byte", "bad-scheme-byte"],
)
async def test_a_non_ascii_authorization_is_a_401(
    start_proxy: StartProxy, session: aiohttp.ClientSession, authorization: bytes
) -> None:
    """The token is compared as the bytes that were sent; undecodable ones were a 500."""
    app = await start_proxy(admin_token=TOKEN)
    before = await state(session, app)
    status, answer = await raw_post(app, b"Host: 127.0.0.1\r\nAuthorization: " + authorization + b"\r\n")
    assert status == 401 and "bearer token" in answer["error"]
    assert await state(session, app) == before


@pytest.mark.parametrize(
    "host",
    [b"\xff\xfe", b"127.0.0.1:99999", b"127.0.0.1:abc", b"127.0.0.1:\xd9\xa1", b"[::1", b"::1", b"[::1]x", b"", b"a b"],
    ids=["non-ascii", "port-too-big", "port-not-a-number", "arabic-digit-port", "open-bracket", "bare-ipv6",
         "after-bracket", "empty", "space"],
)  # fmt: skip
async def test_a_malformed_host_without_a_token_is_a_403(
    proxy: Bgproxy, session: aiohttp.ClientSession, host: bytes
) -> None:
    """Without a token only flips addressed to a loopback name are taken; a Host that does not parse is not one
    (a bad port was a 500; '[::1' was taken as loopback)."""
    before = await state(session, proxy)
    status, answer = await raw_post(proxy, b"Host: " + host + b"\r\n")
    assert status == 403 and "refused" in answer["error"]
    assert await state(session, proxy) == before


@pytest.mark.parametrize("host", [b"127.0.0.1", b"localhost:1", b"[::1]:80", b"LOCALHOST", b"127.1.2.3:65535"])
async def test_a_well_formed_loopback_host_without_a_token_flips(proxy: Bgproxy, host: bytes) -> None:
    status, answer = await raw_post(proxy, b"Host: " + host + b"\r\n")
    assert status == 200 and answer["active"] == "green"
