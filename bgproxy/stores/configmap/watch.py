"""The watch thread: list the one ConfigMap, watch it from the listed version, hand every change to a callback.

The official client is synchronous, so this runs in a daemon thread of its own. Its loop is deliberately trivial;
the logic sits in one-attempt functions (`relist`, `watch_once`) and in `Reconnect`, which says how long to wait.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import urllib3

from ...log import log
from ..interface import StoreError
from .client import UNREACHABLE, Backoff, ConfigMapApi, Refused

if TYPE_CHECKING:
    from ...metrics import Metrics

logger = logging.getLogger("bgproxy.configmap")

WATCH_TIMEOUT = (60, 90)  # the server ends each watch after a random number of seconds in this range
WATCH_READ_MARGIN = 15  # ...and a watch silent for that long plus this margin is considered dead
HEALTHY_WATCH = 1.0  # a watch that lasted this long resets the backoff

# Called on the watch thread with (kind, object, resourceVersion). kind is SNAPSHOT (a list: object None when the
# ConfigMap does not exist), ADDED, MODIFIED or DELETED.
OnEvent = Callable[[str, dict[str, Any] | None, str], None]


class Reconnect:
    """How long the watch thread waits before its next attempt, given how the last one ended."""

    def __init__(self) -> None:
        self.delay = Backoff()
        self.expired = 0  # 410 Gone in a row

    def wait(self, *, failed: bool, expired: bool, lasted: float) -> float:
        """Seconds to wait (0: go on at once). `expired`: the history was compacted, relist; `lasted`: seconds."""
        if failed:
            return self.delay.next()
        if expired:
            self.expired += 1  # relist at once, but not in a tight loop if the relisted version expires too
            return 0.0 if self.expired == 1 else self.delay.next()
        self.expired = 0
        if lasted >= HEALTHY_WATCH:  # the server ended the watch (its timeout): resume at once
            self.delay.reset()
            return 0.0
        return self.delay.next()


class ConfigMapWatch:
    """Owns the watch thread: `start` it, `stop` it from any thread (the read in progress is cut), then `join`."""

    def __init__(
        self, api: ConfigMapApi, metrics: Metrics, on_event: OnEvent, *, timeout: tuple[int, int] = WATCH_TIMEOUT
    ) -> None:
        self._api = api
        self._timeout = timeout  # WATCH_TIMEOUT, unless a test wants the server to end its watches sooner
        self._gauge = metrics.configmap_figures()
        self._on_event = on_event
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._response: urllib3.BaseHTTPResponse | None = None  # the watch being read, for stop() to cut
        self._failing_since: float | None = None  # when the current run of failures began
        self.connected = False
        self._gauge.set(0)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bgproxy-configmap-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end, and unblock its read at once (a watch may be silent for a minute)."""
        self._closing.set()
        with self._lock:
            resp = self._response
        conn = getattr(resp, "connection", None) if resp is not None else None
        sock = getattr(conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def join(self, timeout: float) -> None:
        """Wait (blocking) for the thread to end after `stop`; log if it does not within `timeout` seconds."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log(logger, "configmap_watch_still_running", level=logging.WARNING)
        self._set_connected(False)

    def _run(self) -> None:
        """Until stop(): list, watch from the listed version, and again, waiting as `Reconnect` says."""
        reconnect = Reconnect()
        resume: str | None = None  # the version to watch from; None: list first
        while not self._closing.is_set():
            started = time.monotonic()
            error: str | None = None
            try:
                if resume is None:
                    resume = self.relist()
                resume = self.watch_once(resume)
            except StoreError as exc:
                error = str(exc)
            if self._closing.is_set():
                break
            if error is None and resume is None:
                log(logger, "configmap_watch_expired", action="relist")
            wait = reconnect.wait(failed=error is not None, expired=resume is None, lasted=time.monotonic() - started)
            if error is not None:
                self._failed(error, wait)
            if wait:
                self._closing.wait(wait)

    def relist(self) -> str:
        """One list: hands the ConfigMap (None when missing) on as a SNAPSHOT; returns the list's resourceVersion."""
        with self._worded("list"):
            body = self._api.list()
            rv = str(body["metadata"]["resourceVersion"])
            items = body.get("items") or []
        self._deliver("SNAPSHOT", items[0] if items else None, rv)
        return rv

    def watch_once(self, resource_version: str) -> str | None:
        """One watch from `resource_version`, until the server ends it: returns the version to resume from, or
        None when that version has expired (410 Gone: relist). Raises StoreError on any other failure."""
        seconds = random.randint(*self._timeout)
        with self._worded("watch"):
            try:
                resp = self._api.watch(resource_version, seconds=seconds, read_timeout=seconds + WATCH_READ_MARGIN)
            except Refused as exc:
                if exc.status == 410:
                    return None
                raise
            with self._lock:
                self._response = resp
            try:
                if self._closing.is_set():
                    return resource_version
                self._reconnected()
                self._set_connected(True)
                for line in _lines(resp):
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            return None
                        message = obj.get("message") or obj.get("reason") or ""
                        raise self._api.refusal("watch", obj.get("code") or 500, message)
                    rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if not rv:
                        continue  # nothing to resume from
                    resource_version = str(rv)  # a bookmark only moves this on
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        self._deliver(kind, obj, resource_version)
                return resource_version
            finally:
                self._set_connected(False)
                with self._lock:
                    self._response = None
                resp.close()
                resp.release_conn()

    @contextmanager
    def _worded(self, what: str) -> Iterator[None]:
        """Any failure of a list or watch becomes a StoreError worded for the log: this thread must keep going."""
        try:
            yield
        except StoreError:
            raise
        except Exception as exc:
            if not isinstance(exc, UNREACHABLE) and not self._closing.is_set():
                logger.exception("configmap_watch_unexpected_error")
            raise StoreError(self._api.unreachable(what, exc)) from None

    def _deliver(self, kind: str, obj: dict[str, Any] | None, rv: str) -> None:
        if not self._closing.is_set():
            self._on_event(kind, obj, rv)

    def _failed(self, error: str, retry_in: float) -> None:
        """Log the first failure of a run as a warning, the ones that follow at debug level."""
        level = logging.DEBUG
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            level = logging.WARNING
        log(logger, "configmap_watch_failed", level=level, error=error, retry_in=round(retry_in, 2))

    def _reconnected(self) -> None:
        if self._failing_since is not None:
            log(logger, "configmap_watch_reconnected", after=round(time.monotonic() - self._failing_since, 2))
            self._failing_since = None

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        self._gauge.set(1 if connected else 0)


def _lines(resp: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """The lines of a watch stream as they arrive (the API server sends one JSON event per line, chunked)."""
    buffer = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        buffer += chunk
        while (i := buffer.find(b"\n")) >= 0:
            line, buffer = buffer[:i], buffer[i + 1 :]
            if line.strip():
                yield line
