"""Which build runs, compiled (mypyc, setup.py) or pure Python: the build is all or nothing, `bgproxy --version` says
which, and under CI it is the build .ci/run installed for this pass (so CI cannot test the pure build twice).

/state's `build` and the `bgproxy_build_info` metric: tests/admin/test_admin.py.
"""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from importlib import import_module
from importlib.machinery import ExtensionFileLoader

import pytest

import bgproxy.core
import bgproxy.dataplane
from bgproxy import __version__, build
from tests.support.build import left_as_python
from tests.support.processes import PROC_TIMEOUT, clean_env

EXPECT = "BGPROXY_EXPECT_COMPILED"


def test_the_build_tested_is_the_one_ci_installed() -> None:
    expected = os.environ.get(EXPECT)
    if expected is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI tests each build on purpose: .ci/run sets {EXPECT}=1 (compiled) or 0 (pure Python)")
        pytest.skip(f"{EXPECT} is not set (.ci/run sets it for each build it tests)")
    assert expected in ("0", "1"), f"{EXPECT} must be 1 or 0, got {expected!r}"
    assert build.compiled() is (expected == "1"), (
        f"{build.describe()} runs, but {EXPECT}={expected}: the install did not build what CI meant to test"
    )


def test_a_build_compiles_every_module_of_the_data_plane_and_the_core_or_none() -> None:
    excluded = {path.removesuffix(".py").replace("/", ".") for path in left_as_python()}
    assert excluded <= {"bgproxy.core.checks"}, "each module left as Python needs its reason in setup.py"
    for package in (bgproxy.dataplane, bgproxy.core):
        names = [package.__name__] + [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]
        for name in names:
            module = import_module(name)
            native = isinstance(module.__spec__.loader, ExtensionFileLoader)
            assert native is (build.compiled() and name not in excluded), (name, module.__file__)


def test_version_says_which_build_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bgproxy", "--version"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=PROC_TIMEOUT,
        check=True,
    )
    kind = "compiled" if build.compiled() else "pure Python"
    assert done.stdout == f"bgproxy {__version__} ({kind})\n"
    assert build.describe() == f"bgproxy {__version__} ({kind})"
