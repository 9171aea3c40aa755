"""The command line: `bgproxy status | switch | promote | rollback` against a running proxy, and `bgproxy demo`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bgproxy import cli, cli_status
from bgproxy.app import Bgproxy
from tests.support.health import HealthApp
from tests.support.processes import PROC_TIMEOUT, ServeProcess, clean_env
from tests.support.servers import TIMEOUT, StartProxy, Upstream, free_port

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


# --- status: the summary, --json, --watch --------------------------------------------------------------------------

FOOTER = "REQ/S, 5XX and P99: this replica, over its analysis window"  # the last line of a summary


async def test_status_prints_a_summary_of_the_live_state(proxy: Bgproxy, capsys: pytest.CaptureFixture[str]) -> None:
    url = ("--admin-url", admin_url(proxy))
    for _ in range(5):
        assert await served_by(proxy) == "blue"
    code, _, _ = await run_cli(
        capsys, "promote", "--steps", "10,50", "--interval", "60", "--reason", "v43 canary", *url
    )
    assert code == 0

    code, out, err = await run_cli(capsys, "status", *url)
    assert (code, err) == (0, "")
    assert "\x1b" not in out  # not a terminal: no colours
    lines = out.splitlines()
    assert lines[:4] == [
        "Active        blue (standby: green)",
        "Traffic       blue 90%, green 10%",
        "Promotion     step 1 of 2: [10%] -> 50%",
        lines[3],
    ]
    assert re.fullmatch(r" {14}next: 50% in (59|60)s \(\d\d:\d\d:\d\d UTC\)", lines[3]), lines[3]
    assert re.fullmatch(
        r"Last change   revision 1 by admin, [0-9]s ago \(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)", lines[5]
    )
    assert lines[6] == '              "v43 canary"'
    blue = next(line for line in lines if line.startswith("blue "))
    figures = re.fullmatch(r"blue +active +90% +healthy +0 +(\d+\.\d) +0\.0% +[\d.]+ms +-", blue)
    assert figures is not None and float(figures[1]) > 0, blue  # the five requests just served
    assert re.fullmatch(r"green +standby +10% +healthy +0 +0\.0 +- +- +-", lines[-2]), lines[-2]
    assert lines[-1] == FOOTER


async def test_status_of_something_else_than_bgproxy_exits_2(
    upstreams: dict[str, Upstream], capsys: pytest.CaptureFixture[str]
) -> None:
    """An admin URL that answers JSON, but not bgproxy's /state: one line that says so, and --json to see it."""
    upstreams["blue"].answers["state"] = (200, '{"status": "ok"}', 0.0)
    url = f"{upstreams['blue'].url}/ctl"  # its /ctl/state answers what the test set
    code, out, err = await run_cli(capsys, "status", "--admin-url", url)
    assert (code, out) == (2, "")
    assert err == (
        f"bgproxy: {url} answered /state with something bgproxy status cannot read (another program, or an "
        "incompatible bgproxy); bgproxy status --json prints it\n"
    )
    code, out, err = await run_cli(capsys, "status", "--json", "--admin-url", url)
    assert (code, json.loads(out), err) == (0, {"status": "ok"}, "")
    # --watch ends the same way: trying again cannot help
    code, out, err = await run_cli(capsys, "status", "--watch", "--admin-url", url)
    assert (code, err.count("\n")) == (2, 1) and "cannot read" in err


