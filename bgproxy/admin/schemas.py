"""Request and response bodies of the admin API as pydantic models: the one place their fields and limits live.

Request models validate what a client sends (strict JSON types, unknown fields refused); together with the
response models they generate the OpenAPI document (`openapi.py`), so a limit enforced is the limit documented.
A new mutating call is one `RequestBody` subclass here and one route in `routes.py`.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from ..core.model import (
    MAX_INTERVAL,
    MAX_REASON,
    MAX_RELEASE,
    MAX_STEPS,
    MAX_WEIGHT,
    MIN_INTERVAL,
    RELEASE_PATTERN,
    Color,
    InvalidPlan,
    check_release,
)
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
        bool,
        Field(
            description="flip even to a colour failing its health checks, and skip the pre-promotion checks "
            "(recorded as forced)"
        ),
    ] = False


class FlipBody(RequestBody):
    """The body of `/rollback`: optional, as is each field."""

    misplaced: ClassVar[Mapping[str, str]] = {"to": "use /switch to name a colour"}


class SwitchBody(RequestBody):
    """The body of `/switch`: the colour to make active."""

    to: ColourName


def _whole(value: object) -> object:
    """JSON Schema's integer: 24.0 is one (a number with no fraction), so the document and the check agree."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Weight = Annotated[
    int,
    Field(ge=0, le=MAX_WEIGHT, description="percent of ordinary traffic sent to the standby colour"),
    BeforeValidator(_whole),
]
Step = Annotated[int, Field(ge=1, le=MAX_WEIGHT), BeforeValidator(_whole)]
Interval = Annotated[float, Field(ge=MIN_INTERVAL, le=MAX_INTERVAL)]
# JSON Schema cannot say "rising"; x-rising says it to people and to our fuzzer (uniqueItems says part of it).
Steps = Annotated[
    list[Step],
    Field(min_length=1, max_length=MAX_STEPS, json_schema_extra={"uniqueItems": True, "x-rising": True}),
]


def _absent_by_default(schema: dict[str, Any]) -> None:
    """An optional field that is absent unless given: documented as its type alone (null is not asked for), with no
    default. The server takes an explicit null as absent."""
    schema.pop("default", None)
    options = schema.pop("anyOf", [])
    schema.update(*(option for option in options if option.get("type") != "null"))


class PromoteBody(RequestBody):
    """The body of `/promote`: nothing for an instant promote; `steps` (and `interval`) for a stepped one."""

    model_config = ConfigDict(json_schema_extra={"dependentRequired": {"interval": ["steps"]}})
    misplaced: ClassVar[Mapping[str, str]] = {"to": "use /switch to name a colour", "weight": "use /shift"}

    steps: Annotated[
        Steps | None,
        Field(
            description="weights to go through, rising strictly, e.g. [10, 50, 100]; then the standby goes live",
            json_schema_extra=_absent_by_default,
        ),
    ] = None
    interval: Annotated[
        Interval | None,
        Field(
            description="seconds each step holds (with steps; default 60)",
            json_schema_extra=_absent_by_default,
        ),
    ] = None

    @model_validator(mode="after")
    def _interval_needs_steps(self) -> PromoteBody:
        if self.interval is not None and self.steps is None:
            raise ValueError(
                "'interval' goes with 'steps': send both for a stepped promotion, neither for an instant one"
            )
        return self


class ShiftBody(RequestBody):
    """The body of `/shift`: the standby colour's share of ordinary traffic."""

    misplaced: ClassVar[Mapping[str, str]] = {"to": "use /switch to name a colour", "steps": "use /promote"}

    weight: Weight


class ReasonBody(RequestBody):
    """The body of `/pause`, `/resume` and `/abort`: optional, as is each field."""

    misplaced: ClassVar[Mapping[str, str]] = {"to": "use /switch", "weight": "use /shift", "steps": "use /promote"}


def _release(value: str) -> str:
    try:
        check_release(value)
    except InvalidPlan:
        raise ValueError(
            f"expected a label such as v43 or an image tag (visible ASCII, no spaces), got {reprlib.repr(value)}"
        ) from None
    return value


class ReleaseBody(RequestBody):
    """The body of `/release`: the release now deployed on the standby colour."""

    misplaced: ClassVar[Mapping[str, str]] = {"to": "use /switch", "weight": "use /shift", "steps": "use /promote"}

    release: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_RELEASE,
            description="its label: v43, an image tag (visible ASCII, no spaces)",
            json_schema_extra={"pattern": RELEASE_PATTERN},  # checked by check_release, in words a person can act on
        ),
        AfterValidator(_release),
    ]


