"""Each colour's live figures: the window's arithmetic driven with a clock of our own (percentiles within the
histogram's 2%, the slide, the 5xx count, the mark at a change, the Prometheus histogram filled from the same
bucket), then the figures /state shows for real traffic."""

from __future__ import annotations

import asyncio
import math
import random
from bisect import bisect_left
from typing import Any

import aiohttp
import pytest

from bgproxy.app import Bgproxy
from bgproxy.core.model import Color
from bgproxy.core.stats import (
    BOUNDS,
    BUCKETS,
    LATENCY_MAX,
    LATENCY_MIN,
    MAX_SLOTS,
    ColorStats,
    bucket_value,
    latency_bucket,
)
from tests.support.servers import TIMEOUT, Upstream

T0 = 1000.0  # the window's clock (perf_counter seconds) at its start


def stats(window: float) -> ColorStats:
    return ColorStats(Color.GREEN, window=window, now=T0)


def done(s: ColorStats, code: int, started: float, ended: float) -> None:
    s.done(b"GET", code, started, ended)


def exact(durations: list[float], q: float) -> float:
    ordered = sorted(durations)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@pytest.mark.parametrize("seed", range(5))
def test_p50_and_p99_are_within_two_percent(seed: int) -> None:
    rng = random.Random(seed)
    durations = [min(rng.lognormvariate(math.log(0.02), 1.0), 2.0) for _ in range(5000)]
    green = stats(30)
    for i, d in enumerate(durations):
        end = T0 + 2 + i * 0.005  # 25 s of requests, each started after the window's start
        done(green, 200, end - d, end)
    f = green.figures(T0 + 27)
    assert f.requests == 5000 and f.errors == 0
    for got, q in ((f.p50, 0.5), (f.p99, 0.99)):
        assert got is not None
        assert abs(got / exact(durations, q) - 1) <= 0.021, (q, got, exact(durations, q))


def test_buckets_rise_with_the_duration_and_clamp_at_both_ends() -> None:
    values = [LATENCY_MIN / 10, LATENCY_MIN, 2e-5, 1e-3, 0.5, 30.0, LATENCY_MAX, LATENCY_MAX * 10]
    buckets = [latency_bucket(v) for v in values]
    assert buckets == sorted(buckets) and buckets[0] == buckets[1] == 0
    assert latency_bucket(LATENCY_MAX * 2) == latency_bucket(LATENCY_MAX * 1e6)  # the top bucket holds the rest
    for v in (2e-5, 1e-3, 0.5, 30.0):
        assert abs(bucket_value(latency_bucket(v)) / v - 1) <= 0.02


def test_the_bucket_is_the_first_bound_at_or_above_the_duration() -> None:
    """The written-out search agrees with `bisect_left` everywhere, on the bounds themselves included."""
    rng = random.Random(3)
    probes = [*BOUNDS, *(math.nextafter(b, -math.inf) for b in BOUNDS), *(math.nextafter(b, math.inf) for b in BOUNDS)]
    probes += [-1.0, 0.0, math.inf, math.nan, LATENCY_MAX, *(10 ** rng.uniform(-8, 5) for _ in range(20000))]
    for v in probes:
        assert latency_bucket(v) == bisect_left(BOUNDS, v), v


def test_5xx_count_as_errors_and_websockets_not_at_all() -> None:
    green = stats(10)
    for code in (200, 204, 301, 404, 499, 500, 502, 504, 599, 101):
        done(green, code, T0 + 1, T0 + 1.01)
    f = green.figures(T0 + 2)
    assert (f.requests, f.errors) == (9, 4)
    assert sum(green.requests.values()) == 10  # Prometheus counts the websocket, as before


def test_the_window_slides() -> None:
    window = stats(5)

    def seconds(first: int, last: int, *, failing: int) -> None:
        for second in range(first, last + 1):  # 10 requests a second
            for i in range(10):
                done(window, 500 if i < failing else 200, T0 + second, T0 + second + 0.001)

    seconds(0, 9, failing=1)
    f = window.figures(T0 + 9.5)
    assert (f.requests, f.errors) == (60, 6)  # the 5 s window and the second now filling
    assert f.span == 5 and f.rps == 12
    seconds(10, 12, failing=0)
    assert (window.figures(T0 + 12.5).requests, window.figures(T0 + 12.5).errors) == (60, 3)
    seconds(13, 19, failing=0)
    assert (window.figures(T0 + 19.5).requests, window.figures(T0 + 19.5).errors) == (60, 0)
    assert window.figures(T0 + 25.5).requests == 0


def test_answers_count_by_method_and_status_however_the_pairs_alternate() -> None:
    green = stats(30)
    pairs = [(b"GET", 200), (b"GET", 200), (b"GET", 500), (b"POST", 200), (b"GET", 200), (b"POST", 500), (b"GET", 500)]
    for method, code in pairs:
        green.done(bytes(method), code, T0 + 1, T0 + 1.01)  # a new bytes object each time, as from the parser
    assert green.requests == {(b"GET", 200): 3, (b"GET", 500): 2, (b"POST", 200): 1, (b"POST", 500): 1}


