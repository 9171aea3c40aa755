"""Webhooks, delivered to a real receiver on loopback by a real bgproxy: each change once, signed; a receiver that
hangs or fails gets three tries and never delays a flip; a full queue drops and counts.

The figures of the closing note are printed (lines starting with "measured:"; run with -s to see them).
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bgproxy.app import Bgproxy
from bgproxy.notify.outbox import BACKOFF
from bgproxy.notify.webhooks import Webhooks
from tests.support.configmap import admin, metric, metric_is, until
from tests.support.receiver import Receiver
from tests.support.replicas import measured
from tests.support.servers import TIMEOUT, StartProxy

SECRET = "whsec-0123456789"
PAYLOAD_KEYS = {
    "id", "event", "active", "previous", "weight", "rollout", "release", "revision", "source", "reason", "forced", "at"
}  # fmt: skip


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        yield session


@pytest.fixture
async def other_receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


async def change(http: aiohttp.ClientSession, app: Bgproxy, path: str, **body: Any) -> float:
    """One admin change; returns how long the call took (seconds)."""
    start = time.monotonic()
    status, answer = await admin(http, app, "POST", path, **body)
    took = time.monotonic() - start
    assert status == 200, answer
    return took


async def deliveries(http: aiohttp.ClientSession, app: Bgproxy, result: str) -> float:
    return await metric(http, app, "bgproxy_webhook_deliveries_total", result=result)


async def test_every_change_is_posted_once_to_every_receiver_signed_over_the_exact_body(
    start_proxy: StartProxy, http: aiohttp.ClientSession, receiver: Receiver, other_receiver: Receiver
) -> None:
    app = await start_proxy(webhook_urls=f"{receiver.url}, {other_receiver.url}", webhook_secret=SECRET)
    await change(http, app, "/switch", to="green", reason="release 42")
    await change(http, app, "/switch", to="green", reason="again")  # no change: no revision, no webhook
    await change(http, app, "/shift", weight=20, reason="canary 43")
    await change(http, app, "/abort", reason="p99 doubled")
    await change(http, app, "/promote", steps=[50], interval=1, reason="release 43")
    await until(lambda: app.holder.current.active.value == "blue", "the stepped promotion's promote", 5)
    _, history = await admin(http, app, "GET", "/history")
    entries = list(reversed(history["history"] if isinstance(history, dict) else history))
    assert [e["event"] for e in entries] == ["switch", "shift", "aborted", "step", "promoted"]

    for r in (receiver, other_receiver):
        got = await r.received(len(entries))
        bodies = [d.json for d in got]
        assert [b["event"] for b in bodies] == [e["event"] for e in entries]  # in order, each once
        for d, body, entry in zip(got, bodies, entries, strict=True):
            assert d.signed_with(SECRET), d.headers
            assert not d.signed_with("another secret")
            assert d.headers["Content-Type"] == "application/json"
            assert d.headers["X-Bgproxy-Event"] == body["event"]
            assert set(body) == PAYLOAD_KEYS
            assert body["revision"] == entry["revision"] and body["at"] == entry["when"]
            assert (body["active"], body["weight"], body["source"], body["reason"], body["forced"]) == (
                entry["to"], entry["weight"], entry["source"], entry["reason"], entry["forced"]
            )  # fmt: skip
            assert body["id"] == f"{entry['revision']}-{entry['when']:.6f}"
        assert bodies[0]["previous"] == "blue" and bodies[0]["rollout"] is None and bodies[0]["release"] is None
        step = bodies[3]["rollout"]
        assert step is not None and (step["steps"], step["step"], step["interval"]) == ([50], 0, 1.0)
        assert bodies[4]["source"] == "rollout" and bodies[4]["rollout"] is None
        assert len({b["id"] for b in bodies}) == len(bodies)
    assert await deliveries(http, app, "ok") == 2 * len(entries)
    assert await deliveries(http, app, "failed") == await deliveries(http, app, "dropped") == 0


async def test_without_a_secret_nothing_is_signed(
    start_proxy: StartProxy, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    app = await start_proxy(webhook_urls=receiver.url)
    await change(http, app, "/switch", to="green")
    (delivery,) = await receiver.received(1)
    assert "X-Bgproxy-Signature" not in delivery.headers and delivery.json["event"] == "switch"


async def test_the_counter_is_exported_at_zero_from_the_start(
    start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    app = await start_proxy()
    async with http.get(f"http://127.0.0.1:{app.admin_port}/metrics") as resp:
        text = await resp.text()
    for result in ("ok", "failed", "dropped"):
        assert f'bgproxy_webhook_deliveries_total{{result="{result}"}} 0.0' in text


async def test_a_hanging_receiver_gets_three_tries_and_never_delays_a_flip(
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    receiver: Receiver,
    other_receiver: Receiver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    receiver.hold()
    timeout = 0.5
    app = await start_proxy(webhook_urls=f"{receiver.url},{other_receiver.url}", webhook_timeout=str(timeout))
    flips = [await change(http, app, "/switch", to=colour) for colour in ("green", "blue", "green", "blue")]
    # Each flip answered long before a single try could have timed out: nothing waited for the receiver.
    assert max(flips) < timeout, flips
    # The healthy receiver is not held up by the hanging one.
    await other_receiver.received(4, within=timeout * 2)
    first = (await receiver.received(3, within=timeout * 3 + 1 + 2 + 3))[:3]
    assert [d.json["revision"] for d in first] == [1, 1, 1]  # the first change, tried three times
    gaps = [b.at - a.at for a, b in itertools.pairwise(first)]
    # Arrivals are stamped after the connection, and the first try's while four flips and their deliveries share the
    # loop: a late first stamp shortens the first gap. Without the backoff a gap would be the timeout alone.
    slack = 0.25
    assert timeout + 1.0 - slack <= gaps[0] < timeout + 1.0 + 1.0  # the try's timeout, then 1 s of backoff
    assert timeout + 2.0 - slack <= gaps[1] < timeout + 2.0 + 1.0  # then 2 s
    await until(lambda: deliveries(http, app, "failed"), "the first change counted as failed", timeout + 2)
    assert await deliveries(http, app, "failed") == 1
    assert await deliveries(http, app, "ok") == 4  # the other receiver's
    measured(
        capsys,
        f"webhooks: 4 flips with a hanging receiver (timeout {timeout} s): admin call median "
        f"{statistics.median(flips) * 1000:.1f} ms, max {max(flips) * 1000:.1f} ms; the hanging receiver got 3 tries "
        f"{gaps[0]:.2f} s and {gaps[1]:.2f} s apart, the healthy one all 4 changes",
    )


async def test_a_failing_receiver_gets_three_tries_then_the_change_counts_as_failed(
    start_proxy: StartProxy, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    receiver.statuses = [500, 503, 200, 500, 500, 500]
    app = await start_proxy(webhook_urls=receiver.url)
    flips = [await change(http, app, "/switch", to="green")]  # 500, 503, then 200: delivered on the third try
    await receiver.received(1)  # answered 500: the first change now waits out its backoff before the next try
    flips.append(await change(http, app, "/switch", to="blue"))  # 500 three times: failed
    assert max(flips) < BACKOFF, flips  # neither flip waited for a try or a backoff
    got = await receiver.received(6, within=2 * (1 + 2) + 3)
    assert [d.json["revision"] for d in got] == [1, 1, 1, 2, 2, 2]
    assert len({d.body for d in got[:3]}) == 1  # a retry sends the very same body
    await until(lambda: deliveries(http, app, "failed"), "the second change counted as failed", 2)
    assert (await deliveries(http, app, "ok"), await deliveries(http, app, "failed")) == (1, 1)


async def test_a_full_queue_drops_and_counts_and_a_stop_counts_what_was_left(
    start_proxy: StartProxy, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    app = await start_proxy()
    hooks = Webhooks(app.holder, app.metrics, (receiver.url,), secret=None, timeout=5.0, queue_size=2)
    hooks.start()
    try:
        receiver.hold()
        await change(http, app, "/switch", to="green")
        await receiver.received(1)  # the first change is being sent: the queue is empty again
        for colour in ("blue", "green", "blue", "green"):  # two fit in the queue, two are dropped
            await change(http, app, "/switch", to=colour)
        assert await deliveries(http, app, "dropped") == 2
        receiver.release()
        got = await receiver.received(3)
        assert [d.json["revision"] for d in got] == [1, 2, 3]
        await until(lambda: metric_is(http, app, "bgproxy_webhook_deliveries_total", 3, result="ok"), "three sent", 2)
        receiver.hold()
        for colour in ("blue", "green"):
            await change(http, app, "/switch", to=colour)
        await receiver.received(4)
    finally:
        await hooks.stop()
    # Stopped while one was being sent and one waited: both count as dropped, none is lost silently.
    assert await deliveries(http, app, "dropped") == 2 + 2
    assert await deliveries(http, app, "ok") == 3
