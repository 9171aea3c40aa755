"""The one place configuration is read: environment variables `BGPROXY_*`, overridden by command-line flags.

Everything else receives a `Settings` object. A bad value raises `SettingsError` whose message names the
variable and the form it expects; the CLI prints it and exits 2 before anything listens.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import AfterValidator, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .core.addresses import (
    Address,
    Upstream,
    parse_address,
    parse_admin_url,
    parse_networks,
    parse_upstream,
    parse_urls,
)
from .core.checks import TOKEN, PromoteCheck, parse_checks
from .core.model import Color, InvalidPlan, check_steps
from .core.preview import IPNetwork, PreviewPolicy

ENV_PREFIX = "BGPROXY_"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class SettingsError(Exception):
    """A configuration problem, worded for the operator who set the variable."""


def _header_name(value: str) -> str:
    if value and not re.fullmatch(TOKEN, value):
        raise ValueError(f"expected an HTTP header name (letters, digits, '-'), got {value!r}")
    return value


def _optional_cookie_name(value: str) -> str:
    return _cookie_name(value) if value else value


def _cookie_name(value: str) -> str:
    if not re.fullmatch(TOKEN, value):
        raise ValueError(f"expected a cookie name (letters, digits, '-', '_'), got {value!r}")
    return value


def _steps_setting(value: str) -> tuple[int, ...] | str | None:
    """AUTO_PROMOTE_STEPS as typed (10,50,100), checked by the same rule as the admin API's steps; "" is unset."""
    if not value.strip():
        return None
    try:
        return check_steps([int(part) for part in value.split(",")])
    except (ValueError, InvalidPlan) as exc:
        raise ValueError(f"auto_promote_steps: expected rising weights such as 10,50,100 ({exc})") from None


def _secret_file(path: Path, field: str) -> SecretStr:
    """A secret from a file (a mounted Secret), stripped; an unreadable or empty file is an error naming the field."""
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"{field}: cannot read {path}: {exc.strerror}") from None
    if not secret:
        raise ValueError(f"{field}: {path} is empty")
    return SecretStr(secret)


