"""Which build of bgproxy runs: compiled with mypyc (setup.py compiles the data plane and the core when it can) or
pure Python. The one definition that `bgproxy --version`, `/state` and the `bgproxy_build_info` metric report.
"""

from __future__ import annotations

from importlib.machinery import ExtensionFileLoader

from . import __version__
from .dataplane import client


def compiled() -> bool:
    """Whether the data plane runs compiled: its per-request module was loaded as an extension module."""
    return isinstance(client.__spec__.loader, ExtensionFileLoader)


def describe() -> str:
    """`bgproxy 0.1.0 (compiled)` or `bgproxy 0.1.0 (pure Python)`."""
    return f"bgproxy {__version__} ({'compiled' if compiled() else 'pure Python'})"
