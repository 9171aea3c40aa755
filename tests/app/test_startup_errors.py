"""Every command fails in one line on stderr, never a traceback: exit 2 when nothing could be done (an address in
use, a bad setting, an admin API that cannot be reached or is not one), exit 1 when the admin API refused the call.

Each case is a real `python -m bgproxy ...` process, all run side by side against a port the test holds, a
running `bgproxy serve` (for the refusals) and a plain HTTP server that is not bgproxy.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.processes import PROC_TIMEOUT, clean_env
from tests.support.servers import free_port

TOKEN = "startup-test-token-51c9"
ADMIN_COMMANDS = (
    ["status"],
    ["switch", "green"],
    ["promote"],
    ["shift", "20"],
    ["pause"],
    ["resume"],
    ["abort"],
    ["rollback"],
    ["release", "v43"],
    ["wait-drained", "green"],
)


@dataclass
class Case:
    argv: list[str]
    code: int
    words: str  # the line must contain them
    env: dict[str, str] = field(default_factory=dict)


class NotBgproxy(BaseHTTPRequestHandler):
    """Any HTTP server that is not bgproxy's admin API: 200 and plain text for everything."""

    def _answer(self) -> None:
        body = b"hello, I am some other server\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def held_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def other_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotBgproxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(PROC_TIMEOUT)


