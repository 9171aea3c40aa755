"""State in a Kubernetes ConfigMap, shared by every replica and by GitOps.

The ConfigMap (default `bgproxy-state`) holds:

- `active: blue|green`: the user-facing key, what people and Argo CD edit;
- `state`: JSON of bgproxy's whole state (active, previous, revision, updated_at, source, reason, ...);
- `reason`: the reason of the last flip, readable with `kubectl get`.

`read_configmap` (pure) turns the data into a state. When `active` agrees with the `state` blob, the blob is the
state; when it does not, someone edited `active` by hand or through Git: that is a flip (source `configmap`),
and the replica writes the normalised blob back (with a resourceVersion precondition; a 409 means another replica
did it first) so revisions stay monotonic and every replica settles on the same state object. A missing or
unknown `active` is logged, counted in `config_errors_total{source="configmap"}` and ignored. A deleted ConfigMap
keeps the last state, and the replicas put it back holding that state (else a replica starting later would create
it with BGPROXY_INITIAL_ACTIVE and flip everyone).

Start-up: `load` waits, and the replica stays not ready, until the API server answers with a valid colour (or a
404, and the ConfigMap is then created with the initial state); it never serves a guessed colour.

Threads: the official client is synchronous. One daemon thread lists, then watches the one ConfigMap (field
selector on its name) and hands every event to the event loop with `call_soon_threadsafe`; reads and writes run
in worker threads (`asyncio.to_thread`). Everything that decides lives on the event loop, in the order events
arrive there. The data plane never waits on the API server.

Ordering: an admin write is applied as soon as the API server accepts it; its watch event comes later, possibly
after older events. Events (and relists) whose resourceVersion is not newer than the newest one already applied
are skipped. This compares resourceVersions as integers: kube-apiserver's are etcd revisions, a monotonically
increasing counter, which Kubernetes 1.35 made a documented guarantee (KEP-5504, "Comparable Resource Version").
A server that sends non-numeric versions still works, in arrival order, without that protection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from ..core.routing import MAX_REASON, Color, InvalidColor, State
from ..log import log
from . import StoreConflict, StoreError

if TYPE_CHECKING:
    from ..metrics import Metrics

logger = logging.getLogger("bgproxy.configmap")

KEY_ACTIVE, KEY_STATE, KEY_REASON = "active", "state", "reason"
EDITED = "ConfigMap edited"
MERGE_PATCH = "application/merge-patch+json"

BACKOFF_START, BACKOFF_CAP = 0.2, 2.0  # seconds: reconnects and retries double from 0.2 s up to 2 s, with jitter
WATCH_TIMEOUT = (60, 90)  # the server ends each watch after a random number of seconds in this range
WATCH_READ_MARGIN = 15  # ...and a watch silent for that long plus this margin is considered dead
HEALTHY_WATCH = 1.0  # a watch that lasted this long resets the backoff


# --- the pure part: ConfigMap data -> state -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reading:
    """What a ConfigMap's data means.

    `state` is None when the data is invalid (keep the last good state). `normalise` asks for the `state` blob
    to be written back: after an edit of `active`, or when the blob is missing or corrupt. `problems` are
    logged and counted as config errors.
    """

    state: State | None
    normalise: bool = False
    problems: tuple[str, ...] = ()


def read_configmap(data: Mapping[str, str] | None, last: State | None, *, now: float) -> Reading:
    """The state a ConfigMap's `data` holds, given `last`, the last state this replica saw (None at start)."""
    data = data or {}
    raw = data.get(KEY_ACTIVE)
    if raw is None:
        return Reading(None, problems=(f"key {KEY_ACTIVE!r} is missing: expected blue or green",))
    try:
        active = Color.parse(raw)
    except InvalidColor as exc:
        return Reading(None, problems=(f"key {KEY_ACTIVE!r}: {exc}",))

    problems: list[str] = []
    blob: State | None = None
    raw_blob = data.get(KEY_STATE)
    if raw_blob is not None:
        try:
            blob = State.from_dict(json.loads(raw_blob))
        except ValueError as exc:
            problems.append(f"key {KEY_STATE!r} is not a bgproxy state ({exc}); taking {KEY_ACTIVE!r} as an edit")
    # The blob is current unless this replica already applied something newer: an edit of `active` not yet
    # written back, or an old snapshot of the ConfigMap re-applied. Revisions never go backwards.
    base = blob if blob is not None and (last is None or blob.revision >= last.revision) else last
    if base is blob and blob is not None and blob.active is active:
        return Reading(blob, problems=tuple(problems))
    if base is not None and base.active is active:
        # No flip: the blob is missing, corrupt or stale but the colour is what we serve. Restore the blob.
        return Reading(base, normalise=True, problems=tuple(problems))
    # `active` was edited (kubectl, Git): a flip.
    reason = data.get(KEY_REASON, "").strip()[:MAX_REASON]
    if reason in {s.reason for s in (blob, last) if s is not None}:
        reason = ""  # the reason bgproxy wrote with an earlier state, not one given with this edit
    state = State(
        active=active,
        previous=base.active if base is not None else None,
        revision=(base.revision if base is not None else 0) + 1,
        updated_at=now,
        source="configmap",
        reason=reason or EDITED,
    )
    return Reading(state, normalise=True, problems=tuple(problems))


