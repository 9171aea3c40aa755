"""The command line: `bgproxy status | switch | promote | rollback` against a running proxy, and `bgproxy demo`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bgproxy import cli
from bgproxy.app import Bgproxy
from tests.support.health import HealthApp
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


async def test_status_json_prints_the_state_as_before(proxy: Bgproxy, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run_cli(capsys, "status", "--json", "--admin-url", admin_url(proxy))
    assert (code, err) == (0, "")
    state = await state_of(proxy)  # no traffic: the live figures hold still between the two reads
    assert out == json.dumps(state, indent=2) + "\n"  # byte for byte what `status` printed before the summary


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


async def test_release_records_the_release_on_the_standby_colour(
    proxy: Bgproxy, capsys: pytest.CaptureFixture[str]
) -> None:
    url = admin_url(proxy)
    code, out, err = await run_cli(capsys, "release", "v43", "--reason", "image 1.43.0", "--admin-url", url)
    assert (code, err) == (0, "")
    printed = json.loads(out)
    assert (printed["release"], printed["release_pending"], printed["reason"]) == ("v43", True, "image 1.43.0")
    assert (printed["active"], printed["weight"]) == ("blue", 0) and await served_by(proxy) == "blue"
    code, out, err = await run_cli(capsys, "release", "v 44", "--admin-url", url)
    assert (code, out) == (1, "")
    assert "400" in err and "'release': expected a label such as v43" in err


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
    code, out, _ = await run_cli(capsys, "status", "--json", "--admin-url", url)
    assert code == 0 and json.loads(out)["revision"] == 2
    assert TOKEN not in capsys.readouterr().err


async def test_unreachable_admin_api_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code, out, err = await run_cli(capsys, "status", "--admin-url", url)
    assert (code, out) == (2, "")  # nothing was done: 2, as for a bad setting (1 is the API refusing the call)
    assert err.startswith(f"bgproxy: cannot reach the admin API at {url}") and err.count("\n") == 1  # one line


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


# --- gradual releases: shift, stepped promote, pause, resume, abort --------------------------------------------------


async def history_of(app: Bgproxy) -> list[dict[str, Any]]:
    """The history, oldest first."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        async with s.get(f"{admin_url(app)}/history") as r:
            assert r.status == 200
            return list(reversed((await r.json())["history"]))


async def test_shift_stepped_promote_pause_resume_abort(proxy: Bgproxy, capsys: pytest.CaptureFixture[str]) -> None:
    url = ("--admin-url", admin_url(proxy))
    code, out, err = await run_cli(capsys, "shift", "20", "--reason", "canary", *url)
    assert (code, err) == (0, "")
    assert (json.loads(out)["weight"], json.loads(out)["reason"]) == (20, "canary")
    assert json.loads(out) == await state_of(proxy)

    code, out, err = await run_cli(capsys, "promote", "--steps", "10,50,100", "--interval", "60", *url)
    assert (code, err) == (0, "")
    printed = json.loads(out)
    assert (printed["weight"], printed["active"]) == (10, "blue")
    assert printed["rollout"] | {"step_started_at": 0} == {
        "steps": [10, 50, 100],
        "interval": 60.0,
        "step": 0,
        "step_started_at": 0,
        "paused": False,
    }

    code, out, _ = await run_cli(capsys, "pause", "--reason", "dashboards", *url)
    assert code == 0 and json.loads(out)["rollout"]["paused"] is True
    code, out, _ = await run_cli(capsys, "resume", *url)
    assert code == 0 and json.loads(out)["rollout"]["paused"] is False
    code, out, _ = await run_cli(capsys, "abort", "--reason", "errors", *url)
    assert code == 0
    assert {k: json.loads(out)[k] for k in ("active", "weight", "rollout", "reason")} == {
        "active": "blue",
        "weight": 0,
        "rollout": None,
        "reason": "errors",
    }
    assert [(h["event"], h["weight"]) for h in await history_of(proxy)] == [
        ("shift", 20),
        ("step", 10),
        ("paused", 10),
        ("resumed", 10),
        ("aborted", 0),
    ]
    # a stepped promotion without --interval holds each step the default 60 s
    code, out, _ = await run_cli(capsys, "promote", "--steps", "25", *url)
    assert code == 0 and json.loads(out)["rollout"]["interval"] == 60.0


