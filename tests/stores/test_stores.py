"""State stores: the file store survives a restart, writes atomically and refuses a corrupt file; memory forgets.

The restart and corrupt-file cases run the real `bgproxy serve` as a subprocess; the rest run in-process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bgproxy.app import Bgproxy
from bgproxy.core.analysis import Breach, roll_back
from bgproxy.core.model import Color, State, initial_state
from bgproxy.settings import load_settings
from bgproxy.stores import StoreConflict, StoreError
from bgproxy.stores.file import FileStore
from tests.support.admin import NOT_STORED
from tests.support.processes import (
    PROC_TIMEOUT,
    assert_flips_refused,
    clean_env,
    file_store_app,
    http,
    serve_args,
    serve_process,
    served_by,
)
from tests.support.servers import TIMEOUT, StartProxy, Upstream, free_port


def read_state_file(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def leftovers(directory: Path, keep: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != keep and not p.name.startswith("stderr-"))


# --- the file store across a restart (real subprocesses) -----------------------------------------------------------


async def test_restart_keeps_the_colour(tmp_path: Path, upstreams: dict[str, Upstream]) -> None:
    state_file = tmp_path / "state.json"
    env = clean_env(BGPROXY_STATE_FILE=str(state_file), BGPROXY_DRAIN_GRACE="0", BGPROXY_STATE_BACKEND="file")
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        port, admin_port = free_port(), free_port()
        async with serve_process(tmp_path, serve_args(upstreams, port, admin_port), env) as first:
            await first.wait_ready(admin_port)
            assert read_state_file(state_file)["active"] == "blue"  # the initial state is stored at start
            assert await served_by(s, port) == "blue"
            status, _, body = await http(
                s, "POST", f"http://127.0.0.1:{admin_port}/switch", json={"to": "green", "reason": "release 7"}
            )
            assert status == 200, body
            stored = read_state_file(state_file)
            assert (stored["active"], stored["previous"], stored["revision"]) == ("green", "blue", 1)
            assert stored["reason"] == "release 7"
            assert leftovers(tmp_path, "state.json") == []
            assert await served_by(s, port) == "green"
            assert await first.stop(signal.SIGTERM) == 0  # drains and exits cleanly

        port, admin_port = free_port(), free_port()
        async with serve_process(tmp_path, serve_args(upstreams, port, admin_port), env) as second:
            await second.wait_ready(admin_port)
            status, _, body = await http(s, "GET", f"http://127.0.0.1:{admin_port}/state")
            assert status == 200
            state = json.loads(body)
            assert (state["active"], state["previous"], state["revision"]) == ("green", "blue", 1)
            assert state["reason"] == "release 7"
            assert await served_by(s, port) == "green"
            # and rollback still knows where to go back to after the restart
            status, _, body = await http(s, "POST", f"http://127.0.0.1:{admin_port}/rollback")
            assert status == 200 and json.loads(body)["active"] == "blue"
            assert await served_by(s, port) == "blue"
            assert await second.stop(signal.SIGTERM) == 0
    assert read_state_file(state_file)["active"] == "blue"


STEP_INTERVAL = 3  # seconds: longer than a restart usually takes here, so the stored step is seen being served


async def sticky_colour(session: aiohttp.ClientSession, port: int, bucket: int) -> str:
    async with session.get(f"http://127.0.0.1:{port}/", headers={"Cookie": f"bg-sticky={bucket}"}) as resp:
        assert resp.status == 200
        return resp.headers["X-Bg-Color"]


@pytest.mark.slow
async def test_a_stepped_promotion_survives_a_kill_9_with_the_file_store(
    tmp_path: Path, upstreams: dict[str, Upstream]
) -> None:
    """SIGKILL mid-rollout, start again: the plan goes on from the stored step on the stored clock, no step taken
    twice, and until the next step is due the restarted proxy serves the stored step's weight."""
    state_file = tmp_path / "state.json"
    env = clean_env(BGPROXY_STATE_FILE=str(state_file), BGPROXY_DRAIN_GRACE="0", BGPROXY_STATE_BACKEND="file")
    port, admin_port = free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        async with serve_process(tmp_path, serve_args(upstreams, port, admin_port), env) as first:
            await first.wait_ready(admin_port)
            plan = {"steps": [20, 50], "interval": STEP_INTERVAL, "reason": "release 8"}
            status, _, body = await http(s, "POST", f"{admin}/promote", json=plan)
            assert status == 200, body
            await first.kill()  # SIGKILL: no drain, no last write
        stored = read_state_file(state_file)
        assert (stored["weight"], stored["rollout"]["step"], stored["rollout"]["steps"]) == (20, 0, [20, 50])
        due = stored["rollout"]["step_started_at"] + STEP_INTERVAL

        async with serve_process(tmp_path, serve_args(upstreams, port, admin_port), env) as second:
            await second.wait_ready(admin_port)
            ready_at = time.time()
            _, _, body = await http(s, "GET", f"{admin}/state")
            state = json.loads(body)
            if time.time() < due - 0.5:  # the usual case: the stored step, served as it was
                assert (state["revision"], state["weight"], state["rollout"]) == (
                    stored["revision"], 20, stored["rollout"]
                )  # fmt: skip
            assert state["revision"] in (stored["revision"], stored["revision"] + 1), state  # never a step skipped
            while True:  # the data plane splits at the weight /state shows (unless a step lands between: again)
                weight = state["weight"]
                splits = [await sticky_colour(s, port, bucket) for bucket in (weight - 1, weight)]
                _, _, body = await http(s, "GET", f"{admin}/state")
                if json.loads(body)["revision"] == state["revision"]:
                    break
                state = json.loads(body)
            assert splits == ["green", "blue"], (weight, splits)

            end = time.monotonic() + STEP_INTERVAL * 2 + TIMEOUT
            while json.loads(body)["rollout"] is not None:  # bounded poll until the plan completes
                assert time.monotonic() < end, body
                await asyncio.sleep(0.05)
                _, _, body = await http(s, "GET", f"{admin}/state")
            _, _, history = await http(s, "GET", f"{admin}/history")
            got = list(reversed(json.loads(history)["history"]))
            assert [(e["revision"], e["event"], e["weight"]) for e in got] == [
                (stored["revision"] + 1, "step", 50),
                (stored["revision"] + 2, "promoted", 0),
            ]
            # On the stored clock: the step when it was due (or at once, if it fell due while the proxy was down),
            # not a full interval after the restart; the promote a full interval after the step.
            assert due <= got[0]["when"] <= max(due, ready_at) + 1.0, (due, ready_at, got[0])
            assert got[1]["when"] - got[0]["when"] >= STEP_INTERVAL
            final = read_state_file(state_file)
            assert (final["active"], final["weight"], final["rollout"], final["source"]) == (
                "green",
                0,
                None,
                "rollout",
            )
            assert await sticky_colour(s, port, 0) == "green"
            assert await second.stop(signal.SIGTERM) == 0


