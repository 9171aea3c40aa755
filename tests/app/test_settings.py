"""Settings: every bad value stops `bgproxy serve` before it listens, with one line naming the variable, exit 2.

The whole table runs through the real CLI entry point in-process (fast); a subset runs as real subprocesses
(`python -m bgproxy serve`) for the process's own exit code and stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bgproxy import cli
from bgproxy.core.addresses import Address
from bgproxy.core.model import Color
from bgproxy.settings import SettingsError, load_settings
from tests.support.processes import PROC_TIMEOUT, clean_env, serve_args, serve_process
from tests.support.servers import TIMEOUT, Upstream, free_port

SECRET = "tok-DO-NOT-PRINT-4f1c"
BLUE, GREEN = "http://127.0.0.1:9", "http://127.0.0.1:10"


@pytest.fixture(autouse=True)
def no_bgproxy_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each test starts from an environment without BGPROXY_* variables, in an empty directory."""
    for key in list(os.environ):
        if key.startswith("BGPROXY_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


# (id, environment overrides (None removes), flags, variable the message must name, words it must contain)
BASE_ENV: dict[str, str] = {
    "BGPROXY_BLUE_URL": BLUE,
    "BGPROXY_GREEN_URL": GREEN,
    "BGPROXY_LISTEN": "127.0.0.1:0",
    "BGPROXY_ADMIN_LISTEN": "127.0.0.1:0",
    "BGPROXY_ADMIN_TOKEN": SECRET,  # present in every case, so that its absence from stderr means something
    "BGPROXY_STATE_BACKEND": "memory",
}
RT, TF = "BGPROXY_UPSTREAM_READ_TIMEOUT", "BGPROXY_ADMIN_TOKEN_FILE"
Case = tuple[str, dict[str, str | None], list[str], str, str]
CASES: list[Case] = [
    ("blue-without-scheme", {"BGPROXY_BLUE_URL": "app-blue:8080"}, [], "BGPROXY_BLUE_URL", "http://"),
    ("blue-without-scheme-flag", {}, ["--blue", "app-blue:8080"], "BGPROXY_BLUE_URL", "http://"),
    ("blue-ftp", {"BGPROXY_BLUE_URL": "ftp://app-blue"}, [], "BGPROXY_BLUE_URL", "http://"),
    ("green-with-path", {"BGPROXY_GREEN_URL": "http://g:8080/api"}, [], "BGPROXY_GREEN_URL", "without path"),
    ("green-port-range", {}, ["--green", "http://g:99999"], "BGPROXY_GREEN_URL", "1-65535"),
    ("green-same-as-blue", {"BGPROXY_GREEN_URL": BLUE}, [], "BGPROXY_GREEN_URL", "differ"),
    ("missing-blue", {"BGPROXY_BLUE_URL": None}, [], "BGPROXY_BLUE_URL", "required"),
    ("missing-green", {"BGPROXY_GREEN_URL": None}, [], "BGPROXY_GREEN_URL", "required"),
    ("missing-both", {"BGPROXY_BLUE_URL": None, "BGPROXY_GREEN_URL": None}, [], "BGPROXY_GREEN_URL", "required"),
    ("initial-red", {"BGPROXY_INITIAL_ACTIVE": "red"}, [], "BGPROXY_INITIAL_ACTIVE", "'blue' or 'green'"),
    ("initial-purple-flag", {}, ["--initial-active", "purple"], "BGPROXY_INITIAL_ACTIVE", "'blue' or 'green'"),
    ("listen-port-range", {"BGPROXY_LISTEN": "0.0.0.0:70000"}, [], "BGPROXY_LISTEN", "0-65535"),
    ("listen-port-range-flag", {}, ["--listen", "127.0.0.1:65536"], "BGPROXY_LISTEN", "0-65535"),
    ("listen-without-port", {"BGPROXY_LISTEN": "localhost"}, [], "BGPROXY_LISTEN", "HOST:PORT"),
    ("admin-listen-garbage", {"BGPROXY_ADMIN_LISTEN": "[1,2]"}, [], "BGPROXY_ADMIN_LISTEN", "HOST:PORT"),
    (
        "admin-public-without-token",
        {"BGPROXY_ADMIN_LISTEN": "0.0.0.0:9090", "BGPROXY_ADMIN_TOKEN": None},
        [],
        "BGPROXY_ADMIN_TOKEN",
        "not loopback",
    ),
    (
        "admin-public-empty-token",
        {"BGPROXY_ADMIN_LISTEN": "0.0.0.0:9090", "BGPROXY_ADMIN_TOKEN": ""},
        [],
        "BGPROXY_ADMIN_TOKEN",
        "not loopback",
    ),
    (
        "admin-public-without-token-flag",
        {"BGPROXY_ADMIN_TOKEN": None},
        ["--admin-listen", "10.1.2.3:9090"],
        "BGPROXY_ADMIN_TOKEN",
        "not loopback",
    ),
    (
        "read-timeout-negative",
        {"BGPROXY_UPSTREAM_READ_TIMEOUT": "-1"},
        [],
        "BGPROXY_UPSTREAM_READ_TIMEOUT",
        "greater than 0",
    ),
    (
        "connect-timeout-negative-flag",
        {},
        ["--upstream-connect-timeout", "-5"],
        "BGPROXY_UPSTREAM_CONNECT_TIMEOUT",
        "greater than 0, got '-5'",
    ),
    (
        "connect-timeout-zero",
        {"BGPROXY_UPSTREAM_CONNECT_TIMEOUT": "0"},
        [],
        "BGPROXY_UPSTREAM_CONNECT_TIMEOUT",
        "greater than 0, got '0'",
    ),
    ("header-timeout-words", {"BGPROXY_HEADER_TIMEOUT": "soon"}, [], "BGPROXY_HEADER_TIMEOUT", "number"),
    (
        "drain-grace-negative",
        {"BGPROXY_DRAIN_GRACE": "-1"},
        [],
        "BGPROXY_DRAIN_GRACE",
        "greater than or equal to 0, got '-1'",
    ),
    (
        "token-file-missing",
        {"BGPROXY_ADMIN_TOKEN_FILE": "/nonexistent/token"},
        [],
        "BGPROXY_ADMIN_TOKEN_FILE",
        "cannot read",
    ),
    ("token-file-is-a-directory", {"BGPROXY_ADMIN_TOKEN_FILE": "/"}, [], "BGPROXY_ADMIN_TOKEN_FILE", "cannot read"),
    (
        "token-file-missing-flag",
        {},
        ["--admin-token-file", "/nonexistent/t"],
        "BGPROXY_ADMIN_TOKEN_FILE",
        "cannot read",
    ),
    ("state-backend-unknown", {"BGPROXY_STATE_BACKEND": "redis"}, [], "BGPROXY_STATE_BACKEND", "'memory'"),
    ("log-level-unknown", {"BGPROXY_LOG_LEVEL": "loud"}, [], "BGPROXY_LOG_LEVEL", "'info'"),
    (
        "max-connections-zero",
        {"BGPROXY_MAX_CONNECTIONS": "0"},
        [],
        "BGPROXY_MAX_CONNECTIONS",
        "greater than or equal to 1, got '0'",
    ),
    ("preview-header-space", {"BGPROXY_PREVIEW_HEADER": "X Preview"}, [], "BGPROXY_PREVIEW_HEADER", "header name"),
    ("sticky-cookie-semicolon", {"BGPROXY_STICKY_COOKIE": "bg;sticky"}, [], "BGPROXY_STICKY_COOKIE", "cookie name"),
    ("sticky-cookie-space-flag", {}, ["--sticky-cookie", "bg sticky"], "BGPROXY_STICKY_COOKIE", "cookie name"),
    ("sticky-header-colon", {"BGPROXY_STICKY_HEADER": "X-User:"}, [], "BGPROXY_STICKY_HEADER", "header name"),
    (
        "promote-checks-entry",
        {"BGPROXY_PROMOTE_CHECKS": '[{"path": "/ready"}, {"path": "ready", "status": 200}]'},
        [],
        "BGPROXY_PROMOTE_CHECKS",
        "entry [1], field 'path': expected a path such as /healthz",
    ),
    (
        "promote-checks-not-a-list-flag",
        {},
        ["--promote-checks", '{"path": "/ready"}'],
        "BGPROXY_PROMOTE_CHECKS",
        "expected a JSON list of checks",
    ),
    (
        "promote-checks-and-file",
        {"BGPROXY_PROMOTE_CHECKS": '[{"path": "/ready"}]', "BGPROXY_PROMOTE_CHECKS_FILE": "/nonexistent"},
        [],
        "BGPROXY_PROMOTE_CHECKS_FILE",
        "not both",
    ),
    (
        "promote-checks-file-missing",
        {"BGPROXY_PROMOTE_CHECKS_FILE": "/nonexistent/checks.json"},
        [],
        "BGPROXY_PROMOTE_CHECKS_FILE",
        "cannot read /nonexistent/checks.json",
    ),
]
# A few of them also as real processes: the exit status and stderr of `python -m bgproxy serve` itself.
SUBPROCESS_CASES = [
    "blue-without-scheme",
    "initial-purple-flag",
    "listen-port-range",
    "admin-public-without-token",
    "read-timeout-negative",
    "missing-both",
    "token-file-missing",
    "promote-checks-entry",
]


def case_env(overrides: dict[str, str | None]) -> dict[str, str]:
    env: dict[str, str | None] = {**BASE_ENV, **overrides}
    return {k: v for k, v in env.items() if v is not None}


def test_every_case_expects_words() -> None:
    assert all(words for *_, words in CASES)  # an empty string would accept any message


def check_error_line(stderr: str, variable: str, words: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr  # one clear line: no traceback, no log of anything starting
    line = lines[0]
    assert line.startswith("bgproxy: "), line
    assert variable in line, line
    assert words in line, line
    assert SECRET not in stderr


@pytest.mark.parametrize(("env", "flags", "variable", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_value_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str | None],
    flags: list[str],
    variable: str,
    words: str,
) -> None:
    for key, value in case_env(env).items():
        monkeypatch.setenv(key, value)
    # In a worker thread: should a bad value ever be accepted, `serve` fails at once on its signal handlers there
    # instead of serving forever.
    code = await asyncio.wait_for(asyncio.to_thread(cli.main, ["serve", *flags]), TIMEOUT)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == ""
    check_error_line(err, variable, words)


def test_missing_both_urls_names_both() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings().upstreams()
    assert "BGPROXY_BLUE_URL and BGPROXY_GREEN_URL" in str(info.value)


@pytest.fixture(scope="module")
def subprocess_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """Each SUBPROCESS_CASES entry run as `python -m bgproxy serve`, all at once (bounded by a timeout)."""
    cases = {c[0]: c for c in CASES if c[0] in SUBPROCESS_CASES}
    cwd = tmp_path_factory.mktemp("settings")

    def run(name: str) -> subprocess.CompletedProcess[str]:
        _, env, flags, _, _ = cases[name]
        return subprocess.run(
            [sys.executable, "-m", "bgproxy", "serve", *flags],
            env=clean_env(**case_env(env)),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=PROC_TIMEOUT,
            check=False,
        )

    with ThreadPoolExecutor(len(cases)) as pool:
        return dict(zip(cases, pool.map(run, cases), strict=True))


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_value_stops_the_real_process_with_exit_2(
    subprocess_results: dict[str, subprocess.CompletedProcess[str]], name: str
) -> None:
    _, _, _, variable, words = next(c for c in CASES if c[0] == name)
    res = subprocess_results[name]
    assert res.returncode == 2, res.stderr
    assert res.stdout == ""
    check_error_line(res.stderr, variable, words)


# --- flags override the environment --------------------------------------------------------------------------------


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {
        "BGPROXY_BLUE_URL": "http://app-blue:8080",
        "BGPROXY_GREEN_URL": "https://app-green",
        "BGPROXY_LISTEN": "127.0.0.1:1111",
        "BGPROXY_ADMIN_LISTEN": "[::1]:2222",
        "BGPROXY_INITIAL_ACTIVE": "green",
        "BGPROXY_STATE_BACKEND": "file",
        "BGPROXY_STATE_FILE": str(tmp_path / "s.json"),
        "BGPROXY_UPSTREAM_READ_TIMEOUT": "1.5",
        "BGPROXY_COLOR_HEADER": "",
        "BGPROXY_PREVIEW_COOKIE": "canary",
        "BGPROXY_ACCESS_LOG": "true",
        "BGPROXY_MAX_CONNECTIONS": "50",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert s.blue_url is not None and s.green_url is not None
    assert (s.blue_url.url, s.blue_url.host, s.blue_url.port) == ("http://app-blue:8080", "app-blue", 8080)
    assert (s.green_url.scheme, s.green_url.port, s.green_url.host_header) == ("https", 443, "app-green")
    assert s.listen == Address("127.0.0.1", 1111)
    assert s.admin_listen == Address("::1", 2222) and s.admin_listen.is_loopback
    assert s.initial_active is Color.GREEN
    assert (s.state_backend, s.state_file) == ("file", tmp_path / "s.json")
    assert s.upstream_read_timeout == 1.5
    assert s.color_header == ""  # empty turns the response header off
    assert s.preview_cookie == "canary"
    assert s.access_log is True
    assert s.max_connections == 50


@pytest.mark.parametrize(
    ("variable", "env_value", "flag", "flag_value", "attribute", "expected"),
    [
        ("BGPROXY_LISTEN", "127.0.0.1:1111", "listen", "127.0.0.1:2222", "listen", Address("127.0.0.1", 2222)),
        ("BGPROXY_LISTEN", "garbage", "listen", "127.0.0.1:2222", "listen", Address("127.0.0.1", 2222)),
        ("BGPROXY_INITIAL_ACTIVE", "green", "initial_active", "blue", "initial_active", Color.BLUE),
        ("BGPROXY_INITIAL_ACTIVE", "red", "initial_active", "green", "initial_active", Color.GREEN),
        ("BGPROXY_STATE_BACKEND", "file", "state_backend", "memory", "state_backend", "memory"),
        ("BGPROXY_UPSTREAM_READ_TIMEOUT", "-1", "upstream_read_timeout", "7", "upstream_read_timeout", 7.0),
    ],
)
def test_a_flag_overrides_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    env_value: str,
    flag: str,
    flag_value: str,
    attribute: str,
    expected: Any,
) -> None:
    monkeypatch.setenv(variable, env_value)
    assert getattr(load_settings(**{flag: flag_value}), attribute) == expected
    # a flag that was not given (None) leaves the environment in charge
    if env_value not in ("garbage", "red", "-1"):
        assert getattr(load_settings(**{flag: None}), attribute) != expected
    else:
        with pytest.raises(SettingsError, match=variable):
            load_settings(**{flag: None})


def test_defaults_are_the_documented_ones() -> None:
    s = load_settings()
    assert s.blue_url is None and s.green_url is None
    assert s.listen == Address("0.0.0.0", 8080)
    assert s.admin_listen == Address("127.0.0.1", 9090)
    assert s.admin_token is None and s.admin_token_file is None
    assert s.initial_active is Color.BLUE
    assert (s.state_backend, str(s.state_file)) == ("file", "bgproxy-state.json")
    assert s.configmap_name == "bgproxy-state"
    assert (s.preview_header, s.preview_cookie, s.color_header) == ("X-Preview", "bg-preview", "X-Bg-Color")
    assert (s.upstream_connect_timeout, s.upstream_read_timeout) == (2, 60)
    assert (s.log_level, s.log_format) == ("info", "json")
    assert (s.drain_grace, s.drain_timeout) == (5, 30)
    assert (s.health_path, s.health_interval) == (None, 2)
    assert (s.max_request_line, s.max_header_bytes) == (8192, 32768)
    assert (s.header_timeout, s.idle_timeout) == (10, 60)
    assert s.max_connections == 10000
    assert (s.sticky_cookie, s.sticky_header) == ("bg-sticky", "")
    assert (s.promote_checks, s.promote_checks_file) == ((), None)
    assert (s.auto_promote_after, s.auto_promote_steps, s.auto_promote_interval) == (None, None, 60)


def test_promote_checks_file_is_read_and_a_bad_one_names_the_file_and_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "checks.json"
    path.write_text('[{"path": "/healthz", "status": 200, "body": "ok", "timeout": 1}]\n')
    (check,) = load_settings(promote_checks_file=str(path)).promote_checks
    assert (check.path, check.status, check.body, check.timeout, check.method) == ("/healthz", 200, "ok", 1.0, "GET")
    path.write_text('[{"path": "/healthz", "timeout": 600}]')
    with pytest.raises(SettingsError) as info:
        load_settings(promote_checks_file=str(path))
    assert f"invalid BGPROXY_PROMOTE_CHECKS_FILE (--promote-checks-file): {path}: entry [0], field 'timeout'" in str(
        info.value
    )
    assert load_settings(promote_checks="").promote_checks == ()  # empty: none


# --- the admin token ------------------------------------------------------------------------------------------------


def test_token_file_is_read_and_stripped_and_never_shown(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"{SECRET}\n")
    s = load_settings(admin_token_file=str(path), admin_listen="0.0.0.0:9090")
    assert s.admin_token is not None and s.admin_token.get_secret_value() == SECRET
    assert SECRET not in repr(s) and SECRET not in str(s)


def test_empty_token_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("\n")
    with pytest.raises(SettingsError, match=r"BGPROXY_ADMIN_TOKEN_FILE.*empty"):
        load_settings(admin_token_file=str(path))


async def test_token_is_not_echoed_when_the_token_file_is_bad_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BGPROXY_ADMIN_TOKEN", SECRET)
    argv = ["serve", "--blue", BLUE, "--green", GREEN, "--admin-token-file", "/nonexistent"]
    code = await asyncio.wait_for(asyncio.to_thread(cli.main, argv), TIMEOUT)
    assert code == 2
    assert SECRET not in capsys.readouterr().err


async def test_token_from_file_protects_a_real_server(tmp_path: Path, upstreams: dict[str, Upstream]) -> None:
    """`bgproxy serve` with BGPROXY_ADMIN_TOKEN_FILE: the file's token is required; a flag beats a bad env var."""
    token_file = tmp_path / "token"
    token_file.write_text(f"  {SECRET}\n")
    port, admin_port = free_port(), free_port()
    env = clean_env(
        BGPROXY_ADMIN_TOKEN_FILE=str(token_file),
        BGPROXY_STATE_BACKEND="memory",
        BGPROXY_DRAIN_GRACE="0",
        BGPROXY_LISTEN="not-an-address",  # overridden by --listen below
        BGPROXY_LOG_LEVEL="debug",
    )
    args = serve_args(upstreams, port, admin_port)
    base = f"http://127.0.0.1:{admin_port}"
    async with serve_process(tmp_path, args, env) as proc:
        await proc.wait_ready(admin_port)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
            async with s.post(f"{base}/switch", json={"to": "green"}) as r:
                assert r.status == 401
            async with s.post(f"{base}/switch", json={"to": "green"}, headers={"Authorization": "Bearer nope"}) as r:
                assert r.status == 401
            async with s.get(f"{base}/state") as r:
                assert (await r.json())["active"] == "blue"
            auth = {"Authorization": f"Bearer {SECRET}"}
            async with s.post(f"{base}/switch", json={"to": "green"}, headers=auth) as r:
                assert r.status == 200
                assert (await r.json())["active"] == "green"
            async with s.get(f"http://127.0.0.1:{port}/") as r:
                assert (r.status, r.headers["X-Bg-Color"], await r.text()) == (200, "green", "green\n")
        assert await proc.stop() == 0
    stderr = proc.stderr
    assert SECRET not in stderr  # not even at debug level
    events = [json.loads(line)["event"] for line in stderr.splitlines() if line.startswith("{")]
    assert "listening" in events and "switch" in events