@pytest.fixture(scope="module")
def running_admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `bgproxy serve` with a token: its admin API refuses calls."""
    admin = free_port()
    argv = [sys.executable, "-m", "bgproxy", "serve", "--blue", "http://127.0.0.1:9", "--green", "http://127.0.0.1:10"]
    argv += ["--listen", "127.0.0.1:0", "--admin-listen", f"127.0.0.1:{admin}", "--state-backend", "memory"]
    env = clean_env(BGPROXY_ADMIN_TOKEN=TOKEN, BGPROXY_LOG_LEVEL="warning", BGPROXY_DRAIN_GRACE="0")
    cwd = tmp_path_factory.mktemp("running")
    with (cwd / "stderr.txt").open("wb") as err:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
    try:
        url = f"http://127.0.0.1:{admin}"
        deadline = time.monotonic() + PROC_TIMEOUT
        while True:
            assert proc.poll() is None, (cwd / "stderr.txt").read_text()
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "bgproxy serve not ready"
            time.sleep(0.05)  # between polls of a bounded wait
        yield url
    finally:
        proc.terminate()
        proc.wait(PROC_TIMEOUT)


def all_cases(busy: int, admin: str, other: str) -> dict[str, Case]:
    upstreams = ["--blue", "http://127.0.0.1:9", "--green", "http://127.0.0.1:10", "--state-backend", "memory"]
    cases = {
        "serve-listen-in-use": Case(
            ["serve", *upstreams, "--listen", f"127.0.0.1:{busy}", "--admin-listen", "127.0.0.1:0"],
            2,
            f"cannot listen on 127.0.0.1:{busy} (BGPROXY_LISTEN): Address already in use",
        ),
        "serve-admin-listen-in-use": Case(
            ["serve", *upstreams, "--listen", "127.0.0.1:0", "--admin-listen", f"127.0.0.1:{busy}"],
            2,
            f"cannot listen on 127.0.0.1:{busy} (BGPROXY_ADMIN_LISTEN): Address already in use",
        ),
        "serve-bad-setting": Case(["serve", *upstreams, "--listen", "nowhere"], 2, "invalid BGPROXY_LISTEN"),
        "serve-bad-promote-check": Case(
            ["serve", *upstreams],
            2,
            "invalid BGPROXY_PROMOTE_CHECKS (--promote-checks): entry [1], field 'status': Input should be less than "
            "or equal to 599, got 600",
            {"BGPROXY_PROMOTE_CHECKS": '[{"path": "/ready"}, {"path": "/ok", "status": 600}]'},
        ),
        "serve-promote-checks-not-a-list": Case(
            ["serve", *upstreams, "--promote-checks", '{"path": "/ready"}'],
            2,
            'invalid BGPROXY_PROMOTE_CHECKS (--promote-checks): expected a JSON list of checks such as [{"path": '
            '"/healthz"}], got dict',
        ),
        "serve-promote-check-bad-regex": Case(
            ["serve", *upstreams],
            2,
            "invalid BGPROXY_PROMOTE_CHECKS (--promote-checks): entry [0], field 'body': expected a regular "
            "expression, got '(ok'",
            {"BGPROXY_PROMOTE_CHECKS": '[{"path": "/ready", "body": "(ok"}]'},
        ),
        "serve-promote-check-unknown-field": Case(
            ["serve", *upstreams],
            2,
            "invalid BGPROXY_PROMOTE_CHECKS (--promote-checks): entry [0], field 'timout': Extra inputs are not "
            "permitted",
            {"BGPROXY_PROMOTE_CHECKS": '[{"path": "/ready", "timout": 5}]'},
        ),
        "serve-promote-checks-file-missing": Case(
            ["serve", *upstreams, "--promote-checks-file", "/nonexistent/checks.json"],
            2,
            "invalid BGPROXY_PROMOTE_CHECKS_FILE (--promote-checks-file): cannot read /nonexistent/checks.json",
        ),
        "demo-listen-in-use": Case(
            ["demo", "--listen", f"127.0.0.1:{busy}", "--admin-listen", "127.0.0.1:0"],
            2,
            f"cannot listen on 127.0.0.1:{busy} (--listen): Address already in use; choose free ports",
        ),
        "demo-admin-listen-in-use": Case(
            ["demo", "--listen", "127.0.0.1:0", "--admin-listen", f"127.0.0.1:{busy}"],
            2,
            f"cannot listen on 127.0.0.1:{busy} (--admin-listen): Address already in use; choose free ports",
        ),
        "demo-bad-flag": Case(["demo", "--listen", "nowhere"], 2, "invalid BGPROXY_LISTEN (--listen)"),
        "demo-bad-variable": Case(
            ["demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
            2,
            "invalid BGPROXY_LOG_LEVEL",
            {"BGPROXY_LOG_LEVEL": "loud"},
        ),
        # refused by the admin API: exit 1 with its message
        "switch-refused": Case(
            ["switch", "red", "--admin-url", admin, "--token", TOKEN], 1, "failed (400): 'to': unknown colour 'red'"
        ),
        "promote-refused": Case(["promote", "--admin-url", admin], 1, "failed (401)"),
        "rollback-refused": Case(
            ["rollback", "--admin-url", admin, "--token", TOKEN], 1, "failed (409): nothing to roll back"
        ),
        "release-refused": Case(
            ["release", "v 43", "--admin-url", admin, "--token", TOKEN], 1, "POST /release failed (400): 'release'"
        ),
        # the active colour is never drained
        "wait-drained-timed-out": Case(
            ["wait-drained", "blue", "--timeout", "0", "--admin-url", admin], 1, "blue is not drained after 0s"
        ),
    }
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for command in ADMIN_COMMANDS:
        name = command[0]
        cases[f"{name}-unreachable"] = Case(
            [*command, "--admin-url", nowhere], 2, f"cannot reach the admin API at {nowhere}"
        )
        cases[f"{name}-not-the-admin-api"] = Case(
            [*command, "--admin-url", other], 2, f"{other} is not bgproxy's admin API"
        )
        cases[f"{name}-bad-url"] = Case([*command, "--admin-url", "localhost:9090"], 2, "invalid BGPROXY_ADMIN_URL")
    return cases


CASE_NAMES = list(all_cases(0, "", ""))


@pytest.fixture(scope="module")
def results(
    held_port: int, running_admin: str, other_server: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Case, subprocess.CompletedProcess[str]]]:
    cases = all_cases(held_port, running_admin, other_server)
    assert list(cases) == CASE_NAMES
    cwd = tmp_path_factory.mktemp("startup")

    def run(case: Case) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bgproxy", *case.argv],
            env=clean_env(**case.env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=PROC_TIMEOUT,
            check=False,
        )

    with ThreadPoolExecutor(6) as pool:
        done = dict(zip(cases, pool.map(run, cases.values()), strict=True))
    return {name: (cases[name], done[name]) for name in cases}


@pytest.mark.parametrize("name", CASE_NAMES)
def test_a_failed_command_says_why_in_one_line(
    results: dict[str, tuple[Case, subprocess.CompletedProcess[str]]], name: str
) -> None:
    case, res = results[name]
    assert "Traceback" not in res.stderr
    assert res.stderr.splitlines() == [res.stderr.strip()], res.stderr  # one line, nothing logged around it
    assert res.stderr.startswith("bgproxy: ") and case.words in res.stderr, res.stderr
    assert res.stdout == "" and TOKEN not in res.stderr
    assert res.returncode == case.code, res.stderr


def test_the_port_test_holds_is_really_taken(held_port: int) -> None:
    with socket.socket() as probe, pytest.raises(OSError):
        probe.bind(("127.0.0.1", held_port))


def test_cases_cover_every_command() -> None:
    from bgproxy.cli import build_parser

    commands = {case.argv[0] for case in all_cases(0, "", "").values()}
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    assert isinstance(subparsers.choices, dict) and commands == set(subparsers.choices)
