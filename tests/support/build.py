"""The compiled build as the tests see it: an editable install builds extension modules beside the sources, and
Python imports those before the .py files, so a source edited (or added) since then is not what runs."""

from __future__ import annotations

import ast
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPILED_PACKAGES = ("bgproxy/dataplane", "bgproxy/core")  # what setup.py compiles


def left_as_python() -> set[str]:
    """The modules setup.py leaves uncompiled (its EXCLUDED), as paths relative to the checkout."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "EXCLUDED":
            assert isinstance(node.value, ast.Dict)
            keys = node.value.keys
            return {key.value for key in keys if isinstance(key, ast.Constant) and isinstance(key.value, str)}
    raise AssertionError("setup.py has no EXCLUDED")


def _built(source: Path) -> Path | None:
    for suffix in EXTENSION_SUFFIXES:
        built = source.with_name(source.stem + suffix)
        if built.exists():
            return built
    return None


def stale_extensions() -> list[str]:
    """In a compiled checkout, the sources (relative to it) newer than the extension module built from them, or
    with none while setup.py compiles them. Empty for a pure checkout (no extension module at all)."""
    sources = [path for package in COMPILED_PACKAGES for path in sorted((ROOT / package).glob("*.py"))]
    built = {source: _built(source) for source in sources}
    if not any(built.values()):
        return []
    excluded = left_as_python()
    stale = []
    for source, extension in built.items():
        rel = source.relative_to(ROOT).as_posix()
        if extension is None and rel not in excluded:
            stale.append(rel)
        elif extension is not None and extension.stat().st_mtime < source.stat().st_mtime:
            stale.append(rel)
    return stale
