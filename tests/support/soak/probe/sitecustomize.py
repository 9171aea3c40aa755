"""Loaded (as `sitecustomize`) by the soak's replica processes only: counts their live asyncio tasks.

A daemon thread copies asyncio's registry of tasks (one C-level copy of the underlying set, safe under the GIL
while the event loop adds and removes tasks), counts those not done, and writes "<unix time> <count>" to the file
named by SOAK_PROBE_FILE every second, atomically. It never touches the event loop or bgproxy's objects.
"""

from __future__ import annotations

import os
import threading
import time


def _count() -> int:
    from asyncio import tasks

    refs = list(tasks._all_tasks.data)  # type: ignore[attr-defined]
    live = 0
    for ref in refs:
        task = ref()
        if task is not None and not task.done():
            live += 1
    return live


def _run(path: str) -> None:
    tmp = f"{path}.tmp"
    while True:
        time.sleep(1.0)
        try:
            with open(tmp, "w") as f:
                f.write(f"{time.time():.3f} {_count()}\n")
            os.replace(tmp, path)
        except Exception:  # a probe must never take the process down
            pass


_path = os.environ.get("SOAK_PROBE_FILE")
if _path:
    threading.Thread(target=_run, args=(_path,), name="soak-task-probe", daemon=True).start()
