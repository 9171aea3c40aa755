"""A stepped promotion through the admin API, end to end on the wire: each step's share under load, no request
lost, a normal promote at the end; pause holds, resume continues, abort is at once for new requests and never for
requests in flight.

The timeline of the steps is read from /history (`when` is the instant each step's state was decided, on the same
clock as the clients' timestamps, and the swap follows it before any request can be read), so each response is
attributed to the step whose whole window it was sent and answered in.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from tests.support.admin import Admin
from tests.support.load import Answer, get, keep_sending, send_all
from tests.support.servers import TIMEOUT, StartProxy, Upstream


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        yield s


def within(share: float, weight: int, n: int) -> bool:
    """A share of n fair draws (percent) is right for `weight`: within 4.5 standard deviations (a false alarm about
    once in 150,000 checks), plus 0.1 point for the rounding of small windows. Exact at 0 and 100."""
    sd = 100 * math.sqrt(weight / 100 * (1 - weight / 100) / n)
    return abs(share - weight) <= 4.5 * sd + 0.1


async def load_until(condition: Callable[[], bool]) -> None:
    """Wait (bounded) until the clients' answers meet `condition`."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)  # polling the answers collected so far


def since(history: list[dict[str, Any]], revision: int) -> list[dict[str, Any]]:
    return [h for h in history if h["revision"] > revision]


@pytest.mark.slow
async def test_stepped_promotion_under_load_gets_each_steps_share_and_loses_nothing(
    start_proxy: StartProxy, session: aiohttp.ClientSession
) -> None:
    """50 keep-alive clients through a promotion of 10, 50, 100 every second: 40 without cookies (each request a
    fresh draw: the share of each step), 10 that keep their cookie (once on green, never back on blue)."""
    app = await start_proxy()
    admin = Admin(session, app)
    steps, interval = [10, 50, 100], 1.0
    stop = asyncio.Event()
    fresh: list[Answer] = []
    sticky: list[list[Answer]] = [[] for _ in range(10)]

    def keeper(i: int) -> tuple[Any, Any]:
        cookie: list[str] = []

        def make() -> bytes:
            return get("/", *cookie)

        def seen(a: Answer) -> None:
            sticky[i].append(a)
            if a.sticky() and not cookie:
                cookie.append(f"Cookie: bg-sticky={a.sticky()[0]}")

        return make, seen

    clients = [asyncio.create_task(keep_sending(app.port, stop, get, fresh.append)) for _ in range(40)]
    clients += [asyncio.create_task(keep_sending(app.port, stop, *keeper(i))) for i in range(10)]
    try:
        await load_until(lambda: len(fresh) >= 250)  # load running before the promotion starts
        before = await admin.state()
        started = await admin.post("/promote", {"steps": steps, "interval": interval, "reason": "release 42"})
        assert (started["weight"], started["rollout"]["step"], started["rollout"]["steps"]) == (10, 0, steps)
        await admin.wait_state("promoted", lambda s: s["rollout"] is None, within=interval * len(steps) + 10)
        done = time.time()
        await load_until(lambda: sum(a.sent > done for a in fresh[-300:]) >= 250)  # and after the promote
    finally:
        stop.set()
        errors = await asyncio.wait_for(asyncio.gather(*clients), TIMEOUT)

    # Zero non-2xx, zero connection errors, every body from the colour that its header names.
    answers = fresh + [a for c in sticky for a in c]
    assert [e for errs in errors for e in errs] == []
    assert [a for a in answers if a.status != 200 or a.body != f"{a.color}\n".encode()] == []

    # The timeline: one history entry per step and one for the promote, each a full interval after the one before.
    timeline = since(await admin.history(), before["revision"])
    assert [(h["event"], h["weight"], h["to"], h["source"]) for h in timeline] == [
        ("step", 10, "blue", "admin"),
        ("step", 50, "blue", "rollout"),
        ("step", 100, "blue", "rollout"),
        ("promoted", 0, "green", "rollout"),
    ]
    assert [h["revision"] for h in timeline] == list(range(before["revision"] + 1, before["revision"] + 5))
    when = [h["when"] for h in timeline]
    gaps = [b - a for a, b in itertools.pairwise(when)]
    assert all(interval <= g <= interval + 1.0 for g in gaps), gaps

    # Each window's share: the requests sent and answered within it. And each answer, exactly: a request drawn a
    # bucket is told it (Set-Cookie), and its colour is that bucket's under the weight of a window it overlapped.
    bounds = [-math.inf, *when, math.inf]
    weights = [0, *steps, 100]  # after the promote green is active: all of it, as at 100
    windows = list(zip(itertools.pairwise(bounds), weights, strict=True))
    report = []
    for (lo, hi), weight in windows:
        window = [a for a in fresh if lo <= a.sent and a.done <= hi]
        share = 100 * sum(a.color == "green" for a in window) / len(window)
        report.append(f"{weight}%: {share:.1f}% of {len(window)}")
        assert len(window) >= 100, report
        assert within(share, weight, len(window)), report
    for a in fresh:
        overlapped = [w for (lo, hi), w in windows if a.sent < hi and a.done > lo]
        bucket = a.sticky()
        if bucket:
            assert any((a.color == "green") is (bucket[0] < w) for w in overlapped if 0 < w < 100), (a, overlapped)
        else:
            assert any(w in (0, 100) and a.color == ("green" if w else "blue") for w in overlapped), (a, overlapped)
    # The sticky clients: once on green, never back on blue (the weight only rose, then green went live).
    for i, seen in enumerate(sticky):
        colors = [a.color for a in seen]
        assert colors[-1] == "green"
        assert "blue" not in colors[colors.index("green") :], (i, colors)
    print(
        f"\nmeasured: stepped promotion {steps} every {interval:g}s under 50 keep-alive clients: "
        f"{len(answers)} requests, 0 non-2xx, 0 connection errors; green share per window: {'; '.join(report)}; "
        f"step gaps {', '.join(f'{g:.3f}s' for g in gaps)}"
    )

    # The end is a normal promote.
    final = await admin.state()
    assert (final["active"], final["previous"], final["weight"], final["rollout"]) == ("green", "blue", 0, None)
    assert (final["source"], final["revision"]) == ("rollout", before["revision"] + 4)
    assert await admin.metric("bgproxy_switches_total", source="rollout", to="green") == 1
    assert (await admin.metric("bgproxy_weight"), await admin.metric("bgproxy_rollout_step")) == (0, -1)


