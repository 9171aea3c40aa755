"""The response side's shortcut: a header name whose length no dropped name has is passed on without lowering it;
it must never pass on a name the full check drops."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bgproxy.dataplane.headers import RESPONSE_DROP, RESPONSE_DROP_LENGTHS


def may_drop(name: bytes) -> bool:
    return bool((RESPONSE_DROP_LENGTHS >> len(name)) & 1)


def test_every_dropped_name_has_its_length_marked_in_any_case() -> None:
    for name in RESPONSE_DROP:
        for variant in (name, name.upper(), name.title()):
            assert may_drop(variant), variant


def test_the_common_response_headers_skip_the_check() -> None:
    assert not any(may_drop(n) for n in (b"Date", b"Server", b"Content-Type", b"ETag", b"Last-Modified", b"Vary"))


@given(st.binary(max_size=300) | st.sampled_from(sorted(RESPONSE_DROP)).map(bytes.swapcase))
def test_the_shortcut_never_passes_on_a_dropped_name(name: bytes) -> None:
    if name.lower() in RESPONSE_DROP:
        assert may_drop(name)
