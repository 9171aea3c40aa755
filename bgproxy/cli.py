"""Command line: `bgproxy serve | demo`, and the admin API's client: `status | switch COLOUR | promote [--steps ...] |
shift WEIGHT | pause | resume | abort | rollback`.

Flags mirror the settings (`--blue-url` for BGPROXY_BLUE_URL, ...) and win over the environment. Bad
settings exit 2 before anything listens; a failed admin call exits 1 with the server's message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Coroutine, Sequence
from typing import Any

from .settings import ENV_PREFIX, Settings, SettingsError, load_settings

EXIT_SETTINGS = 2
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bgproxy", description="A blue/green traffic switch for Kubernetes.")
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
    ):
        p = sub.add_parser(name, help=help_text)
        if name == "switch":
            p.add_argument("color", metavar="COLOUR", help="blue or green")
        if name == "shift":
            p.add_argument("weight", metavar="WEIGHT", type=_weight, help="0-100")
        if name == "promote":
            p.add_argument("--steps", type=_steps, default=None, help="weights to go through, e.g. 10,50,100")
            p.add_argument("--interval", type=float, default=None, help="seconds each step holds (default 60)")
        if name != "status":
            p.add_argument("--reason", default="", help="recorded in the history")
        if name in ("switch", "promote", "shift", "rollback"):
            p.add_argument("--force", action="store_true", help="even to a colour failing its health checks")
        _settings_flags(p, only=("admin_url", "admin_token"))
        p.add_argument("--token", dest="admin_token", default=None, help="same as --admin-token")
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    try:
        if args.command == "demo":
            from .demo import run_demo

            _run(run_demo(args.listen, args.admin_listen))
            return 0
        settings = load_settings(**overrides)
        if args.command == "serve":
            from .app import StartupError, serve
            from .log import setup_logging
            from .stores import StoreError

            settings.upstreams()
            setup_logging(settings.log_level, settings.log_format)
            try:
                _run(serve(settings))
            except (StoreError, StartupError) as exc:  # a corrupt state file, a port in use: one clear line
                print(f"bgproxy: {exc}", file=sys.stderr)
                return 1
            return 0
    except SettingsError as exc:
        print(f"bgproxy: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    except KeyboardInterrupt:
        return 130
    return _admin_call(args, settings)


def _admin_call(args: argparse.Namespace, settings: Settings) -> int:
    base = settings.admin_url.rstrip("/")
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
        elif args.command == "promote":
            if args.steps is not None:
                body["steps"] = args.steps
            if args.interval is not None:  # without --steps the server refuses it: never a silent instant promote
                body["interval"] = args.interval
    headers = {"Content-Type": "application/json"}
    if settings.admin_token is not None:
        headers["Authorization"] = f"Bearer {settings.admin_token.get_secret_value()}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            answer = json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        print(f"bgproxy: {method} {path} failed ({exc.code}): {message}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"bgproxy: cannot reach the admin API at {base}: {reason}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2))
    return 0
