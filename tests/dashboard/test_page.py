"""The dashboard's files: served by the admin app from the package, nothing fetched from elsewhere (an air-gapped
cluster gets the same page), shipped by `pip install .`, and protected from being framed by another site."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import aiohttp
import pytest

from bgproxy.app import Bgproxy
from tests.support.processes import ROOT
from tests.support.servers import TIMEOUT

FILES = {  # path served -> (file in the package, content type)
    "/": ("index.html", "text/html"),
    "/dashboard/app.js": ("app.js", "text/javascript"),
    "/dashboard/style.css": ("style.css", "text/css"),
}
PACKAGED = resources.files("bgproxy.admin") / "dashboard"


class References(HTMLParser):
    """Every URL the page loads or links to."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href", "action") and value is not None]


async def test_the_page_its_script_and_its_style_are_served_from_the_package(proxy: Bgproxy) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        for path, (name, content_type) in FILES.items():
            async with s.get(f"http://127.0.0.1:{proxy.admin_port}{path}") as r:
                assert r.status == 200, path
                assert r.content_type == content_type and r.charset == "utf-8", path
                assert await r.read() == (PACKAGED / name).read_bytes(), path
                assert r.headers["Cache-Control"] == "no-cache"  # a new version's page is used at once
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                # no other site may frame the page (its buttons flip traffic), and it runs only its own script
                assert r.headers["X-Frame-Options"] == "DENY"
                policy = dict(p.strip().split(" ", 1) for p in r.headers["Content-Security-Policy"].split(";"))
                assert policy["frame-ancestors"] == "'none'"
                assert policy["script-src"] == policy["connect-src"] == "'self'"
                assert policy["default-src"] == "'none'"


def test_the_page_loads_nothing_from_another_site() -> None:
    """No CDN: every reference of the page is relative (served by the admin app) or inline data."""
    page = References()
    page.feed((PACKAGED / "index.html").read_text())
    assert "dashboard/app.js" in page.urls and "dashboard/style.css" in page.urls
    assert [u for u in page.urls if not (u.startswith(("dashboard/", "data:", "#")))] == []
    for name in ("app.js", "style.css"):
        text = (PACKAGED / name).read_text()
        assert re.findall(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\(", text) == [], name


@pytest.mark.slow
def test_pip_install_ships_the_dashboard_s_files(tmp_path: Path) -> None:
    """A wheel built from the sources a release is built from (pyproject.toml, setup.py, README.md, bgproxy/) holds
    the page, its script and its style, byte for byte."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "setup.py"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "bgproxy", src / "bgproxy", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "BGPROXY_PURE": "1"},  # the files are the same in a compiled build; this one is quicker
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("bgproxy-*.whl")
    with zipfile.ZipFile(wheel) as z:
        for name, _ in FILES.values():
            assert z.read(f"bgproxy/admin/dashboard/{name}") == (PACKAGED / name).read_bytes(), name
