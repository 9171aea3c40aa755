"""The preview policy and the request values it reads, with tables: who may preview, and which colour they ask for."""

from __future__ import annotations

import ipaddress

import pytest

from bgproxy.core import preview
from bgproxy.core.preview import PreviewPolicy, forwarded_client

NETS = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))


@pytest.mark.parametrize(
    ("policy", "value", "client", "expected"),
    [
        # Open (the default): any value goes through as it came; routing.choose reads it.
        (PreviewPolicy(), "1", None, "1"),
        (PreviewPolicy(), "green", "203.0.113.9", "green"),
        # A secret: SECRET previews the standby colour, COLOUR:SECRET pins one; anything else goes live.
        (PreviewPolicy(secret="s3cret"), "s3cret", None, "standby"),
        (PreviewPolicy(secret="s3cret"), " s3cret ", None, "standby"),
        (PreviewPolicy(secret="s3cret"), "green:s3cret", None, "green"),
        (PreviewPolicy(secret="s3cret"), "BLUE:s3cret", None, "blue"),
        (PreviewPolicy(secret="s3cret"), "green", None, None),
        (PreviewPolicy(secret="s3cret"), "1", None, None),
        (PreviewPolicy(secret="s3cret"), "green:wrong", None, None),
        (PreviewPolicy(secret="s3cret"), "red:s3cret", None, None),
        (PreviewPolicy(secret="s3cret"), "s3cre", None, None),
        (PreviewPolicy(secret="a:b"), "a:b", None, "standby"),  # a secret with a colon still works whole
        # Networks: the client must be inside one of them.
        (PreviewPolicy(networks=NETS), "green", "10.1.2.3", "green"),
        (PreviewPolicy(networks=NETS), "green", "2001:db8::7", "green"),
        (PreviewPolicy(networks=NETS), "green", "192.168.1.7", None),
        (PreviewPolicy(networks=NETS), "green", "not-an-address", None),
        (PreviewPolicy(networks=NETS), "green", None, None),
        # Both: the network first, then the secret.
        (PreviewPolicy(secret="s3cret", networks=NETS), "s3cret", "10.0.0.1", "standby"),
        (PreviewPolicy(secret="s3cret", networks=NETS), "s3cret", "192.0.2.1", None),
        (PreviewPolicy(secret="s3cret", networks=NETS), "1", "10.0.0.1", None),
    ],
)
def test_preview_policy_admits(policy: PreviewPolicy, value: str, client: str | None, expected: str | None) -> None:
    assert policy.admit(value, client) == expected


def test_only_the_default_policy_is_open() -> None:
    assert PreviewPolicy().open
    assert not PreviewPolicy(secret="x").open
    assert not PreviewPolicy(networks=NETS).open


@pytest.mark.parametrize(
    ("xff", "peer", "expected"),
    [
        (None, "127.0.0.1", "127.0.0.1"),
        ("", "127.0.0.1", "127.0.0.1"),
        ("10.1.2.3", "127.0.0.1", "10.1.2.3"),
        ("203.0.113.9, 10.1.2.3", "127.0.0.1", "10.1.2.3"),  # the last hop: what the Ingress saw
        ("203.0.113.9,10.1.2.3 ", "127.0.0.1", "10.1.2.3"),
        ("10.1.2.3, ", "127.0.0.1", "127.0.0.1"),  # an empty last hop says nothing
    ],
)
def test_forwarded_client_is_the_last_hop(xff: str | None, peer: str, expected: str) -> None:
    assert forwarded_client(xff, peer) == expected


# --- cookie_value ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bg-preview=green", "green"),
        ("bg-preview=1", "1"),
        ("a=1; bg-preview=green", "green"),
        ("a=1;bg-preview=green", "green"),
        ("bg-preview=blue; a=1", "blue"),
        ("a=1; bg-preview=green; b=2", "green"),
        ('bg-preview="green"', "green"),
        ('a=1; bg-preview="1"; b=2', "1"),
        ("bg-preview = green", "green"),
        ("bg-preview=", ""),
        ("xbg-preview=1", None),  # another cookie whose name merely ends with ours
        ("a=xbg-preview=1", None),
        ("bg-preview-x=1", None),  # another cookie whose name starts with ours
        ("bg-preview-x=1; bg-preview=blue", "blue"),
        ("xbg-preview=1; bg-preview=green", "green"),
        ("a=bg-preview", None),  # our name as someone else's value
        ("a=1; b=2", None),
        ("", None),
        ("bg-preview", None),
    ],
)
def test_cookie_value(header: str, expected: str | None) -> None:
    assert preview.cookie_value(header, "bg-preview") == expected
