"""The OpenAPI 3 description of the admin API, served at /openapi.json (and fuzzed against it in tests)."""

from __future__ import annotations

from typing import Any

from . import __version__
from .core.routing import MAX_REASON

_COLOR = {"type": "string", "enum": ["blue", "green"]}
_ERROR = {
    "description": "error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            }
        }
    },
}
_STATE = {"$ref": "#/components/schemas/State"}


def _ok(schema: dict[str, Any], description: str = "ok") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _flip(summary: str, *, body_required: bool, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"bearer": []}],
            "requestBody": {
                "required": body_required,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            # OpenAPI 3.0 forbids an empty `required` list: leave it out instead.
                            **({"required": required} if required else {}),
                            "properties": properties,
                        }
                    }
                },
            },
            "responses": {
                "200": _ok(_STATE, "the state after the call"),
                "400": _ERROR,
                "401": _ERROR,
                "403": _ERROR,
                "409": _ERROR,
                "413": _ERROR,
                "503": _ERROR,
            },
        }
    }


_REASON = {"type": "string", "maxLength": MAX_REASON}
_FORCE = {"type": "boolean", "description": "switch even to a colour failing its health checks"}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "bgproxy admin API",
        "version": __version__,
        "description": "Read and flip the blue/green routing state of one bgproxy replica (and, with the "
        "configmap backend, of all of them).",
    },
    "paths": {
        "/state": {"get": {"summary": "The routing state", "responses": {"200": _ok(_STATE)}}},
        "/switch": _flip(
            "Make the named colour active (no change if it already is)",
            body_required=True,
            properties={"to": _COLOR, "reason": _REASON, "force": _FORCE},
            required=["to"],
        ),
        "/promote": _flip(
            "Make the standby colour active",
            body_required=False,
            properties={"reason": _REASON, "force": _FORCE},
            required=[],
        ),
        "/rollback": _flip(
            "Make the previous colour active again",
            body_required=False,
            properties={"reason": _REASON, "force": _FORCE},
            required=[],
        ),
        "/history": {
            "get": {
                "summary": "The recent switches, newest first (at most 100)",
                "responses": {
                    "200": _ok(
                        {
                            "type": "object",
                            "required": ["history"],
                            "properties": {
                                "history": {"type": "array", "items": {"$ref": "#/components/schemas/Switch"}}
                            },
                        }
                    )
                },
            }
        },
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _ok({"type": "object"})}}},
        "/readyz": {
            "get": {
                "summary": "Readiness: state loaded, listening, not draining",
                "responses": {"200": _ok({"type": "object"}), "503": _ok({"type": "object"}, "not ready")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text exposition",
                "responses": {
                    "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}
                },
            }
        },
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _ok({"type": "object"})}}},
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "State": {
                "type": "object",
                "required": [
                    "active",
                    "standby",
                    "previous",
                    "revision",
                    "updated_at",
                    "source",
                    "reason",
                    "backends",
                    "store",
                ],
                "properties": {
                    "active": _COLOR,
                    "standby": _COLOR,
                    # OpenAPI 3.0: `nullable` does not widen an `enum`; null must be listed (strict validators
                    # such as openapi-core's rejected the initial state, whose previous is null).
                    "previous": {"type": "string", "enum": ["blue", "green", None], "nullable": True},
                    "revision": {"type": "integer", "minimum": 0},
                    "updated_at": {"type": "number"},
                    "source": {"type": "string"},
                    "reason": {"type": "string"},
                    "forced": {"type": "boolean"},
                    "store": {
                        "type": "object",
                        "required": ["backend"],
                        "properties": {
                            "backend": {"type": "string", "enum": ["memory", "file", "configmap"]},
                            "path": {"type": "string", "description": "file: the state file"},
                            "name": {"type": "string", "description": "configmap: the ConfigMap's name"},
                            "namespace": {"type": "string", "description": "configmap: its namespace"},
                            "connected": {"type": "boolean", "description": "configmap: the watch is connected"},
                            "resource_version": {
                                "type": "string",
                                "nullable": True,
                                "description": "configmap: the version last seen; null while it does not exist",
                            },
                        },
                        "description": "the state store; the file and configmap backends add the fields they name",
                    },
                    "backends": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "required": ["url", "healthy"],
                            "properties": {"url": {"type": "string", "nullable": True}, "healthy": {"type": "boolean"}},
                        },
                    },
                },
            },
            "Switch": {
                "type": "object",
                "required": ["when", "from", "to", "revision", "source", "reason", "forced"],
                "properties": {
                    "when": {"type": "number"},
                    "from": _COLOR,
                    "to": _COLOR,
                    "revision": {"type": "integer"},
                    "source": {"type": "string"},
                    "reason": {"type": "string"},
                    "forced": {"type": "boolean"},
                },
            },
        },
    },
}
