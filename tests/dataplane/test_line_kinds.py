"""LineKinds: a header line seen before is classified by one slot compared; what it keeps is bounded.

(What the data plane does with the kinds is judged by test_head_differential.py, whose server sees far more distinct
lines than LineKinds has slots, so it also runs across lines that share a slot.)
"""

from __future__ import annotations

from bgproxy.dataplane.headers import KNOWN_LINE_LENGTH, KNOWN_SLOTS, LineKinds, pair_table

NAMES = {b"host": 1, b"connection": 2}


def kept(kinds: LineKinds) -> dict[bytes, tuple[int, bytes]]:
    return {line: (kind, value) for line, kind, value in kinds.slots if line}


def test_a_line_is_classified_by_its_name_in_any_case_and_its_value_kept() -> None:
    kinds = LineKinds(NAMES)
    assert kinds.get(b"HoSt: \t example.com ") == (1, b"example.com ")  # leading whitespace dropped, as llhttp does
    assert kinds.get(b"Accept: */*") == (0, b"")  # no value kept for kind 0
    assert kept(kinds) == {b"HoSt: \t example.com ": (1, b"example.com "), b"Accept: */*": (0, b"")}
    assert kinds.get(b"HoSt: \t example.com ") == (1, b"example.com ")  # from its slot
    assert kinds.get(b"connection:close") == (2, b"close")
    assert kinds.get(b"Connection : close") == (0, b"")  # (llhttp refuses a space before the colon)


def test_lines_that_share_a_slot_are_each_classified_by_their_own_bytes() -> None:
    kinds = LineKinds(NAMES)
    # The same length, the same last and middle bytes: one slot, which each takes in turn from the other.
    host, other = b"Host: ab", b"Xost: ab"
    for _ in range(3):
        assert kinds.get(host) == (1, b"ab")
        assert kinds.get(other) == (0, b"")
    assert kept(kinds) == {other: (0, b"")}


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
    for i in range(4 * KNOWN_SLOTS):
        assert kinds.get(b"Host: %d" % i) == (1, b"%d" % i)
    assert len(kinds.slots) == KNOWN_SLOTS
    assert 0 < len(kept(kinds)) <= KNOWN_SLOTS


def test_a_long_line_is_classified_but_not_kept() -> None:
    kinds = LineKinds(NAMES)
    long = b"Host: " + b"h" * KNOWN_LINE_LENGTH
    assert kinds.get(long) == (1, b"h" * KNOWN_LINE_LENGTH)
    assert kinds.get(long) == (1, b"h" * KNOWN_LINE_LENGTH)
    assert kept(kinds) == {}
