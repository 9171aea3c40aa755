"""Pre-promotion checks, pure: what a check is (a request to the colour about to receive traffic and what its answer
must be), the check list read from PROMOTE_CHECKS with errors naming the entry and the field, and whether one answer
passes. The requests themselves are made by `bgproxy.release.checks`.
"""

from __future__ import annotations

import json
import re
import reprlib
from dataclasses import replace
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from .model import RoutingError, State

MAX_CHECKS = 20  # entries of one list: each runs before every promotion (and every second of an auto-promotion's wait)
MAX_TIMEOUT = 60.0  # seconds one check may take
BODY_SHOWN = 120  # characters of an answer's body quoted when it failed

TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # RFC 9110's token: a header name, a cookie name
HeaderName = Annotated[str, Field(pattern=f"^{TOKEN}$", max_length=256)]
HeaderValue = Annotated[str, Field(pattern=r"^[^\r\n\x00]*$", max_length=8192)]


class ChecksFailed(RoutingError):
    """A pre-promotion check did not pass; the message names it and what came back (409)."""


def _path(value: str) -> str:
    if not re.fullmatch(r"/[!-~]*", value):
        raise ValueError(f"expected a path such as /healthz (starting with /, no spaces), got {reprlib.repr(value)}")
    return value


def _regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"expected a regular expression, got {reprlib.repr(value)} ({exc})") from None
    return value


class PromoteCheck(BaseModel):
    """One check: `method path` on the colour's upstream must answer `status` (default: any below 400) within
    `timeout` seconds, with a body in which the regular expression `body` finds a match (when given)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    path: Annotated[str, Field(max_length=2048), AfterValidator(_path)]
    status: Annotated[int | None, Field(ge=100, le=599)] = None
    body: Annotated[str | None, Field(max_length=1024), AfterValidator(_regex)] = None
    timeout: Annotated[float, Field(gt=0, le=MAX_TIMEOUT)] = 2.0
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    headers: dict[HeaderName, HeaderValue] = Field(default_factory=dict, max_length=32)

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"

    def failure(self, status: int, body: str) -> str | None:
        """What is wrong with an answer, for the person who asked for the promotion; None when it passes."""
        if self.status is None and status >= 400:
            wrong = f"status {status}, expected one below 400"
        elif self.status is not None and status != self.status:
            wrong = f"status {status}, expected {self.status}"
        elif self.body is not None and re.search(self.body, body) is None:
            wrong = f"status {status} but the body does not match {self.body!r}"
        else:
            return None
        return f"{wrong}; the body begins {body[:BODY_SHOWN]!r}" if body else f"{wrong}; the body is empty"


def parse_checks(raw: str) -> tuple[PromoteCheck, ...]:
    """PROMOTE_CHECKS as written (a JSON list); a ValueError names the entry, the field and what is expected."""
    wanted = 'expected a JSON list of checks such as [{"path": "/healthz"}]'
    try:
        entries = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{wanted} ({exc})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{wanted}, got {type(entries).__name__}")
    if len(entries) > MAX_CHECKS:
        raise ValueError(f"expected at most {MAX_CHECKS} checks, got {len(entries)}")
    checks = []
    for index, entry in enumerate(entries):
        try:
            checks.append(PromoteCheck.model_validate(entry))
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            field = ".".join(str(part) for part in err["loc"])
            where = f"entry [{index}]" + (f", field {field!r}" if field else "")
            if err["type"] == "missing":
                raise ValueError(f"{where}: required") from None
            if not field:
                msg = 'expected an object such as {"path": "/healthz", "status": 200}'
            else:
                msg = str(err["msg"]).removeprefix("Value error, ")
            got = "" if "got " in msg else f", got {reprlib.repr(err.get('input'))}"
            raise ValueError(f"{where}: {msg}{got}") from None
    return tuple(checks)


def skipped(old: State, new: State) -> State:
    """`new`, recorded as forced: the checks were skipped (`force`). A call that changed nothing stays unchanged."""
    return new if new is old else replace(new, forced=True)
