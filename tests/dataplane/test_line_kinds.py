"""LineKinds: header lines seen before are classified by one lookup; what it keeps is bounded.

(What the data plane does with the kinds is judged by test_head_differential.py, whose server sees far more distinct
lines than LineKinds keeps, so it also runs across the cache being emptied.)
"""

from __future__ import annotations

from bgproxy.dataplane.headers import KNOWN_LINE_LENGTH, KNOWN_LINES, LineKinds, pair_table

NAMES = {b"host": 1, b"connection": 2}


def test_a_line_is_classified_by_its_name_in_any_case_and_its_value_kept() -> None:
    kinds = LineKinds(NAMES)
    assert kinds.kind(b"HoSt: \t example.com ") == (1, b"example.com ")  # leading whitespace dropped, as llhttp does
    assert kinds.known[b"HoSt: \t example.com "] == (1, b"example.com ")
    assert kinds.kind(b"Accept: */*") == (0, b"")  # no value kept for kind 0
    assert kinds.known[b"Accept: */*"] == (0, b"")


def test_lines_that_may_begin_with_a_name_of_interest_are_marked_by_their_first_and_third_bytes() -> None:
    pairs = pair_table([b"host", b"te", b"x"])

    def marked(line: bytes) -> bool:
        return bool(pairs[line[0] << 8 | line[2]])

    assert all(
        map(marked, [b"Host: h", b"HOST: h", b"hOsT: h", b"TE: trailers", b"tE:x", b"X: 1", b"x:\t", b"hostile"])
    )
    assert not any(map(marked, [b"Accept: */*", b"Hint: 1", b"T-E: 1", b"Te-x: 1", b"Y: 1"]))
    assert sum(pairs) == 2 * 2 + 2 * 1 + 2 * 256  # (letters in both cases; ":" has one)


def test_what_is_kept_is_bounded() -> None:
    kinds = LineKinds(NAMES)
    for i in range(KNOWN_LINES):
        kinds.kind(b"X-Request-ID: %d" % i)
    assert len(kinds.known) == KNOWN_LINES
    kinds.kind(b"Host: h")  # full: emptied, then this one kept
    assert kinds.known == {b"Host: h": (1, b"h")}


def test_a_long_line_is_classified_but_not_kept() -> None:
    kinds = LineKinds(NAMES)
    long = b"Host: " + b"h" * KNOWN_LINE_LENGTH
    assert kinds.kind(long) == (1, b"h" * KNOWN_LINE_LENGTH)
    assert long not in kinds.known
