"""Fixtures of the dashboard's tests: Debian's chromium driven by Playwright, a real `bgproxy serve` process in
front of the two test upstreams, traffic through it, and the page as a person sees it.

Playwright's own browser download does not work offline: the system chromium is launched (`executable_path`).
Without chromium or Playwright the browser tests skip, and fail under CI (tests/support/tools.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from tests.support.processes import ServeProcess, clean_env, serve_args
from tests.support.servers import TIMEOUT, Upstream, free_port
from tests.support.tools import CI_TOOLS, require_tool

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

TOKEN = "dashboard-token-3f9c"
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 10_000  # the longest any Playwright wait may take (milliseconds), under a loaded machine
PACE = 0.005  # seconds between two requests of the traffic: the resolution of "first request on the new colour"
HEALTH = "health"  # the upstreams' /ctl/<name> the health probes look at; the test sets its answer


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    chromium = require_tool("chromium")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip(f"playwright is not installed ({CI_TOOLS['playwright']})")
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=chromium, args=BROWSER_ARGS, timeout=30_000)
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Served:
    """A real `bgproxy serve` subprocess on fixed ports (so a restart comes back where the page looks), a file
    store, the token, and active health probes of /ctl/health on each colour."""

    tmp_path: Path
    upstreams: dict[str, Upstream]
    state_file: str
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    proc: ServeProcess | None = None

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return clean_env(
            BGPROXY_ADMIN_TOKEN=TOKEN,
            BGPROXY_STATE_BACKEND="file",
            BGPROXY_STATE_FILE=self.state_file,
            BGPROXY_HEALTH_PATH=f"/ctl/{HEALTH}",
            BGPROXY_HEALTH_INTERVAL="0.2",
            BGPROXY_HEALTH_UNHEALTHY_THRESHOLD="1",
            BGPROXY_HEALTH_HEALTHY_THRESHOLD="1",
            BGPROXY_DRAIN_GRACE="0",
        )

    async def start(self, *, pass_fds: tuple[int, ...] = ()) -> None:
        self.proc = ServeProcess(self.tmp_path, serve_args(self.upstreams, self.port, self.admin_port), self.env())
        await self.proc.start(pass_fds=pass_fds)
        await self.proc.wait_ready(self.admin_port)

    async def stop(self) -> None:
        assert self.proc is not None
        assert await self.proc.stop() == 0, self.proc.stderr

    async def call(self, method: str, path: str, body: object = None, *, token: str | None = TOKEN) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with (
            aiohttp.ClientSession(timeout=timeout) as s,
            s.request(method, self.admin + path, json=body, headers=headers) as r,
        ):
            return r.status, await r.json()

    async def state(self) -> dict[str, Any]:
        status, body = await self.call("GET", "/state", token=None)
        assert status == 200
        return dict(body)

    async def served_by(self) -> str:
        """The colour that answers an ordinary request through the proxy."""
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s,
            s.get(self.proxy + "/") as r,
        ):
            assert r.status == 200
            return r.headers["X-Bg-Color"]

    async def wait_state(self, what: str, ok: Any, *, within: float = TIMEOUT) -> dict[str, Any]:
        end = time.monotonic() + within
        while True:
            state = await self.state()
            if ok(state):
                return state
            if time.monotonic() > end:
                pytest.fail(f"not {what} within {within}s: {state}")
            await asyncio.sleep(0.05)  # bounded poll


@pytest.fixture
async def served(tmp_path: Path, upstreams: dict[str, Upstream]) -> AsyncIterator[Served]:
    s = Served(tmp_path, upstreams, str(tmp_path / "state.json"))
    try:
        await s.start()
        yield s
    finally:
        if s.proc is not None:
            await s.proc.kill()


class Traffic:
    """Ordinary requests through the proxy, one after another: when each was answered (wall clock, the page's
    clock too) and by which colour."""

    def __init__(self, proxy: str) -> None:
        self.proxy = proxy
        self.answers: list[tuple[float, str, int]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(self.proxy + "/") as r:
                        await r.read()
                        self.answers.append((time.time(), r.headers.get("X-Bg-Color", ""), r.status))
                await asyncio.sleep(PACE)  # pacing, not synchronisation

    def first(self, color: str, *, after: float) -> float | None:
        """When the first request answered by `color` after the wall-clock time `after` was answered."""
        return next((t for t, c, _ in self.answers if t > after and c == color), None)

    async def __aenter__(self) -> Traffic:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


# Installed in the page: when each click happened and when each colour was first painted as the live one, on the
# page's wall clock (the machine's, as time.time() in the test). A paint is the frame after the DOM changed.
PROBE = """() => {
  const now = () => performance.timeOrigin + performance.now();
  const active = document.getElementById("active");
  const probe = { clicks: [], shown: [], steps: [], painted: active.dataset.color };
  window.__probe = probe;
  document.addEventListener("click", (e) => probe.clicks.push([e.target.id, now()]), true);
  let last = active.dataset.color;
  new MutationObserver(() => {
    const c = active.dataset.color;
    if (c === last) return;
    last = c;
    requestAnimationFrame(() => {
      probe.shown.push([c, now()]);
      probe.painted = c;
    });
  }).observe(active, { attributes: true, attributeFilter: ["data-color"] });
  const steps = document.getElementById("steps");
  new MutationObserver(() => {
    const current = steps.querySelector('[aria-current="step"]');
    const label = current ? current.textContent : null;
    if (label && probe.steps[probe.steps.length - 1] !== label) probe.steps.push(label);
  }).observe(steps, { attributes: true, childList: true, subtree: true, characterData: true });
}"""


class Dashboard:
    """The page, as a person uses it."""

    def __init__(self, page: Page, served: Served, out: Path) -> None:
        self.page = page
        self.served = served
        self.out = out
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        # chromium reports every refused call (401, 409, 503) and every refused reconnect (a restart) as a console
        # error "Failed to load resource": expected here. Anything else (a script error, a CSP refusal) is not.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)

    async def open(self) -> None:
        await self.page.goto(self.served.admin + "/", timeout=WAIT_MS)
        await self.wait("the stream live", "document.getElementById('conn').dataset.conn === 'live'")
        await self.wait("a colour shown", "document.getElementById('active').dataset.color !== ''")
        await self.page.evaluate(PROBE)

    async def wait(self, what: str, expression: str, *, within_ms: int = WAIT_MS) -> None:
        from playwright.async_api import TimeoutError as PlaywrightTimeout

        try:
            # As a function, not a string: the page's CSP forbids eval, which a polled string expression needs.
            await self.page.wait_for_function(f"() => ({expression})", timeout=within_ms)
        except PlaywrightTimeout:
            shot = await self.screenshot(f"timeout-{what.replace(' ', '-')}")
            pytest.fail(f"the page did not show {what} within {within_ms} ms (screenshot: {shot})")

    async def shown(self) -> str:
        return str(await self.page.get_attribute("#active", "data-color"))

    async def wait_shows(self, color: str, *, within_ms: int = WAIT_MS) -> None:
        # shown, and painted (once the probe is in: it notes the frame that showed it)
        shows = f"document.getElementById('active').dataset.color === '{color}'"
        shows += f" && (!window.__probe || window.__probe.painted === '{color}')"
        await self.wait(f"{color} live", shows, within_ms=within_ms)

    async def wait_step(self, label: str) -> None:
        """Wait for the stepped promotion's current step to read `label` ("20 %")."""
        current = "document.querySelector('#steps [aria-current=step]')?.textContent"
        await self.wait(f"the step {label}", f"{current} === '{label}'")

    async def probe(self) -> dict[str, list[Any]]:
        return dict(await self.page.evaluate("window.__probe"))

    async def give_token(self, token: str) -> None:
        """Answer the token dialog, which must be open."""
        await self.page.wait_for_selector("#token-dialog[open]", timeout=WAIT_MS)
        await self.page.fill("#token-input", token)
        await self.page.click("#token-ok", timeout=WAIT_MS)

    async def result(self) -> str:
        await self.wait("the call's result", "!document.getElementById('result').textContent.endsWith('…')")
        return await self.page.inner_text("#result")

    async def screenshot(self, name: str) -> Path:
        path = self.out / f"dashboard-{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        print(f"\n[dashboard] screenshot: {path}")
        return path


@pytest.fixture
async def dashboard(browser: Browser, served: Served, tmp_path: Path) -> AsyncIterator[Dashboard]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        board = Dashboard(page, served, tmp_path)
        await board.open()
        yield board
        assert board.errors == [], board.errors  # no script error, no refused resource (CSP) in the console
    finally:
        await context.close()
