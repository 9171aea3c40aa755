"""PromQL as deploy/monitoring ships it: the expressions of the Grafana dashboard and of the rules file, Grafana's
variables replaced so that Prometheus (or promtool) can read them, and the metric names an expression reads.

The metric-name reader is a small tokenizer, not a parser: promtool checks that every expression parses, and the
names it finds are checked against what bgproxy exposes, so a miss would show as a name that exposes nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from bgproxy.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "bgproxy-rules.yaml"
RULE_TESTS = MONITORING / "tests"
DASHBOARD = MONITORING / "grafana-dashboard.json"

# DESIGN.md's metrics that bgproxy does not expose yet (they arrive with the guarded-releases issue): the alerts
# and the dashboard may read them already.
DESIGN_NOT_YET_EXPOSED = {"bgproxy_webhook_deliveries_total"}

# Grafana's variables as a query would see them: the dashboard's own (every one "All": any value, or none) and
# Grafana's built-in intervals.
GRAFANA_VARIABLES = {
    "namespace": ".*",
    "job": ".*",
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.*?)\s*(?:,\s*\w+\s*)?\)\s*$", re.S)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w:.])[a-zA-Z_:][\w:]*")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool"}
_KEYWORDS |= {"inf", "nan"}


def substitute(expr: str, **chosen: str) -> str:
    """`expr` with Grafana's variables ($name, ${name}, ${name:format}, [[name]]) replaced by the values `chosen`,
    else GRAFANA_VARIABLES'."""
    values = {**GRAFANA_VARIABLES, **chosen}

    def value(m: re.Match[str]) -> str:
        name = next(g for g in m.groups() if g)
        assert name in values, f"unknown Grafana variable ${name} in {expr!r}"
        return values[name]

    return _VARIABLE.sub(value, expr)


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` selects: identifiers outside strings, label matchers, ranges and grouping clauses
    that are neither keywords nor functions (an identifier followed by a parenthesis)."""
    text = _STRING.sub('""', expr)
    text = _BRACES.sub("{}", text)
    text = _BRACKETS.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for m in _IDENT.finditer(text):
        word = m.group()
        if word.lower() in _KEYWORDS or re.match(r"\s*\(", text[m.end() :]):
            continue
        names.add(word)
    # A selector without a name ({__name__="..."}) reads a metric too.
    names |= set(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    return names


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL as written) for every query of the dashboard: panel targets, annotations, and the metric
    selector inside each variable's label_values(...)."""
    found = []
    for panel in panels(board):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} target {target.get('refId')}", target["expr"]))
    for annotation in board.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            found.append((f"annotation {annotation['name']!r}", annotation["expr"]))
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            m = _LABEL_VALUES.match(text)
            assert m, f"variable {variable['name']}: only label_values(selector, label) is expected, not {text!r}"
            found.append((f"variable {variable['name']!r}", m.group(1)))
    return found


def rule_queries() -> list[tuple[str, str]]:
    """(alert name, expression) of every rule in the plain rules file."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(rule.get("alert") or rule["record"], rule["expr"]) for group in groups for rule in group["rules"]]


def as_rules_file(queries: list[tuple[str, str]]) -> str:
    """A rules file with one recording rule per query, for `promtool check rules` to parse each of them."""
    rules = [{"record": f"dashboard:query_{i}", "expr": substitute(expr)} for i, (_, expr) in enumerate(queries)]
    return yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False)


def exposed_metric_names() -> set[str]:
    """Every sample name bgproxy's exposition can hold, the ConfigMap store's included, from its metric families
    (so a counter or a histogram counts with the names of its samples even before it has any)."""
    metrics = Metrics()
    metrics.configmap_figures()
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
    return {
        family.name + suffix
        for family in text_string_to_metric_families(metrics.render().decode())
        for suffix in suffixes.get(family.type, ("",))
    }