async def test_pause_holds_the_step_and_resume_holds_it_a_full_interval_again(
    start_proxy: StartProxy, session: aiohttp.ClientSession
) -> None:
    app = await start_proxy()
    admin = Admin(session, app)
    interval = 1.0
    started = await admin.post("/promote", {"steps": [10, 60], "interval": interval})
    paused = await admin.post("/pause", {"reason": "looking at the dashboards"})
    assert paused["rollout"]["paused"] is True and paused["weight"] == 10
    assert paused["updated_at"] - started["updated_at"] < interval  # paused before the step was due

    # Held: nothing changes across more than an interval past the step's due time.
    due = started["rollout"]["step_started_at"] + interval
    await admin.holds(paused, until=due + interval * 0.6)
    answers = await send_all(app.port, [get()] * 400)
    assert within(100 * sum(a.color == "green" for a in answers) / 400, 10, 400)  # still 10% while paused

    resumed = await admin.post("/resume")
    assert resumed["rollout"]["paused"] is False
    assert resumed["rollout"]["step_started_at"] == resumed["updated_at"]  # the step's interval starts again
    stepped = await admin.wait_state("at the next step", lambda s: s["weight"] == 60, within=interval + 5)
    assert stepped["rollout"]["step"] == 1
    promoted = await admin.wait_state("promoted", lambda s: s["rollout"] is None, within=interval + 5)
    assert (promoted["active"], promoted["weight"]) == ("green", 0)

    timeline = since(await admin.history(), started["revision"] - 1)
    assert [(h["event"], h["weight"], h["source"]) for h in timeline] == [
        ("step", 10, "admin"),
        ("paused", 10, "admin"),
        ("resumed", 10, "admin"),
        ("step", 60, "rollout"),
        ("promoted", 0, "rollout"),
    ]
    when = {h["event"] + str(h["weight"]): h["when"] for h in timeline}
    assert when["step60"] - when["resumed10"] >= interval  # a full interval after the resume, not the start
    assert when["promoted0"] - when["step60"] >= interval
    print(
        f"\nmeasured: paused {when['resumed10'] - when['paused10']:.2f}s; next step "
        f"{when['step60'] - when['resumed10']:.3f}s after the resume (interval {interval:g}s)"
    )


