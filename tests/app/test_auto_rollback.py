"""The automatic rollback, end to end: a real bgproxy under a steady load of real clients, in front of upstreams
that start failing (500s, a slow p99, refused connections) after a shift, a stepped promotion or a promote; and the
cases that must not roll back (a healthy colour, too few requests, a promote whose watch is over).

Figures (run with -s, lines starting with "measured:"): the time from the first failure to the rollback, and to
the last request that still went to the failing colour.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bgproxy import build
from bgproxy.app import Bgproxy
from bgproxy.release.analysis import INTERVAL
from tests.support.replicas import measured
from tests.support.servers import StartProxy, free_port
from tests.support.traffic import Faults, Load, faulty_app, serving

WINDOW = 5.0
MIN_REQUESTS = 50
# The same load and thresholds for every case: a 5 s window, 50 requests, 5% 5xx, p99 at most 3x the other's.
ANALYSIS = {
    "analysis_window": str(WINDOW),
    "analysis_min_requests": str(MIN_REQUESTS),
    "analysis_max_p99_ratio": "3",
}
BASE_DELAY = 0.02  # seconds every upstream takes, so that scheduling noise does not make the p99 ratio
# The healthy case's: a colour's first 50 requests are judged, whose p99 is their slowest, against a full window's
# p99, so one stall of this process's loop (a busy CI machine, the pure build) near the shift tripled a 20 ms p99.
HEALTHY_DELAY = 0.06
WAIT = 20.0  # seconds any wait here may take at most


async def call(app: Bgproxy, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        async with s.request(method, f"http://127.0.0.1:{app.admin_port}{path}", json=body) as r:
            text = await r.text()
            assert r.status == 200, text
            return json.loads(text) if path != "/metrics" else text


async def until(check: Callable[[], Awaitable[bool]], what: str, within: float = WAIT) -> None:
    end = time.monotonic() + within
    while not await check():
        if time.monotonic() > end:
            pytest.fail(f"not within {within}s: {what}")
        await asyncio.sleep(0.05)


async def state_is(app: Bgproxy, predicate: Callable[[dict[str, Any]], bool]) -> bool:
    return predicate(await call(app, "GET", "/state"))


async def looks_after(app: Bgproxy, n: int) -> None:
    """Until the automatic rollback has looked at the figures `n` more times."""
    start = app.analysis.looks
    await until(lambda: _true(app.analysis.looks >= start + n), f"{n} looks at the figures")


async def _true(value: bool) -> bool:
    return value


def rollbacks(metrics: str) -> dict[tuple[str, str], float]:
    out = {}
    for line in metrics.splitlines():
        if line.startswith("bgproxy_auto_rollbacks_total{"):
            labels, value = line.rsplit(" ", 1)
            color = labels.split('color="')[1].split('"')[0]
            reason = labels.split('reason="')[1].split('"')[0]
            out[(color, reason)] = float(value)
    return out


async def rolled_back(
    app: Bgproxy, load: Load, first_failure: Callable[[], float | None], *, kind: str, capsys: Any, case: str
) -> dict[str, Any]:
    """Wait for the rollback; check what it wrote, the counter and the history; measure it against the first
    failure. Returns the state."""
    swapped: list[float] = []  # when this process swapped in the rollback (after the store's write, fsyncs and all)
    app.holder.listeners.append(lambda old, new: swapped.append(time.time()) if new.source == "analysis" else None)
    await until(lambda: state_is(app, lambda s: s["source"] == "analysis"), "an automatic rollback")
    state = await call(app, "GET", "/state")
    history = (await call(app, "GET", "/history"))["history"]
    first = first_failure()
    assert first is not None
    entries = [h for h in history if h["event"] == "auto-rollback"]
    assert len(entries) == 1, history
    took = entries[0]["when"] - first
    late = [a for a in load.answers if a.color == "green" and a.started > first]
    last_green = max(a.started for a in late) - first
    measured(
        capsys,
        f"auto-rollback ({case}): {took:.2f} s from the first failure to the rollback, the last request to green "
        f"started {last_green:.2f} s after the first failure ({len(late)} requests to green after it); "
        f"reason: {state['reason']}",
    )
    assert took <= WINDOW + 2, f"the rollback came {took:.2f} s after the first failure"
    # No request that started after the swap went to green (the history's time is taken before the store's write).
    assert len(swapped) == 1, swapped
    assert last_green + first <= swapped[0], "requests still went to green after the rollback"
    assert all(a.color == "blue" for a in load.since(swapped[0]))
    assert state["source"] == "analysis" and state["reason"] == entries[0]["reason"]
    assert f"last {WINDOW:g}s" in state["reason"] and state["reason"].startswith("green: ")
    counts = rollbacks(await call(app, "GET", "/metrics"))
    assert counts == {
        (c, r): 1.0 if (c, r) == ("green", kind) else 0.0 for c in ("blue", "green") for r in ("error_rate", "latency")
    }
    return state


@pytest.mark.slow
async def test_a_green_failing_30_percent_is_taken_off_traffic_within_the_window(
    start_proxy: StartProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    green = Faults(delay=BASE_DELAY, fail_per_10=3)
    async with serving(faulty_app("blue", Faults(delay=BASE_DELAY))) as b, serving(faulty_app("green", green)) as g:
        app = await start_proxy(blue_url=b, green_url=g, **ANALYSIS)
        async with Load(app, clients=10) as load:
            await until(lambda: _true(len(load.answers) >= 50), "the load running on blue")
            await call(app, "POST", "/shift", {"weight": 50, "reason": "canary v43"})
            state = await rolled_back(
                app, load, lambda: green.first_failure, kind="error_rate", capsys=capsys, case="30% 500s"
            )
    assert (state["active"], state["weight"], state["rollout"]) == ("blue", 0, None)
    assert "5xx share" in state["reason"] and "ANALYSIS_MAX_ERROR_RATE 5.0%" in state["reason"]
    assert state["hold"]["active"] == "blue" and state["hold"]["weight"] == 50
    assert load.errors == []


@pytest.mark.slow
async def test_a_green_failing_during_a_stepped_promotion_goes_back_to_weight_0_and_takes_no_further_step(
    start_proxy: StartProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    green = Faults(delay=BASE_DELAY, fail_per_10=3)
    interval = round(WINDOW + 3)  # seconds each step holds: longer than the rollback may take (asserted)
    async with serving(faulty_app("blue", Faults(delay=BASE_DELAY))) as b, serving(faulty_app("green", green)) as g:
        app = await start_proxy(blue_url=b, green_url=g, **ANALYSIS)
        async with Load(app, clients=10) as load:
            await until(lambda: _true(len(load.answers) >= 50), "the load running on blue")
            started = await call(app, "POST", "/promote", {"steps": [20, 50, 100], "interval": interval})
            state = await rolled_back(
                app, load, lambda: green.first_failure, kind="error_rate", capsys=capsys, case="a stepped promotion"
            )
            assert state["revision"] == started["revision"] + 1, "a step was taken before the rollback"
            # Past the moment the next step would have been due: none is taken, traffic stays on blue.
            await until(lambda: _true(time.time() > started["updated_at"] + interval + 2 * INTERVAL), "the step due")
            after = await call(app, "GET", "/state")
    assert (state["active"], state["weight"], state["rollout"]) == ("blue", 0, None)
    assert state["hold"]["active"] == "blue" and state["hold"]["weight"] == 20
    assert (after["revision"], after["weight"], after["rollout"]) == (state["revision"], 0, None)
    assert load.errors == []


@pytest.mark.slow
async def test_a_green_whose_p99_is_ten_times_blues_is_taken_off_traffic(
    start_proxy: StartProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    green = Faults(delay=BASE_DELAY * 10)
    async with serving(faulty_app("blue", Faults(delay=BASE_DELAY))) as b, serving(faulty_app("green", green)) as g:
        app = await start_proxy(blue_url=b, green_url=g, **ANALYSIS)
        async with Load(app, clients=20) as load:
            await until(lambda: _true(len(load.answers) >= 50), "the load running on blue")
            shifted = await call(app, "POST", "/shift", {"weight": 50})
            state = await rolled_back(
                app, load, lambda: shifted["updated_at"], kind="latency", capsys=capsys, case="p99 10x blue's"
            )
    assert (state["active"], state["weight"]) == ("blue", 0)
    assert "ANALYSIS_MAX_P99_RATIO 3" in state["reason"] and "blue's" in state["reason"]
    assert load.errors == []


@pytest.mark.slow
async def test_a_green_that_refuses_connections_is_taken_off_traffic(
    start_proxy: StartProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serving(faulty_app("blue", Faults(delay=BASE_DELAY))) as b:
        app = await start_proxy(blue_url=b, green_url=f"http://127.0.0.1:{free_port()}", **ANALYSIS)
        async with Load(app, clients=10) as load:
            await until(lambda: _true(len(load.answers) >= 50), "the load running on blue")
            await call(app, "POST", "/shift", {"weight": 50})

            def first_502() -> float | None:
                return min((a.ended for a in load.answers if a.color == "green" and a.status == 502), default=None)

            state = await rolled_back(app, load, first_502, kind="error_rate", capsys=capsys, case="502s")
    assert (state["active"], state["weight"]) == ("blue", 0)
    assert "5xx share 100.0%" in state["reason"]
    assert load.errors == []


@pytest.mark.slow
@pytest.mark.skipif(
    not build.compiled(),
    reason="pure build: the proxy, the upstreams and the load share this process's loop, and a stall of it (0.5 s in "
    "CI) lands in green's young window above 1% of its requests, in blue's full one below: a false breach of the "
    "test's making. The verdict is core code, the same in both builds; the compiled pass runs this.",
)
async def test_a_healthy_green_is_not_rolled_back_in_a_full_window(
    start_proxy: StartProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    async with (
        serving(faulty_app("blue", Faults(delay=HEALTHY_DELAY))) as b,
        serving(faulty_app("green", Faults(delay=HEALTHY_DELAY))) as g,
    ):
        app = await start_proxy(blue_url=b, green_url=g, **ANALYSIS)
        async with Load(app, clients=10) as load:
            await until(lambda: _true(len(load.answers) >= 50), "the load running on blue")
            shifted = await call(app, "POST", "/shift", {"weight": 50})
            judged_at: list[dict[str, Any]] = []

            async def a_full_window_judged() -> bool:
                green = (await call(app, "GET", "/state"))["backends"]["green"]
                if green["requests"] >= MIN_REQUESTS:
                    judged_at.append(green)
                return time.time() >= shifted["updated_at"] + WINDOW + 2

            await until(a_full_window_judged, "a full window under load", within=WINDOW + 10)
            await looks_after(app, 2)
            state = await call(app, "GET", "/state")
    assert (state["source"], state["weight"], state["hold"]) == ("admin", 50, None), state["reason"]
    green = state["backends"]["green"]
    ratio = green["p99"] / state["backends"]["blue"]["p99"]
    measured(
        capsys,
        f"no false positive: a healthy green at weight 50 for {WINDOW + 2:g} s: {green['requests']} requests in "
        f"its window, 5xx share {green['error_rate']:.1%}, p99 {green['p99'] * 1000:.1f} ms ({ratio:.2f}x blue's); "
        "not rolled back",
    )
    assert len(judged_at) >= 10, "the analysis had too few requests to judge for most of the window"
    assert rollbacks(await call(app, "GET", "/metrics")).get(("green", "error_rate")) == 0.0
    assert load.errors == []


async def test_fewer_than_min_requests_failing_is_no_verdict(start_proxy: StartProxy) -> None:
    green = Faults(fail_per_10=10)
    async with serving(faulty_app("blue", Faults())) as b, serving(faulty_app("green", green)) as g:
        app = await start_proxy(blue_url=b, green_url=g, **ANALYSIS)
        await call(app, "POST", "/shift", {"weight": 100})
        async with aiohttp.ClientSession() as s:

            async def send(n: int) -> None:
                for _ in range(n):
                    async with s.get(f"http://127.0.0.1:{app.port}/") as r:
                        assert (r.status, r.headers["X-Bg-Color"]) == (500, "green")

            await send(MIN_REQUESTS - 1)
            await looks_after(app, 2)
            state = await call(app, "GET", "/state")
            assert (state["source"], state["weight"]) == ("admin", 100)
            assert state["backends"]["green"]["requests"] == MIN_REQUESTS - 1
            assert state["backends"]["green"]["error_rate"] == 1.0
            await send(1)  # the one that makes it evidence
            await until(lambda: state_is(app, lambda s: s["source"] == "analysis"), "a rollback at min_requests")
    assert f"({MIN_REQUESTS} of {MIN_REQUESTS})" in (await call(app, "GET", "/state"))["reason"]


def state_file(tmp_path: Path, release: str) -> Path:
    path = tmp_path / "state.json"
    path.write_text(
        json.dumps({"active": "blue", "previous": None, "revision": 1, "source": "admin", "release": release})
    )
    return path


@pytest.mark.slow
async def test_a_promoted_green_failing_inside_the_watch_is_rolled_back_and_held(
    start_proxy: StartProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    green = Faults(delay=BASE_DELAY)
    async with serving(faulty_app("blue", Faults(delay=BASE_DELAY))) as b, serving(faulty_app("green", green)) as g:
        app = await start_proxy(
            blue_url=b,
            green_url=g,
            state_backend="file",
            state_file=str(state_file(tmp_path, "v43")),
            analysis_watch="60",
            **ANALYSIS,
        )
        async with Load(app, clients=10) as load:
            await until(lambda: _true(len(load.answers) >= 50), "the load running on blue")
            await call(app, "POST", "/promote", {"reason": "v43"})
            await until(lambda: _true(green.requests >= 2 * MIN_REQUESTS), "green serving")
            await looks_after(app, 1)  # judged healthy meanwhile
            assert (await call(app, "GET", "/state"))["source"] == "admin"
            green.fail_per_10 = 3
            state = await rolled_back(
                app, load, lambda: green.first_failure, kind="error_rate", capsys=capsys, case="after a promote"
            )
    assert (state["active"], state["previous"], state["promoted_at"]) == ("blue", "green", None)
    assert state["hold"]["active"] == "green" and state["hold"]["weight"] == 0
    assert state["hold"]["release"] == "v43" and state["release"] == "v43"
    assert state["hold"]["reason"] == state["reason"]


@pytest.mark.slow
async def test_a_promoted_green_failing_after_the_watch_stays(start_proxy: StartProxy) -> None:
    green = Faults(delay=BASE_DELAY)
    watch = 1.0
    async with serving(faulty_app("blue", Faults(delay=BASE_DELAY))) as b, serving(faulty_app("green", green)) as g:
        app = await start_proxy(blue_url=b, green_url=g, analysis_watch=str(watch), **ANALYSIS)
        async with Load(app, clients=10) as load:
            promoted = await call(app, "POST", "/promote")
            await until(lambda: _true(time.time() > promoted["promoted_at"] + watch), "the watch to end")
            green.fail_per_10 = 3
            await until(lambda: _true(green.failures >= MIN_REQUESTS), "green failing")
            await looks_after(app, 2)
            state = await call(app, "GET", "/state")
            assert state["backends"]["green"]["error_rate"] > 0.05  # a breach, had it still been watched
    assert (state["active"], state["source"], state["revision"]) == ("green", "admin", promoted["revision"])
    assert load.errors == []


async def test_with_analysis_disabled_nothing_is_judged_and_no_window_is_kept(start_proxy: StartProxy) -> None:
    green = Faults(fail_per_10=10)
    async with serving(faulty_app("blue", Faults())) as b, serving(faulty_app("green", green)) as g:
        app = await start_proxy(blue_url=b, green_url=g, analysis_enabled="false", **ANALYSIS)
        await call(app, "POST", "/shift", {"weight": 100})
        async with aiohttp.ClientSession() as s:
            for _ in range(2 * MIN_REQUESTS):
                async with s.get(f"http://127.0.0.1:{app.port}/") as r:
                    assert r.status == 500
        end = time.monotonic() + 3 * INTERVAL  # long enough for the rollback to have happened, were it on
        while time.monotonic() < end:
            state = await call(app, "GET", "/state")
            assert (state["source"], state["weight"]) == ("admin", 100)
            await asyncio.sleep(0.1)
    assert state["backends"]["green"] == {
        **state["backends"]["green"],
        **dict.fromkeys(("requests", "rps", "error_rate", "p50", "p99")),
        "inflight": 0,
    }
    assert app.analysis.looks == 0


async def test_a_new_shift_after_a_rollback_is_judged_on_fresh_figures(start_proxy: StartProxy) -> None:
    """The failures that caused a rollback are still in the window when a person shifts again (say, to a fixed
    release): they must not roll it back at once."""
    green = Faults(fail_per_10=10)
    async with serving(faulty_app("blue", Faults())) as b, serving(faulty_app("green", green)) as g:
        app = await start_proxy(blue_url=b, green_url=g, **ANALYSIS)
        await call(app, "POST", "/shift", {"weight": 100})
        async with aiohttp.ClientSession() as s:

            async def send(n: int, status: int) -> None:
                for _ in range(n):
                    async with s.get(f"http://127.0.0.1:{app.port}/") as r:
                        assert (r.status, r.headers["X-Bg-Color"]) == (status, "green")

            await send(MIN_REQUESTS, 500)
            await until(lambda: state_is(app, lambda s: s["source"] == "analysis"), "the first rollback")
            green.fail_per_10 = 0  # fixed
            shifted = await call(app, "POST", "/shift", {"weight": 100, "reason": "v44"})
            assert (shifted["backends"]["green"]["requests"], shifted["hold"]) == (0, None)
            await send(MIN_REQUESTS, 200)
            await looks_after(app, 2)
    state = await call(app, "GET", "/state")
    assert (state["source"], state["weight"], state["reason"]) == ("admin", 100, "v44")
    assert state["backends"]["green"]["requests"] == MIN_REQUESTS
