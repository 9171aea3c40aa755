"""The Prometheus Operator's PrometheusRule, generated from the plain rules file: one definition of the alerts.

deploy/monitoring/bgproxy-rules.yaml is what a plain Prometheus loads; a PrometheusRule carries the very same
`groups` under `spec`. kustomize cannot wrap a file into another object (nor load one from outside a component),
so deploy/components/monitoring/prometheusrule.yaml is generated from the plain file, as text (the comments that
explain each alert stay), and tests/monitoring/test_rules.py fails while the committed file differs from what this
generates. After editing the plain file:

    python3 -m tests.support.rules --write
"""

from __future__ import annotations

import argparse
import sys

from tests.support.promql import ROOT, RULES

PROMETHEUS_RULE = ROOT / "deploy" / "components" / "monitoring" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/monitoring/bgproxy-rules.yaml by `python3 -m tests.support.rules --write`: edit that file,
# then run the command (a test fails while the two differ). What each alert means: README, "Monitoring".
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: bgproxy
  labels:
    app.kubernetes.io/name: bgproxy
spec:
"""


def prometheus_rule(plain: str) -> str:
    """The PrometheusRule for the plain rules file `plain`: its body from `groups:` on, indented under `spec`."""
    lines = plain.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("groups:")), None)
    assert start is not None, "the rules file has no top-level `groups:`"
    body = "".join(f"  {line}\n" if line else "\n" for line in lines[start:])
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"write {PROMETHEUS_RULE.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    text = prometheus_rule(RULES.read_text())
    if args.write:
        PROMETHEUS_RULE.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