def configmap_data(state: State) -> dict[str, str]:
    """The ConfigMap data that stores `state` (merged into whatever other keys the ConfigMap has)."""
    blob = {k: v for k, v in state.to_dict().items() if k != "standby"}
    return {
        KEY_ACTIVE: state.active.value,
        KEY_REASON: state.reason,
        KEY_STATE: json.dumps(blob, sort_keys=True, separators=(",", ":")),
    }


def _rv_number(rv: str | None) -> int | None:
    try:
        return int(rv) if rv is not None else None
    except ValueError:
        return None


class Backoff:
    """Capped exponential backoff with jitter: each delay is drawn from [d/2, d], d doubling up to the cap."""

    def __init__(self, start: float = BACKOFF_START, cap: float = BACKOFF_CAP) -> None:
        self.start, self.cap = start, cap
        self._next = start
        self.attempts = 0

    def next(self) -> float:
        d = self._next
        self._next = min(self.cap, d * 2)
        self.attempts += 1
        return random.uniform(d / 2, d)

    def reset(self) -> None:
        self._next = self.start
        self.attempts = 0

    @property
    def level(self) -> int:
        """Log the first failure of a run as a warning, the retries that follow at debug level."""
        return logging.WARNING if self.attempts <= 1 else logging.DEBUG


def api_client() -> client.ApiClient:
    """A private client: KUBECONFIG when set, else the pod's service account, else ~/.kube/config.

    The order is controller-runtime's: an explicit KUBECONFIG wins, in a pod the service account is used.
    """
    configuration = client.Configuration()
    kubeconfig = os.environ.get("KUBECONFIG")
    in_cluster = not kubeconfig and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            path = kubeconfig or os.path.expanduser("~/.kube/config")
            config.load_kube_config(config_file=path, client_configuration=configuration)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        if in_cluster:
            where = "the pod's service account (is automountServiceAccountToken off?)"
        elif kubeconfig:
            where = f"KUBECONFIG={kubeconfig}"
        else:
            where = "~/.kube/config (not in a pod, and KUBECONFIG is not set)"
        raise StoreError(
            f"state backend 'configmap' needs a Kubernetes client configuration; {where} could not be loaded: {exc}"
        ) from None
    # No retries inside urllib3: this module retries, with backoff, where a retry is safe.
    configuration.retries = False
    configuration.keep_alive = True  # client-go's TCP keepalive: a silently dead peer is noticed
    return client.ApiClient(configuration)


# --- the store ----------------------------------------------------------------------------------------------


