"""The OpenAPI 3.1 document of the admin API, generated from the route table and the pydantic models.

pydantic writes JSON Schema 2020-12, which is what OpenAPI 3.1 uses, so each body's schema (and every limit in it)
comes from the model that validates it; nothing here repeats a field or a limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from .. import __version__
from .body import MAX_BODY, MAX_DEPTH, MAX_NUMBER_LENGTH
from .middleware import needs_guard
from .routes import ROUTES, Route
from .schemas import ErrorBody

REF = "#/components/schemas/{model}"
# What every mutating call may answer besides its 200, and why.
GUARDED_ERRORS = {
    400: "a body that is not what the call takes; the message names the field and what it expects",
    401: "the bearer token is missing or wrong",
    403: "refused: a cross-site request, or a non-loopback Host without a token",
    409: "the decision was refused (a colour that is down, nothing to roll back to); the message says why",
    413: f"the body is over {MAX_BODY} bytes (once decompressed)",
    503: "not ready yet, or the state store refused the change: nothing changed",
}


def openapi_document(routes: Iterable[Route] = ROUTES) -> dict[str, Any]:
    routes = tuple(routes)
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorBody, "serialization")]
    for route in routes:
        if route.body is not None:
            wanted.append((route.body, "validation"))
        for model in (route.response, *(m for _, _, m in route.also)):
            if model is not None:
                wanted.append((model, "serialization"))
    refs, defs = models_json_schema(list(dict.fromkeys(wanted)), ref_template=REF)

    def ref(model: type[BaseModel], mode: JsonSchemaMode = "serialization") -> dict[str, Any]:
        return dict(refs[(model, mode)])

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        fallback = {"type": "string"} if route.media_type != "application/json" else {"type": "object"}
        ok = ref(route.response) if route.response is not None else fallback
        operation: dict[str, Any] = {
            "summary": route.summary,
            "responses": {"200": _content(route.media_type, ok, "ok")},
        }
        for status, description, model in route.also:
            operation["responses"][str(status)] = _content("application/json", ref(model), description)
        if route.body is not None:
            required = any(field.is_required() for field in route.body.model_fields.values())
            operation["requestBody"] = {
                "required": required,
                **_content("application/json", ref(route.body, "validation")),
            }
        if needs_guard(route.method):
            operation["security"] = [{"bearer": []}]
            for status, description in GUARDED_ERRORS.items():
                operation["responses"][str(status)] = _content("application/json", ref(ErrorBody), description)
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "bgproxy admin API",
            "version": __version__,
            "description": "Read and flip the blue/green routing state of one bgproxy replica (and, with the "
            "configmap backend, of all of them). A request body is UTF-8 JSON, at most "
            f"{MAX_BODY} bytes, an object nested at most {MAX_DEPTH} levels deep, its numbers finite and at most "
            f"{MAX_NUMBER_LENGTH} characters long, no key twice, no lone surrogates; anything else is a 400 "
            "whose message names what is wrong.",
        },
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _content(media_type: str, schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    described = {"description": description} if description is not None else {}
    return {**described, "content": {media_type: {"schema": schema}}}
