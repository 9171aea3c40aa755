"""Schemathesis against the admin API of a real `bgproxy serve`, driven by its own /openapi.json.

Every operation is fuzzed with a bounded, derandomized number of examples (positive data, and for the flips also
schema-violating bodies), with the bearer token and without it. Every response must match the document: a status
code it lists, its content type, its body schema; never a 5xx (the memory store cannot fail, so the documented
503 of a failing store must not appear either); schema-valid data accepted, invalid data rejected; a mutating call
without the token refused; and after every refused mutating call (4xx) the state is what it was before.

The process is set up so that the health gate is exercised too: blue's health path is the admin API's own
/healthz (always up), green points at a closed port (down), so flips to green are refused unless forced.
"""

from __future__ import annotations

import collections
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from bgproxy.admin import openapi_document
from bgproxy.core.model import MAX_REASON, Color, initial_state
from tests.support.processes import background_serve, blocking_get, changed_only_by_timers, clean_env
from tests.support.servers import free_port

TOKEN = "schemathesis-token-5b7e"
EXAMPLES = 50  # per operation, generation mode and auth mode...
EXAMPLES_WITHOUT_TOKEN = 25  # ...fewer where the token's absence decides the answer (401)
OPENAPI = openapi_document()
STREAMS = "text/event-stream"  # never ends: its answer cannot be read whole (tests/dashboard checks the stream)
OPERATIONS = [
    (method.upper(), path)
    for path, item in OPENAPI["paths"].items()
    for method, operation in item.items()
    if STREAMS not in operation["responses"]["200"]["content"]
]
STATS: collections.Counter[tuple[str, str, str, int]] = collections.Counter()
STATS_REFUSED_UNCHANGED: collections.Counter[str] = collections.Counter()  # refused flips whose state was compared

CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            # The flips document 413 for a body over the size limit: that is a rejection too.
            "negative_data_rejection": {"expected-statuses": ["400", "401", "404", "405", "409", "413"]},
            "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx"]},
        }
    }
)


@pytest.fixture(scope="module")
def admin_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    port, admin_port = free_port(), free_port()
    base = f"http://127.0.0.1:{admin_port}"
    env = clean_env(
        BGPROXY_BLUE_URL=base,  # probed at /healthz: the admin API itself, always up
        BGPROXY_GREEN_URL=f"http://127.0.0.1:{free_port()}",  # nothing listens: down
        BGPROXY_LISTEN=f"127.0.0.1:{port}",
        BGPROXY_ADMIN_LISTEN=f"127.0.0.1:{admin_port}",
        BGPROXY_ADMIN_TOKEN=TOKEN,
        BGPROXY_STATE_BACKEND="memory",
        BGPROXY_HEALTH_PATH="/healthz",
        BGPROXY_HEALTH_INTERVAL="0.1",
        BGPROXY_HEALTH_TIMEOUT="0.5",
        BGPROXY_HEALTH_UNHEALTHY_THRESHOLD="1",
        BGPROXY_DRAIN_GRACE="0",
    )

    def green_found_down() -> bool:
        backends = json.loads(blocking_get(f"{base}/state")[1])["backends"]
        return backends["green"]["healthy"] is False and backends["blue"]["healthy"] is True

    with background_serve(tmp, env, base, until=green_found_down) as exited:
        yield base
    assert exited.returncode == 0, exited.stderr
    assert TOKEN not in exited.stderr
    assert "Traceback" not in exited.stderr, exited.stderr
    total = sum(STATS.values())
    by_status = collections.Counter()
    for (_, _, _, status), n in STATS.items():
        by_status[status] += n
    statuses = dict(sorted(by_status.items()))
    print(f"\n[schemathesis] {total} examples over {len(OPERATIONS)} operations; by status: {statuses}")
    print(f"[schemathesis] refused flips with the state compared: {dict(STATS_REFUSED_UNCHANGED)}")


@pytest.fixture(scope="module")
def schema(admin_base: str) -> Any:
    return schemathesis.openapi.from_url(f"{admin_base}/openapi.json", config=CONFIG)


@pytest.mark.parametrize("auth", ["token", "no-token"])
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_the_admin_api_matches_its_openapi_document(
    schema: Any, admin_base: str, method: str, path: str, auth: str
) -> None:
    operation = schema[path][method]
    headers = {"Authorization": f"Bearer {TOKEN}"} if auth == "token" else {}
    has_body = operation.body is not None and len(operation.body) > 0
    modes = [GenerationMode.POSITIVE]
    if has_body and auth == "token":
        modes.append(GenerationMode.NEGATIVE)
    examples = EXAMPLES if auth == "token" else EXAMPLES_WITHOUT_TOKEN
    for mode in modes:
        fuzz(admin_base, operation, mode, headers, examples, key=(f"{method} {path}", mode.value, auth))


