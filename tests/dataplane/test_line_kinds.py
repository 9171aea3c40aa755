"""LineKinds: header lines seen before are classified by one lookup; what it keeps is bounded.

(What the data plane does with the kinds is judged by test_head_differential.py, whose server sees far more distinct
lines than LineKinds keeps, so it also runs across the cache being emptied.)
"""

from __future__ import annotations

from bgproxy.dataplane.headers import KNOWN_LINE_LENGTH, KNOWN_LINES, LineKinds

NAMES = {b"host": 1, b"connection": 2}


def test_a_line_is_classified_by_its_name_in_any_case_and_its_value_kept() -> None:
    kinds = LineKinds(NAMES)
    assert kinds.kind(b"HoSt: \t example.com ") == 1
    assert kinds.kinds[b"HoSt: \t example.com "] == 1
    assert kinds.values[b"HoSt: \t example.com "] == b"example.com "  # leading whitespace dropped, as llhttp does
    assert kinds.value(b"HoSt: \t example.com ") == b"example.com "
    assert kinds.kind(b"Accept: */*") == 0
    assert b"Accept: */*" in kinds.kinds and b"Accept: */*" not in kinds.values  # no value kept for kind 0


def test_what_is_kept_is_bounded() -> None:
    kinds = LineKinds(NAMES)
    for i in range(KNOWN_LINES):
        kinds.kind(b"X-Request-ID: %d" % i)
    assert len(kinds.kinds) == KNOWN_LINES
    kinds.kind(b"Host: h")  # full: emptied, then this one kept
    assert kinds.kinds == {b"Host: h": 1} and kinds.values == {b"Host: h": b"h"}


def test_a_long_line_is_classified_but_not_kept() -> None:
    kinds = LineKinds(NAMES)
    long = b"Host: " + b"h" * KNOWN_LINE_LENGTH
    assert kinds.kind(long) == 1
    assert long not in kinds.kinds and long not in kinds.values
    assert kinds.value(long) == b"h" * KNOWN_LINE_LENGTH