def _checks_file(path: Path) -> tuple[PromoteCheck, ...]:
    try:
        return parse_checks(path.read_text())
    except OSError as exc:
        raise ValueError(f"promote_checks_file: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ValueError(f"promote_checks_file: {path}: {exc}") from None


AddressField = Annotated[Address, AfterValidator(parse_address)]
Seconds = Annotated[float, Field(gt=0, le=86400)]


class Settings(BaseSettings):
    """Every knob of bgproxy; the table in the README mirrors these fields."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, use_attribute_docstrings=True
    )

    # NoDecode on the tuple-typed fields: pydantic-settings would otherwise JSON-decode them from the environment
    # (BGPROXY_LISTEN=0.0.0.0:8080 crashed with a traceback); `_parse_compound` parses the strings instead.
    blue_url: Annotated[Upstream | None, NoDecode] = None
    """Base URL of the blue upstream (required for `serve`)."""
    green_url: Annotated[Upstream | None, NoDecode] = None
    listen: Annotated[Address, NoDecode] = Address("0.0.0.0", 8080)
    """Data plane address."""
    admin_listen: Annotated[Address, NoDecode] = Address("127.0.0.1", 9090)
    """Admin API, health and metrics. Loopback by default: it can flip production traffic."""
    admin_token: SecretStr | None = None
    """Bearer token for mutating admin calls; required when the admin address is not loopback."""
    admin_token_file: Path | None = None
    """Read the token from this file (a mounted Secret) instead."""
    admin_url: Annotated[str, AfterValidator(parse_admin_url)] = "http://127.0.0.1:9090"
    """Where the `status/switch/promote/rollback` commands find the admin API."""
    initial_active: Color = Color.BLUE
    """Active colour when the store holds no state yet."""
    state_backend: Literal["memory", "file", "configmap"] = "file"
    state_file: Path = Path("bgproxy-state.json")
    configmap_name: str = Field("bgproxy-state", pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    configmap_namespace: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    """Defaults to the pod's own namespace (from the service account), else `default`."""
    configmap_timeout: Seconds = 10.0
    """Seconds to wait for the Kubernetes API server on each request; an admin flip fails (503) after it."""
    preview_header: Annotated[str, AfterValidator(_header_name)] = "X-Preview"
    preview_cookie: Annotated[str, AfterValidator(_cookie_name)] = "bg-preview"
    preview_secret: SecretStr | None = None
    """When set, preview is honoured only for the value SECRET (standby) or blue:SECRET / green:SECRET."""
    preview_allow: Annotated[tuple[IPNetwork, ...], NoDecode] = ()
    """Comma-separated networks (CIDR) whose clients may preview; the client is the last X-Forwarded-For hop."""
    sticky_cookie: Annotated[str, AfterValidator(_optional_cookie_name)] = "bg-sticky"
    """Cookie that keeps a client's bucket (so its colour) while the weight is between 0 and 100; empty turns it off."""
    sticky_header: Annotated[str, AfterValidator(_header_name)] = ""
    """Header whose value (a user or session id) picks the bucket when the request has no sticky cookie."""
    color_header: Annotated[str, AfterValidator(_header_name)] = "X-Bg-Color"
    """Response header naming the colour that served; empty turns it off."""
    upstream_connect_timeout: Seconds = 2.0
    """Seconds to open an upstream connection; then 502."""
    upstream_read_timeout: Seconds = 60.0
    """Seconds of upstream silence while a response is awaited or streamed; then 504 (or a cut response)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    access_log: bool = False
    """One line per request; off by default because it costs on every request."""
    drain_grace: Annotated[float, Field(ge=0, le=3600)] = 5.0
    """Seconds to keep accepting after SIGTERM while not ready (endpoints take time to update)."""
    drain_timeout: Annotated[float, Field(ge=0, le=3600)] = 30.0
    """Seconds to let in-flight requests finish after the listener closes."""
    health_path: str | None = Field(None, pattern=r"^/[^\s]*$")
    """Path probed on each colour (e.g. /healthz); unset turns active probes off."""
    health_interval: Seconds = 2.0
    """Seconds between probes of one colour."""
    health_timeout: Seconds = 1.0
    """Seconds a probe may take; slower counts as a failure."""
    health_healthy_threshold: Annotated[int, Field(ge=1, le=100)] = 2
    """Consecutive successes that bring a colour that is down back up."""
    health_unhealthy_threshold: Annotated[int, Field(ge=1, le=100)] = 3
    """Consecutive failures that take a colour down."""
    max_request_line: Annotated[int, Field(ge=256, le=1 << 20)] = 8192
    """Bytes of method + target beyond which the answer is 414."""
    max_header_bytes: Annotated[int, Field(ge=1024, le=1 << 24)] = 32768
    """Bytes of request headers beyond which the answer is 431."""
    header_timeout: Seconds = 10.0
    """Seconds a client has to send a complete request head."""
    idle_timeout: Seconds = 60.0
    """Seconds a keep-alive client may stay idle between requests."""
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] = 10000
    """Client connections held at once; beyond it new ones are closed at once."""
    analysis_enabled: bool = True
    """Judge the colour getting new traffic by its live figures and roll back on a breach (automatic rollback)."""
    analysis_window: Annotated[float, Field(ge=5, le=3600)] = 30.0
    """Seconds of live figures (requests, 5xx share, p99) per colour that a verdict looks at."""
    analysis_min_requests: Annotated[int, Field(ge=1, le=1_000_000)] = 50
    """Requests the judged colour needs in the window before any verdict: fewer is no evidence."""
    analysis_max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.05
    """5xx share (0-1; the upstream's 5xx and the proxy's own 502/504) above which the judged colour is rolled back."""
    analysis_max_p99: Annotated[float | None, Field(gt=0, le=3600)] = None
    """Seconds of p99 latency above which the judged colour is rolled back; unset: off."""
    analysis_max_p99_ratio: Annotated[float | None, Field(gt=1, le=1000)] = None
    """Times the other colour's p99 above which the judged colour is rolled back; unset: off."""
    analysis_watch: Annotated[float, Field(ge=0, le=86400)] = 300.0
    """Seconds after a promote during which the new active colour stays judged (0: not at all)."""
    auto_promote_after: Annotated[float | None, Field(gt=0, le=86400)] = None
    """Seconds a new release's standby must be healthy and pass its checks before bgproxy promotes it; unset: off."""
    auto_promote_steps: Annotated[tuple[int, ...] | None, NoDecode] = None
    """Steps of the automatic promotion (10,50,100); unset: an instant promote."""
    auto_promote_interval: Annotated[float, Field(ge=1, le=86400)] = 60.0
    """Seconds each step of the automatic promotion holds."""
    promote_checks: Annotated[tuple[PromoteCheck, ...], NoDecode] = ()
    """Pre-promotion checks (a JSON list) run against a colour before it gets traffic: a promote, a shift from 0."""
    promote_checks_file: Path | None = None
    """Read the pre-promotion checks from this file (a mounted ConfigMap) instead."""
    drained_after: Annotated[float, Field(ge=0, le=86400)] = 10.0
    """Quiet seconds (no live request or websocket in flight) before a colour without traffic counts as drained."""
    webhook_urls: Annotated[tuple[str, ...], NoDecode] = ()
    """Comma-separated http(s) URLs that get a POST for every state change."""
    webhook_secret: SecretStr | None = None
    """Key of the HMAC-SHA256 signature (X-Bgproxy-Signature) of every webhook body."""
    webhook_secret_file: Path | None = None
    """Read the webhook secret from this file (a mounted Secret) instead."""
    webhook_timeout: Annotated[float, Field(gt=0, le=300)] = 5.0
    """Seconds each webhook delivery may take."""

    @model_validator(mode="before")
    @classmethod
    def _parse_compound(cls, data: Any) -> Any:
        # Addresses and URLs arrive as strings from env and flags; parse them here so errors carry the field.
        if isinstance(data, dict):
            for key, parse in (
                ("listen", parse_address),
                ("admin_listen", parse_address),
                ("blue_url", parse_upstream),
                ("green_url", parse_upstream),
            ):
                if isinstance(data.get(key), str):
                    try:
                        data[key] = parse(data[key])
                    except ValueError as exc:
                        raise ValueError(f"{key}: {exc}") from None
            if isinstance(data.get("initial_active"), str):
                data["initial_active"] = data["initial_active"].strip().lower()  # as the admin API accepts
            if isinstance(data.get("preview_allow"), str):
                try:
                    data["preview_allow"] = parse_networks(data["preview_allow"])
                except ValueError as exc:
                    raise ValueError(f"preview_allow: {exc}") from None
            if isinstance(data.get("auto_promote_steps"), str):
                data["auto_promote_steps"] = _steps_setting(data["auto_promote_steps"])
            if isinstance(data.get("promote_checks"), str):
                try:
                    data["promote_checks"] = parse_checks(data["promote_checks"]) if data["promote_checks"] else ()
                except ValueError as exc:
                    raise ValueError(f"promote_checks: {exc}") from None
            if isinstance(data.get("webhook_urls"), str):
                try:
                    data["webhook_urls"] = parse_urls(data["webhook_urls"])
                except ValueError as exc:
                    raise ValueError(f"webhook_urls: {exc}") from None
            for key in (
                "admin_token",
                "admin_token_file",
                "health_path",
                "preview_secret",
                "analysis_max_p99",
                "analysis_max_p99_ratio",
                "auto_promote_after",
                "webhook_secret",
                "webhook_secret_file",
                "promote_checks_file",
            ):
                if data.get(key) == "":
                    data[key] = None
        return data

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.admin_token_file is not None:
            self.admin_token = _secret_file(self.admin_token_file, "admin_token_file")
        if self.webhook_secret_file is not None:
            self.webhook_secret = _secret_file(self.webhook_secret_file, "webhook_secret_file")
        if self.promote_checks_file is not None:
            if self.promote_checks:
                raise ValueError("promote_checks_file: set it or BGPROXY_PROMOTE_CHECKS, not both")
            self.promote_checks = _checks_file(self.promote_checks_file)
        if self.webhook_secret is not None and not self.webhook_secret.get_secret_value():
            self.webhook_secret = None
        if self.admin_token is not None and not self.admin_token.get_secret_value():
            self.admin_token = None
        if not self.admin_listen.is_loopback and self.admin_token is None:
            raise ValueError(
                f"admin_token: required because admin_listen {self.admin_listen} is not loopback "
                f"(set {ENV_PREFIX}ADMIN_TOKEN or {ENV_PREFIX}ADMIN_TOKEN_FILE)"
            )
        if self.blue_url is not None and self.blue_url == self.green_url:
            raise ValueError("green_url: must differ from blue_url, or a flip would change nothing")
        return self

    @property
    def preview_policy(self) -> PreviewPolicy:
        secret = self.preview_secret.get_secret_value() if self.preview_secret else None
        return PreviewPolicy(secret=secret, networks=self.preview_allow)

    @property
    def namespace(self) -> str:
        if self.configmap_namespace:
            return self.configmap_namespace
        try:
            return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
        except OSError:
            return "default"

    def upstreams(self) -> dict[Color, Upstream]:
        """Each colour's upstream: the one colour-to-URL map. `serve` needs both; the error names what is missing."""
        missing = [f"{ENV_PREFIX}{n.upper()}" for n in ("blue_url", "green_url") if getattr(self, n) is None]
        if missing:
            raise SettingsError(
                f"{' and '.join(missing)} required: the upstream base URL(s), e.g. http://app-blue:8080"
            )
        assert self.blue_url is not None and self.green_url is not None
        return {Color.BLUE: self.blue_url, Color.GREEN: self.green_url}


class Terminal(NamedTuple):
    """How the CLI may draw on its output."""

    colours: bool  # ANSI colours
    redraw: bool  # clear the screen and draw again in place (`status --watch`)


def terminal(isatty: bool) -> Terminal:
    """Escape codes only for a terminal; NO_COLOR (https://no-color.org: set and not empty) turns colours off, and
    TERM=dumb (a terminal that understands no escape codes, such as an editor's shell buffer) both."""
    dumb = os.environ.get("TERM") == "dumb"
    return Terminal(colours=isatty and not dumb and not os.environ.get("NO_COLOR"), redraw=isatty and not dumb)


def load_settings(**overrides: Any) -> Settings:
    """Environment plus flag overrides (flags win); every error names the variable it came from."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-after", "constrained"))]
        msg = str(err["msg"]).removeprefix("Value error, ")
        field = loc[0] if loc else ""
        if not field and ":" in msg.split(" ", 1)[0]:
            field, msg = msg.split(":", 1)
            msg = msg.strip()
        name = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
        flag = f" (--{field.replace('_', '-')})" if field else ""
        got = err.get("input")
        secret = "token" in field  # never echo a token, even a malformed one
        shown = "" if secret or got is None or isinstance(got, dict) or "got " in msg else f", got {got!r}"
        lines.append(f"invalid {name}{flag}: {msg}{shown}")
    return "; ".join(lines)
