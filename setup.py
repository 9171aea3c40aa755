"""The compiled build: bgproxy/dataplane/ and bgproxy/core/ compiled with mypyc, from the same source.

Everything else about the package is in pyproject.toml. Compiling needs a C compiler and Python's headers; where
they are missing (or `BGPROXY_PURE=1`), the same package installs as pure Python, with one warning line.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import tempfile
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.editable_wheel import editable_wheel

ROOT = Path(__file__).resolve().parent
# mypyc puts every compiled module in one shared library (calls between them stay native), a top-level module named
# after the group, and a small extension module per compiled module that loads its part of it.
GROUP = "bgproxy"
SHARED_LIB = f"{GROUP}__mypyc"
COMPILED_PACKAGES = ("bgproxy/dataplane", "bgproxy/core")
# Modules of those packages left as Python, each with the reason.
EXCLUDED: dict[str, str] = {
    # A pydantic model (PromoteCheck): pydantic builds the class from its annotations and `Field(...)` defaults at
    # run time, which a compiled class checks against the declared types (a FieldInfo is not a dict), and mypyc's
    # code for its metaclass does not compile. A cold path: read once at start, and per pre-promotion check.
    "bgproxy/core/checks.py": "a pydantic model",
}


def compiled_sources() -> list[str]:
    """The modules mypyc compiles, as paths relative to the project root (mypyc names modules after them)."""
    paths = []
    for package in COMPILED_PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in EXCLUDED:
                paths.append(rel)
    return paths


def why_not_compiled() -> str | None:
    """Why this build is pure Python (None: it is compiled): asked for, or no working C compiler with headers."""
    if os.environ.get("BGPROXY_PURE", "") not in ("", "0"):
        return "BGPROXY_PURE is set"
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.errors import CCompilerError, DistutilsError
    from setuptools._distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    include = sysconfig.get_paths()["include"]
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp, "probe.c")
        probe.write_text("#include <Python.h>\nint probe(void) { return Py_IsInitialized(); }\n")
        try:
            compiler.compile([str(probe)], output_dir=tmp, include_dirs=[include])
        except (CCompilerError, DistutilsError, OSError):
            cc = (getattr(compiler, "compiler_so", None) or ["cc"])[0]
            return f"{cc} cannot compile against Python's headers ({include}/Python.h)"
    return None


def remove_stale_extensions(compiled: list[str]) -> None:
    """Delete extension modules an earlier editable install built in the source tree for modules not compiled now:
    Python imports an extension module before the .py beside it, so a stale one would shadow the source."""
    keep = {str(ROOT / Path(rel).with_suffix("")) for rel in compiled}
    candidates = [ROOT / "bgproxy"] + [ROOT / package for package in COMPILED_PACKAGES]
    for folder in candidates:
        for path in folder.glob("*.py"):
            stem = str(path.with_suffix(""))
            for suffix in EXTENSION_SUFFIXES:
                built = Path(stem + suffix)
                if stem not in keep and built.exists():
                    built.unlink()
    if not compiled:
        for suffix in EXTENSION_SUFFIXES:
            (ROOT / f"{SHARED_LIB}{suffix}").unlink(missing_ok=True)


def ext_modules() -> list[Extension]:
    reason = why_not_compiled()
    if reason is not None:
        print(f"WARNING: bgproxy installs as pure Python, not compiled: {reason}", file=sys.stderr)
        return []
    from mypyc.build import mypycify

    return mypycify(compiled_sources(), opt_level="3", group_name=GROUP)


# The PEP 517 hooks run this file once per step (build requirements, metadata, the build itself), and only the
# build needs the extension modules: the others get none, so mypyc runs once, and the warning is printed once.
BUILDING = not {"build", "build_ext", "bdist_wheel", "editable_wheel", "install", "develop"}.isdisjoint(sys.argv[1:])
EXT_MODULES = ext_modules() if BUILDING else []


class EditableWheel(editable_wheel):
    """An editable install builds the compiled modules into the source tree: first remove what an earlier one built
    there and this one does not (all of it, for a pure build)."""

    def run(self) -> None:
        remove_stale_extensions(compiled_sources() if EXT_MODULES else [])
        super().run()


setup(ext_modules=EXT_MODULES, cmdclass={"editable_wheel": EditableWheel})
