"""The `configmap` store: the Store interface over one ConfigMap, shared by every replica and by GitOps.

Writes carry the resourceVersion last seen as a precondition (a 409 is a conflict); what the watch thread sees is
applied on the event loop, in order, newest resourceVersion wins; edits are normalised, a deleted ConfigMap put back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from ...core.model import State
from ...log import log
from ..interface import StoreConflict, StoreError
from .client import Backoff, ConfigMapApi, Refused
from .codec import configmap_data, configmap_patch, read_configmap
from .watch import ConfigMapWatch

if TYPE_CHECKING:
    from ...metrics import Metrics

logger = logging.getLogger("bgproxy.configmap")


def _nobody(state: State) -> None:
    return None


def rv_number(rv: str | None) -> int | None:
    """A resourceVersion as the integer it is on kube-apiserver (an etcd revision); None if it is not one."""
    try:
        return int(rv) if rv is not None else None
    except ValueError:
        return None


class ConfigMapStore:
    """One per process: its watch thread feeds `changes()`; its writes go through the API server's precondition."""

    name = "configmap"

    def __init__(self, name: str, namespace: str, metrics: Metrics, *, timeout: float = 10.0) -> None:
        self.cm_name = name
        self.namespace = namespace
        self.metrics = metrics
        self.timeout = timeout  # seconds, for each request to the API server (connect, then read)
        self._api = ConfigMapApi(name, namespace, timeout=timeout)
        self._watch = ConfigMapWatch(self._api, metrics, self._from_watch)
        # Only touched on the event loop.
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
        self._closing = False
        self._owned: Callable[[State], None] = _nobody  # told of the edits whose normalising write was ours

    @property
    def where(self) -> str:
        return self._api.where

    # --- the Store protocol -----------------------------------------------------------------------------

    async def load(self) -> State | None:
        """The ConfigMap's state once the API server answers; None if the ConfigMap does not exist.

        Waits (the replica stays not ready) while the API server is unreachable, and while the ConfigMap holds
        no valid colour: a replica never serves a guessed one.
        """
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._watch.start()
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
            except Refused as exc:
                if exc.status == 404:  # deleted meanwhile
                    try:
                        obj = await self._create(new)
                    except Refused as again:
                        if again.status == 409:
                            return await self._after_conflict(new)
                        raise
                elif exc.status == 409:
                    return await self._after_conflict(new)
                else:
                    raise
            return self._adopt_write(new, obj)

    async def changes(self) -> AsyncIterator[State]:
        while True:
            seq, state = await self._queue.get()
            if seq <= self._handed:  # the holder already has this one or a newer one
                continue
            self._handed = seq
            yield state

    def on_owned(self, callback: Callable[[State], None]) -> None:
        self._owned = callback

    def describe(self) -> dict[str, object]:
        return {
            "backend": self.name,
            "name": self.cm_name,
            "namespace": self.namespace,
            "connected": self._watch.connected,
            "resource_version": self._rv,
        }

    async def close(self) -> None:
        self._closing = True
        self._watch.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self._watch.join, self.timeout + 2)
        self._api.close()

    # --- writes (the API calls run in worker threads) ---------------------------------------------------

    async def _patch(self, state: State, rv: str) -> dict[str, Any]:
        return await asyncio.to_thread(self._api.patch, configmap_patch(state), resource_version=rv)

    async def _create(self, state: State) -> dict[str, Any]:
        return await asyncio.to_thread(self._api.create, configmap_data(state))

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
                except Refused as exc:
                    if exc.status == 409:  # created meanwhile (another replica, kubectl): read what is there
                        try:
                            if await self._reread() is not None:
                                continue
                            error = f"{self.where} was created and deleted again meanwhile"
                        except StoreError as again:
                            error = str(again)
                    else:
                        error = str(exc)
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
            obj = await asyncio.to_thread(self._api.read)
        except Refused as exc:
            if exc.status != 404:
                raise
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
        n = rv_number(rv)
        if n is not None and self._seen is not None and n <= self._seen and self._state is not None:
            # The watch delivered this write already, and maybe newer changes: those win.
            self._handed = self._seq
            return self._state
        self._seen, self._rv, self._missing = n, rv, False
        self._state = new
        self._seq += 1
        self._handed = self._seq
        return new

    def _adopt_version(self, obj: Mapping[str, Any]) -> None:
        """We wrote the state we already hold (normalised or recreated): only the object's version is new."""
        rv = obj["metadata"]["resourceVersion"]
        n = rv_number(rv)
        if n is None or self._seen is None or n > self._seen:
            self._seen, self._rv, self._missing = n, rv, False

    # --- repairs: write back what every replica serves, until done or no longer needed ------------------

    async def _normalise(self, state: State, rv: str) -> None:
        """Write the blob for an edit of `active`, so every replica converges on one state object."""
        await self._repair("configmap_normalise_failed", lambda: self._normalise_once(state, rv))

    async def _normalise_once(self, state: State, rv: str) -> str | None:
        if self._rv != rv or self._state != state:
            return None  # something newer came meanwhile
        try:
            obj = await self._patch(state, rv)
        except Refused as exc:
            if exc.status in (404, 409):  # deleted, or another replica (or someone) wrote first
                return None
            return str(exc)
        except StoreError as exc:
            return str(exc)
        self._adopt_version(obj)
        log(logger, "configmap_normalised", revision=state.revision, resource_version=self._rv)
        # The precondition let exactly one replica's write of this edit through: this one owns the change.
        self._owned(state)
        return None

    async def _recreate(self, state: State) -> None:
        """Put a deleted ConfigMap back, holding the state every replica serves: a replica starting now then reads
        that state, instead of creating the ConfigMap with BGPROXY_INITIAL_ACTIVE and flipping everyone to it."""
        await self._repair("configmap_recreate_failed", lambda: self._recreate_once(state))

    async def _recreate_once(self, state: State) -> str | None:
        if self._rv is not None or self._state != state:
            return None  # it is back (another replica, kubectl, Git), or a flip recreated it
        try:
            obj = await self._create(state)
        except Refused as exc:
            if exc.status == 409:  # someone was faster: the watch brings what they created
                return None
            return str(exc)
        except StoreError as exc:
            return str(exc)
        self._adopt_version(obj)
        log(logger, "configmap_recreated", configmap=self.where, active=state.active.value)
        return None

    async def _repair(self, failed: str, attempt: Callable[[], Awaitable[str | None]]) -> None:
        """Run `attempt` under the write lock until it returns no error (None: done, or no longer needed), backing
        off between failures, which are logged as `failed`."""
        delay = Backoff()
        while not self._closing:
            async with self._write_lock:
                error = await attempt()
            if error is None:
                return
            wait = delay.next()
            log(logger, failed, level=delay.level, error=error, retry_in=round(wait, 2))
            await asyncio.sleep(wait)

    # --- applying what the API server says (on the loop) ------------------------------------------------

    def _from_watch(self, kind: str, obj: dict[str, Any] | None, rv: str) -> None:
        """The watch thread's events, handed to the loop in the order they happened."""
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._receive, kind, obj, rv)
        except RuntimeError:  # the loop is closed: we are shutting down
            pass

    def _receive(self, kind: str, obj: dict[str, Any] | None, rv: str) -> None:
        """A change from the watch, a relist or a re-read, in the order it happened."""
        self._news.set()
        n = rv_number(rv)
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