async def test_a_manual_shift_ends_the_stepped_promotion_and_its_timer(
    start_proxy: StartProxy, session: aiohttp.ClientSession
) -> None:
    app = await start_proxy()
    admin = Admin(session, app)
    await admin.post("/promote", {"steps": [10, 50], "interval": 1.0})
    shifted = await admin.post("/shift", {"weight": 30})
    assert (shifted["weight"], shifted["rollout"]) == (30, None)
    await admin.holds(shifted, until=time.time() + 1.6)  # past when the next step would have been due
    assert [h["event"] for h in await admin.history()] == ["step", "shift"]


async def test_abort_sends_the_next_request_to_the_active_colour_and_lets_inflight_ones_finish(
    start_proxy: StartProxy, session: aiohttp.ClientSession, upstreams: dict[str, Upstream]
) -> None:
    app = await start_proxy()
    admin = Admin(session, app)
    await admin.post("/promote", {"steps": [50, 100], "interval": 600})
    # bucket 0 is below every weight: green while the promotion runs
    assert {a.color for a in await send_all(app.port, [get("/", "Cookie: bg-sticky=0")] * 10)} == {"green"}
    arrived, release = upstreams["green"].gate("held")
    inflight = asyncio.create_task(send_all(app.port, [get("/gate/held", "Cookie: bg-sticky=0")]))
    await asyncio.wait_for(arrived.wait(), TIMEOUT)

    called = time.monotonic()
    aborted = await admin.post("/abort", {"reason": "errors on green"})
    returned = time.monotonic()
    assert (aborted["active"], aborted["weight"], aborted["rollout"]) == ("blue", 0, None)
    after = await send_all(app.port, [get(), get("/", "Cookie: bg-sticky=0")] * 100, connections=4, batch=8)
    first = min(a.done for a in after)
    assert {a.color for a in after} == {"blue"}  # every new request, from the very first, on the active colour
    assert all(a.status == 200 and a.set_cookies == () for a in after)  # weight 0: no cookie handed out

    release.set()
    (held,) = await asyncio.wait_for(inflight, TIMEOUT)
    assert (held.status, held.color, held.body) == (200, "green", b"green held\n")  # finished where it started
    history = await admin.history()
    assert [(h["event"], h["weight"], h["reason"]) for h in history][-1] == ("aborted", 0, "errors on green")
    print(
        f"\nmeasured: abort call {1000 * (returned - called):.1f} ms; the first of 200 requests after it answered "
        f"{1000 * (first - aborted['updated_at']):.1f} ms after the abort was decided, all on blue; the request held "
        "on green finished on green"
    )


async def test_rollback_during_a_stepped_promotion_acts_as_abort(
    start_proxy: StartProxy, session: aiohttp.ClientSession
) -> None:
    app = await start_proxy()
    admin = Admin(session, app)
    await admin.post("/promote", {"steps": [20, 100], "interval": 600})
    rolled = await admin.post("/rollback", {"reason": "bad"})
    assert (rolled["active"], rolled["previous"], rolled["weight"], rolled["rollout"]) == ("blue", None, 0, None)
    assert {a.color for a in await send_all(app.port, [get("/", "Cookie: bg-sticky=0")] * 20)} == {"blue"}
    assert [h["event"] for h in await admin.history()] == ["step", "aborted"]
