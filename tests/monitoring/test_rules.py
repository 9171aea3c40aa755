"""The alert rules deploy/ ships: promtool accepts them, their unit tests pass and would catch a broken rule, the
PrometheusRule is the plain file's very rules, and the monitoring component renders into a valid overlay.
"""

from __future__ import annotations

import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.promql import (
    DESIGN_NOT_YET_EXPOSED,
    RULE_TESTS,
    RULES,
    exposed_metric_names,
    metric_names,
    rule_queries,
)
from tests.support.rules import PROMETHEUS_RULE, prometheus_rule
from tests.support.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "deploy" / "overlays" / "example"
COMPONENT = PROMETHEUS_RULE.parent
SERVICEMONITOR_COMPONENT = ROOT / "deploy" / "components" / "servicemonitor"
NAMESPACE = "bgproxy-demo"

Doc = dict[str, Any]


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args], capture_output=True, text=True, timeout=60, check=False, cwd=cwd
    )


def unit_test_files() -> list[Path]:
    files = sorted(RULE_TESTS.glob("*.yaml"))
    assert files, f"no promtool unit tests in {RULE_TESTS}"
    return files


def alerts() -> list[str]:
    return [name for name, _ in rule_queries()]


# --------------------------------------------------------------------------------------------------
# the plain rules file


def test_promtool_check_rules_accepts_the_rules_file() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in done.stdout, done.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    done = promtool("test", "rules", *map(str, unit_test_files()))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout and "FAILED" not in done.stdout, done.stdout


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_stays_silent() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for path in unit_test_files():
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    assert set(alerts()) <= fires, f"never seen firing: {set(alerts()) - fires}"
    assert set(alerts()) <= silent, f"never seen silent: {set(alerts()) - silent}"
    assert fires | silent <= set(alerts()), f"tests of alerts that do not exist: {(fires | silent) - set(alerts())}"


def mutated(tmp_path: Path, alert: str, old: str, new: str) -> Path:
    """A copy of the rules file with `old` replaced by `new` inside `alert`'s rule only, and next to it the unit
    tests that check `alert` (the others cannot notice, and each costs promtool time); returns their directory."""
    text = RULES.read_text()
    start = text.index(f"- alert: {alert}\n")
    nxt = text.find("- alert: ", start + 1)
    end = len(text) if nxt == -1 else nxt
    block = text[start:end]
    assert old in block, f"{old!r} is not in {alert}"
    (tmp_path / RULES.name).write_text(text[:start] + block.replace(old, new) + text[end:])
    tests = tmp_path / "tests"
    tests.mkdir()
    for path in unit_test_files():
        suite = yaml.safe_load(path.read_text())
        suite["tests"] = [
            case for case in suite["tests"] if any(c["alertname"] == alert for c in case.get("alert_rule_test", []))
        ]
        if suite["tests"]:
            (tests / path.name).write_text(yaml.safe_dump(suite, sort_keys=False))
    return tests


# (alert, what the rule says, the broken version, the unit test that must then fail)
BROKEN_RULES = [
    ("BgproxyLiveColorDown", "bgproxy_weight > 0", "bgproxy_weight >= 0", "the standby colour down without traffic"),
    ("BgproxyStandbyColorDown", "bgproxy_active_color == 0", "bgproxy_active_color >= 0", "the active colour down"),
    ("BgproxyHighErrorShare", '{code=~"5.."}', '{code=~"[45].."}', "4xx and 499"),
    ("BgproxyHighErrorShare", "[5m])) >= 1", "[5m])) >= 0", "below 1 request per second"),
    ("BgproxyHighErrorShare", "by (namespace, job, color)", "by (namespace, job, color, instance)", "one replica's"),
    (
        "BgproxyAutoRollback",
        "increase(bgproxy_auto_rollbacks_total[10m])",
        "bgproxy_auto_rollbacks_total",
        "an old automatic rollback",
    ),
    ("BgproxyConfigMapWatchLost", "== 0", "< 2", "a watch lost for 3m"),
    ("BgproxyReplicasDisagree", "by (namespace, job)", "by (namespace)", "replicas on different revisions"),
    (
        "BgproxyConfigMapInvalid",
        'increase(bgproxy_config_errors_total{source="configmap"}[10m])',
        'bgproxy_config_errors_total{source="configmap"}',
        "an invalid value in the ConfigMap",
    ),
]


def failed_cases(tests: Path) -> list[str]:
    """The names of the unit tests that fail against the rules file next to `tests`."""
    done = promtool("test", "rules", *sorted(p.name for p in tests.glob("*.yaml")), cwd=tests)
    failed = re.findall(r"name: (.*?),\n", done.stdout + done.stderr)
    assert (done.returncode != 0) == bool(failed), done.stdout + done.stderr
    return failed


