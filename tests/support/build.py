"""The compiled build as the tests see it: an editable install builds extension modules beside the sources, and
Python imports those before the .py files, so a source edited since then is not what runs."""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPILED_PACKAGES = ("bgproxy/dataplane", "bgproxy/core")  # what setup.py compiles


def stale_extensions() -> list[str]:
    """Sources (relative to the checkout) newer than the extension module built from them beside them."""
    stale = []
    for package in COMPILED_PACKAGES:
        for source in sorted((ROOT / package).glob("*.py")):
            for suffix in EXTENSION_SUFFIXES:
                built = source.with_name(source.stem + suffix)
                if built.exists() and built.stat().st_mtime < source.stat().st_mtime:
                    stale.append(source.relative_to(ROOT).as_posix())
    return stale
