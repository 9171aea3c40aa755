"""Real `python -m bgproxy` subprocesses for the tests, and the small HTTP helpers that go with them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bgproxy.app import Bgproxy
from bgproxy.settings import load_settings
from tests.support.servers import Upstream

PROC_TIMEOUT = 20.0


ROOT = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any BGPROXY_* variable, plus `extra`.

    PYTHONPATH puts this checkout first, so the subprocess runs the code under test even when another copy of
    bgproxy is installed.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("BGPROXY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


class ServeProcess:
    """A real `python -m bgproxy ARGS` subprocess; stderr goes to a file so it can never block on a pipe."""

    def __init__(self, tmp_path: Path, args: Sequence[str], env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.args = list(args)
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr_path = tmp_path / f"stderr-{time.monotonic_ns()}.txt"

    async def start(
        self, *, stdout: int | None = asyncio.subprocess.DEVNULL, pass_fds: Sequence[int] = ()
    ) -> ServeProcess:
        """Start it; `pass_fds`: descriptors it inherits (a state file it reaches as /proc/self/fd/N)."""
        with self.stderr_path.open("wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bgproxy",
                *self.args,
                env=self.env,
                cwd=self.tmp_path,
                stdout=stdout,
                stderr=err,
                pass_fds=pass_fds,
            )
        return self

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def wait_ready(self, admin_port: int, *, deadline: float = PROC_TIMEOUT) -> None:
        """Poll /readyz until it answers 200; a bounded wait that fails at once if the process died."""
        assert self.proc is not None
        end = time.monotonic() + deadline
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
            while time.monotonic() < end:
                if self.proc.returncode is not None:
                    pytest.fail(f"bgproxy exited with {self.proc.returncode} before ready:\n{self.stderr}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with s.get(f"http://127.0.0.1:{admin_port}/readyz") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.05)  # between polls of a bounded wait, not synchronisation
        pytest.fail(f"bgproxy not ready within {deadline}s:\n{self.stderr}")

    async def wait(self) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), PROC_TIMEOUT)

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await self.wait()

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@contextlib.asynccontextmanager
async def serve_process(tmp_path: Path, args: Sequence[str], env: dict[str, str]) -> AsyncIterator[ServeProcess]:
    p = ServeProcess(tmp_path, args, env)
    try:
        yield await p.start()
    finally:
        await p.kill()  # only if a failed test left it running


def blocking_get(url: str) -> tuple[int, bytes]:
    """(status, body) of one GET, for tests that are not async (hypothesis, schemathesis)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def changed_only_by_timers(base: str, before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether the state went from `before` to `after` only by the steps of a stepped promotion (its timer runs on its
    own clock, so between two reads it may have taken a step); an unchanged state counts too. For the fuzzers: a
    refused call must change nothing, yet a step started by an earlier example may land meanwhile."""
    keys = ("active", "revision", "weight", "rollout", "source", "reason", "forced", "previous")
    if all(before.get(k) == after.get(k) for k in keys):
        return True
    status, body = blocking_get(f"{base}/history")
    assert status == 200
    newer = [e for e in json.loads(body)["history"] if before["revision"] < e["revision"] <= after["revision"]]
    return len(newer) == after["revision"] - before["revision"] and all(e["source"] == "rollout" for e in newer)


@dataclass
class Exited:
    """How a background `bgproxy serve` ended: filled in when its `with` block is left."""

    returncode: int | None = None
    stderr: str = ""


@contextlib.contextmanager
def background_serve(
    tmp_path: Path, env: dict[str, str], admin_base: str, *, until: Callable[[], bool] = lambda: True
) -> Iterator[Exited]:
    """`python -m bgproxy serve` for tests that are not async: yields once /readyz answers 200 and `until()`
    holds (a bounded poll), then SIGTERM and a bounded wait; its exit code and stderr are in the yielded object."""
    stderr = tmp_path / f"stderr-{time.monotonic_ns()}.txt"
    exited = Exited()
    with stderr.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bgproxy", "serve"], env=env, cwd=tmp_path, stderr=err)
    try:
        end = time.monotonic() + PROC_TIMEOUT
        while True:
            assert proc.poll() is None, f"bgproxy exited with {proc.returncode}:\n{stderr.read_text()}"
            assert time.monotonic() < end, f"bgproxy not ready in {PROC_TIMEOUT}s:\n{stderr.read_text()}"
            with contextlib.suppress(OSError):
                if blocking_get(f"{admin_base}/readyz")[0] == 200 and until():
                    break
            time.sleep(0.05)  # between polls of a bounded wait, not synchronisation
        yield exited
    finally:
        proc.terminate()
        try:
            exited.returncode = proc.wait(PROC_TIMEOUT)
        finally:
            proc.kill()
        exited.stderr = stderr.read_text(errors="replace")


def serve_args(upstreams: dict[str, Upstream], port: int, admin_port: int) -> list[str]:
    return [
        "serve",
        "--blue",
        upstreams["blue"].url,
        "--green",
        upstreams["green"].url,
        "--listen",
        f"127.0.0.1:{port}",
        "--admin-listen",
        f"127.0.0.1:{admin_port}",
    ]


async def http(session: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, dict[str, str], str]:
    async with session.request(method, url, **kw) as r:
        return r.status, dict(r.headers), await r.text()


def file_store_app(upstreams: dict[str, Upstream], path: Path) -> Bgproxy:
    """An app on a file store, not started: for the tests that check it refuses to start."""
    return Bgproxy(
        load_settings(
            blue_url=upstreams["blue"].url,
            green_url=upstreams["green"].url,
            listen="127.0.0.1:0",
            admin_listen="127.0.0.1:0",
            state_backend="file",
            state_file=str(path),
        )
    )


async def served_by(session: aiohttp.ClientSession, port: int) -> str:
    status, headers, body = await http(session, "GET", f"http://127.0.0.1:{port}/")
    assert status == 200
    assert body == f"{headers['X-Bg-Color']}\n"
    return headers["X-Bg-Color"]


async def assert_flips_refused(
    session: aiohttp.ClientSession, base: str, port: int, path: str, flips: Sequence[tuple[str, dict[str, Any]]]
) -> str:
    """Each flip is refused with a 503 naming the state file it could not write, and nothing changes: the state
    and the colour served stay as they were. Returns the state (JSON text) from before."""
    _, _, before = await http(session, "GET", f"{base}/state")
    for call, payload in flips:
        status, headers, body = await http(session, "POST", base + call, json=payload)
        assert status == 503, body
        assert headers["Content-Type"].startswith("application/json")
        message = json.loads(body)["error"]
        assert "nothing was switched" in message and f"cannot write state file {path}" in message
        _, _, after = await http(session, "GET", f"{base}/state")
        assert routing_of(after) == routing_of(before)
        assert await served_by(session, port) == "blue"
    return before


def routing_of(state: str) -> dict[str, Any]:
    """A /state answer without the live figures of its backends, which move with every request served."""
    out: dict[str, Any] = json.loads(state)
    out["backends"] = {c: {"url": b["url"], "healthy": b["healthy"]} for c, b in out["backends"].items()}
    return out
