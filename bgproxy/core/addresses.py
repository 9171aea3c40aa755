"""Where bgproxy listens and what it forwards to: addresses and URLs as settings give them, checked once.

Pure values and their parsers (no I/O), so that the settings, the data plane and the admin API's guards share one
definition of a listen address, an upstream base URL and a loopback host. A parser raises `ValueError` worded for
the operator; the settings add the variable's name.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple
from urllib.parse import urlsplit

from .preview import IPNetwork


class Address(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)


def is_loopback_host(host: str | None) -> bool:
    """Whether a host name or address can only mean this machine (127.0.0.0/8, ::1, localhost)."""
    if not host:
        return False
    host = host.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Upstream(NamedTuple):
    """A colour's base URL, split once so the data plane never parses it again."""

    url: str
    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


def parse_address(value: object) -> Address:
    if isinstance(value, Address):
        return value
    text = str(value).strip()
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", text)
    if not m:
        raise ValueError(f"expected HOST:PORT such as 0.0.0.0:8080, got {text!r}")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    return Address(host, int(port))


def parse_upstream(value: object) -> Upstream:
    if isinstance(value, Upstream):
        return value
    text = str(value).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL such as http://app-blue:8080, got {text!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"expected a base URL without path, query or credentials, got {text!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"port must be 1-65535 in {text!r}") from None
    if port == 0:
        raise ValueError(f"port must be 1-65535 in {text!r}")
    return Upstream(url=f"{parts.scheme}://{parts.netloc}", scheme=parts.scheme, host=parts.hostname, port=port)


def parse_networks(value: str) -> tuple[IPNetwork, ...]:
    nets = []
    for part in value.split(","):
        if part.strip():
            try:
                nets.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError:
                raise ValueError(
                    f"expected comma-separated networks such as 10.0.0.0/8,192.168.1.7, got {part!r}"
                ) from None
    return tuple(nets)


def parse_urls(value: str) -> tuple[str, ...]:
    urls = []
    for part in value.split(","):
        url = part.strip()
        if not url:
            continue
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected comma-separated http:// or https:// URLs, got {url!r}")
        urls.append(url)
    return tuple(urls)


def parse_admin_url(value: str) -> str:
    parts = urlsplit(value.strip())
    try:
        parts.port  # noqa: B018 - raises on a port out of range or not a number
    except ValueError:
        raise ValueError(f"expected a port 1-65535 in the URL, got {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL such as http://127.0.0.1:9090, got {value!r}")
    return value.strip()