async def test_memory_store_forgets_a_stepped_promotion_on_restart(
    upstreams: dict[str, Upstream], start_proxy: StartProxy
) -> None:
    """What the memory store means for a rollout: a restart starts over from BGPROXY_INITIAL_ACTIVE at weight 0."""
    app = await start_proxy(state_backend="memory")
    admin = f"http://127.0.0.1:{app.admin_port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        status, _, body = await http(s, "POST", f"{admin}/promote", json={"steps": [20, 50], "interval": 60})
        assert status == 200 and json.loads(body)["weight"] == 20, body
        await app.stop()
        again = await start_proxy(state_backend="memory")
        _, _, body = await http(s, "GET", f"http://127.0.0.1:{again.admin_port}/state")
        state = json.loads(body)
        assert (state["active"], state["weight"], state["rollout"], state["revision"]) == ("blue", 0, None, 0)
        assert await sticky_colour(s, again.port, 0) == "blue"


@pytest.mark.parametrize("clear", ["release", "switch"])
async def test_a_hold_survives_a_restart_with_the_file_store_until_a_new_release_or_a_flip(
    tmp_path: Path, start_proxy: StartProxy, clear: str
) -> None:
    """The hold is part of the state, so the file store keeps it as the ConfigMap does: a restart serves the held
    colour, not what was refused; a new release (or an admin flip) clears it."""
    canary = State(Color.BLUE, Color.GREEN, 5, 1.0, "admin", "canary", weight=20, release="v43")
    held = roll_back(canary, Breach(Color.GREEN, "error_rate", "green: 5xx share 40.0%"), now=2.0)
    path = tmp_path / "state.json"
    path.write_text(json.dumps(held.to_dict()))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        for _ in range(2):  # start, and start again
            app = await start_proxy(state_backend="file", state_file=str(path))
            admin = f"http://127.0.0.1:{app.admin_port}"
            _, _, body = await http(s, "GET", f"{admin}/state")
            state = json.loads(body)
            assert (state["weight"], state["source"], state["hold"]) == (0, "analysis", held.hold.to_dict())
            assert await sticky_colour(s, app.port, 0) == "blue"  # bucket 0 would be green at weight 20
            await app.stop()
        app = await start_proxy(state_backend="file", state_file=str(path))
        admin = f"http://127.0.0.1:{app.admin_port}"
        body_sent = {"release": "v44"} if clear == "release" else {"to": "green"}
        status, _, body = await http(s, "POST", f"{admin}/{clear}", json=body_sent)
        assert status == 200, body
        assert json.loads(body)["hold"] is None and read_state_file(path)["hold"] is None


