"""Find (and, as root, install) the tools and Python packages a run needs."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable

from .harness import BenchError

# binary -> Debian package
APT_PACKAGES = {
    "nginx": "nginx",
    "haproxy": "haproxy",
    "wrk": "wrk",
    "curl": "curl",
    "taskset": "util-linux",
    "valgrind": "valgrind",
    "callgrind_control": "valgrind",
}
# import name -> PyPI name
PYPI_PACKAGES = {"aiohttp": "aiohttp", "uvloop": "uvloop"}
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def find_binary(name: str) -> str | None:
    """`which`, plus the sbin directories a non-root PATH often lacks (nginx and haproxy live there)."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _apt_install(packages: list[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    print(f"bench: installing {' '.join(packages)} with apt-get", file=sys.stderr)
    if subprocess.run(cmd, env=env, check=False, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=False, timeout=900)
        subprocess.run(cmd, env=env, check=True, timeout=900)


def ensure_binaries(names: Iterable[str]) -> dict[str, str]:
    """Return name -> path for every tool; install missing ones via apt-get when root, else explain."""
    wanted = sorted(set(names))
    missing = [n for n in wanted if find_binary(n) is None]
    if missing:
        packages = sorted({APT_PACKAGES[n] for n in missing})
        if os.geteuid() == 0 and shutil.which("apt-get"):
            try:
                _apt_install(packages)
            except (subprocess.SubprocessError, OSError) as exc:
                raise BenchError(f"apt-get install {' '.join(packages)} failed: {exc}") from exc
        still = [n for n in wanted if find_binary(n) is None]
        if still:
            raise BenchError(
                f"missing tools: {', '.join(still)}. Install them with: "
                f"sudo apt-get install -y {' '.join(sorted({APT_PACKAGES[n] for n in still}))}"
            )
    return {n: find_binary(n) or n for n in wanted}


def ensure_python_packages(modules: Iterable[str]) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return
    names = [PYPI_PACKAGES[m] for m in missing]
    print(f"bench: installing {' '.join(names)} with pip", file=sys.stderr)
    done = subprocess.run([sys.executable, "-m", "pip", "install", *names], check=False, timeout=900)
    importlib.invalidate_caches()
    if done.returncode != 0 or any(importlib.util.find_spec(m) is None for m in missing):
        raise BenchError(f"missing Python packages: {', '.join(names)}; pip install {' '.join(names)}")
