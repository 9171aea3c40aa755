"""Under CI a test skipped for a missing tool fails (tests/support/tools.py), checked on a real pytest run.

A small test module runs in a pytest subprocess whose PATH holds no tool at all: each case is one way a test
can skip for a tool (require_tool, a skipif mark, a plain pytest.skip naming the tool), plus a skip that has
nothing to do with tools.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.processes import PROC_TIMEOUT, ROOT

SAMPLE = """
import pytest

from tests.support.tools import require_tool


def test_require_tool():
    require_tool("promtool")


@pytest.mark.skipif(True, reason="kubectl is not installed")
def test_skipif_mark():
    pass


def test_plain_skip_naming_a_tool():
    pytest.skip("the kubernetes-validate command is not on PATH")


def test_skip_for_something_else():
    pytest.skip("needs Linux /proc")
"""
TOOL_CASES = {"test_require_tool", "test_skipif_mark", "test_plain_skip_naming_a_tool"}


def outcomes(tmp_path: Path, name: str, ci: str | None, *flags: str) -> tuple[int, dict[str, str]]:
    """Run SAMPLE with pytest and the tools plugin; (exit code, {test: passed|failed|skipped})."""
    work = tmp_path / name
    (work / "empty-bin").mkdir(parents=True)
    (work / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    # no tool on the PATH; no third-party pytest plugins (they only slow the start)
    env.update(PATH=str(work / "empty-bin"), PYTHONPATH=str(ROOT), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    if ci is not None:
        env["CI"] = ci
    argv = [sys.executable, "-m", "pytest", "-p", "tests.support.tools", "-p", "no:cacheprovider", "-q"]
    done = subprocess.run(
        [*argv, "--junitxml", str(work / "report.xml"), *flags, "test_sample.py"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=PROC_TIMEOUT,
        check=False,
    )
    found = {}
    for case in ET.parse(work / "report.xml").iter("testcase"):
        kinds = {child.tag for child in case}
        found[case.get("name", "")] = (
            "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
        )
    return done.returncode, found


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("ci-tools")
    variants = {
        "developer": (None,),
        "ci": ("true",),
        "ci-false": ("false",),
        "flag": (None, "--require-tools"),
    }
    with ThreadPoolExecutor(len(variants)) as pool:
        futures = {name: pool.submit(outcomes, tmp, name, *args) for name, args in variants.items()}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("variant", ["developer", "ci-false"])
def test_a_missing_tool_skips_outside_ci(runs: dict[str, tuple[int, dict[str, str]]], variant: str) -> None:
    code, found = runs[variant]
    assert found == dict.fromkeys([*TOOL_CASES, "test_skip_for_something_else"], "skipped")
    assert code == 0


@pytest.mark.parametrize("variant", ["ci", "flag"])
def test_a_missing_tool_fails_under_ci(runs: dict[str, tuple[int, dict[str, str]]], variant: str) -> None:
    code, found = runs[variant]
    assert found == {**dict.fromkeys(TOOL_CASES, "failed"), "test_skip_for_something_else": "skipped"}
    assert code == 1
