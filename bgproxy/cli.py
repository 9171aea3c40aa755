"""Command line: `bgproxy serve | demo`, and the admin API's client: `status | switch COLOUR | promote [--steps ...] |
shift WEIGHT | pause | resume | abort | rollback | release VERSION | wait-drained COLOUR [--timeout S]`.

Flags mirror the settings (`--blue-url` for BGPROXY_BLUE_URL, ...) and win over the environment. Every
failure is one line on stderr, never a traceback: exit 2 when nothing could be done (a bad setting, an address
that cannot be listened on, a state that cannot be read, an admin API that cannot be reached), exit 1 when the
admin API refused the call (its message is printed), or when `wait-drained` timed out.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Sequence
from typing import Any

from .settings import ENV_PREFIX, Settings, SettingsError, load_settings

EXIT_REFUSED = 1  # the admin API answered and refused the call
EXIT_START = 2  # nothing was done: see the module docstring
DRAINED_POLL = 0.5  # seconds between two looks of `wait-drained` at /state
_SHORT = {"blue_url": ["--blue"], "green_url": ["--green"]}


def _run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; kept for platforms without it
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def _settings_flags(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    for name, field in Settings.model_fields.items():
        if only is not None and name not in only:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = (field.description or "") + f" [{ENV_PREFIX}{name.upper()}]"
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action="store_const", const=True, default=None, help=help_text)
        else:
            parser.add_argument(flag, *_SHORT.get(name, []), dest=name, metavar="VALUE", default=None, help=help_text)


class _Version(argparse.Action):
    """`--version`, and which build runs (compiled or pure Python): that loads the data plane, so only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        from .build import describe

        print(describe())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bgproxy", description="A blue/green traffic switch for Kubernetes.")
    parser.add_argument("--version", action=_Version, help="print the version and the build (compiled or pure Python)")
    sub = parser.add_subparsers(dest="command", required=True)
    _settings_flags(sub.add_parser("serve", help="run the proxy"))
    demo = sub.add_parser("demo", help="blue and green demo upstreams, the proxy and the admin API on loopback")
    demo.add_argument("--listen", default=None, help="proxy address (default 127.0.0.1:8080)")
    demo.add_argument(
        "--admin-listen", dest="admin_listen", default=None, help="admin address (default 127.0.0.1:9090)"
    )
    for name, help_text in (
        ("status", "show the routing state"),
        ("switch", "make a colour active"),
        ("promote", "make the standby colour active, at once or (with --steps) step by step"),
        ("shift", "send a percent of ordinary traffic to the standby colour"),
        ("pause", "hold the stepped promotion at its current step"),
        ("resume", "continue a paused stepped promotion"),
        ("abort", "all ordinary traffic back to the active colour, the stepped promotion ended"),
        ("rollback", "make the previous colour active again (during a shift or steps: abort)"),
        ("release", "record the release now deployed on the standby colour (auto-promotion may then promote it)"),
    ):
        p = sub.add_parser(name, help=help_text)
        if name == "switch":
            p.add_argument("color", metavar="COLOUR", help="blue or green")
        if name == "shift":
            p.add_argument("weight", metavar="WEIGHT", type=_weight, help="0-100")
        if name == "release":
            p.add_argument("release", metavar="VERSION", help="its label: v43, an image tag")
        if name == "promote":
            p.add_argument("--steps", type=_steps, default=None, help="weights to go through, e.g. 10,50,100")
            p.add_argument("--interval", type=float, default=None, help="seconds each step holds (default 60)")
        if name != "status":
            p.add_argument("--reason", default="", help="recorded in the history")
        if name in ("switch", "promote", "shift", "rollback"):
            p.add_argument("--force", action="store_true", help="past failing health or pre-promotion checks")
        _admin_flags(p)
    wait = sub.add_parser(
        "wait-drained",
        help="wait until a colour is drained on this replica (no ordinary traffic, nothing live in flight for "
        "DRAINED_AFTER): then it can be scaled down",
    )
    wait.add_argument("color", metavar="COLOUR", type=_colour, help="blue or green")
    wait.add_argument(
        "--timeout", type=_seconds, default=None, metavar="S", help="give up after S seconds (exit 1); default: wait"
    )
    _admin_flags(wait)
    return parser


def _admin_flags(p: argparse.ArgumentParser) -> None:
    _settings_flags(p, only=("admin_url", "admin_token"))
    p.add_argument("--token", dest="admin_token", default=None, help="same as --admin-token")


def _colour(text: str) -> str:
    """A colour as typed; the same words as the admin API's."""
    value = text.strip().lower()
    if value not in ("blue", "green"):
        raise argparse.ArgumentTypeError(f"unknown colour {text!r}: expected 'blue' or 'green'")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}")
    return value