class ResponseBody(BaseModel):
    """An answer's body; unknown fields are refused so that the document cannot fall behind what is served."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, serialize_by_alias=True)


class BackendView(ResponseBody):
    """One colour's upstream and this replica's live figures of it, over ANALYSIS_WINDOW: only requests that started
    since the colour began getting its current ordinary traffic. With ANALYSIS_ENABLED=false no window is kept and
    its figures (requests, rps, error_rate, p50, p99) are null."""

    url: str = Field(description="the colour's upstream base URL")
    healthy: bool = Field(description="false while its health checks fail")
    inflight: int = Field(ge=0, description="requests and websockets being answered by it now")
    requests: int | None = Field(ge=0, description="requests answered within the window (websockets not counted)")
    rps: float | None = Field(ge=0, description="requests per second over the window")
    error_rate: float | None = Field(
        ge=0, le=1, description="share of those answered 5xx (the upstream's, or the proxy's 502/504)"
    )
    p50: float | None = Field(description="median duration in seconds, head to end of response; null without requests")
    p99: float | None = Field(description="99th percentile duration in seconds; null without requests")
    drained_since: float | None = Field(
        description="when it became drained (gets no ordinary traffic, and nothing live in flight for DRAINED_AFTER),"
        " seconds since the epoch; null while it is not"
    )


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


class RolloutView(ResponseBody):
    """A stepped promotion in progress."""

    steps: list[int] = Field(description="the weights it goes through")
    interval: float = Field(description="seconds each step holds")
    step: int = Field(ge=0, description="index of the step now applied")
    step_started_at: float = Field(description="when it was applied, seconds since the epoch")
    paused: bool


class HoldView(ResponseBody):
    """What the store still asks for, refused by an automatic rollback, and why; traffic does not follow it."""

    active: Color = Field(description="the active colour the store asks for")
    weight: Weight
    release: str | None = Field(description="the release the store asks for (the one refused)")
    reason: str = Field(description="why it was refused: the figure, the threshold, the window")
    since: float = Field(description="seconds since the epoch")


class AutoPromoteView(ResponseBody):
    """An auto-promotion waiting: the standby colour must stay healthy and pass its checks until `due_at`."""

    release: str | None = Field(description="the release waiting on the standby colour")
    waiting_since: float = Field(description="when this replica began waiting for it, seconds since the epoch")
    due_at: float | None = Field(
        description="when it is promoted if the standby colour keeps passing (a failure restarts the wait); null while "
        "blocked, and until the first round of checks has passed"
    )
    blocked_by: str | None = Field(
        description="why it is not counting: the standby colour is down, or which pre-promotion check failed and what "
        "came back; null while it passes"
    )


class BuildView(ResponseBody):
    """Which build of bgproxy answers (as `bgproxy --version` says)."""

    version: str
    compiled: bool = Field(description="the data plane and the core run compiled (mypyc); false: pure Python")


class StateView(ResponseBody):
    """The routing state, the store it lives in and each colour's upstream."""

    active: Color = Field(description="the colour serving ordinary traffic")
    standby: Color
    previous: Color | None = Field(description="the colour active before the last flip; null before the first")
    revision: int = Field(ge=0, description="one more on every flip")
    updated_at: float = Field(description="seconds since the epoch")
    source: str = Field(
        description="who made the last change: initial, admin, file, configmap, restore, rollout (a step's timer), "
        "analysis (an automatic rollback), auto (an auto-promotion)"
    )
    reason: str
    forced: bool = Field(description="the last change overrode a failing health check")
    weight: Weight
    rollout: RolloutView | None = Field(description="the stepped promotion in progress, else null")
    release: str | None = Field(description="the label of what is deployed on the standby colour (v43, an image tag)")
    release_pending: bool = Field(description="that release waits for a promotion (auto-promotion may do it)")
    promoted_at: float | None = Field(
        description="when the active colour was promoted (its automatic-rollback watch runs from then); null after "
        "a rollback"
    )
    hold: HoldView | None = Field(description="set while an automatic rollback keeps traffic off what the store asks")
    auto_promote: AutoPromoteView | None = Field(
        description="the auto-promotion this replica waits to make (AUTO_PROMOTE_AFTER), else null"
    )
    store: StoreView
    backends: dict[Color, BackendView]
    build: BuildView


class HistoryEntry(ResponseBody):
    """One change of the state: a switch, a shift, a step of a stepped promotion, a pause, a resume, an abort."""

    when: float = Field(description="seconds since the epoch")
    event: Literal[
        "switch",
        "shift",
        "step",
        "promoted",
        "paused",
        "resumed",
        "aborted",
        "auto-rollback",
        "auto-promote",
        "release",
    ]
    from_: Color = Field(alias="from", description="the active colour before")
    to: Color = Field(description="the active colour after")
    weight: Weight
    revision: int = Field(ge=0)
    source: str
    reason: str
    forced: bool


class HistoryView(ResponseBody):
    history: list[HistoryEntry] = Field(max_length=HISTORY_SIZE, description="the recent changes, newest first")


class StatusView(ResponseBody):
    status: Literal["ok", "ready", "not ready"]


class ErrorBody(ResponseBody):
    """Every error: a message a person can act on."""

    error: str