def test_a_mark_forgets_what_came_before_and_requests_that_started_before_it() -> None:
    green = stats(30)
    for i in range(100):
        done(green, 500, T0 + i * 0.01, T0 + i * 0.01 + 0.001)
    green.mark(T0 + 2)
    assert green.figures(T0 + 2).requests == 0
    done(green, 500, T0 + 1.9, T0 + 2.5)  # began before the mark: the old situation
    done(green, 200, T0 + 2.1, T0 + 2.5)
    f = green.figures(T0 + 3)
    assert (f.requests, f.errors, f.span) == (1, 0, 1.0)


def test_a_long_window_stays_bounded_with_wider_slots() -> None:
    green = stats(3600)
    assert len(green.slots) == MAX_SLOTS + 1
    for minute in range(120):
        done(green, 200, T0 + minute * 60, T0 + minute * 60 + 0.01)
    assert green.figures(T0 + 120 * 60).requests in (60, 61)


def test_the_prometheus_histogram_keeps_its_bounds_exactly() -> None:
    """One bisect finds both buckets: a duration on a Prometheus bound counts in that bound's `le` bucket."""
    green = stats(30)
    for seconds in (0.001, 0.0010001, 0.0025, 0.3, 60.0, 61.0, 1e9):
        done(green, 200, T0 + 1, T0 + 1 + seconds)
    expected = [0] * len(BUCKETS)
    for seconds in (0.001, 0.0010001, 0.0025, 0.3, 60.0, 61.0, 1e9):
        took = (T0 + 1 + seconds) - (T0 + 1)  # as the data plane computes it, rounding included
        expected[next(i for i, b in enumerate(BUCKETS) if took <= b)] += 1
    assert green.buckets == expected
    rng = random.Random(7)
    for seconds in [*BUCKETS[:-1], *(10 ** rng.uniform(-7, 5) for _ in range(20000))]:
        one = ColorStats(Color.GREEN, window=None, now=0.0)
        one.done(b"GET", 200, 0.0, seconds)
        assert one.buckets.index(1) == next(i for i, b in enumerate(BUCKETS) if seconds <= b), seconds


def test_without_a_window_only_what_is_in_flight_is_kept() -> None:
    quiet = ColorStats(Color.BLUE, window=None, now=T0)
    done(quiet, 500, T0 + 1, T0 + 2)
    quiet.inflight = 3
    assert quiet.figures(T0 + 2).requests == 0 and quiet.figures(T0 + 2).inflight == 3
    assert sum(quiet.requests.values()) == 1


# --- through the proxy ---------------------------------------------------------------------------------------------


async def backends(session: aiohttp.ClientSession, app: Bgproxy) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{app.admin_port}/state") as r:
        body: dict[str, Any] = (await r.json())["backends"]
        return body


async def test_state_shows_each_colours_live_figures(proxy: Bgproxy, upstreams: dict[str, Upstream]) -> None:
    base = f"http://127.0.0.1:{proxy.port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        for path in ["/"] * 18 + ["/status/500", "/status/503"]:
            async with s.get(base + path) as r:
                await r.read()
        arrived, release = upstreams["blue"].gate("held")
        held = asyncio.create_task(s.get(base + "/gate/held"))
        await asyncio.wait_for(arrived.wait(), TIMEOUT)
        async with s.ws_connect(base + "/ws") as ws:
            await ws.send_str("x")
            await asyncio.wait_for(ws.receive_str(), TIMEOUT)
            blue = (await backends(s, proxy))["blue"]
        release.set()
        (await held).release()
        green = (await backends(s, proxy))["green"]
    assert blue["inflight"] == 2  # the held request and the websocket
    assert (blue["requests"], blue["error_rate"]) == (20, 0.1)
    assert 0 < blue["p50"] <= blue["p99"] < 1 and blue["rps"] > 0
    assert green == {**green, "inflight": 0, "requests": 0, "rps": 0.0, "error_rate": 0.0, "p50": None, "p99": None}


async def test_a_colour_that_begins_getting_traffic_starts_its_figures_afresh(proxy: Bgproxy) -> None:
    base, admin = f"http://127.0.0.1:{proxy.port}", f"http://127.0.0.1:{proxy.admin_port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        for _ in range(5):  # a tester previews green before the release: its own failures
            async with s.get(base + "/status/500", headers={"X-Preview": "1"}) as r:
                assert r.headers["X-Bg-Color"] == "green"
        assert (await backends(s, proxy))["green"]["requests"] == 5
        async with s.post(admin + "/shift", json={"weight": 100}) as r:
            assert r.status == 200
        assert (await backends(s, proxy))["green"]["requests"] == 0  # judged on what it does from now on
        async with s.get(base + "/") as r:
            assert r.headers["X-Bg-Color"] == "green"
        assert (await backends(s, proxy))["green"]["requests"] == 1
        async with s.post(admin + "/shift", json={"weight": 50}) as r:  # still getting traffic: kept
            assert r.status == 200
        assert (await backends(s, proxy))["green"]["requests"] == 1