# --- corrupt state files refuse the start (real subprocesses, run side by side) -------------------------------------

CORRUPT = {
    "garbage": b"this is not json\n",
    "wrong-colour": json.dumps({"active": "purple", "revision": 3}).encode(),
    "json-array": b'["blue"]\n',
    "empty": b"",
}


@pytest.fixture(scope="module")
def corrupt_starts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, int, str]]:
    """Start `bgproxy serve` once per corrupt file, all at once: {case: (file, exit code, stderr)}."""
    dirs = {case: tmp_path_factory.mktemp(case) for case in CORRUPT}

    def run(case: str) -> tuple[Path, int, str]:
        d = dirs[case]
        path = d / "state.json"
        path.write_bytes(CORRUPT[case])
        with socket.socket() as held:
            # The data port is taken for the whole run: a bgproxy that tried to listen before it read the
            # state would fail on the port instead, with another message (a port checked after the exit
            # could not tell).
            held.bind(("127.0.0.1", 0))
            held.listen()
            return path, *start(d, path, held.getsockname()[1])

    def start(d: Path, path: Path, port: int) -> tuple[int, str]:
        args = [
            sys.executable,
            "-m",
            "bgproxy",
            "serve",
            "--blue",
            "http://127.0.0.1:9",
            "--green",
            "http://127.0.0.1:10",
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            f"127.0.0.1:{free_port()}",
            "--state-file",
            str(path),
        ]
        res = subprocess.run(
            args, env=clean_env(), cwd=d, capture_output=True, text=True, timeout=PROC_TIMEOUT, check=False
        )
        return res.returncode, res.stderr

    with ThreadPoolExecutor(len(CORRUPT)) as pool:
        return dict(zip(CORRUPT, pool.map(run, CORRUPT), strict=True))


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_state_file_fails_the_start(corrupt_starts: dict[str, tuple[Path, int, str]], case: str) -> None:
    path, code, stderr = corrupt_starts[case]
    assert code == 2
    last = stderr.strip().splitlines()[-1]
    # the state file's message, not the data port's (held by the test): it never tried to listen
    assert last.startswith("bgproxy: state file"), stderr
    assert str(path) in last and "corrupt" in last
    assert "Traceback" not in stderr and "cannot listen" not in stderr
    assert '"listening"' not in stderr  # the data plane never came up
    assert path.read_bytes() == CORRUPT[case]  # never silently reset to blue


async def test_corrupt_state_file_in_process_names_the_file(tmp_path: Path, upstreams: dict[str, Upstream]) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"active": "green", "previous": "orange"}')
    app = file_store_app(upstreams, path)
    with pytest.raises(StoreError) as info:
        async with app:
            pytest.fail("started on a corrupt state file")
    assert str(path) in str(info.value) and "'previous'" in str(info.value)
    assert app.proxy is None  # the data plane never listened


async def test_state_file_under_a_regular_file_fails_the_start(tmp_path: Path, upstreams: dict[str, Upstream]) -> None:
    (tmp_path / "not-a-dir").write_text("x")
    path = tmp_path / "not-a-dir" / "state.json"
    app = file_store_app(upstreams, path)
    with pytest.raises(StoreError, match="cannot read state file"):
        async with app:
            pytest.fail("started without a readable state file")
    assert app.proxy is None


# --- atomic writes (in-process) -------------------------------------------------------------------------------------


async def test_every_flip_rewrites_the_file_atomically(tmp_path: Path, start_proxy: StartProxy) -> None:
    path = tmp_path / "state.json"
    app = await start_proxy(state_backend="file", state_file=str(path), initial_active="green")
    stored = read_state_file(path)
    assert (stored["active"], stored["revision"], stored["source"]) == ("green", 0, "initial")
    inode = path.stat().st_ino
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        for i in range(1, 11):
            status, _, body = await http(
                s, "POST", f"http://127.0.0.1:{app.admin_port}/promote", json={"reason": f"flip {i}"}
            )
            assert status == 200, body
            stored = read_state_file(path)  # valid JSON after each flip
            answer = json.loads(body)
            assert answer["store"] == {"backend": "file", "path": str(path)}
            assert stored == {k: v for k, v in answer.items() if k not in NOT_STORED}
            assert (stored["revision"], stored["reason"]) == (i, f"flip {i}")
            assert stored["active"] == ("blue" if i % 2 else "green")
            assert leftovers(tmp_path, "state.json") == []  # no temp files left behind
            # a new file renamed over the old one, never rewritten in place
            assert path.stat().st_ino != inode
            inode = path.stat().st_ino


