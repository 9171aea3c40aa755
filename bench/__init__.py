"""A one-command benchmark of bgproxy against nginx, HAProxy and a plain aiohttp proxy.

Run ``python -m bench --help``. Everything listens on 127.0.0.1; the system under test is pinned to one core
and the load generator plus the nginx origin to the other with ``taskset``.
"""