class Watch:
    """`python -m bgproxy status --watch ...` as its own process, its output read as it comes: through a pipe, or
    through a pseudo-terminal (`tty=True`) as an operator's terminal shows it."""

    def __init__(self, tmp_path: Path, *argv: str, tty: bool = False, **env: str) -> None:
        self.tmp_path, self.argv, self.tty, self.env = tmp_path, argv, tty, env
        self.out = ""
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr_path = tmp_path / f"watch-stderr-{time.monotonic_ns()}.txt"

    async def __aenter__(self) -> Watch:
        loop = asyncio.get_running_loop()
        self.reader = asyncio.StreamReader()
        if self.tty:
            leader, follower = pty.openpty()
            stdout: int = follower
        else:
            stdout = asyncio.subprocess.PIPE
        with self.stderr_path.open("wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bgproxy", "status", "--watch", *self.argv,
                env=clean_env(**self.env), cwd=self.tmp_path, stdout=stdout, stderr=err,
            )  # fmt: skip
        if self.tty:
            os.close(follower)
            pipe = os.fdopen(leader, "rb", buffering=0)
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(self.reader), pipe)
        else:
            assert self.proc.stdout is not None
            self.reader = self.proc.stdout
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:  # only when a failed test left it running
            self.proc.kill()
            await self.proc.wait()

    async def until(self, done: Callable[[str], bool], what: str) -> str:
        """Read until `done(output so far)`; a bounded wait that fails with what was seen."""
        end = time.monotonic() + PROC_TIMEOUT
        while not done(self.out):
            left = end - time.monotonic()
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), max(left, 0.01))
            except TimeoutError:
                chunk = None
            except OSError:  # a pseudo-terminal whose process has ended: EIO
                chunk = b""
            if not chunk:
                pytest.fail(f"no {what} within {PROC_TIMEOUT}s (or the watch ended):\n{self.out}\n{self.stderr}")
            self.out += chunk.decode().replace("\r\n", "\n")  # a terminal sends each newline as \r\n
        return self.out

    async def interrupt(self) -> int:
        """Ctrl-C, as a terminal sends it; the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(self.proc.wait(), PROC_TIMEOUT)
        with contextlib.suppress(OSError, TimeoutError):  # the rest of its output, if any
            self.out += (await asyncio.wait_for(self.reader.read(), TIMEOUT)).decode().replace("\r\n", "\n")
        return code

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


async def post(app: Bgproxy, path: str, body: dict[str, Any]) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        async with s.post(f"{admin_url(app)}{path}", json=body) as r:
            assert r.status == 200, await r.text()


async def test_watch_redraws_every_second_and_shows_a_flip_made_meanwhile(proxy: Bgproxy, tmp_path: Path) -> None:
    """Not a terminal (a pipe, a CI log): frames one after another with a separator, no escape codes; Ctrl-C ends
    it with 0."""
    started = time.monotonic()
    async with Watch(tmp_path, "--admin-url", admin_url(proxy)) as watch:
        await watch.until(lambda out: out.count(FOOTER) >= 1, "first frame")  # (two, after a stall)
        await post(proxy, "/switch", {"to": "green", "reason": "while watched"})
        read_before_flip = watch.out.count(FOOTER)
        await watch.until(lambda out: "Active        green" in out and out.endswith(FOOTER + "\n"), "the flip")
        assert await watch.interrupt() == 0, watch.stderr
    elapsed = time.monotonic() - started
    frames = watch.out.split(f"{cli_status.SEPARATOR}\n")
    assert len(frames) >= 2 and all(frame.rstrip().endswith(FOOTER) for frame in frames), watch.out
    assert len(frames) <= elapsed / 1.0 + 2, (len(frames), elapsed)  # once a second, not a busy loop
    header = re.compile(rf"{re.escape(admin_url(proxy))}  \d\d:\d\d:\d\d UTC  \(every 1s; Ctrl-C to stop\)\n\n")
    assert all(header.match(frame) for frame in frames), watch.out
    assert "Active        blue (standby: green)" in frames[0]
    # the next look after the switch shows it (or the one after, when a frame was on its way as the switch landed),
    # with who made it and why
    flipped = next(i for i, frame in enumerate(frames) if "Active        green (standby: blue)" in frame)
    assert flipped <= read_before_flip + 1, (flipped, read_before_flip, watch.out)
    assert '"while watched"' in frames[flipped], frames[flipped]
    assert re.search(r"Last change   revision 1 by admin, \ds ago", frames[flipped]), frames[flipped]
    assert "\x1b" not in watch.out and watch.stderr == ""


@pytest.mark.parametrize("no_color", ["", "1"], ids=["colours", "NO_COLOR"])
async def test_watch_on_a_terminal_redraws_in_place(proxy: Bgproxy, tmp_path: Path, no_color: str) -> None:
    """On a terminal: the screen cleared once, then each frame drawn over the last (no scrolling, no flicker), in
    colour unless NO_COLOR is set."""
    env = {"TERM": "xterm-256color", "NO_COLOR": no_color}
    async with Watch(tmp_path, "--admin-url", admin_url(proxy), "--interval", "0.3", tty=True, **env) as watch:
        await watch.until(lambda out: out.count(FOOTER) >= 2, "two frames")
        assert await watch.interrupt() == 0, watch.stderr
    out = watch.out
    assert out.startswith("\x1b[2J\x1b[H") and out.count("\x1b[2J") == 1, repr(out[:200])
    assert out.count("\x1b[H") >= 2 and cli_status.SEPARATOR not in out
    coloured = "Active        \x1b[1;34mblue\x1b[0m (standby: \x1b[32mgreen\x1b[0m)\x1b[K\n" in out
    plain = "Active        blue (standby: green)\x1b[K\n" in out
    assert (coloured, plain) == ((True, False) if not no_color else (False, True)), repr(out[:400])


async def test_watch_shows_unreachable_and_comes_back_with_the_proxy(start_proxy: StartProxy, tmp_path: Path) -> None:
    """An operator keeps the watch open through a restart of bgproxy: it says UNREACHABLE, and goes on by itself."""
    port = free_port()  # nothing listens there yet
    url = f"http://127.0.0.1:{port}"
    async with Watch(tmp_path, "--admin-url", url, "--interval", "0.2") as watch:
        out = await watch.until(lambda out: "UNREACHABLE" in out and "retrying" in out, "an unreachable frame")
        assert re.search(rf"UNREACHABLE for \ds: cannot reach the admin API at {re.escape(url)}: .*refused", out), out
        assert "retrying every 0.2s" in out
        await start_proxy(admin_listen=f"127.0.0.1:{port}")
        await watch.until(lambda out: FOOTER in out, "a frame once the admin API is back")
        assert await watch.interrupt() == 0, watch.stderr
    assert "Active        blue (standby: green)" in watch.out.split("UNREACHABLE")[-1]


async def test_watch_json_prints_one_state_per_line(
    proxy: Bgproxy, upstreams: dict[str, Upstream], tmp_path: Path
) -> None:
    """--watch --json: JSON lines for a script; an admin API that answers 5xx is said once on stderr, and tried
    again."""
    up = upstreams["blue"]
    up.answers["state"] = (503, "restarting", 0.0)
    url = f"{up.url}/ctl"
    async with Watch(tmp_path, "--json", "--admin-url", url, "--interval", "0.2") as watch:
        deadline = time.monotonic() + PROC_TIMEOUT
        while "503" not in watch.stderr:  # a bounded poll of a file another process writes
            assert time.monotonic() < deadline, watch.stderr
            await asyncio.sleep(0.05)
        assert watch.out == ""
        real = await state_of(proxy)
        up.answers["state"] = (200, json.dumps(real), 0.0)
        await watch.until(lambda out: out.count("\n") >= 2, "two JSON lines")
        assert await watch.interrupt() == 0
    lines = watch.out.splitlines()
    assert all(json.loads(line) == real for line in lines), lines
    assert watch.stderr == "bgproxy: GET /state failed (503): Service Unavailable; trying again every 0.2s\n"


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
        (("status", "--interval", "2"), "--interval goes with --watch"),
        (("status", "--watch", "--interval", "0.01"), "argument --interval: expected at least 0.1 seconds, got '0.01'"),
        (("status", "--watch", "--interval", "inf"), "argument --interval: expected a number of seconds, got 'inf'"),
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
