"""The dashboard in a real browser (Debian's chromium, driven by Playwright) against a real `bgproxy serve`.

What a person at the page sees and does: the live colour; a click on promote (the token asked once) flips the
traffic, checked by requests through the proxy, and the page shows the new colour within a second without a
reload; a stepped promotion advancing; a refused call's own message (401, 409, 503); the page coming back by itself
after the proxy restarts; and a page that works on a phone, by keyboard, with readable contrast. Each test writes
a screenshot to its output folder (the path is printed).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bgproxy.admin.middleware import UNAUTHORIZED
from bgproxy.core.model import Color, initial_state
from tests.dashboard.conftest import HEALTH, TOKEN, Dashboard, Served, Traffic
from tests.support.servers import Upstream

if TYPE_CHECKING:
    from playwright.async_api import Browser

pytestmark = pytest.mark.slow

SHOWN_WITHIN = 1.0  # seconds from a click to the page showing the new colour (the bound)
FLIPS = 6  # promotes measured after the first (whose token is asked)


async def test_the_page_shows_the_live_colour_and_follows_a_change_made_elsewhere(
    dashboard: Dashboard, served: Served
) -> None:
    assert await dashboard.shown() == "blue" == (await served.state())["active"]
    assert (await dashboard.page.inner_text("#active")).strip().lower() == "blue"
    assert await dashboard.page.get_attribute("#conn", "data-conn") == "live"
    assert "All ordinary traffic to blue" in await dashboard.page.inner_text("#weight-text")
    await dashboard.screenshot("blue")
    # a change made by someone else (the CLI, GitOps): pushed to the page, no reload
    await dashboard.page.evaluate("window.__kept = 'same page'")
    sent = time.time()
    status, body = await served.call("POST", "/switch", {"to": "green", "reason": "from the CLI"})
    assert status == 200, body
    await dashboard.wait_shows("green", within_ms=int(SHOWN_WITHIN * 1000))
    painted = next(t for c, t in (await dashboard.probe())["shown"] if c == "green") / 1000
    print(f"\n[dashboard] a switch made through the API: painted {1000 * (painted - sent):.0f} ms after the call")
    assert await dashboard.page.evaluate("window.__kept") == "same page"
    assert "from the CLI" in await dashboard.page.inner_text("#history")
    assert "from the CLI" in await dashboard.page.inner_text("#last-change")


async def test_a_click_on_promote_flips_traffic_and_the_page_shows_it_within_a_second(
    dashboard: Dashboard, served: Served
) -> None:
    page = dashboard.page
    shown_after, first_after = [], []
    async with Traffic(served.proxy) as traffic:
        expected = "green"
        for n in range(FLIPS + 1):
            clicks_before = len((await dashboard.probe())["clicks"])
            await page.click("#promote")
            if n == 0:
                await dashboard.give_token(TOKEN)  # asked once...
                clicked_id = "token-ok"
            else:
                assert not await page.is_visible("#token-dialog")  # ...and kept in the page's memory
                clicked_id = "promote"
            await dashboard.wait_shows(expected)
            probe = await dashboard.probe()
            click = next(t for i, t in probe["clicks"][clicks_before:] if i == clicked_id) / 1000
            shown = next(t for c, t in probe["shown"] if c == expected and t / 1000 > click) / 1000
            first = None
            end = time.monotonic() + 5
            while first is None and time.monotonic() < end:  # the request loop may still be on its way back
                first = traffic.first(expected, after=click)
                if first is None:
                    await page.wait_for_timeout(20)
            assert first is not None, f"no request answered by {expected} after the click"
            shown_after.append(shown - click)
            first_after.append(first - click)
            assert await served.served_by() == expected  # checked by a request through the proxy
            assert "done" in await dashboard.result()
            expected = "blue" if expected == "green" else "green"
        assert all(status == 200 for _, _, status in traffic.answers)
        span = traffic.answers[-1][0] - traffic.answers[0][0]
        rate = len(traffic.answers) / span if span > 0 else 0.0
    await dashboard.screenshot("promoted")

    def ms(values: list[float]) -> str:
        return ", ".join(f"{v * 1000:.0f}" for v in values)

    print(
        f"\n[dashboard] click -> page shows the new colour (ms): {ms(shown_after)}; median "
        f"{statistics.median(shown_after) * 1000:.0f}, max {max(shown_after) * 1000:.0f}"
        f"\n[dashboard] click -> first request answered by the new colour (ms): {ms(first_after)}; median "
        f"{statistics.median(first_after) * 1000:.0f}, max {max(first_after) * 1000:.0f}"
        f"\n[dashboard] with {rate:.0f} ordinary requests a second through the proxy"
        f"\n[dashboard] (the first is timed from the token dialog's 'Use token': the 401 that asked for it came before)"
    )
    assert max(shown_after) < SHOWN_WITHIN, shown_after
    assert max(first_after) < SHOWN_WITHIN, first_after
    history = (await served.call("GET", "/history", token=None))[1]["history"]
    assert [e["source"] for e in history[: FLIPS + 1]] == ["admin"] * (FLIPS + 1)


async def test_a_stepped_promotion_s_progress_is_visible_as_it_advances(dashboard: Dashboard, served: Served) -> None:
    page = dashboard.page
    async with Traffic(served.proxy):
        await page.check("input[name=mode][value=stepped]")
        await page.fill("#steps-input", "20,60")
        await page.fill("#interval-input", "2")
        await page.fill("#reason", "canary of v2")
        await page.click("#promote")
        await dashboard.give_token(TOKEN)
        await dashboard.wait_step("20 %")
        assert "Weight 20 %" in await page.inner_text("#weight-text")
        assert "next 60 % at" in await page.inner_text("#next-step")
        await dashboard.wait_step("60 %")
        assert "Weight 60 %: 40 % to blue, 60 % to green" in await page.inner_text("#weight-text")
        assert "then green goes live" in await page.inner_text("#next-step")
        assert await page.is_disabled("#resume") and await page.is_enabled("#pause")
        # the charts draw both colours' live figures, and say their latest values to a screen reader
        charted = "document.getElementById('chart-rps').ariaLabel"
        await dashboard.wait("charted figures", f"/green [1-9][0-9.]*\\/s/.test({charted})")
        assert "green p99 " in (await page.get_attribute("#chart-lat", "aria-label") or "")
        await dashboard.screenshot("stepped")
        await dashboard.wait_shows("green")
        await dashboard.wait("the promotion ended", "document.getElementById('rollout').hidden")
    assert (await dashboard.probe())["steps"] == ["20 %", "60 %"]  # each step was on the page, in order
    state = await served.state()
    assert (state["active"], state["weight"], state["rollout"]) == ("green", 0, None)
    events = [row.split("\t")[1] for row in (await page.inner_text("#history tbody")).splitlines()]
    assert events[:3] == ["promoted", "step", "step"]


async def test_a_wrong_token_is_refused_with_the_server_s_message_and_nothing_changes(
    dashboard: Dashboard, served: Served
) -> None:
    page = dashboard.page
    before = await served.state()
    await page.click("#promote")
    await dashboard.give_token("not-the-token")
    await page.wait_for_selector("#token-dialog[open]")  # asked again, saying why
    assert await page.inner_text("#token-why") == UNAUTHORIZED
    await dashboard.screenshot("wrong-token")
    await page.click("#token-cancel")
    assert "not sent" in await dashboard.result()
    assert await page.get_attribute("#result", "role") == "alert"
    after = await served.state()
    assert (after["active"], after["revision"]) == (before["active"], before["revision"])
    assert await served.served_by() == "blue"


async def test_a_promote_to_a_colour_that_is_down_shows_the_409_and_its_reason(
    dashboard: Dashboard, served: Served, upstreams: dict[str, Upstream]
) -> None:
    page = dashboard.page
    upstreams["green"].answers[HEALTH] = (503, "down for the test", 0.0)
    await served.wait_state("green down", lambda s: s["backends"]["green"]["healthy"] is False)
    green_health = "document.querySelector('.card[data-color=green] .health').textContent"
    await dashboard.wait("green down", f"{green_health} === 'down'")
    status, body = await served.call("POST", "/promote", {})
    assert status == 409
    await page.click("#promote")
    await dashboard.give_token(TOKEN)
    assert await dashboard.result() == f"Promote green refused (409): {body['error']}"
    await dashboard.screenshot("refused-409")
    assert await dashboard.shown() == "blue" == await served.served_by()


async def test_a_store_that_cannot_be_written_shows_the_503_and_nothing_changes(
    browser: Browser, tmp_path: Path, upstreams: dict[str, Upstream]
) -> None:
    """The serve process reaches its state file through an inherited descriptor (/proc/self/fd/N): readable, but no
    file can be created beside it, not even by root, so each write fails as on a read-only volume."""
    real = tmp_path / "state.json"
    real.write_text(json.dumps(initial_state(Color.BLUE, now=1.0).to_dict()))
    fd = os.open(real, os.O_RDONLY)
    served = Served(tmp_path, upstreams, f"/proc/self/fd/{fd}")
    try:
        await served.start(pass_fds=(fd,))
        context = await browser.new_context()
        try:
            board = Dashboard(await context.new_page(), served, tmp_path)
            await board.open()
            await board.page.click("#promote")
            await board.give_token(TOKEN)
            message = await board.result()
            assert message.startswith("Promote green refused (503): the state store refused the change"), message
            assert "nothing was switched" in message
            await board.screenshot("refused-503")
            assert await board.shown() == "blue"
            assert board.errors == []
        finally:
            await context.close()
        await served.stop()
    finally:
        if served.proc is not None:
            await served.proc.kill()
        os.close(fd)


async def test_the_page_comes_back_by_itself_after_the_proxy_restarts(dashboard: Dashboard, served: Served) -> None:
    page = dashboard.page
    await page.evaluate("window.__kept = 'same page'")
    await served.stop()
    await dashboard.wait("the stream lost", "document.getElementById('conn').dataset.conn !== 'live'")
    assert "reconnecting" in (await page.inner_text("#conn")) or "offline" in (await page.inner_text("#conn"))
    await dashboard.screenshot("disconnected")
    await served.start()
    ready = time.monotonic()
    await dashboard.wait("the stream live again", "document.getElementById('conn').dataset.conn === 'live'")
    back = time.monotonic() - ready
    # the page is on the new process's stream: a change made there shows at once
    status, body = await served.call("POST", "/switch", {"to": "green", "reason": "after the restart"})
    assert status == 200, body
    await dashboard.wait_shows("green", within_ms=int(SHOWN_WITHIN * 1000))
    assert await page.evaluate("window.__kept") == "same page"  # no reload
    print(f"\n[dashboard] live again {back * 1000:.0f} ms after the restarted proxy was ready")


# Every control a person acts with, in the order the keyboard reaches them.
CONTROLS = ["reason", "force", "steps-input", "interval-input", "promote", "weight-input", "shift", "abort", "rollback"]

CONTRAST = """() => {
  const rgb = (s) => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || c[3] > 0) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const out = [];
  const selectors = ["#active", ".weight-text", ".facts dt", ".facts dd", ".card h3", ".role", ".health",
    ".figures dt", ".figures dd", ".hint", "label", "button", "#history td", "#history th", ".conn", "figcaption"];
  for (const sel of selectors) {
    for (const el of document.querySelectorAll(sel)) {
      if (!el.offsetParent || el.disabled) continue;
      const a = lum(rgb(getComputedStyle(el).color)), b = lum(background(el));
      out.push([sel, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)]);
    }
  }
  return out;
}"""


async def test_the_page_fits_a_phone_reads_clearly_and_works_by_keyboard(dashboard: Dashboard, served: Served) -> None:
    page = dashboard.page
    await page.set_viewport_size({"width": 390, "height": 844})
    status, _ = await served.call("POST", "/shift", {"weight": 10})
    assert status == 200
    await dashboard.wait("the shift", "document.getElementById('weight-text').textContent.includes('10 %')")
    # a phone: no sideways scrolling, and the live colour in the first screen
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    box = await page.locator("#active").bounding_box()
    assert box is not None and box["y"] + box["height"] < 844
    await dashboard.screenshot("phone")
    # every control has a name a screen reader says
    unnamed = await page.evaluate(
        """() => [...document.querySelectorAll('input, button, select, textarea')]
            .filter((el) => !el.labels?.length && !el.getAttribute('aria-label') && !el.textContent.trim())
            .map((el) => el.id || el.outerHTML)"""
    )
    assert unnamed == []
    # readable: text against its background at 4.5:1 at least (WCAG AA), in the light and the dark scheme
    for scheme in ("light", "dark"):
        await page.emulate_media(color_scheme=scheme)
        low = [(sel, round(ratio, 2)) for sel, ratio in await page.evaluate(CONTRAST) if ratio < 4.5]
        assert low == [], (scheme, low)
    await dashboard.screenshot("phone-dark")
    await page.emulate_media(color_scheme="light")
    # by keyboard: the skip link first, then every control in order; an action taken with Enter alone
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.className") == "skip"
    await page.keyboard.press("Enter")
    reached: list[str] = []
    for _ in range(40):
        await page.keyboard.press("Tab")
        focused = await page.evaluate("document.activeElement.id")
        if focused in CONTROLS and focused not in reached:
            reached.append(focused)
        if focused == CONTROLS[-1]:
            break
    assert reached == CONTROLS
    await page.focus("#abort")
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#token-dialog[open]")
    assert await page.evaluate("document.activeElement.id") == "token-input"  # the dialog takes the focus
    await page.keyboard.type(TOKEN)
    await page.keyboard.press("Enter")
    assert (await dashboard.result()).startswith("Abort: done")
    assert (await served.state())["weight"] == 0
