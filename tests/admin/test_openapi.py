"""The OpenAPI document is generated from the models that validate and from the app's own route table.

So a limit exists once (the document's is the model's), every route the app serves is documented, and every
documented mutating call is guarded (token, cross-site) by the same rule the middleware applies.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import validate

from bgproxy.admin import build_admin_app, openapi_document
from bgproxy.admin.middleware import needs_guard
from bgproxy.admin.routes import ROUTES
from bgproxy.admin.schemas import HistoryView, RequestBody, SwitchBody
from bgproxy.app import Bgproxy
from bgproxy.core.model import MAX_REASON
from bgproxy.state import HISTORY_SIZE
from tests.support.servers import TIMEOUT, StartProxy

DOC = openapi_document()
SCHEMAS: dict[str, Any] = DOC["components"]["schemas"]
TOKEN = "openapi-token-77aa"


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"] == "3.1.0"
    validate(DOC)


def test_the_limits_in_the_document_are_the_models_limits() -> None:
    bodies = [route.body for route in ROUTES if route.body is not None]
    assert SwitchBody in bodies
    for model in bodies:
        assert SCHEMAS[model.__name__]["properties"]["reason"]["maxLength"] == MAX_REASON, model
        assert SCHEMAS[model.__name__]["additionalProperties"] is False, model  # unknown fields refused
    assert SCHEMAS["SwitchBody"]["required"] == ["to"]
    assert SCHEMAS[SCHEMAS["SwitchBody"]["properties"]["to"]["$ref"].rpartition("/")[2]]["enum"] == ["blue", "green"]
    assert SCHEMAS["HistoryView"]["properties"]["history"]["maxItems"] == HISTORY_SIZE


@pytest.mark.parametrize("model", sorted({r.body for r in ROUTES if r.body} | {HistoryView}, key=lambda m: m.__name__))
def test_each_schema_in_the_document_is_its_model_s_own(model: type[RequestBody]) -> None:
    """Nothing is written a second time by hand: the document holds exactly what pydantic derives from the model."""
    mode = "validation" if issubclass(model, RequestBody) else "serialization"
    own = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
    nested = own.pop("$defs", {})
    assert SCHEMAS[model.__name__] == own
    for name, schema in nested.items():
        assert SCHEMAS[name] == schema


def test_a_request_body_is_required_exactly_when_its_model_has_a_required_field() -> None:
    for route in ROUTES:
        if route.body is None:
            continue
        operation = DOC["paths"][route.path][route.method.lower()]
        assert operation["requestBody"]["required"] == bool(SCHEMAS[route.body.__name__].get("required")), route.path


async def test_every_route_the_app_serves_is_in_the_document_and_the_document_is_what_is_served(
    proxy: Bgproxy,
) -> None:
    app = build_admin_app(proxy.settings, proxy.holder, proxy.metrics, proxy.ready, live=proxy.live)
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None  # HEAD comes with every GET
    }
    documented = {(method, path) for path, item in DOC["paths"].items() for method in item}
    assert served == documented
    assert len(served) == len(ROUTES)
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s,
        s.get(f"http://127.0.0.1:{proxy.admin_port}/openapi.json") as r,
    ):
        assert r.status == 200
        assert await r.json() == DOC


async def test_every_documented_mutating_call_is_guarded_and_refused_without_the_token(
    start_proxy: StartProxy,
) -> None:
    """The document's `security` and the middleware's guard follow one rule; each such call is really refused."""
    app = await start_proxy(admin_token=TOKEN)
    guarded = [(m, p) for p, item in DOC["paths"].items() for m in item if needs_guard(m)]
    assert {p for _, p in guarded} >= {"/switch", "/promote", "/rollback"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        for method, path in guarded:
            operation = DOC["paths"][path][method]
            assert operation["security"] == [{"bearer": []}], path
            assert "requestBody" in operation, path  # so the hostile-JSON fuzzer, which reads the models, covers it
            assert {"400", "401", "403", "413"} <= set(operation["responses"]), path
            async with s.request(method, f"http://127.0.0.1:{app.admin_port}{path}", data=b"garbage") as r:
                assert r.status == 401, path  # before the body is even read
        for path, item in DOC["paths"].items():
            for method, operation in item.items():
                assert needs_guard(method) == ("security" in operation), (method, path)
