"""Processes, ports, CPU pinning and readiness checks; every process started here is stopped on exit."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    """A failure worth one clear line to the user (a missing tool, a system that did not start)."""


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if this process dies, even by SIGKILL."""
    with contextlib.suppress(OSError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out for 127.0.0.1:0, all held open together so that they are distinct."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def describe_exit(self) -> str:
        tail = self.log_tail()
        return f"{self.name} exited with code {self.popen.returncode}" + (f":\n{tail}" if tail else "")


class Harness:
    """Owns the work directory and every child process; use it as a context manager."""

    def __init__(self, workdir: Path, sut_cpu: int | None, load_cpu: int | None) -> None:
        self.workdir = workdir
        self.sut_cpu = sut_cpu
        self.load_cpu = load_cpu
        self.other_tree: Path | None = None  # the bgproxy-rev system's source (--rev/--tree), when asked for
        self._procs: list[Proc] = []

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pinned(self, argv: Sequence[str], cpu: int | None) -> list[str]:
        return list(argv) if cpu is None else ["taskset", "-c", str(cpu), *argv]

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpu: int | None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        """Start a long-running process in its own process group, output to <workdir>/<name>.log."""
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                self.pinned(argv, cpu),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd or REPO_ROOT,
                env={**os.environ, **env} if env else None,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        proc = Proc(name, popen, log)
        self._procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 5.0) -> None:
        """SIGTERM the process group (the process and its children, e.g. nginx workers), then SIGKILL."""
        if proc in self._procs:
            self._procs.remove(proc)
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                proc.popen.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            # the leader is gone; make sure no child of it lingers in the group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            return

    def close(self) -> None:
        for proc in reversed(list(self._procs)):
            self.stop(proc)


def wait_tcp(port: int, timeout: float, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and not proc.alive():
            raise BenchError(proc.describe_exit())
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s: {exc}") from exc
        time.sleep(0.05)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def post_json(url: str, body: dict[str, object], timeout: float = 5.0) -> bytes:
    """POST a JSON body; anything but 200 is a BenchError with the server's answer."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:
        raise BenchError(f"POST {url} answered {exc.code}: {exc.read()[:300]!r}") from None


def wait_http(url: str, timeout: float, proc: Proc | None = None) -> bytes:
    """Poll until GET url answers 200; return the body."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise BenchError(proc.describe_exit())
        try:
            status, body = http_get(url, timeout=2.0)
            if status == 200:
                return body
            last = f"status {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(f"GET {url} did not answer 200 within {timeout:.0f}s ({last})")


def source_tree(rev: str | None, tree: Path | None, workdir: Path) -> Path:
    """The directory whose bgproxy/ is measured: this repository, a checkout, or a commit exported to workdir."""
    if tree is not None:
        if not (tree / "bgproxy" / "__main__.py").is_file():
            raise BenchError(f"{tree} holds no bgproxy package (no bgproxy/__main__.py)")
        return tree.resolve()
    if rev is None:
        return REPO_ROOT
    archive, dest = workdir / "tree.tar", workdir / "tree"
    done = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", "-o", str(archive), rev, "bgproxy"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"git archive {rev} failed: {done.stderr.strip()}")
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def imported_from(tree: Path, env: dict[str, str]) -> str:
    """Where bgproxy run from `tree` is really imported from (an editable install elsewhere must not win)."""
    done = subprocess.run(
        [sys.executable, "-c", "import bgproxy; print(bgproxy.__file__)"],
        cwd=tree,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    where = done.stdout.strip()
    if done.returncode != 0 or not Path(where).resolve().is_relative_to(tree.resolve()):
        raise BenchError(f"bgproxy run from {tree} imports {where or done.stderr.strip()!r}, not that tree")
    return where