def with_changed_for(tmp_path: Path, alert: str) -> Path:
    """The rules with `alert`'s `for` halved, or a `for: 5m` added to an alert that fires at once."""
    rule = next(r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if r.get("alert") == alert)
    if "for" not in rule:
        return mutated(tmp_path, alert, "    labels:\n", "    for: 5m\n        labels:\n")
    value = rule["for"]
    seconds = int(value[:-1]) * {"m": 60, "s": 1}[value[-1]]
    return mutated(tmp_path, alert, f"for: {value}\n", f"for: {seconds // 2}s\n")


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """{broken rule's id: the unit tests that fail against it}, every promtool run at once (each takes a second)."""
    setups = {f"{alert}: {new}": (alert, old, new) for alert, old, new, _ in BROKEN_RULES}
    dirs = {key: mutated(tmp_path_factory.mktemp("broken"), *args) for key, args in setups.items()}
    dirs |= {f"{alert}: for": with_changed_for(tmp_path_factory.mktemp("for"), alert) for alert in alerts()}
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(dirs, pool.map(failed_cases, dirs.values()), strict=True))


@pytest.mark.parametrize(("alert", "old", "new", "caught_by"), BROKEN_RULES)
def test_the_unit_tests_catch_a_broken_rule(
    broken: dict[str, list[str]], alert: str, old: str, new: str, caught_by: str
) -> None:
    failed = broken[f"{alert}: {new}"]
    assert any(caught_by in name for name in failed), f"{alert} with {new!r}: failed only {failed}"


@pytest.mark.parametrize("alert", alerts())
def test_the_unit_tests_pin_every_alerts_for_duration(broken: dict[str, list[str]], alert: str) -> None:
    """Halved, or added to an alert that fires at once, a `for` makes one of the alert's cases fail."""
    assert broken[f"{alert}: for"], f"{alert}: no unit test notices a changed `for`"


def test_rules_read_only_metrics_bgproxy_exposes_or_design_names() -> None:
    allowed = exposed_metric_names() | DESIGN_NOT_YET_EXPOSED
    for name, expr in rule_queries():
        read = metric_names(expr)
        assert read, f"{name}: no metric found in {expr!r}"
        assert read <= allowed, f"{name} reads {read - allowed}, which bgproxy does not expose"


# --------------------------------------------------------------------------------------------------
# the PrometheusRule and the kustomize component


def test_the_prometheus_rule_is_generated_from_the_plain_rules_file() -> None:
    assert PROMETHEUS_RULE.read_text() == prometheus_rule(RULES.read_text()), (
        f"{PROMETHEUS_RULE.relative_to(ROOT)} is out of date: run `python3 -m tests.support.rules --write`"
    )
    generated = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert generated["spec"] == {"groups": yaml.safe_load(RULES.read_text())["groups"]}


def kustomize(path: Path) -> list[Doc]:
    done = subprocess.run(
        [require_tool("kubectl"), "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def with_components(tmp_path: Path, *components: Path) -> list[Doc]:
    """The example overlay with `components`, rendered by the real kubectl kustomize."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": NAMESPACE,
                "resources": [os.path.relpath(OVERLAY, tmp_path)],
                "components": [os.path.relpath(c, tmp_path) for c in components],
            }
        )
    )
    return kustomize(tmp_path)


def test_the_monitoring_component_adds_the_prometheus_rule_to_an_overlay(tmp_path: Path) -> None:
    overlay = kustomize(OVERLAY)
    docs = with_components(tmp_path, COMPONENT, SERVICEMONITOR_COMPONENT)
    added = [d for d in docs if d["kind"] in ("PrometheusRule", "ServiceMonitor")]
    assert sorted(d["kind"] for d in added) == ["PrometheusRule", "ServiceMonitor"]
    assert len(docs) == len(overlay) + 2, "the components add their objects and change nothing else"
    rest = [d for d in docs if d not in added]
    assert rest == overlay

    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert rule["metadata"]["name"] == "bgproxy"
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    group_keys = {"name", "interval", "rules", "limit", "partial_response_strategy"}
    rule_keys = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
    for group in rule["spec"]["groups"]:
        assert set(group) <= group_keys, group.keys()
        for r in group["rules"]:
            assert set(r) <= rule_keys, r.keys()
            assert isinstance(r["expr"], str)
            assert all(isinstance(v, str) for v in {**r.get("labels", {}), **r.get("annotations", {})}.values())

    # What the Operator hands Prometheus is a rules file promtool accepts.
    rendered = tmp_path / "rendered-rules.yaml"
    rendered.write_text(yaml.safe_dump(rule["spec"]))
    done = promtool("check", "rules", str(rendered))
    assert done.returncode == 0, done.stdout + done.stderr

    # kubernetes-validate ships only built-in kinds; should it ever learn this CRD, hold it to the schema too.
    version = kubernetes_validate.latest_version()
    try:
        kubernetes_validate.validate(rule, version, strict=True)
    except kubernetes_validate.utils.SchemaNotFoundError:
        pass
