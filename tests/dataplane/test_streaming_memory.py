"""Bodies stream: a 1 GiB download and a 1 GiB upload through a real `bgproxy serve` process barely move its RSS."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.servers import RawUpstream, free_port

GIB = 1 << 30
BLOCK = b"z" * (1 << 20)
MAX_GROWTH = 16 << 20


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
async def big_upstream() -> AsyncIterator[RawUpstream]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET /download"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % GIB)
                for _ in range(GIB // len(BLOCK)):
                    writer.write(BLOCK)
                    await writer.drain()
            else:  # an upload: count it without keeping it
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                left = length
                while left:
                    left -= len(await reader.read(min(left, 1 << 20)))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(length)), length))
                await writer.drain()

    async with RawUpstream(handler) as up:
        yield up


@pytest.fixture
def proxy_process(big_upstream: RawUpstream) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port, admin = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bgproxy",
            "serve",
            "--blue",
            big_upstream.url,
            "--green",
            "http://127.0.0.1:9",
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            f"127.0.0.1:{admin}",
            "--state-backend",
            "memory",
            "--log-level",
            "warning",
        ],
        stderr=subprocess.PIPE,
    )
    yield proc, port
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    if proc.stderr is not None:
        proc.stderr.close()


async def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    async with asyncio.timeout(15):
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)  # bounded poll for the subprocess to listen
                continue
            w.close()
            return


async def sample_peak(pid: int, done: asyncio.Event) -> int:
    peak = 0
    while not done.is_set():
        peak = max(peak, rss(pid))
        try:
            await asyncio.wait_for(done.wait(), 0.05)
        except TimeoutError:
            pass
    return max(peak, rss(pid))


@pytest.mark.slow
async def test_one_gib_each_way_keeps_the_proxy_small(proxy_process) -> None:
    proc, port = proxy_process
    await wait_listening(port, proc)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Warm up: one small exchange so buffers and pools exist before the baseline.
    writer.write(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx")
    await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(1)
    baseline = rss(proc.pid)

    done = asyncio.Event()
    sampler = asyncio.create_task(sample_peak(proc.pid, done))
    async with asyncio.timeout(120):
        writer.write(b"GET /download HTTP/1.1\r\nHost: h\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"Content-Length: %d" % GIB in head
        got = 0
        while got < GIB:
            chunk = await reader.read(1 << 20)
            assert chunk, "connection closed early"
            got += len(chunk)
        assert got == GIB

        writer.write(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % GIB)
        for _ in range(GIB // len(BLOCK)):
            writer.write(BLOCK)
            await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert await reader.readexactly(len(str(GIB))) == str(GIB).encode()
    done.set()
    peak = await sampler
    writer.close()
    growth = peak - baseline
    print(f"proxy RSS baseline {baseline >> 20} MiB, peak {peak >> 20} MiB, growth {growth / (1 << 20):.1f} MiB")
    assert growth < MAX_GROWTH, f"RSS grew {growth >> 20} MiB streaming 1 GiB each way"
    assert proc.poll() is None, "the proxy died while streaming"
