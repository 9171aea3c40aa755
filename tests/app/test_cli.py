"""The command line: `bgproxy status | switch | promote | rollback` against a running proxy, and `bgproxy demo`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bgproxy import cli
from bgproxy.app import Bgproxy
from tests.support.processes import PROC_TIMEOUT, ServeProcess, clean_env
from tests.support.servers import TIMEOUT, StartProxy, free_port

TOKEN = "cli-test-token-9d2e"


@pytest.fixture(autouse=True)
def no_bgproxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("BGPROXY_"):
            monkeypatch.delenv(key)


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """cli.main in a worker thread (it uses blocking urllib) while this loop serves the proxy."""
    code = await asyncio.wait_for(asyncio.to_thread(cli.main, list(argv)), TIMEOUT)
    out, err = capsys.readouterr()
    return code, out, err


def admin_url(app: Bgproxy) -> str:
    return f"http://127.0.0.1:{app.admin_port}"


async def state_of(app: Bgproxy) -> dict[str, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        async with s.get(f"{admin_url(app)}/state") as r:
            assert r.status == 200
            body: dict[str, Any] = await r.json()
            return body


async def served_by(app: Bgproxy) -> str:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        async with s.get(f"http://127.0.0.1:{app.port}/") as r:
            assert r.status == 200
            color = r.headers["X-Bg-Color"]
            assert await r.text() == f"{color}\n"
            return color


# --- status / switch / promote / rollback (in-process main, real HTTP) ----------------------------------------------


async def test_status_prints_the_state(proxy: Bgproxy, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run_cli(capsys, "status", "--admin-url", admin_url(proxy))
    assert (code, err) == (0, "")
    assert json.loads(out) == await state_of(proxy)


async def test_switch_promote_rollback(proxy: Bgproxy, capsys: pytest.CaptureFixture[str]) -> None:
    url = admin_url(proxy)
    code, out, err = await run_cli(capsys, "switch", "green", "--reason", "x", "--admin-url", url)
    assert (code, err) == (0, "")
    printed = json.loads(out)
    assert (printed["active"], printed["reason"], printed["source"], printed["revision"]) == ("green", "x", "admin", 1)
    assert await served_by(proxy) == "green"

    code, out, _ = await run_cli(capsys, "promote", "--reason", "back", "--admin-url", url)
    assert code == 0
    assert (json.loads(out)["active"], json.loads(out)["reason"]) == ("blue", "back")
    assert await served_by(proxy) == "blue"

    code, out, _ = await run_cli(capsys, "rollback", "--admin-url", url)
    assert code == 0
    assert (json.loads(out)["active"], json.loads(out)["revision"]) == ("green", 3)
    assert await served_by(proxy) == "green"
    later, printed = await state_of(proxy), json.loads(out)
    del later["backends"], printed["backends"]  # their live figures moved on with the request just served
    assert later == printed


async def test_admin_url_from_the_environment(
    proxy: Bgproxy, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGPROXY_ADMIN_URL", admin_url(proxy) + "/")  # a trailing slash is fine
    code, out, _ = await run_cli(capsys, "promote")
    assert code == 0 and json.loads(out)["active"] == "green"


async def test_switch_to_an_unknown_colour_fails_with_the_servers_message(
    proxy: Bgproxy, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run_cli(capsys, "switch", "red", "--admin-url", admin_url(proxy))
    assert code == 1
    assert out == ""
    assert "400" in err and "unknown colour 'red'" in err and "expected 'blue' or 'green'" in err
    assert (await state_of(proxy))["active"] == "blue"


async def test_rollback_with_nothing_to_roll_back_fails(proxy: Bgproxy, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run_cli(capsys, "rollback", "--admin-url", admin_url(proxy))
    assert (code, out) == (1, "")
    assert "409" in err and "nothing to roll back" in err


async def test_token(
    start_proxy: StartProxy, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = await start_proxy(admin_token=TOKEN)
    url = admin_url(app)

    code, out, err = await run_cli(capsys, "switch", "green", "--admin-url", url)
    assert (code, out) == (1, "")
    assert "401" in err and "bearer token" in err

    code, out, err = await run_cli(capsys, "switch", "green", "--admin-url", url, "--token", "not-the-token-zq")
    assert (code, out) == (1, "")
    assert "401" in err and "not-the-token-zq" not in err
    assert (await state_of(app))["active"] == "blue"

    code, out, err = await run_cli(capsys, "switch", "green", "--admin-url", url, "--token", TOKEN)
    assert (code, err) == (0, "")
    assert json.loads(out)["active"] == "green"

    monkeypatch.setenv("BGPROXY_ADMIN_TOKEN", TOKEN)
    code, out, err = await run_cli(capsys, "rollback", "--admin-url", url)
    assert (code, err) == (0, "")
    assert json.loads(out)["active"] == "blue"

    # status needs no token
    monkeypatch.delenv("BGPROXY_ADMIN_TOKEN")
    code, out, _ = await run_cli(capsys, "status", "--admin-url", url)
    assert code == 0 and json.loads(out)["revision"] == 2
    assert TOKEN not in capsys.readouterr().err


async def test_unreachable_admin_api_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code, out, err = await run_cli(capsys, "status", "--admin-url", url)
    assert (code, out) == (2, "")  # nothing was done: 2, as for a bad setting (1 is the API refusing the call)
    assert f"cannot reach the admin API at {url}" in err


async def test_the_real_process(proxy: Bgproxy, tmp_path: Path) -> None:
    """`python -m bgproxy ...` as its own process: exit status and output as a shell script sees them."""
    url = admin_url(proxy)

    async def run(*argv: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bgproxy",
            *argv,
            env=clean_env(),
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), PROC_TIMEOUT)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    ok, bad, unreachable = await asyncio.gather(
        run("switch", "green", "--reason", "from a script", "--admin-url", url),
        run("switch", "red", "--admin-url", url),
        run("status", "--admin-url", f"http://127.0.0.1:{free_port()}"),
    )
    assert ok[0] == 0, ok
    assert (json.loads(ok[1])["active"], json.loads(ok[1])["reason"]) == ("green", "from a script")
    assert bad[:2] == (1, "") and "unknown colour 'red'" in bad[2]
    assert unreachable[:2] == (2, "") and "cannot reach the admin API" in unreachable[2]
    assert await served_by(proxy) == "green"


# --- bgproxy demo ---------------------------------------------------------------------------------------------------


async def test_demo(tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    p, a = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    demo = ServeProcess(
        tmp_path, ["demo", "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin_port}"], clean_env()
    )
    await demo.start(stdout=asyncio.subprocess.PIPE)
    try:
        assert demo.proc is not None and demo.proc.stdout is not None
        banner = ""
        while "Ctrl-C to stop" not in banner:
            line = await asyncio.wait_for(demo.proc.stdout.readline(), PROC_TIMEOUT)
            assert line, f"demo ended before printing its banner:\n{banner}\n{demo.stderr}"
            banner += line.decode()
        # the curl commands to try, with the real addresses
        assert f"curl {p}/" in banner
        assert f"curl -H 'X-Preview: 1' {p}/" in banner
        assert f"curl --cookie 'bg-preview=green' {p}/" in banner
        assert re.search(rf"curl -X POST -d '\{{\"to\": \"green\"\}}' {re.escape(a)}/switch", banner), banner
        assert f"curl -X POST {a}/rollback" in banner
        await demo.wait_ready(admin_port)

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:

            async def get(**kw: Any) -> tuple[int, str, str]:
                async with s.get(f"{p}/", **kw) as r:
                    return r.status, r.headers.get("X-Bg-Color", ""), await r.text()

            assert await get() == (200, "blue", "hello from blue (GET /)\n")
            assert await get(headers={"X-Preview": "1"}) == (200, "green", "hello from green (GET /)\n")
            assert (await get(headers={"Cookie": "bg-preview=green"}))[1] == "green"
            async with s.post(f"{a}/switch", json={"to": "green"}) as r:  # the demo needs no token
                assert r.status == 200
            assert await get() == (200, "green", "hello from green (GET /)\n")
            async with s.post(f"{a}/rollback") as r:
                assert r.status == 200
            assert (await get())[1] == "blue"

        assert await demo.stop(signal.SIGINT) == 0
        await asyncio.wait_for(demo.proc.stdout.read(), PROC_TIMEOUT)
    finally:
        await demo.kill()