async def test_a_noop_switch_does_not_write(tmp_path: Path, start_proxy: StartProxy) -> None:
    path = tmp_path / "state.json"
    app = await start_proxy(state_backend="file", state_file=str(path))
    before = path.stat().st_ino, path.read_bytes()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        status, _, _ = await http(s, "POST", f"http://127.0.0.1:{app.admin_port}/switch", json={"to": "blue"})
    assert status == 200
    assert (path.stat().st_ino, path.read_bytes()) == before


# --- write conflicts ------------------------------------------------------------------------------------------------


def _state(active: Color, revision: int, previous: Color | None = None) -> State:
    return State(active, previous, revision, 1.0, "admin", "")


async def test_file_store_refuses_a_stale_write(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = FileStore(path)
    assert await store.load() is None
    await store.write(_state(Color.BLUE, 0), expected_revision=-1)
    await store.write(_state(Color.GREEN, 1, Color.BLUE), expected_revision=0)
    before = path.read_bytes()
    with pytest.raises(StoreConflict) as info:
        await store.write(_state(Color.BLUE, 1, Color.GREEN), expected_revision=0)
    assert info.value.current == _state(Color.GREEN, 1, Color.BLUE)
    assert path.read_bytes() == before
    # a second writer (another process's view of the same file) is refused the same way
    other = FileStore(path)
    with pytest.raises(StoreConflict):
        await other.write(initial_state(Color.BLUE, now=2.0), expected_revision=-1)
    assert await other.load() == _state(Color.GREEN, 1, Color.BLUE)
    assert leftovers(tmp_path, "state.json") == []


async def test_a_stale_replica_redecides_instead_of_overwriting(tmp_path: Path, start_proxy: StartProxy) -> None:
    """Two proxies on one file: the one that did not see the other's flip must not undo it."""
    path = tmp_path / "state.json"
    a = await start_proxy(state_backend="file", state_file=str(path))
    b = await start_proxy(state_backend="file", state_file=str(path))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        status, _, _ = await http(s, "POST", f"http://127.0.0.1:{a.admin_port}/switch", json={"to": "green"})
        assert status == 200
        # b still believes blue@0; its switch is based on a stale revision, conflicts, and is decided again
        status, _, body = await http(s, "POST", f"http://127.0.0.1:{b.admin_port}/switch", json={"to": "green"})
        assert status == 200
        assert (json.loads(body)["active"], json.loads(body)["revision"]) == ("green", 1)
    assert read_state_file(path)["revision"] == 1


# --- a store that cannot be written ---------------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
async def test_unwritable_state_directory_makes_switch_fail_with_503(tmp_path: Path, start_proxy: StartProxy) -> None:
    """The state file is reached through /proc/self/fd/N: readable, but no file can be created in that directory,
    not even by root, so the atomic write (temp file + rename) fails like on a read-only volume."""
    real = tmp_path / "state.json"
    real.write_text(json.dumps(initial_state(Color.BLUE, now=1.0).to_dict()))
    fd = os.open(real, os.O_RDONLY)
    try:
        path = f"/proc/self/fd/{fd}"
        app = await start_proxy(state_backend="file", state_file=path)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
            base = f"http://127.0.0.1:{app.admin_port}"
            await assert_flips_refused(s, base, app.port, path, (("/switch", {"to": "green"}), ("/promote", {})))
            _, _, history = await http(s, "GET", f"{base}/history")
            assert json.loads(history) == {"history": []}
            assert json.loads(real.read_text())["active"] == "blue"
    finally:
        os.close(fd)


# --- memory forgets -------------------------------------------------------------------------------------------------


async def test_memory_store_forgets_on_restart(
    upstreams: dict[str, Upstream], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where a file store would write bgproxy-state.json by default
    settings = dict(
        blue_url=upstreams["blue"].url,
        green_url=upstreams["green"].url,
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        state_backend="memory",
    )
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        async with Bgproxy(load_settings(**settings)) as app:
            status, _, _ = await http(s, "POST", f"http://127.0.0.1:{app.admin_port}/switch", json={"to": "green"})
            assert status == 200
            assert await served_by(s, app.port) == "green"
        async with Bgproxy(load_settings(**settings)) as app:
            _, _, body = await http(s, "GET", f"http://127.0.0.1:{app.admin_port}/state")
            assert (json.loads(body)["active"], json.loads(body)["revision"]) == ("blue", 0)
            assert await served_by(s, app.port) == "blue"
    assert leftovers(tmp_path, keep="") == []  # and writes nothing to disk


async def test_temp_files_left_by_a_killed_write_are_swept_at_load(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    stale = tmp_path / ".state.json.abc123.tmp"
    stale.write_text('{"active": "gre')  # a write cut short by SIGKILL
    unrelated = tmp_path / ".other.json.abc123.tmp"
    unrelated.write_text("not ours")
    assert await FileStore(path).load() is None
    assert not stale.exists()
    assert unrelated.exists()
