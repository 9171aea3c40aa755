"""The Grafana dashboard deploy/ ships: importable anywhere (the data source is a variable), every query parses,
and it reads only metrics bgproxy exposes (or DESIGN.md's names of metrics to come), so it cannot drift from them.
Its queries run against a real Prometheus scraping a real bgproxy in test_prometheus.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.promql import (
    DESIGN_NOT_YET_EXPOSED,
    as_rules_file,
    dashboard,
    dashboard_queries,
    exposed_metric_names,
    metric_names,
    panels,
    substitute,
)
from tests.support.tools import require_tool

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRAFANA_BUILT_IN = {"type": "grafana", "uid": "-- Grafana --"}  # the built-in annotations and alerts

# What an operator watches (DESIGN "Dashboard and operations", issue 12): the dashboard shows each of them.
FIGURES = {
    "bgproxy_requests_total",  # rate, 5xx share, by status
    "bgproxy_request_duration_seconds_bucket",  # p50, p99
    "bgproxy_inflight_requests",
    "bgproxy_upstream_errors_total",
    "bgproxy_active_color",
    "bgproxy_weight",
    "bgproxy_rollout_step",
    "bgproxy_backend_up",
    "bgproxy_state_revision",
    "bgproxy_configmap_watch_connected",
    "bgproxy_switches_total",
    "bgproxy_auto_rollbacks_total",
}


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    return dashboard()


def datasources(node: Any) -> list[Any]:
    """Every `datasource` value anywhere in the JSON."""
    if isinstance(node, dict):
        found = [node["datasource"]] if "datasource" in node else []
        return found + [d for value in node.values() for d in datasources(value)]
    if isinstance(node, list):
        return [d for item in node for d in datasources(item)]
    return []


def test_the_dashboard_takes_its_data_source_as_a_variable(board: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    # No data source of the machine it was made on: every query names the variable.
    for ds in datasources(board):
        assert ds in (DATASOURCE, GRAFANA_BUILT_IN), ds
    for panel in panels(board):
        if panel["type"] != "row":
            assert panel["datasource"] == DATASOURCE, panel["title"]
            assert panel["targets"], f"panel {panel['title']!r} has no query"
            assert all(t["datasource"] == DATASOURCE for t in panel["targets"]), panel["title"]


def test_the_dashboard_is_importable(board: dict[str, Any]) -> None:
    """What Grafana's import needs: a title and uid of its own, no database id, a schema version, panels with
    unique ids placed on the 24-column grid without overlapping."""
    assert board["title"] == "bgproxy" and board["uid"] == "bgproxy"
    assert board.get("id") is None, "an exported id would overwrite whatever dashboard has it in the target Grafana"
    assert isinstance(board["schemaVersion"], int)
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(board):
        pos = panel["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_every_dashboard_query_parses(board: dict[str, Any], tmp_path: Path) -> None:
    """Each query, Grafana's variables filled in, as a recording rule that `promtool check rules` parses."""
    queries = dashboard_queries(board)
    rules = tmp_path / "dashboard-queries.yaml"
    rules.write_text(as_rules_file(queries))
    done = subprocess.run(
        [require_tool("promtool"), "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(queries)} rules found" in done.stdout, done.stdout


def test_a_query_that_does_not_parse_is_refused(tmp_path: Path) -> None:
    """The check above can fail: promtool refuses a broken query in the same wrapping."""
    rules = tmp_path / "broken.yaml"
    rules.write_text(as_rules_file([("broken", "sum by (color) (rate(bgproxy_requests_total[$__rate_interval])")]))
    done = subprocess.run(
        [require_tool("promtool"), "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "FAILED" in done.stdout + done.stderr, done.stdout + done.stderr


def test_the_dashboard_reads_only_metrics_bgproxy_exposes_or_design_names(board: dict[str, Any]) -> None:
    allowed = exposed_metric_names() | DESIGN_NOT_YET_EXPOSED
    shown: set[str] = set()
    for where, expr in dashboard_queries(board):
        read = metric_names(substitute(expr))
        assert read, f"{where}: no metric found in {expr!r}"
        assert read <= allowed, f"{where} reads {read - allowed}, which bgproxy does not expose"
        shown |= read
    assert shown >= FIGURES, f"not on the dashboard: {FIGURES - shown}"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (color) (rate(bgproxy_requests_total{code=~"5.."}[1m]))', {"bgproxy_requests_total"}),
        ("histogram_quantile(0.99, sum by (le) (rate(a_bucket[5m] offset 1h)))", {"a_bucket"}),
        ("a == 0 and ignoring (color) b > 0 or on (x) group_left (y) c", {"a", "b", "c"}),
        ('label_replace(up, "dst", "$1", "src", "(.*)") unless absent(d)', {"up", "d"}),
        ('{__name__="e", job="x"} / 1e3 + inf', {"e"}),
        ("max_over_time(f[10m:1m])", {"f"}),
    ],
)
def test_the_metric_name_reader(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_grafana_variables_are_filled_in() -> None:
    assert substitute('x{job=~"$job", ns=~"${namespace}"}[$__rate_interval]') == 'x{job=~".*", ns=~".*"}[1m]'
    with pytest.raises(AssertionError, match="unknown Grafana variable"):
        substitute("rate(x[$nonesuch])")