async def test_rollback_during_a_shift_acts_as_abort(proxy: Bgproxy, capsys: pytest.CaptureFixture[str]) -> None:
    url = ("--admin-url", admin_url(proxy))
    assert (await run_cli(capsys, "shift", "30", *url))[0] == 0
    code, out, err = await run_cli(capsys, "rollback", "--reason", "5xx on green", *url)
    assert (code, err) == (0, "")
    assert (json.loads(out)["active"], json.loads(out)["weight"]) == ("blue", 0)
    assert [h["event"] for h in await history_of(proxy)] == ["shift", "aborted"]
    assert await served_by(proxy) == "blue"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("shift", "abc"), "argument WEIGHT: expected a whole number 0-100, got 'abc'"),
        (("shift", "20.5"), "expected a whole number 0-100, got '20.5'"),
        (("shift",), "the following arguments are required: WEIGHT"),
        (("promote", "--steps", "10,x"), "expected comma-separated weights such as 10,50,100, got '10,x'"),
        (("promote", "--steps", ""), "expected comma-separated weights"),
        (("promote", "--steps", "10,50", "--interval", "soon"), "argument --interval: invalid float value: 'soon'"),
        (("pause", "--force"), "unrecognized arguments: --force"),
    ],
)
def test_input_the_cli_cannot_read_exits_2_before_calling(
    argv: tuple[str, ...], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: the call is never made
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--admin-url", url])
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and says in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("shift", "150"), "(400): 'weight' must be at most 100, got 150"),
        (("shift", "-5"), "(400): 'weight' must be at least 0, got -5"),
        (("promote", "--steps", "50,10"), "(400): 'steps' must rise strictly, got [50, 10]"),
        (("promote", "--steps", "0,50"), "(400): 'steps[0]' must be at least 1, got 0"),
        (("promote", "--steps", "10", "--interval", "0"), "(400): 'interval' must be at least 1"),
        (("promote", "--steps", "10", "--interval", "90000"), "(400): 'interval' must be at most 86400"),
        (("promote", "--interval", "60"), "(400): 'interval' goes with 'steps'"),  # not an instant promote
        (("pause",), "(409): nothing to pause"),
        (("resume",), "(409): nothing to resume"),
        (("abort",), "(409): nothing to abort"),
    ],
)
async def test_a_refused_release_call_exits_1_with_the_servers_message(
    proxy: Bgproxy, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], says: str
) -> None:
    before = await state_of(proxy)
    code, out, err = await run_cli(capsys, *argv, "--admin-url", admin_url(proxy))
    assert (code, out) == (1, "")
    status, _, message = says.partition(": ")
    assert err.startswith(f"bgproxy: POST /{argv[0]} failed {status}: ") and message in err, err
    assert await state_of(proxy) == before


async def test_force_takes_a_shift_or_stepped_promotion_to_a_standby_that_is_down(
    start_proxy: StartProxy, capsys: pytest.CaptureFixture[str], colors: dict[str, HealthApp]
) -> None:
    app = await start_proxy(
        blue_url=colors["blue"].url,
        green_url=colors["green"].url,
        health_path="/healthz",
        health_interval="0.05",
        health_unhealthy_threshold="2",
    )
    url = ("--admin-url", admin_url(app))
    colors["green"].status = 503
    end = time.monotonic() + TIMEOUT
    while (await state_of(app))["backends"]["green"]["healthy"]:
        assert time.monotonic() < end, "green not down in time"
        await asyncio.sleep(0.02)  # bounded poll

    for argv in (("shift", "20"), ("promote", "--steps", "10,50")):
        code, out, err = await run_cli(capsys, *argv, *url)
        assert (code, out) == (1, "")
        assert "(409): green is failing its health checks" in err
    code, out, err = await run_cli(capsys, "shift", "20", "--force", *url)
    assert (code, err) == (0, "")
    assert (json.loads(out)["weight"], json.loads(out)["forced"]) == (20, True)
    code, out, err = await run_cli(capsys, "promote", "--steps", "30,60", "--interval", "600", "--force", *url)
    assert (code, err) == (0, "")
    assert (json.loads(out)["weight"], json.loads(out)["forced"]) == (30, True)
    assert [(h["event"], h["forced"]) for h in await history_of(app)] == [("shift", True), ("step", True)]
