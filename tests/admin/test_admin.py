"""The admin API over real sockets: state, flips, errors, auth, history, health, OpenAPI and metrics."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from bgproxy import __version__, build
from bgproxy.admin import MAX_BODY
from bgproxy.app import Bgproxy
from bgproxy.metrics import BUCKETS
from tests.support.servers import TIMEOUT, StartProxy, Upstream, free_port

# DESIGN's keys of GET /state (later issues add more: these must stay)
STATE_KEYS = {"active", "standby", "previous", "revision", "updated_at", "source", "reason", "backends"}
PATHS = {
    "/state",
    "/switch",
    "/promote",
    "/rollback",
    "/shift",
    "/pause",
    "/resume",
    "/abort",
    "/release",
    "/history",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/",
    "/dashboard/app.js",
    "/dashboard/style.css",
    "/events",
}
MUTATING = ("/switch", "/promote", "/rollback", "/shift", "/pause", "/resume", "/abort", "/release")
TOKEN = "s3cret-admin-token"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        yield s


def admin(app: Bgproxy, path: str) -> str:
    return f"http://127.0.0.1:{app.admin_port}{path}"


async def call(session: aiohttp.ClientSession, app: Bgproxy, method: str, path: str, **kw: Any) -> tuple[int, Any, Any]:
    """(status, JSON body, headers) of one admin call; every admin answer must be JSON."""
    async with session.request(method, admin(app, path), **kw) as r:
        assert r.content_type == "application/json", (r.status, await r.text())
        return r.status, await r.json(), r.headers


async def get_state(session: aiohttp.ClientSession, app: Bgproxy) -> dict[str, Any]:
    status, body, _ = await call(session, app, "GET", "/state")
    assert status == 200
    return body


async def served_by(session: aiohttp.ClientSession, app: Bgproxy, **kw: Any) -> str:
    """The colour that answers an ordinary request through the data plane (header and body must agree)."""
    async with session.get(f"http://127.0.0.1:{app.port}/", **kw) as r:
        assert r.status == 200
        body = await r.text()
        color = r.headers["X-Bg-Color"]
        assert body == f"{color}\n"
        return color


# --- GET /state -----------------------------------------------------------------------------------------------------


async def test_state_has_every_design_key(
    proxy: Bgproxy, session: aiohttp.ClientSession, upstreams: dict[str, Upstream]
) -> None:
    body = await get_state(session, proxy)
    assert STATE_KEYS <= set(body)
    assert body["active"] == "blue" and body["standby"] == "green"
    assert body["previous"] is None
    assert body["revision"] == 0
    assert isinstance(body["updated_at"], float) and body["updated_at"] > 0
    assert body["source"] == "initial" and body["reason"] == ""
    assert body["store"] == {"backend": "memory"}
    quiet = {"inflight": 0, "requests": 0, "rps": 0.0, "error_rate": 0.0, "p50": None, "p99": None}
    assert body["backends"] == {
        "blue": {"url": upstreams["blue"].url, "healthy": True, **quiet, "drained_since": None},
        "green": {"url": upstreams["green"].url, "healthy": True, **quiet, "drained_since": None},
    }


async def test_initial_active_green(start_proxy: StartProxy, session: aiohttp.ClientSession) -> None:
    app = await start_proxy(initial_active="green")
    assert (await get_state(session, app))["active"] == "green"
    assert await served_by(session, app) == "green"


# --- POST /switch, /promote, /rollback ------------------------------------------------------------------------------


async def test_switch_answers_the_new_state_and_traffic_follows(proxy: Bgproxy, session: aiohttp.ClientSession) -> None:
    assert await served_by(session, proxy) == "blue"
    status, body, _ = await call(session, proxy, "POST", "/switch", json={"to": "green", "reason": "r"})
    assert status == 200
    assert STATE_KEYS <= set(body)
    assert (body["active"], body["standby"], body["previous"], body["revision"]) == ("green", "blue", "blue", 1)
    assert (body["source"], body["reason"]) == ("admin", "r")
    assert await served_by(session, proxy) == "green"
    later = await get_state(session, proxy)
    assert later.pop("backends")["green"]["requests"] == 1  # the live figures moved on: the request just served
    body.pop("backends")
    assert later == body
    # the preview header still reaches the other colour
    assert await served_by(session, proxy, headers={"X-Preview": "1"}) == "blue"


async def test_switch_accepts_colour_in_any_case_and_without_reason(
    proxy: Bgproxy, session: aiohttp.ClientSession
) -> None:
    status, body, _ = await call(session, proxy, "POST", "/switch", json={"to": " GREEN "})
    assert status == 200
    assert (body["active"], body["reason"]) == ("green", "")
    assert await served_by(session, proxy) == "green"


async def test_switch_to_the_active_colour_changes_nothing(proxy: Bgproxy, session: aiohttp.ClientSession) -> None:
    before = await get_state(session, proxy)
    status, body, _ = await call(session, proxy, "POST", "/switch", json={"to": "blue", "reason": "again"})
    assert status == 200
    assert body == before  # same revision, reason and timestamp: idempotent
    _, hist, _ = await call(session, proxy, "GET", "/history")
    assert hist == {"history": []}


BAD_SWITCH_BODIES = [
    pytest.param(b'{"to": "red"}', "'red'", id="unknown-colour"),
    pytest.param(b'{"to": ""}', "'blue' or 'green'", id="empty-colour"),
    pytest.param(b'{"to": 5}', "'blue' or 'green'", id="colour-not-a-string"),
    pytest.param(b'{"to": null}', "'blue' or 'green'", id="colour-null"),
    pytest.param(b'{"to": "green"', "not valid JSON", id="not-json"),
    pytest.param(b"to=green", "not valid JSON", id="form-encoded"),
    pytest.param(b'["green"]', "JSON object", id="array"),
    pytest.param(b'"green"', "JSON object", id="string"),
    pytest.param(b"{}", "'to'", id="missing-to"),
    pytest.param(b"", "'to'", id="empty-body"),
    pytest.param(b'{"reason": "x"}', "'to'", id="only-reason"),
    pytest.param(b'{"to": "green", "colour": "green"}', "colour", id="unknown-field"),
    pytest.param(b'{"to": "green", "reason": 5}', "'reason'", id="reason-number"),
    pytest.param(b'{"to": "green", "reason": null}', "'reason'", id="reason-null"),
    pytest.param(json.dumps({"to": "green", "reason": "x" * 1025}).encode(), "'reason'", id="reason-too-long"),
]


@pytest.mark.parametrize(("data", "mentions"), BAD_SWITCH_BODIES)
async def test_bad_switch_body_is_400_and_changes_nothing(
    proxy: Bgproxy, session: aiohttp.ClientSession, data: bytes, mentions: str
) -> None:
    before = await get_state(session, proxy)
    status, body, _ = await call(
        session, proxy, "POST", "/switch", data=data, headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert set(body) == {"error"}
    assert mentions in body["error"]
    assert await get_state(session, proxy) == before
    assert await served_by(session, proxy) == "blue"


@pytest.mark.parametrize("path", ["/promote", "/rollback"])
@pytest.mark.parametrize(
    "data", [b'{"to": "green"}', b"nope", b"[]", b'{"reason": 1}', b'{"why": "x"}'], ids=lambda d: d.decode()
)
async def test_bad_promote_or_rollback_body_is_400(
    proxy: Bgproxy, session: aiohttp.ClientSession, path: str, data: bytes
) -> None:
    await call(session, proxy, "POST", "/switch", json={"to": "green"})
    before = await get_state(session, proxy)
    status, body, _ = await call(session, proxy, "POST", path, data=data)
    assert status == 400 and body["error"]
    assert await get_state(session, proxy) == before
    assert await served_by(session, proxy) == "green"


async def test_promote_and_rollback(proxy: Bgproxy, session: aiohttp.ClientSession) -> None:
    status, body, _ = await call(session, proxy, "POST", "/promote", json={"reason": "ship it"})
    assert status == 200
    assert (body["active"], body["previous"], body["revision"], body["reason"]) == ("green", "blue", 1, "ship it")
    assert await served_by(session, proxy) == "green"

    # promote takes no body at all, too
    status, body, _ = await call(session, proxy, "POST", "/promote")
    assert status == 200
    assert (body["active"], body["previous"], body["revision"], body["reason"]) == ("blue", "green", 2, "")
    assert await served_by(session, proxy) == "blue"

    status, body, _ = await call(session, proxy, "POST", "/rollback", json={"reason": "bad build"})
    assert status == 200
    assert (body["active"], body["previous"], body["revision"], body["reason"]) == ("green", "blue", 3, "bad build")
    assert body["source"] == "admin"
    assert await served_by(session, proxy) == "green"

    status, body, _ = await call(session, proxy, "POST", "/rollback")
    assert status == 200
    assert (body["active"], body["revision"]) == ("blue", 4)
    assert await served_by(session, proxy) == "blue"


async def test_rollback_with_nothing_to_roll_back_is_409(proxy: Bgproxy, session: aiohttp.ClientSession) -> None:
    before = await get_state(session, proxy)
    status, body, _ = await call(session, proxy, "POST", "/rollback", json={"reason": "x"})
    assert status == 409
    assert "nothing to roll back" in body["error"]
    assert await get_state(session, proxy) == before
    assert await served_by(session, proxy) == "blue"


# --- GET /history ---------------------------------------------------------------------------------------------------


async def test_history_newest_first_with_every_field(proxy: Bgproxy, session: aiohttp.ClientSession) -> None:
    await call(session, proxy, "POST", "/switch", json={"to": "green", "reason": "one"})
    await call(session, proxy, "POST", "/switch", json={"to": "green", "reason": "no-op"})
    await call(session, proxy, "POST", "/promote", json={"reason": "two"})
    await call(session, proxy, "POST", "/rollback", json={"reason": "three"})
    status, body, _ = await call(session, proxy, "GET", "/history")
    assert status == 200
    hist = body["history"]
    assert [(h["from"], h["to"], h["source"], h["reason"]) for h in hist] == [
        ("blue", "green", "admin", "three"),
        ("green", "blue", "admin", "two"),
        ("blue", "green", "admin", "one"),
    ]
    assert all({"when", "from", "to", "source", "reason"} <= set(h) for h in hist)
    whens = [h["when"] for h in hist]
    assert whens == sorted(whens, reverse=True)
    state = await get_state(session, proxy)
    assert hist[0]["when"] == state["updated_at"]


async def test_history_keeps_the_last_100(proxy: Bgproxy, session: aiohttp.ClientSession) -> None:
    for i in range(105):
        status, _, _ = await call(session, proxy, "POST", "/promote", json={"reason": f"flip {i}"})
        assert status == 200
    _, body, _ = await call(session, proxy, "GET", "/history")
    hist = body["history"]
    assert len(hist) == 100
    assert [h["reason"] for h in hist] == [f"flip {i}" for i in range(104, 4, -1)]
    assert hist[0]["to"] == "green"  # the 105th flip from blue lands on green
    assert all(h["from"] != h["to"] for h in hist)
    assert (await get_state(session, proxy))["revision"] == 105


# --- auth -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer "},
    ],
    ids=["none", "wrong", "longer", "basic", "bare", "empty"],
)
@pytest.mark.parametrize(("path", "payload"), [("/switch", {"to": "green"}), ("/promote", {}), ("/rollback", {})])
async def test_mutating_calls_need_the_token(
    start_proxy: StartProxy,
    session: aiohttp.ClientSession,
    headers: dict[str, str],
    path: str,
    payload: dict[str, str],
) -> None:
    app = await start_proxy(admin_token=TOKEN)
    before = await get_state(session, app)  # reading needs no token
    status, body, resp_headers = await call(session, app, "POST", path, json=payload, headers=headers)
    assert status == 401
    assert "bearer token" in body["error"]
    assert TOKEN not in body["error"]
    assert resp_headers["WWW-Authenticate"].startswith("Bearer")
    assert await get_state(session, app) == before
    assert await served_by(session, app) == "blue"


async def test_the_token_allows_flips(start_proxy: StartProxy, session: aiohttp.ClientSession) -> None:
    app = await start_proxy(admin_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, body, _ = await call(session, app, "POST", "/switch", json={"to": "green"}, headers=auth)
    assert status == 200 and body["active"] == "green"
    assert await served_by(session, app) == "green"
    status, body, _ = await call(session, app, "POST", "/rollback", headers={"Authorization": f"bearer {TOKEN}"})
    assert status == 200 and body["active"] == "blue"
    # read-only calls need no token
    for path in ("/state", "/history", "/healthz", "/readyz", "/openapi.json"):
        async with session.get(admin(app, path)) as r:
            assert r.status == 200, path
    async with session.get(admin(app, "/metrics")) as r:
        assert r.status == 200


async def test_401_comes_before_body_validation(start_proxy: StartProxy, session: aiohttp.ClientSession) -> None:
    app = await start_proxy(admin_token=TOKEN)
    status, _, _ = await call(session, app, "POST", "/switch", data=b"garbage")
    assert status == 401


# --- 404, 405, 413 --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/state/", "/switch/green", "/dashboard/", "/dashboard/nope.js"])
async def test_unknown_path_is_404_json(proxy: Bgproxy, session: aiohttp.ClientSession, path: str) -> None:
    status, body, _ = await call(session, proxy, "GET", path)
    assert status == 404
    assert set(body) == {"error"} and path in body["error"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("GET", "/switch", "POST"), ("PUT", "/promote", "POST"), ("DELETE", "/state", "GET"), ("POST", "/state", "GET")],
)
async def test_wrong_method_is_405_json(
    proxy: Bgproxy, session: aiohttp.ClientSession, method: str, path: str, allow: str
) -> None:
    before = await get_state(session, proxy)
    status, body, headers = await call(session, proxy, method, path)
    assert status == 405
    assert set(body) == {"error"} and method in body["error"] and allow in body["error"]
    assert allow in headers["Allow"]
    assert await get_state(session, proxy) == before


async def test_body_over_the_limit_is_413(proxy: Bgproxy, session: aiohttp.ClientSession) -> None:
    before = await get_state(session, proxy)
    data = b'{"to": "green", "reason": "' + b"x" * MAX_BODY + b'"}'
    status, body, _ = await call(session, proxy, "POST", "/switch", data=data)
    assert status == 413
    assert "too large" in body["error"]
    assert await get_state(session, proxy) == before


async def test_body_at_the_limit_is_accepted(proxy: Bgproxy, session: aiohttp.ClientSession) -> None:
    data = b'{"to": "green"}'
    data += b" " * (MAX_BODY - len(data))  # exactly the limit, padded with JSON whitespace
    status, body, _ = await call(session, proxy, "POST", "/switch", data=data)
    assert status == 200 and body["active"] == "green"


# --- health, readiness, OpenAPI -------------------------------------------------------------------------------------


async def test_healthz_and_readyz(proxy: Bgproxy, session: aiohttp.ClientSession) -> None:
    status, body, _ = await call(session, proxy, "GET", "/healthz")
    assert (status, body) == (200, {"status": "ok"})
    status, body, _ = await call(session, proxy, "GET", "/readyz")
    assert (status, body) == (200, {"status": "ready"})


async def test_openapi_document_lists_every_path(proxy: Bgproxy, session: aiohttp.ClientSession) -> None:
    status, doc, _ = await call(session, proxy, "GET", "/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] and doc["info"]["version"]
    assert set(doc["paths"]) == PATHS
    methods = {path: set(item) for path, item in doc["paths"].items()}
    assert methods == {p: {"post"} if p in MUTATING else {"get"} for p in PATHS}
    for path in MUTATING:
        op = doc["paths"][path]["post"]
        assert {"200", "400", "401"} <= set(op["responses"]), path
        assert op["security"] == [{"bearer": []}]
    assert STATE_KEYS <= set(doc["components"]["schemas"]["StateView"]["required"])
    # every documented GET path answers (the document describes what is really served)
    for path in PATHS - set(MUTATING):
        async with session.get(admin(proxy, path)) as r:
            assert r.status == 200, path
    validate(doc)  # the whole document against the OpenAPI 3.1 schema (raises on the first violation)


# --- /metrics -------------------------------------------------------------------------------------------------------


def parse_metrics(text: str) -> tuple[set[str], dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """(family names, {(sample name, labels): value}) via prometheus-client's own parser."""
    names: set[str] = set()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return names, samples


