"""Schemathesis against the admin API of a real `bgproxy serve`, driven by its own /openapi.json.

Every operation is fuzzed with a bounded, derandomized number of examples (positive data, and for the flips also
schema-violating bodies), with the bearer token and without it. Every response must match the document: a status
code it lists, its content type, its body schema; never a 5xx (the memory store cannot fail, so the documented
503 of a failing store must not appear either); schema-valid data accepted, invalid data rejected; a mutating call
without the token refused.

The process is set up so that the health gate is exercised too: blue's health path is the admin API's own
/healthz (always up), green points at a closed port (down), so flips to green are refused unless forced.
"""

from __future__ import annotations

import collections
import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from bgproxy.core.routing import MAX_REASON
from bgproxy.openapi import OPENAPI
from tests.support.processes import PROC_TIMEOUT, clean_env
from tests.support.servers import free_port

TOKEN = "schemathesis-token-5b7e"
EXAMPLES = 50  # per operation, generation mode and auth mode...
EXAMPLES_WITHOUT_TOKEN = 25  # ...fewer where the token's absence decides the answer (401)
OPERATIONS = [(method.upper(), path) for path, item in OPENAPI["paths"].items() for method in item]
STATS: collections.Counter[tuple[str, str, str, int]] = collections.Counter()

CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            # The flips document 413 for a body over the size limit: that is a rejection too.
            "negative_data_rejection": {"expected-statuses": ["400", "401", "404", "405", "409", "413"]},
            "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx"]},
        }
    }
)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


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
    stderr = tmp / "stderr.txt"
    with stderr.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bgproxy", "serve"], env=env, cwd=tmp, stderr=err)
    try:
        end = time.monotonic() + PROC_TIMEOUT
        while True:  # bounded poll: ready, and green found down
            assert proc.poll() is None, f"bgproxy exited with {proc.returncode}:\n{stderr.read_text()}"
            assert time.monotonic() < end, f"bgproxy not ready in {PROC_TIMEOUT}s:\n{stderr.read_text()}"
            with contextlib.suppress(OSError):
                if _get(f"{base}/readyz")[0] == 200:
                    backends = json.loads(_get(f"{base}/state")[1])["backends"]
                    if backends["green"]["healthy"] is False and backends["blue"]["healthy"] is True:
                        break
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        try:
            code = proc.wait(PROC_TIMEOUT)
        finally:
            proc.kill()
        log = stderr.read_text()
    assert code == 0, log
    assert TOKEN not in log
    assert "Traceback" not in log, log
    total = sum(STATS.values())
    by_status = collections.Counter()
    for (_, _, _, status), n in STATS.items():
        by_status[status] += n
    statuses = dict(sorted(by_status.items()))
    print(f"\n[schemathesis] {total} examples over {len(OPERATIONS)} operations; by status: {statuses}")


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
        fuzz(operation, mode, headers, examples, key=(f"{method} {path}", mode.value, auth))


def fuzz(
    operation: Any, mode: GenerationMode, headers: dict[str, str], examples: int, key: tuple[str, str, str]
) -> None:
    """One operation in one generation mode: every example is sent and its response checked against the document."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    def run(case: Any) -> None:
        response = case.call_and_validate(headers=headers, timeout=10)
        STATS[(*key, response.status_code)] += 1
        if not headers and operation.method.upper() == "POST":
            assert response.status_code == 401  # mutating calls need the token

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


def _schemas(node: object) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found += _schemas(value)
    elif isinstance(node, list):
        for value in node:
            found += _schemas(value)
    return found


def test_nullable_enums_list_null() -> None:
    """OpenAPI 3.0's `nullable` does not widen an `enum`: strict validators (openapi-core's) rejected the initial
    state, whose `previous` is null, until null was listed. Schemathesis is lenient here, so check the document."""
    nullable_enums = [s for s in _schemas(OPENAPI) if s.get("nullable") is True and "enum" in s]
    assert nullable_enums  # `previous` at least
    for schema in nullable_enums:
        assert None in schema["enum"], schema
