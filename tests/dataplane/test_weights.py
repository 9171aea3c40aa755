"""Weights on the wire: the share of ordinary traffic each colour gets, sticky buckets from the cookie or the sticky
header, the Set-Cookie the proxy hands out (and when it does not), and preview winning over the weight.

Thousands of requests go through keep-alive connections that pipeline (tests/support/load.py), so each test stays
within a few seconds. Bounds on shares are stated with the binomial standard deviation they come from.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator

import aiohttp
import pytest

from bgproxy.app import Bgproxy
from bgproxy.core.buckets import from_header
from tests.support.admin import Admin
from tests.support.load import Answer, get, send_all
from tests.support.servers import TIMEOUT, StartProxy, free_port

SET_COOKIE = "bg-sticky={}; Path=/; HttpOnly; SameSite=Lax"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        yield s


async def shifted(start_proxy: StartProxy, session: aiohttp.ClientSession, weight: int, **settings: str) -> Admin:
    app = await start_proxy(**settings)
    admin = Admin(session, app)
    if weight:
        await admin.post("/shift", {"weight": weight})
    return admin


def green_share(answers: list[Answer]) -> float:
    return 100 * sum(a.color == "green" for a in answers) / len(answers)


def sd(weight: float, n: int) -> float:
    """The standard deviation, in percent points, of the share of n fair draws that land below `weight`."""
    return 100 * math.sqrt(weight / 100 * (1 - weight / 100) / n)


def served_right(a: Answer) -> bool:
    return a.status == 200 and a.body == f"{a.color}\n".encode()


# --- accuracy ---------------------------------------------------------------------------------------------------------


async def test_weight_20_sends_20_percent_of_requests_without_cookies_to_the_standby(
    start_proxy: StartProxy, session: aiohttp.ClientSession
) -> None:
    admin = await shifted(start_proxy, session, 20)
    answers = await send_all(admin.app.port, [get()] * 10_000)
    assert all(served_right(a) for a in answers)
    share = green_share(answers)
    print(f"\nmeasured: weight 20, 10,000 requests without cookies: green {share:.2f}% (sd {sd(20, 10_000):.2f})")
    assert abs(share - 20) <= 1.5  # the bound: 3.75 standard deviations
    # each answer hands out the bucket it was drawn, and its colour is that bucket's: green exactly below 20
    for a in answers:
        (bucket,) = a.sticky()
        assert a.set_cookies == (SET_COOKIE.format(bucket),)
        assert (a.color == "green") is (bucket < 20), a


async def test_cookie_keeping_clients_keep_their_colour_and_raising_the_weight_moves_none_back(
    start_proxy: StartProxy, session: aiohttp.ClientSession
) -> None:
    """2,000 clients: the first answer hands each a bucket; two more requests each carry it back and get the same
    colour, with no new cookie. Then 20 -> 50: nobody leaves green, and green gains the clients of buckets 20-49."""
    clients = 2_000
    # The buckets are drawn by the proxy's random(), in this process: seeded, the shares are one figure, not a 0.1%
    # chance a run of a right proxy fails.
    random.seed(2_000)
    admin = await shifted(start_proxy, session, 20)
    port = admin.app.port
    first = await send_all(port, [get()] * clients)
    assert all(served_right(a) for a in first)
    bucket = [a.sticky()[0] for a in first]
    color = [a.color for a in first]
    cookie = [f"Cookie: session=s{i}; bg-sticky={b}" for i, b in enumerate(bucket)]

    again = await send_all(port, [get("/", c) for c in cookie] * 2)
    for i, a in enumerate(again):
        assert served_right(a) and a.set_cookies == ()
        assert a.color == color[i % clients], f"client {i % clients} moved from {color[i % clients]} to {a.color}"
    share = 100 * color.count("green") / clients
    print(f"\nmeasured: weight 20, {clients} cookie-keeping clients: {share:.2f}% on green (sd {sd(20, clients):.2f})")
    assert abs(share - 20) <= 3.0  # the bound: 3.4 standard deviations

    await admin.post("/shift", {"weight": 50})
    after = await send_all(port, [get("/", c) for c in cookie])
    moved_back = [i for i, a in enumerate(after) if color[i] == "green" and a.color != "green"]
    assert moved_back == []
    assert [a.color for a in after] == ["green" if b < 50 else "blue" for b in bucket]
    assert all(served_right(a) and a.set_cookies == () for a in after)
    share50 = green_share(after)
    print(f"measured: after 20 -> 50 the same clients: {share50:.2f}% on green, none moved back")
    assert abs(share50 - 50) <= 4.0  # 3.6 standard deviations (1.1 points at 2,000 clients)


# --- Set-Cookie -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cookie", "kept"),
    [
        (None, None),
        ("bg-sticky=0", 0),
        ("bg-sticky=19", 19),
        ("bg-sticky=20", 20),
        ("bg-sticky=99", 99),
        ("a=1; bg-sticky=7; b=2", 7),
        ("bg-sticky=100", None),
        ("bg-sticky=-1", None),
        ("bg-sticky=abc", None),
        ("bg-sticky=", None),
        ("bg-sticky=1.5", None),
        ("xbg-sticky=5", None),
        ("other=5", None),
    ],
)
async def test_the_cookie_is_set_only_when_the_request_had_no_valid_one(
    start_proxy: StartProxy, session: aiohttp.ClientSession, cookie: str | None, kept: int | None
) -> None:
    admin = await shifted(start_proxy, session, 20)
    headers = () if cookie is None else (f"Cookie: {cookie}",)
    answers = await send_all(admin.app.port, [get("/", *headers)] * 50, connections=2)
    for a in answers:
        assert served_right(a)
        if kept is None:  # a fresh draw, handed out exactly as DESIGN says
            (bucket,) = a.sticky()
            assert a.set_cookies == (SET_COOKIE.format(bucket),)
        else:
            assert a.set_cookies == ()
            bucket = kept
        assert (a.color == "green") is (bucket < 20)
    if kept is None:
        assert {a.color for a in answers} == {"blue", "green"}  # fresh draws: both colours in 50 (p > 1 - 1e-4)


@pytest.mark.parametrize("weight", [0, 100])
async def test_no_cookie_at_weight_0_or_100(
    start_proxy: StartProxy, session: aiohttp.ClientSession, weight: int
) -> None:
    admin = await shifted(start_proxy, session, weight)
    answers = await send_all(admin.app.port, [get(), get("/", "Cookie: bg-sticky=abc"), get("/cookies")] * 20)
    assert {a.color for a in answers} == {"green" if weight else "blue"}
    assert all(a.status == 200 for a in answers)
    assert all(not a.sticky() for a in answers)
    # the upstream's own cookies still pass, as separate lines
    assert all(a.set_cookies == ("a=1; Path=/", "b=2; Path=/") for a in answers[2::3])


async def test_an_empty_sticky_cookie_setting_turns_the_cookie_off(
    start_proxy: StartProxy, session: aiohttp.ClientSession
) -> None:
    """No Set-Cookie, and a bg-sticky cookie a client still sends is not read: every request is a fresh draw."""
    admin = await shifted(start_proxy, session, 50, sticky_cookie="")
    answers = await send_all(admin.app.port, [get(), get("/", "Cookie: bg-sticky=0")] * 200)
    assert all(served_right(a) and a.set_cookies == () for a in answers)
    with_cookie = answers[1::2]
    # bucket 0 would be green every time if the cookie were read; fresh draws give both (p of one colour: 2^-199)
    assert {a.color for a in with_cookie} == {"blue", "green"}
    assert abs(green_share(answers) - 50) <= 4 * sd(50, len(answers))


async def test_the_sticky_cookie_name_is_a_setting(start_proxy: StartProxy, session: aiohttp.ClientSession) -> None:
    admin = await shifted(start_proxy, session, 30, sticky_cookie="canary_b")
    (fresh,) = await send_all(admin.app.port, [get("/", "Cookie: bg-sticky=0")])
    (bucket,) = fresh.sticky("canary_b")
    assert fresh.set_cookies == (f"canary_b={bucket}; Path=/; HttpOnly; SameSite=Lax",)
    kept = await send_all(admin.app.port, [get("/", f"Cookie: canary_b={bucket}")] * 20)
    assert {a.color for a in kept} == {fresh.color} and all(a.set_cookies == () for a in kept)


async def test_the_upstreams_own_set_cookie_lines_are_kept_beside_the_sticky_one(
    start_proxy: StartProxy, session: aiohttp.ClientSession
) -> None:
    admin = await shifted(start_proxy, session, 50)
    answers = await send_all(admin.app.port, [get("/cookies")] * 20, connections=2)
    for a in answers:
        assert a.status == 200 and a.body == a.color.encode()
        (bucket,) = a.sticky()
        assert sorted(a.set_cookies) == sorted(["a=1; Path=/", "b=2; Path=/", SET_COOKIE.format(bucket)])


async def test_the_proxys_own_502_carries_the_sticky_cookie(
    start_proxy: StartProxy, session: aiohttp.ClientSession
) -> None:
    """Green points at a closed port: its requests get the proxy's 502, and the bucket is handed out all the same
    (the client's colour must not change when it retries)."""
    admin = await shifted(start_proxy, session, 90, green_url=f"http://127.0.0.1:{free_port()}")
    answers = await send_all(admin.app.port, [get()] * 40, connections=1, batch=1)
    failed = [a for a in answers if a.status == 502]
    assert failed and all(b"green" in a.body for a in failed)
    for a in answers:
        (bucket,) = a.sticky()
        assert a.set_cookies == (SET_COOKIE.format(bucket),)
        assert (a.color, a.status) == (("green", 502) if bucket < 90 else ("blue", 200))


# --- STICKY_HEADER ----------------------------------------------------------------------------------------------------


async def test_the_sticky_header_puts_each_value_on_one_colour_in_the_right_share(
    start_proxy: StartProxy, session: aiohttp.ClientSession
) -> None:
    """5,000 user ids at weight 20, the first 1,000 sent again: the same id always lands on the same colour, that of
    its hash's bucket, with no cookie handed out. The ids are fixed, so the share is fixed too: within 2 points of 20
    (a fair hash's standard deviation over 5,000 values is 0.57 points; the core tests check the hash's spread)."""
    admin = await shifted(start_proxy, session, 20, sticky_header="X-User")
    users = [f"user-{i}" for i in range(5_000)]
    requests = [get("/", f"X-User: {u}") for u in users]
    answers = await send_all(admin.app.port, requests + requests[:1_000])
    first, again = answers[: len(users)], answers[len(users) :]
    for user, a in zip(users, first, strict=True):
        assert served_right(a) and a.set_cookies == ()
        assert (a.color == "green") is (from_header(user.encode()) < 20), user
    for user, a, b in zip(users, first, again, strict=False):
        assert served_right(b) and b.set_cookies == ()
        assert a.color == b.color, user
    share = green_share(first)
    print(f"\nmeasured: STICKY_HEADER, 5,000 ids at weight 20: {share:.2f}% on green, each id on one colour")
    assert abs(share - 20) <= 2.0


async def test_a_valid_sticky_cookie_wins_over_the_sticky_header(
    start_proxy: StartProxy, session: aiohttp.ClientSession
) -> None:
    admin = await shifted(start_proxy, session, 20, sticky_header="X-User")
    blue_user = next(f"u{i}" for i in range(1000) if from_header(f"u{i}".encode()) >= 20)
    green_user = next(f"u{i}" for i in range(1000) if from_header(f"u{i}".encode()) < 20)
    answers = await send_all(
        admin.app.port,
        [
            get("/", f"X-User: {blue_user}"),
            get("/", f"X-User: {blue_user}", "Cookie: bg-sticky=5"),
            get("/", f"X-User: {green_user}"),
            get("/", f"X-User: {green_user}", "Cookie: bg-sticky=95"),
            get("/", f"X-User: {green_user}", "Cookie: bg-sticky=abc"),  # not valid: the header decides
        ]
        * 10,
        connections=1,
    )
    assert [a.color for a in answers] == ["blue", "green", "green", "blue", "green"] * 10
    assert all(a.set_cookies == () for a in answers)


async def test_without_the_sticky_header_or_with_it_empty_a_request_gets_a_drawn_bucket_and_the_cookie(
    start_proxy: StartProxy, session: aiohttp.ClientSession
) -> None:
    """An empty value is no id: hashed, it would put every client that sends one in the same bucket (0: the standby
    colour at any weight), so it counts as absent."""
    admin = await shifted(start_proxy, session, 50, sticky_header="X-User")
    answers = await send_all(admin.app.port, [get(), get("/", "X-User: ")] * 100, connections=2)
    for a in answers:
        (bucket,) = a.sticky()
        assert (a.color == "green") is (bucket < 50)
    assert {a.color for a in answers[1::2]} == {"blue", "green"}  # p of one colour in 100 fair draws: 2^-99


# --- preview wins -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weight", "headers", "served"),
    [
        (100, ("X-Preview: blue",), "blue"),  # the active colour, while every ordinary request goes green
        (100, ("Cookie: bg-preview=blue",), "blue"),
        (100, ("X-Preview: 1",), "green"),
        (100, (), "green"),
        (0, ("X-Preview: green",), "green"),  # the standby colour at weight 0
        (0, ("X-Preview: 1",), "green"),
        (0, ("Cookie: bg-preview=1",), "green"),
        (0, (), "blue"),
        (20, ("X-Preview: blue", "Cookie: bg-sticky=5"), "blue"),  # bucket 5 alone would be green
        (20, ("Cookie: bg-sticky=5; bg-preview=blue",), "blue"),
        (20, ("X-Preview: green", "Cookie: bg-sticky=95"), "green"),  # bucket 95 alone would be blue
        (20, ("X-Preview: 1", "Cookie: bg-sticky=95"), "green"),
        (20, ("X-Preview: green",), "green"),
        (20, ("X-Preview: blue",), "blue"),
    ],
)
async def test_preview_wins_over_the_weight_both_ways(
    start_proxy: StartProxy, session: aiohttp.ClientSession, weight: int, headers: tuple[str, ...], served: str
) -> None:
    admin = await shifted(start_proxy, session, weight)
    answers = await send_all(admin.app.port, [get("/", *headers)] * 30, connections=1)
    assert [a.color for a in answers] == [served] * 30
    assert all(served_right(a) for a in answers)
    if any(h.startswith("X-Preview") or "bg-preview" in h for h in headers):
        assert all(a.set_cookies == () for a in answers)  # a preview request is not given a bucket


async def test_a_blank_preview_value_asks_for_nothing_and_the_bucket_decides(
    start_proxy: StartProxy, session: aiohttp.ClientSession
) -> None:
    """A no-break space (0xA0, blank once decoded) is no preview: bucket 95 stays on blue, bucket 5 on green."""
    admin = await shifted(start_proxy, session, 20)
    ask = b"GET / HTTP/1.1\r\nHost: test\r\nX-Preview: \xa0\r\nCookie: bg-sticky=%d\r\n\r\n"
    answers = await send_all(admin.app.port, [ask % 95, ask % 5], connections=1)
    assert [a.color for a in answers] == ["blue", "green"]


async def test_at_weight_0_ordinary_traffic_stays_on_the_active_colour_without_a_cookie(proxy: Bgproxy) -> None:
    answers = await send_all(proxy.port, [get()] * 20, connections=1)
    assert {a.color for a in answers} == {"blue"} and all(a.set_cookies == () for a in answers)