async def scrape(session: aiohttp.ClientSession, app: Bgproxy) -> tuple[set[str], dict[Any, float]]:
    async with session.get(admin(app, "/metrics")) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return parse_metrics(await r.text())


def lab(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


async def test_metrics_parse_and_count_per_colour(proxy: Bgproxy, session: aiohttp.ClientSession) -> None:
    names, samples = await scrape(session, proxy)
    # present from the start (families without samples still carry HELP/TYPE)
    for family in (
        "bgproxy_requests",
        "bgproxy_request_duration_seconds",
        "bgproxy_upstream_errors",
        "bgproxy_inflight_requests",
        "bgproxy_active_color",
        "bgproxy_switches",
        "bgproxy_state_revision",
        "bgproxy_config_errors",
    ):
        assert family in names, family
    # The ConfigMap store's figures exist only with that store: a watch gauge at 0 on this memory store would page.
    assert "bgproxy_configmap_watch_connected" not in names
    assert samples[("bgproxy_active_color", lab(color="blue"))] == 1
    assert samples[("bgproxy_active_color", lab(color="green"))] == 0
    assert samples[("bgproxy_state_revision", lab())] == 0
    assert samples[("bgproxy_upstream_errors_total", lab(color="green", kind="connect"))] == 0
    assert not any(name == "bgproxy_switches_total" for name, _ in samples)

    client_seconds = {"blue": 0.0, "green": 0.0}  # each request as the client timed it, per colour

    async def timed(color: str) -> None:
        start = time.perf_counter()
        assert await served_by(session, proxy) == color
        client_seconds[color] += time.perf_counter() - start

    for _ in range(3):
        await timed("blue")
    await call(session, proxy, "POST", "/switch", json={"to": "green"})
    for _ in range(2):
        await timed("green")
    start = time.perf_counter()
    async with session.post(f"http://127.0.0.1:{proxy.port}/status/404") as r:
        assert r.status == 404
        await r.read()
    client_seconds["green"] += time.perf_counter() - start

    names, samples = await scrape(session, proxy)
    assert {labels: n for (name, labels), n in samples.items() if name == "bgproxy_requests_total"} == {
        lab(color="blue", method="GET", code="200"): 3,
        lab(color="green", method="GET", code="200"): 2,
        lab(color="green", method="POST", code="404"): 1,
    }
    for color, count in (("blue", 3), ("green", 3)):
        buckets = sorted(
            (float(dict(labels)["le"]), n)
            for (name, labels), n in samples.items()
            if name == "bgproxy_request_duration_seconds_bucket" and dict(labels)["color"] == color
        )
        assert [le for le, _ in buckets] == list(BUCKETS)
        assert [n for _, n in buckets] == sorted(n for _, n in buckets) and buckets[-1][1] == count  # cumulative
        assert samples[("bgproxy_request_duration_seconds_count", lab(color=color))] == count
        # in seconds, and each request counted once: no more than the client waited for them
        assert 0 < samples[("bgproxy_request_duration_seconds_sum", lab(color=color))] <= client_seconds[color]
    assert samples[("bgproxy_inflight_requests", lab(color="blue"))] == 0
    assert samples[("bgproxy_inflight_requests", lab(color="green"))] == 0
    assert samples[("bgproxy_active_color", lab(color="blue"))] == 0
    assert samples[("bgproxy_active_color", lab(color="green"))] == 1
    assert samples[("bgproxy_switches_total", lab(source="admin", to="green"))] == 1
    assert samples[("bgproxy_state_revision", lab())] == 1
    # no label ever carries a path
    assert not any("/status" in v for _, labels in samples for _, v in labels)

    # every real flip counts once; a no-op does not
    await call(session, proxy, "POST", "/promote")
    await call(session, proxy, "POST", "/rollback")
    await call(session, proxy, "POST", "/switch", json={"to": "green"})
    _, samples = await scrape(session, proxy)
    assert samples[("bgproxy_switches_total", lab(source="admin", to="green"))] == 2
    assert samples[("bgproxy_switches_total", lab(source="admin", to="blue"))] == 1
    assert samples[("bgproxy_state_revision", lab())] == 3


async def test_request_duration_is_in_seconds(
    proxy: Bgproxy, session: aiohttp.ClientSession, upstreams: dict[str, Upstream]
) -> None:
    """A request the upstream holds for 40 ms lands above the 25 ms bucket, its duration counted in seconds."""
    arrived, release = upstreams["blue"].gate("slow")
    slow = asyncio.create_task(http_get(session, f"http://127.0.0.1:{proxy.port}/gate/slow"))
    await asyncio.wait_for(arrived.wait(), TIMEOUT)
    await asyncio.sleep(0.04)  # not synchronisation: the minimum duration being measured
    release.set()
    assert await asyncio.wait_for(slow, TIMEOUT) == 200
    _, samples = await scrape(session, proxy)
    assert samples[("bgproxy_request_duration_seconds_bucket", lab(color="blue", le="0.025"))] == 0
    assert samples[("bgproxy_request_duration_seconds_bucket", lab(color="blue", le="+Inf"))] == 1
    assert 0.03 <= samples[("bgproxy_request_duration_seconds_sum", lab(color="blue"))] < 5


async def http_get(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as r:
        await r.read()
        return r.status


async def test_state_and_metrics_say_which_build_runs(proxy: Bgproxy, session: aiohttp.ClientSession) -> None:
    compiled = build.compiled()
    assert (await get_state(session, proxy))["build"] == {"version": __version__, "compiled": compiled}
    _, samples = await scrape(session, proxy)
    info = {labels: n for (name, labels), n in samples.items() if name == "bgproxy_build_info"}
    assert info == {lab(compiled="true" if compiled else "false", version=__version__): 1}


async def test_metrics_count_upstream_errors(start_proxy: StartProxy, session: aiohttp.ClientSession) -> None:
    app = await start_proxy(green_url=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    async with session.get(f"http://127.0.0.1:{app.port}/", headers={"X-Preview": "green"}) as r:
        assert r.status == 502
        assert "green" in await r.text()
    _, samples = await scrape(session, app)
    assert samples[("bgproxy_upstream_errors_total", lab(color="green", kind="connect"))] == 1
    assert samples[("bgproxy_upstream_errors_total", lab(color="blue", kind="connect"))] == 0
    assert samples[("bgproxy_requests_total", lab(color="green", method="GET", code="502"))] == 1


async def test_concurrent_flips_are_serialised(proxy: Bgproxy, session: aiohttp.ClientSession) -> None:
    """Twenty promotes at once: each one a real flip with its own revision, none lost."""
    results = await asyncio.wait_for(
        asyncio.gather(*(call(session, proxy, "POST", "/promote") for _ in range(20))), TIMEOUT
    )
    assert all(status == 200 for status, _, _ in results)
    assert sorted(body["revision"] for _, body, _ in results) == list(range(1, 21))
    state = await get_state(session, proxy)
    assert (state["revision"], state["active"]) == (20, "blue")
    _, hist, _ = await call(session, proxy, "GET", "/history")
    assert len(hist["history"]) == 20