def _weight(text: str) -> int:
    """A weight as typed: digits; the admin API checks the range and says what it expects."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number 0-100, got {text!r}") from None


def _steps(text: str) -> list[int]:
    """Steps as typed: comma-separated weights (10,50,100); the admin API checks that they rise."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated weights such as 10,50,100, got {text!r}") from None


class CommandFailed(Exception):
    """One line for stderr and the exit code; what every failure of a command becomes."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _command(args)
    except SettingsError as exc:
        print(f"bgproxy: {exc}", file=sys.stderr)
        return EXIT_START
    except CommandFailed as exc:
        print(f"bgproxy: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


def _command(args: argparse.Namespace) -> int:
    if args.command in ("serve", "demo"):
        return _start(args)
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    settings = load_settings(**overrides)
    if args.command == "wait-drained":
        return _wait_drained(settings, args.color, args.timeout)
    return _admin_call(args, settings)


def _start(args: argparse.Namespace) -> int:
    settings = None
    if args.command == "serve":  # settings first: a bad one fails before the server's modules load
        settings = load_settings(**{k: v for k, v in vars(args).items() if k in Settings.model_fields})
        settings.upstreams()
    # Imported here: the admin-API commands need none of the server.
    from .app import StartupError, serve
    from .demo import run_demo
    from .log import setup_logging
    from .stores import StoreError

    try:
        if settings is None:
            _run(run_demo(args.listen, args.admin_listen))
        else:
            setup_logging(settings.log_level, settings.log_format)
            _run(serve(settings))
    except (StoreError, StartupError) as exc:  # a corrupt state file, an address in use
        raise CommandFailed(str(exc), EXIT_START) from None
    return 0


def _wait_drained(settings: Settings, color: str, timeout: float | None) -> int:
    """Poll /state until the colour's `drained_since` is set; print its figures then. Exit 1 after `timeout`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            backend = _request(settings, "GET", "/state", None)["backends"][color]
            drained = backend["drained_since"]
        except (KeyError, TypeError):
            raise CommandFailed(
                f"{settings.admin_url} does not report drained_since in /state: an older bgproxy", EXIT_START
            ) from None
        if drained is not None:
            print(json.dumps(backend, indent=2))
            return 0
        if deadline is not None and time.monotonic() >= deadline:
            raise CommandFailed(
                f"{color} is not drained after {timeout:g}s: {backend['inflight']} request(s) or websocket(s) in "
                "flight on it, or it still gets ordinary traffic (see bgproxy status)",
                EXIT_REFUSED,
            )
        pause = DRAINED_POLL if deadline is None else max(0.0, min(DRAINED_POLL, deadline - time.monotonic()))
        time.sleep(pause)


def _admin_call(args: argparse.Namespace, settings: Settings) -> int:
    body: dict[str, Any] | None = None
    if args.command == "status":
        method, path = "GET", "/state"
    else:
        method, path = "POST", f"/{args.command}"
        body = {"reason": args.reason} if args.reason else {}
        if getattr(args, "force", False):
            body["force"] = True
        if args.command == "switch":
            body["to"] = args.color
        elif args.command == "shift":
            body["weight"] = args.weight
        elif args.command == "release":
            body["release"] = args.release
        elif args.command == "promote":
            if args.steps is not None:
                body["steps"] = args.steps
            if args.interval is not None:  # without --steps the server refuses it: never a silent instant promote
                body["interval"] = args.interval
    print(json.dumps(_request(settings, method, path, body), indent=2))
    return 0


def _request(settings: Settings, method: str, path: str, body: dict[str, Any] | None) -> Any:
    """One call of the admin API: its JSON answer, or CommandFailed with the server's message."""
    base = settings.admin_url.rstrip("/")
    headers = {"Content-Type": "application/json"}
    if settings.admin_token is not None:
        headers["Authorization"] = f"Bearer {settings.admin_token.get_secret_value()}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raise CommandFailed(f"{method} {path} failed ({exc.code}): {_error_message(exc)}", EXIT_REFUSED) from None
    except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
        reason = getattr(exc, "reason", None) or exc
        raise CommandFailed(f"cannot reach the admin API at {base}: {reason}", EXIT_START) from None
    try:
        answer = json.loads(raw)
    except ValueError:
        raise CommandFailed(
            f"{base} is not bgproxy's admin API ({method} {path} answered something other than JSON); "
            f"check {ENV_PREFIX}ADMIN_URL (--admin-url)",
            EXIT_START,
        ) from None
    return answer


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The admin API's {"error": ...}, else the status's reason phrase."""
    try:
        body = json.load(exc)
    except (ValueError, OSError):
        return str(exc.reason)
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) else str(exc.reason)