class ConfigMapStore:
    name = "configmap"

    def __init__(self, name: str, namespace: str, metrics: Metrics, *, timeout: float = 10.0) -> None:
        self.cm_name = name
        self.namespace = namespace
        self.metrics = metrics
        self.timeout = timeout  # seconds, for each request to the API server (connect, then read)
        self._api = api_client()
        self._v1 = client.CoreV1Api(self._api)
        self._host = self._api.configuration.host
        self._selector = f"metadata.name={name}"
        # Event loop side: only touched on the loop.
        self._state: State | None = None  # the newest good state seen (events, relists, own writes)
        self._rv: str | None = None  # resourceVersion of the object last seen: the precondition of the next write
        self._seen: int | None = None  # newest resourceVersion applied; older events are skipped
        self._seq = 0  # counts states adopted, in order
        self._handed = 0  # ...and the last one the holder has (from load, write, a conflict or changes())
        self._missing = False
        self._queue: asyncio.Queue[tuple[int, State]] = asyncio.Queue()
        self._news = asyncio.Event()  # set whenever the watch delivered something
        self._write_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Watch thread side.
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._response: urllib3.BaseHTTPResponse | None = None
        self._connected = False
        self._failing_since: float | None = None  # when the current run of watch failures began
        metrics.watch_connected.set(0)

    @property
    def where(self) -> str:
        return f"ConfigMap {self.namespace}/{self.cm_name}"

    # --- the Store protocol -----------------------------------------------------------------------------

    async def load(self) -> State | None:
        """The ConfigMap's state once the API server answers; None if the ConfigMap does not exist.

        Waits (the replica stays not ready) while the API server is unreachable, and while the ConfigMap holds
        no valid colour: a replica never serves a guessed one.
        """
        self._start()
        while self._state is None and not self._missing:
            self._news.clear()
            await self._news.wait()
        self._handed = self._seq
        return self._state

    async def write(self, new: State, *, expected_revision: int) -> State:
        async with self._write_lock:
            if expected_revision == -1:
                return await self._create_first(new)
            current = self._state
            if current is None:
                raise StoreError(f"{self.where} has not been read yet")
            if current.revision != expected_revision:
                raise self._conflict()
            try:
                if self._rv is None:  # deleted: recreate it with the new state
                    obj = await self._create(new)
                else:
                    obj = await self._patch(new, self._rv)
            except ApiException as exc:
                if exc.status == 404:  # deleted meanwhile
                    try:
                        obj = await self._create(new)
                    except ApiException as again:
                        if again.status == 409:
                            return await self._after_conflict(new)
                        raise StoreError(self._refused("create", again)) from None
                elif exc.status == 409:
                    return await self._after_conflict(new)
                else:
                    raise StoreError(self._refused("patch", exc)) from None
            return self._adopt_write(new, obj)

    async def changes(self) -> AsyncIterator[State]:
        while True:
            seq, state = await self._queue.get()
            if seq <= self._handed:  # the holder already has this one or a newer one
                continue
            self._handed = seq
            yield state

    def describe(self) -> dict[str, object]:
        return {
            "backend": self.name,
            "name": self.cm_name,
            "namespace": self.namespace,
            "connected": self._connected,
            "resource_version": self._rv,
        }

    async def close(self) -> None:
        self._closing.set()
        self._interrupt_watch()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, self.timeout + 2)
            if self._thread.is_alive():
                log(logger, "configmap_watch_still_running", level=logging.WARNING)
        self._api.close()  # type: ignore[no-untyped-call]
        self._connected = False
        self.metrics.watch_connected.set(0)

    # --- writes -----------------------------------------------------------------------------------------

    def _body(self, state: State) -> dict[str, Any]:
        return {
            "metadata": {"name": self.cm_name, "labels": {"app.kubernetes.io/name": "bgproxy"}},
            "data": configmap_data(state),
        }

    async def _patch(self, state: State, rv: str) -> dict[str, Any]:
        patch = {"metadata": {"resourceVersion": rv}, "data": configmap_data(state)}
        call = self._v1.patch_namespaced_config_map
        return await self._request("patch", call, self.cm_name, self.namespace, patch, _content_type=MERGE_PATCH)

    async def _create(self, state: State) -> dict[str, Any]:
        return await self._request("create", self._v1.create_namespaced_config_map, self.namespace, self._body(state))

    async def _create_first(self, new: State) -> State:
        """Create the missing ConfigMap (start-up). Keeps trying while the API server refuses or is unreachable
        (the replica stays not ready), and gives way to whoever creates it first."""
        delay = Backoff()
        while True:
            if self._state is not None:
                raise self._conflict()
            wait: float | None = None
            if self._rv is None:  # missing, as far as we know
                try:
                    obj = await self._create(new)
                except ApiException as exc:
                    if exc.status == 409:  # created meanwhile (another replica, kubectl): read what is there
                        try:
                            if await self._reread() is not None:
                                continue
                            error = f"{self.where} was created and deleted again meanwhile"
                        except StoreError as again:
                            error = str(again)
                    else:
                        error = self._refused("create", exc)
                except StoreError as exc:
                    error = str(exc)
                else:
                    log(logger, "configmap_created", configmap=self.where, active=new.active.value)
                    return self._adopt_write(new, obj)
                wait = delay.next()
                log(logger, "configmap_create_failed", level=delay.level, error=error, retry_in=round(wait, 2))
            # Wait for the backoff, or for the watch: the ConfigMap may appear, or its invalid content be fixed.
            self._news.clear()
            try:
                await asyncio.wait_for(self._news.wait(), wait)
            except TimeoutError:
                pass

    async def _after_conflict(self, new: State) -> State:
        """Our precondition failed: read what is there now; the holder decides again from it."""
        obj = await self._reread()
        if obj is not None and read_configmap(obj.get("data"), self._state, now=0).state == new:
            return self._adopt_write(new, obj)  # it was our own write (a retried or timed-out request)
        raise self._conflict()

    async def _reread(self) -> dict[str, Any] | None:
        try:
            obj = await self._request("read", self._v1.read_namespaced_config_map, self.cm_name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise StoreError(self._refused("read", exc)) from None
            return None
        self._receive("MODIFIED", obj, obj["metadata"]["resourceVersion"])
        return obj

    def _conflict(self) -> StoreConflict:
        if self._state is None:
            raise StoreError(f"{self.where} holds no valid state")
        self._handed = self._seq
        return StoreConflict(self._state)

    def _adopt_write(self, new: State, obj: Mapping[str, Any]) -> State:
        """The API server accepted our write of `new`; `obj` is the ConfigMap it answered with."""
        rv = obj["metadata"]["resourceVersion"]
        n = _rv_number(rv)
        if n is not None and self._seen is not None and n <= self._seen and self._state is not None:
            # The watch delivered this write already, and maybe newer changes: those win.
            self._handed = self._seq
            return self._state
        self._seen, self._rv, self._missing = n, rv, False
        self._state = new
        self._seq += 1
        self._handed = self._seq
        return new

    async def _normalise(self, state: State, rv: str) -> None:
        """Write the blob for an edit of `active`, so every replica converges on one state object."""
        delay = Backoff()
        while not self._closing.is_set():
            async with self._write_lock:
                if self._rv != rv or self._state != state:
                    return  # something newer came meanwhile
                try:
                    obj = await self._patch(state, rv)
                except ApiException as exc:
                    if exc.status in (404, 409):  # deleted, or another replica (or someone) wrote first
                        return
                    error = self._refused("patch", exc)
                except StoreError as exc:
                    error = str(exc)
                else:
                    self._adopt_version(obj)
                    log(logger, "configmap_normalised", revision=state.revision, resource_version=self._rv)
                    return
            wait = delay.next()
            log(logger, "configmap_normalise_failed", level=delay.level, error=error, retry_in=round(wait, 2))
            await asyncio.sleep(wait)

    async def _recreate(self, state: State) -> None:
        """Put a deleted ConfigMap back, holding the state every replica serves: a replica starting now then reads
        that state, instead of creating the ConfigMap with BGPROXY_INITIAL_ACTIVE and flipping everyone to it."""
        delay = Backoff()
        while not self._closing.is_set():
            async with self._write_lock:
                if self._rv is not None or self._state != state:
                    return  # it is back (another replica, kubectl, Git), or a flip recreated it
                try:
                    obj = await self._create(state)
                except ApiException as exc:
                    if exc.status == 409:  # someone was faster: the watch brings what they created
                        return
                    error = self._refused("create", exc)
                except StoreError as exc:
                    error = str(exc)
                else:
                    self._adopt_version(obj)
                    log(logger, "configmap_recreated", configmap=self.where, active=state.active.value)
                    return
            wait = delay.next()
            log(logger, "configmap_recreate_failed", level=delay.level, error=error, retry_in=round(wait, 2))
            await asyncio.sleep(wait)

    def _adopt_version(self, obj: Mapping[str, Any]) -> None:
        """We wrote the state we already hold (normalised or recreated): only the object's version is new."""
        rv = obj["metadata"]["resourceVersion"]
        n = _rv_number(rv)
        if n is None or self._seen is None or n > self._seen:
            self._seen, self._rv, self._missing = n, rv, False

    # --- requests (worker threads) ----------------------------------------------------------------------

    async def _request(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self._request_sync, what, call, args, kwargs)

    def _request_sync(
        self, what: str, call: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            resp = call(*args, _preload_content=False, _request_timeout=(self.timeout, self.timeout), **kwargs)
            try:
                body: dict[str, Any] = json.loads(resp.data)
            finally:
                resp.release_conn()
        except ApiException:
            raise
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise StoreError(self._unreachable(what, exc)) from None
        return body

    def _unreachable(self, what: str, exc: BaseException) -> str:
        reason = getattr(exc, "reason", None) or exc  # a MaxRetryError wraps the cause
        timeouts = (urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.ConnectTimeoutError, TimeoutError)
        refused = isinstance(reason, urllib3.exceptions.NewConnectionError)  # a ConnectTimeoutError subclass, sadly
        if isinstance(reason, timeouts) and not refused:
            message = (
                f"the Kubernetes API server at {self._host} did not answer within {self.timeout:g}s "
                f"({what} {self.where})"
            )
            if what in ("patch", "create"):
                message += "; the change may still have been applied: /state shows what this replica serves"
            return message
        return f"cannot reach the Kubernetes API server at {self._host} ({what} {self.where}): {reason}"

    def _refused(self, what: str, exc: ApiException) -> str:
        message = exc.reason or ""
        try:
            status = json.loads(exc.body or "")
            message = status.get("message") or message
        except (ValueError, AttributeError):
            pass
        text = f"the Kubernetes API server refused to {what} {self.where}: {exc.status} {message}"
        if exc.status in (401, 403):
            text += (
                f" (the service account needs get, list, watch and patch on configmaps/{self.cm_name}, and create "
                "to create it: see deploy/base/rbac.yaml)"
            )
        return text

    # --- the watch (its own thread) ---------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="bgproxy-configmap-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """List, then watch from the listed version; resume after a server timeout, relist after 410 Gone, back
        off (capped, with jitter) after errors. Runs until close()."""
        delay = Backoff()
        resume: str | None = None
        expired = 0
        while not self._closing.is_set():
            started = time.monotonic()
            error: str | None = None
            step = "list"
            try:
                if resume is None:
                    resume = self.relist()
                step = "watch"
                resume = self.watch_once(resume)
            except ApiException as exc:
                if exc.status == 410:
                    resume = None
                else:
                    error = self._refused(step, exc)
            except StoreError as exc:
                error = str(exc)
            except Exception as exc:  # anything at all: this thread must keep going
                if self._closing.is_set():
                    break
                error = self._unreachable(step, exc)
                if not isinstance(exc, urllib3.exceptions.HTTPError | OSError | ValueError):
                    logger.exception("configmap_watch_unexpected_error")
            if self._closing.is_set():
                break
            if error is None and resume is None:  # 410 Gone: the history is compacted, relist now
                expired += 1
                log(logger, "configmap_watch_expired", action="relist")
                if expired == 1:
                    continue
            elif error is None:
                expired = 0
                if time.monotonic() - started >= HEALTHY_WATCH:
                    delay.reset()
                    continue  # the server ended the watch (its timeout): resume at once
            wait = delay.next()
            if error is not None:
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log(logger, "configmap_watch_failed", level=logging.WARNING, error=error, retry_in=round(wait, 2))
                else:
                    log(logger, "configmap_watch_failed", level=logging.DEBUG, error=error, retry_in=round(wait, 2))
            self._closing.wait(wait)

    def relist(self) -> str:
        """Read the ConfigMap (a list with a field selector: it gives a version to watch from even when the
        ConfigMap does not exist) and hand it to the loop; returns the list's resourceVersion."""
        body = self._request_sync(
            "list", self._v1.list_namespaced_config_map, (self.namespace,), {"field_selector": self._selector}
        )
        rv = str(body["metadata"]["resourceVersion"])
        items = body.get("items") or []
        self._deliver("SNAPSHOT", items[0] if items else None, rv)
        return rv

    def watch_once(self, resource_version: str) -> str | None:
        """One watch request from `resource_version`, until the server ends it: returns the version to resume
        from, or None when it has expired (410 Gone: relist). Raises on errors."""
        seconds = random.randint(*WATCH_TIMEOUT)
        # With _preload_content=False the client returns the raw urllib3 response, which streams.
        resp: urllib3.BaseHTTPResponse = self._v1.list_namespaced_config_map(  # type: ignore[assignment]
            self.namespace,
            field_selector=self._selector,
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=seconds,
            _preload_content=False,
            _request_timeout=(self.timeout, seconds + WATCH_READ_MARGIN),
        )
        with self._lock:
            self._response = resp
        try:
            if self._closing.is_set():
                return resource_version
            if self._failing_since is not None:
                log(logger, "configmap_watch_reconnected", after=round(time.monotonic() - self._failing_since, 2))
                self._failing_since = None
            self._set_connected(True)
            for line in _lines(resp):
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return None
                    raise ApiException(status=obj.get("code") or 500, reason=obj.get("reason"), body=json.dumps(obj))
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if not rv:
                    continue
                resource_version = str(rv)
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._deliver(kind, obj, resource_version)
            return resource_version
        finally:
            self._set_connected(False)
            with self._lock:
                self._response = None
            resp.close()
            resp.release_conn()

    def _set_connected(self, connected: bool) -> None:
        self._connected = connected
        self.metrics.watch_connected.set(1 if connected else 0)

    def _interrupt_watch(self) -> None:
        """Unblock the watch thread's read at once (close() from another thread)."""
        with self._lock:
            resp = self._response
        conn = getattr(resp, "connection", None) if resp is not None else None
        sock = getattr(conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _deliver(self, kind: str, obj: dict[str, Any] | None, rv: str) -> None:
        if self._closing.is_set() or self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._receive, kind, obj, rv)
        except RuntimeError:  # the loop is closed: we are shutting down
            pass

    # --- applying what the API server says (on the loop) ------------------------------------------------

    def _receive(self, kind: str, obj: dict[str, Any] | None, rv: str) -> None:
        """A change from the watch, a relist or a re-read, in the order it happened."""
        self._news.set()
        n = _rv_number(rv)
        if n is not None and self._seen is not None and n <= self._seen:
            return  # already known, e.g. our own write, applied when the API server accepted it
        if n is not None:
            self._seen = n
        if kind == "DELETED" or obj is None:
            known = self._rv is None  # a relist that finds it still missing
            self._rv = None
            if self._state is None:
                self._missing = True
            elif not known:
                log(
                    logger,
                    "configmap_deleted",
                    level=logging.WARNING,
                    configmap=self.where,
                    active=self._state.active.value,
                    note="serving the last state and recreating the ConfigMap with it",
                )
                self._spawn(self._recreate(self._state))
            return
        meta = obj.get("metadata") or {}
        obj_rv = str(meta.get("resourceVersion", rv))
        if obj_rv == self._rv and not self._missing:
            return  # this very version was applied already (a relist that found nothing new)
        self._rv = obj_rv
        self._missing = False
        reading = read_configmap(obj.get("data"), self._state, now=time.time())
        if reading.problems:
            self.metrics.config_errors.labels("configmap").inc()
            log(
                logger,
                "configmap_invalid",
                level=logging.WARNING,
                configmap=self.where,
                resource_version=self._rv,
                problems=list(reading.problems),
                kept=self._state.active.value if self._state is not None else None,
            )
        if reading.state is None:
            return
        if reading.state != self._state:
            self._state = reading.state
            self._seq += 1
            self._queue.put_nowait((self._seq, reading.state))
        if reading.normalise:
            self._spawn(self._normalise(reading.state, self._rv))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _lines(resp: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """The lines of a watch stream as they arrive (the API server sends one JSON event per line, chunked)."""
    buffer = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        buffer += chunk
        while (i := buffer.find(b"\n")) >= 0:
            line, buffer = buffer[:i], buffer[i + 1 :]
            if line.strip():
                yield line
