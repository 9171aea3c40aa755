"""Request and response bodies of the admin API as pydantic models: the one place their fields and limits live.

Request models validate what a client sends (strict JSON types, unknown fields refused); together with the
response models they generate the OpenAPI document (`openapi.py`), so a limit enforced is the limit documented.
A new mutating call is one `RequestBody` subclass here and one route in `routes.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..core.routing import MAX_REASON, Color
from ..state import HISTORY_SIZE

# A colour as people type it: case and surrounding spaces do not matter; the error names the accepted values.
ColourName = Annotated[
    Color, BeforeValidator(Color.parse), Field(description="`blue` or `green` (case and surrounding spaces ignored)")
]


class RequestBody(BaseModel):
    """The body every mutating call takes; each call's model adds its own fields."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    # A field another call takes, and where to send it: the message for it names the right call.
    misplaced: ClassVar[Mapping[str, str]] = {}

    reason: Annotated[
        str, Field(max_length=MAX_REASON, description="why, for the history, the logs and the people who read them")
    ] = ""
    force: Annotated[
        bool, Field(description="flip even to a colour failing its health checks (recorded as forced)")
    ] = False


class FlipBody(RequestBody):
    """The body of `/promote` and `/rollback`: optional, as is each field."""

    misplaced: ClassVar[Mapping[str, str]] = {"to": "use /switch to name a colour"}


class SwitchBody(RequestBody):
    """The body of `/switch`: the colour to make active."""

    to: ColourName


class ResponseBody(BaseModel):
    """An answer's body; unknown fields are refused so that the document cannot fall behind what is served."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, serialize_by_alias=True)


class BackendView(ResponseBody):
    url: str = Field(description="the colour's upstream base URL")
    healthy: bool = Field(description="false while its health checks fail")


class StoreView(ResponseBody):
    """The state store; the file and configmap backends add the fields they name."""

    # What a store shows about itself is the store's business: one that adds a field must not break /state.
    model_config = ConfigDict(extra="allow")

    backend: Literal["memory", "file", "configmap"]
    path: str | None = Field(None, description="file: the state file")
    name: str | None = Field(None, description="configmap: the ConfigMap's name")
    namespace: str | None = Field(None, description="configmap: its namespace")
    connected: bool | None = Field(None, description="configmap: the watch is connected")
    resource_version: str | None = Field(None, description="configmap: the version last seen; null while none exists")


class StateView(ResponseBody):
    """The routing state, the store it lives in and each colour's upstream."""

    active: Color = Field(description="the colour serving ordinary traffic")
    standby: Color
    previous: Color | None = Field(description="the colour active before the last flip; null before the first")
    revision: int = Field(ge=0, description="one more on every flip")
    updated_at: float = Field(description="seconds since the epoch")
    source: str = Field(description="who made the last change: initial, admin, file, configmap, restore")
    reason: str
    forced: bool = Field(description="the last flip overrode a failing health check")
    store: StoreView
    backends: dict[Color, BackendView]


class HistoryEntry(ResponseBody):
    """One switch of the active colour."""

    when: float = Field(description="seconds since the epoch")
    from_: Color = Field(alias="from")
    to: Color
    revision: int = Field(ge=0)
    source: str
    reason: str
    forced: bool


class HistoryView(ResponseBody):
    history: list[HistoryEntry] = Field(max_length=HISTORY_SIZE, description="the recent switches, newest first")


class StatusView(ResponseBody):
    status: Literal["ok", "ready", "not ready"]


class ErrorBody(ResponseBody):
    """Every error: a message a person can act on."""

    error: str