def rising(case: Any) -> Any:
    """What the document's `x-rising` says of a stepped promotion's steps, which JSON Schema cannot: in order."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("steps"), list):
        body["steps"] = sorted(body["steps"])
    return case


def routing_state(admin_base: str) -> dict[str, Any]:
    """GET /state without the live health figures, which move on their own clock."""
    status, body = blocking_get(f"{admin_base}/state")
    assert status == 200
    state: dict[str, Any] = json.loads(body)
    del state["backends"]
    return state


def fuzz(
    admin_base: str,
    operation: Any,
    mode: GenerationMode,
    headers: dict[str, str],
    examples: int,
    key: tuple[str, str, str],
) -> None:
    """One operation in one generation mode: every example is sent and its response checked against the document;
    a refused mutating call (4xx) must leave the state as it was."""
    mutating = operation.method.upper() == "POST"

    cases = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE:
        cases = cases.map(rising)

    @given(case=cases)
    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    def run(case: Any) -> None:
        before = routing_state(admin_base) if mutating else None
        response = case.call_and_validate(headers=headers, timeout=10)
        STATS[(*key, response.status_code)] += 1
        assert response.status_code < 500
        if mutating and not headers:
            assert response.status_code == 401  # mutating calls need the token
        if mutating and 400 <= response.status_code < 500:
            assert changed_only_by_timers(admin_base, before, routing_state(admin_base)), response.text
            STATS_REFUSED_UNCHANGED[key[0]] += 1

    run()


def test_a_reason_at_its_maximum_length_is_accepted_however_it_is_encoded(admin_base: str) -> None:
    """A schema-valid body schemathesis is unlikely to hit by chance: 1024 characters outside the BMP, sent as
    JSON with ASCII escapes (12 bytes each), far over 4096 bytes. The document allows it, so must the API."""
    reason = "\U0001f680" * MAX_REASON
    for path, body in (
        ("/promote", {"reason": reason, "force": True}),
        ("/promote", {"reason": reason[1:], "force": True}),
    ):
        data = json.dumps(body).encode()  # ensure_ascii: every rocket is a \\ud83d\\ude80 surrogate pair
        assert len(data) > 12 * MAX_REASON
        request = urllib.request.Request(
            admin_base + path,
            data=data,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            assert r.status == 200
            assert json.loads(r.read())["reason"] == body["reason"]
    too_long = json.dumps({"to": "blue", "reason": "x" * (MAX_REASON + 1)}).encode()
    request = urllib.request.Request(
        admin_base + "/switch", data=too_long, method="POST", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 400
    assert str(MAX_REASON) in json.loads(info.value.read())["error"]
    info.value.close()


def document_validator(component: str) -> jsonschema.Draft202012Validator:
    """A strict JSON Schema 2020-12 validator (OpenAPI 3.1's dialect) of one component, its $refs resolved."""
    root = {"$ref": f"#/components/schemas/{component}", "components": OPENAPI["components"]}
    return jsonschema.Draft202012Validator(root, format_checker=jsonschema.FormatChecker())


def test_a_state_with_a_null_previous_matches_the_document(admin_base: str) -> None:
    """The initial state's `previous` is null: the document must allow exactly that (strict validators once
    rejected it, when OpenAPI 3.0's `nullable` did not widen an enum); schemathesis is lenient here, so check."""
    validator = document_validator("StateView")
    initial = {
        **initial_state(Color.BLUE, now=1.0).to_dict(),
        "store": {"backend": "memory"},
        "backends": {
            c.value: {
                "url": "http://127.0.0.1:1",
                "healthy": True,
                "inflight": 0,
                "requests": 0,
                "rps": 0.0,
                "error_rate": 0.0,
                "p50": None,
                "p99": None,
                "drained_since": None,
            }
            for c in Color
        },
        "auto_promote": None,
        "build": {"version": "0.1.0", "compiled": True},
    }
    assert initial["previous"] is None
    validator.validate(initial)
    assert not validator.is_valid({**initial, "previous": "red"})  # the validator is not lenient either
    assert not validator.is_valid({**initial, "unknown": 1})
    validator.validate(json.loads(blocking_get(f"{admin_base}/state")[1]))  # and the live answer
    document_validator("HistoryView").validate(json.loads(blocking_get(f"{admin_base}/history")[1]))
