"""Sticky buckets: which cookie values hold a bucket, the header hash (stable, spread), and the Set-Cookie line."""

from __future__ import annotations

import random
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgproxy.core import buckets
from bgproxy.core.preview import cookie_value

RNG = random.Random(7)  # fixed ids: the spread test sees the same values on every run
VALID = [(str(b), b) for b in range(100)]
# Leading zeros: bgproxy never writes them, but "07" still names bucket 7 in plain digits, and refusing it would
# only re-draw that client's bucket (and maybe its colour). Accepted.
LEADING_ZERO = [("00", 0), ("07", 7), ("09", 9)]
INVALID = [
    "",
    "100",  # one past the last bucket
    "999",
    "007",  # three digits: never a bucket
    "-1",
    "+5",
    "abc",
    "5a",
    "1.5",
    " 5",  # the Cookie header's parser strips spaces; the bucket itself is digits only
    "5 ",
    " ",
    "\u0665",  # ARABIC-INDIC DIGIT FIVE: isdigit() is true, but it is not a bucket
    "\u00b2",  # SUPERSCRIPT TWO: isdigit() is true too
    "\uff15",  # FULLWIDTH DIGIT FIVE
    "5\x00",
    "0x1",
    "1e1",
]


@pytest.mark.parametrize(("text", "bucket"), VALID + LEADING_ZERO)
def test_a_cookie_of_plain_digits_0_to_99_is_its_bucket(text: str, bucket: int) -> None:
    assert buckets.from_cookie(text) == bucket
    assert buckets.from_cookie(text.encode()) == bucket


@pytest.mark.parametrize("text", INVALID)
def test_any_other_cookie_value_holds_no_bucket(text: str) -> None:
    assert buckets.from_cookie(text) is None
    assert buckets.from_cookie(text.encode("utf-8")) is None
    assert buckets.from_cookie(text.encode("utf-8").decode("latin-1")) is None  # as the data plane decodes it


def test_no_cookie_holds_no_bucket() -> None:
    assert buckets.from_cookie(None) is None
    assert buckets.from_cookie(b"") is None


@given(st.text(max_size=6) | st.binary(max_size=6))
@settings(deadline=None)  # a stall of a busy CI machine is no failure of from_cookie
def test_from_cookie_is_none_or_a_bucket_for_any_input(value: str | bytes) -> None:
    got = buckets.from_cookie(value)
    assert got is None or (0 <= got < buckets.BUCKETS and isinstance(got, int))


@pytest.mark.parametrize(
    ("header", "bucket"),
    [
        ("bg-sticky=42", 42),
        ("session=abc; bg-sticky=7; theme=dark", 7),
        ("xbg-sticky=9; bg-sticky=3", 3),  # a longer name that ends like ours is another cookie
        ("bg-sticky-old=9; bg-sticky=4", 4),
        ('bg-sticky="55"', 55),
        ("bg-sticky = 12", 12),
        ("bg-sticky=100", None),
        ("bg-sticky=", None),
        ("bg-sticky=abc; bg-sticky=5", None),  # the first one counts, and it is not valid: a fresh draw
        ("other=1", None),
    ],
)
def test_the_bucket_of_a_cookie_header(header: str, bucket: int | None) -> None:
    """As the data plane reads it: the cookie's value from the header, then its bucket."""
    assert buckets.from_cookie(cookie_value(header, "bg-sticky")) == bucket


# --- the header hash --------------------------------------------------------------------------------------------------


def test_the_header_hash_is_stable_across_processes_and_releases() -> None:
    """Every replica, before and after a restart, must put a user in the same bucket: pinned values (CRC-32)."""
    assert [buckets.from_header(v) for v in (b"", b"user-1", b"alice", b"4f9c2e")] == [
        zlib.crc32(v) % 100 for v in (b"", b"user-1", b"alice", b"4f9c2e")
    ]
    assert buckets.from_header(b"user-1") == 24  # pinned: a change of hash moves users between colours
    assert buckets.from_header(b"alice") == buckets.from_header(b"alice")


@pytest.mark.parametrize(
    "values",
    [
        [f"user-{i}".encode() for i in range(5000)],
        [str(i).encode() for i in range(5000)],
        [RNG.randbytes(16).hex().encode() for _ in range(5000)],
    ],
    ids=["user-N", "digits", "random-hex"],
)
def test_the_header_hash_spreads_values_over_the_buckets(values: list[bytes]) -> None:
    """5,000 distinct ids: for each weight the share below it is that weight within 2 points (a fair draw's standard
    deviation is at most 0.71 points here, so 2 is about 3 of them; the values are fixed, so this never flakes), and
    no bucket holds more than twice its fair share."""
    got = [buckets.from_header(v) for v in values]
    assert all(0 <= b < 100 for b in got)
    for weight in (1, 5, 10, 20, 50, 80, 99):
        share = 100 * sum(b < weight for b in got) / len(got)
        assert abs(share - weight) <= 2.0, (weight, share)
    counts = [got.count(b) for b in range(100)]
    assert max(counts) <= 2 * len(got) / 100 and min(counts) >= len(got) / 100 / 2


# --- the Set-Cookie line ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "bucket"), [("bg-sticky", 0), ("bg-sticky", 99), ("canary_b", 42)])
def test_the_set_cookie_line_is_exactly_what_design_says(name: str, bucket: int) -> None:
    line = buckets.set_cookie_line(name, bucket)
    assert line == f"Set-Cookie: {name}={bucket}; Path=/; HttpOnly; SameSite=Lax\r\n".encode()
    # and the value it sets reads back as the same bucket
    value = line.decode().split(":", 1)[1].split(";", 1)[0].strip().split("=", 1)[1]
    assert buckets.from_cookie(value) == bucket
