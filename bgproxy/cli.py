"""Command line: `bgproxy serve | demo`, and the admin API's client: `status [--json] [--watch [--interval S]] |
switch COLOUR | promote [--steps ...] | shift WEIGHT | pause | resume | abort | rollback | release VERSION |
wait-drained COLOUR [--timeout S]`.

Flags mirror the settings (`--blue-url` for BGPROXY_BLUE_URL, ...) and win over the environment. Every
failure is one line on stderr, never a traceback: exit 2 when nothing could be done (a bad setting, an address
that cannot be listened on, a state that cannot be read, an admin API that cannot be reached), exit 1 when the
admin API refused the call (its message is printed), or when `wait-drained` timed out. `status --watch` is the
exception to "cannot be reached": it keeps trying and shows UNREACHABLE (a proxy restarting during a release comes
back), and ends with 0 on Ctrl-C. What `status` prints is `cli_status`'s (pure) business.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Sequence
from typing import Any

from . import cli_status
from .settings import ENV_PREFIX, Settings, SettingsError, load_settings, terminal

EXIT_REFUSED = 1  # the admin API answered and refused the call
EXIT_START = 2  # nothing was done: see the module docstring
DRAINED_POLL = 0.5  # seconds between two looks of `wait-drained` at /state
REQUEST_TIMEOUT = 30.0  # seconds one call of the admin API may take
WATCH_INTERVAL = 1.0  # seconds between two frames of `status --watch`
MIN_WATCH_INTERVAL = 0.1  # a faster redraw shows nothing new and only loads the admin API
WATCH_TIMEOUT = 5.0  # seconds a frame of `status --watch` waits for /state; then it shows UNREACHABLE and tries again
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
        ("status", "where traffic goes, the promotion under way, each colour's health and figures (--watch: live)"),
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
        if name == "status":
            p.add_argument("--json", action="store_true", help="/state as JSON, for scripts")
            p.add_argument(
                "--watch", action="store_true", help="draw it again every second until Ctrl-C (with --json: JSON lines)"
            )
            p.add_argument(
                "--interval",
                type=_watch_interval,
                default=None,
                metavar="S",
                help=f"with --watch: seconds between two looks (default {WATCH_INTERVAL:g})",
            )
        else:
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


def _watch_interval(text: str) -> float:
    value = _seconds(text)
    if value < MIN_WATCH_INTERVAL:
        raise argparse.ArgumentTypeError(f"expected at least {MIN_WATCH_INTERVAL:g} seconds, got {text!r}")
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
    """One line for stderr and the exit code; what every failure of a command becomes. `transient`: the admin API
    could not be reached or answered 5xx, so trying again later may work (`status --watch` does)."""

    def __init__(self, message: str, code: int, *, transient: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.transient = transient


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "status" and args.interval is not None and not args.watch:
        parser.error("--interval goes with --watch")
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
    if args.command == "status":
        if args.watch:
            return _watch(settings, as_json=args.json, interval=args.interval or WATCH_INTERVAL)
        state = _request(settings, "GET", "/state", None)
        if args.json:
            print(json.dumps(state, indent=2))  # what `status` always printed: scripts rely on it
        else:
            print("\n".join(_summary(settings, state, now=time.time(), colours=terminal(sys.stdout.isatty()).colours)))
        return 0
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


def _summary(settings: Settings, state: Any, *, now: float, colours: bool) -> list[str]:
    try:
        return cli_status.summary(state, now=now, colour=colours)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CommandFailed(
            f"{settings.admin_url} answered /state with something bgproxy status cannot read (another program, or "
            "an incompatible bgproxy); bgproxy status --json prints it",
            EXIT_START,
        ) from None


def _watch(settings: Settings, *, as_json: bool, interval: float) -> int:
    """Look at /state every `interval` seconds and draw it (with --json: one JSON line per look), until Ctrl-C.

    An admin API that cannot be reached, or answers 5xx, is shown as UNREACHABLE and tried again at the next tick
    (on stderr, once per outage, with --json): an operator keeps this open through a release, and through restarts
    of bgproxy itself. Anything else that would fail `status` (a wrong URL that answers something else, a 4xx) ends
    it the same way, since trying again cannot help.
    """
    # Ctrl-C is how a watch ends, even when started by a script that ignores SIGINT in its background jobs (Python
    # then leaves it ignored); a caller on another thread than the main one keeps its own.
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    term = terminal(sys.stdout.isatty())
    last: tuple[Any, float] | None = None  # the last answer, and when
    down: tuple[float, str] | None = None  # since when it cannot be read, and why
    first = True
    next_at = time.monotonic()
    try:
        while True:
            now = time.time()
            try:
                state = _request(settings, "GET", "/state", None, timeout=WATCH_TIMEOUT)
            except CommandFailed as exc:
                if not exc.transient:
                    raise
                if as_json and (down is None or down[1] != str(exc)):
                    print(f"bgproxy: {exc}; trying again every {interval:g}s", file=sys.stderr, flush=True)
                down = (now if down is None else down[0], str(exc))
            else:
                down, last = None, (state, now)
                if as_json:
                    print(json.dumps(state), flush=True)
            if not as_json:
                if down is None:
                    lines = _summary(settings, state, now=now, colours=term.colours)
                else:
                    lines = cli_status.unreachable(
                        down[1], since=down[0], now=now, interval=interval, last=last, colour=term.colours
                    )
                header = cli_status.watch_header(settings.admin_url, now=now, interval=interval, colour=term.colours)
                sys.stdout.write(cli_status.frame([header, "", *lines], first=first, redraw=term.redraw))
                sys.stdout.flush()
                first = False
            next_at += interval
            pause = next_at - time.monotonic()
            if pause < 0:  # a slow answer: start the next look now, without a burst to catch up
                next_at, pause = time.monotonic(), 0.0
            time.sleep(pause)
    except KeyboardInterrupt:  # how a watch ends: Ctrl-C; the last frame stays on the screen
        return 0
    except BrokenPipeError:  # the reader left (`| head`): done; nothing can be flushed to it at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _admin_call(args: argparse.Namespace, settings: Settings) -> int:
    method, path = "POST", f"/{args.command}"
    body: dict[str, Any] = {"reason": args.reason} if args.reason else {}
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


def _request(
    settings: Settings, method: str, path: str, body: dict[str, Any] | None, *, timeout: float = REQUEST_TIMEOUT
) -> Any:
    """One call of the admin API: its JSON answer, or CommandFailed with the server's message."""
    base = settings.admin_url.rstrip("/")
    headers = {"Content-Type": "application/json"}
    if settings.admin_token is not None:
        headers["Authorization"] = f"Bearer {settings.admin_token.get_secret_value()}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raise CommandFailed(
            f"{method} {path} failed ({exc.code}): {_error_message(exc)}", EXIT_REFUSED, transient=exc.code >= 500
        ) from None
    except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
        reason = getattr(exc, "reason", None) or exc
        raise CommandFailed(f"cannot reach the admin API at {base}: {reason}", EXIT_START, transient=True) from None
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
