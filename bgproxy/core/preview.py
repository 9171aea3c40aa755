"""Who may preview the standby colour, and reading the values a request carries for it (pure, no I/O).

Anyone can send the preview header, so production can require a secret or a client network; the data plane
asks `PreviewPolicy.admit` and then `routing.choose`.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class PreviewPolicy:
    """Who may preview: anyone can send `X-Preview`, so production can ask for a secret or a client network.

    With a secret, the value must be `SECRET` (the standby colour) or `blue:SECRET` / `green:SECRET`.
    With networks, the client address must be in one of them.
    """

    secret: str | None = None
    networks: tuple[IPNetwork, ...] = ()

    @property
    def open(self) -> bool:
        return self.secret is None and not self.networks

    def admit(self, value: str, client: str | None) -> str | None:
        """The preview value to route by, or None when this request may not preview (it goes live)."""
        if self.networks:
            try:
                address = ipaddress.ip_address(client or "")
            except ValueError:
                return None
            if not any(address in net for net in self.networks):
                return None
        secret = self.secret
        if secret is None:
            return value
        given = value.strip()
        colour, sep, rest = given.partition(":")
        if sep and colour.lower() in ("blue", "green") and hmac.compare_digest(rest.encode(), secret.encode()):
            return colour.lower()
        if hmac.compare_digest(given.encode(), secret.encode()):
            return "standby"
        return None


def forwarded_client(xff: str | None, peer: str) -> str:
    """The client address as the nearest proxy (the Ingress) saw it: the last X-Forwarded-For hop, else the peer."""
    if xff:
        last = xff.rsplit(",", 1)[-1].strip()
        if last:
            return last
    return peer


def cookie_value(cookie_header: str, name: str) -> str | None:
    """The value of cookie `name` in a Cookie header, without the cost of a full cookie parser."""
    start = 0
    while True:
        i = cookie_header.find(name, start)
        if i < 0:
            return None
        start = i + len(name)
        before_ok = i == 0 or cookie_header[i - 1] in "; "
        rest = cookie_header[start:].lstrip(" ")
        if before_ok and rest.startswith("="):
            value = rest[1:].split(";", 1)[0].strip()
            return value.strip('"')
