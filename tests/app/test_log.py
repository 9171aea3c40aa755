"""Structured log lines: one JSON object, or one key=value line, per event, whatever a value holds."""

from __future__ import annotations

import json
import logging

import pytest

from bgproxy.log import JsonFormatter, TextFormatter


def record(**fields: object) -> logging.LogRecord:
    r = logging.LogRecord("bgproxy.state", logging.INFO, __file__, 1, "switch", None, None)
    r.bg_fields = fields
    return r


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("release-42", "reason=release-42"),
        ("release 42", "reason='release 42'"),
        ("", "reason=''"),
        ("a\nINFO switch new=red", "reason='a\\nINFO switch new=red'"),  # a reason cannot forge a line
        ("tab\there", "reason='tab\\there'"),
        ("\x1b[31mred", "reason='\\x1b[31mred'"),  # nor colour a terminal
    ],
)
def test_a_text_line_stays_one_line_whatever_the_reason_holds(value: str, shown: str) -> None:
    line = TextFormatter().format(record(reason=value, revision=3))
    assert "\n" not in line
    assert line.split(" ", 3)[3] == f"{shown} revision=3"


def test_a_json_line_holds_the_fields_as_they_are() -> None:
    line = JsonFormatter().format(record(reason="a\nb", revision=3, weight=20))
    assert "\n" not in line
    out = json.loads(line)
    fields = (out["event"], out["reason"], out["revision"], out["weight"], out["level"])
    assert fields == ("switch", "a\nb", 3, 20, "info")
