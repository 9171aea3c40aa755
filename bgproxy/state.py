"""The holder of the current routing state: the one object a change swaps.

The data plane reads `holder.current` once per request. Changes are decided by the pure functions of `core`,
written to the store with the revision they were based on, and only then swapped in, so memory and store never
disagree. Changes made by others (another replica, GitOps) arrive through `store.changes()`. Every new revision is a
history entry, and is told to whoever listens (the step driver, later webhooks and the dashboard).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .core.model import Color, State, initial_state
from .core.routing import event
from .log import log
from .metrics import Metrics
from .stores import Store, StoreConflict, StoreError

logger = logging.getLogger("bgproxy.state")
HISTORY_SIZE = 100
MAX_CONFLICT_RETRIES = 5
OWNED_BACKLOG = 16  # changes from outside kept until the store says whether this replica's write settled them

Decision = Callable[[State], State]
# (old, new): `listeners` hear every new revision applied here, once; `owners` hear, once, each change this replica
# owns: the ones it wrote, and the outside edits (kubectl, Git) whose settling write the store says was its own
# (`Store.on_owned`). What must happen once per change across replicas (a webhook, an Event) listens as an owner.
Listener = Callable[[State, State], None]


class StateHolder:
    def __init__(self, store: Store, metrics: Metrics, *, initial_active: Color) -> None:
        self.store = store
        self.metrics = metrics
        self.initial_active = initial_active
        self.current = initial_state(initial_active, now=time.time())
        self.loaded = False
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_SIZE)
        self.listeners: list[Listener] = []
        self.owners: list[Listener] = []
        self._writing: State | None = None  # the state this replica is writing: its own when it comes back
        self._unowned: deque[tuple[State, State]] = deque(maxlen=OWNED_BACKLOG)  # (old, new) told as others'
        self._owned_early: deque[State] = deque(maxlen=OWNED_BACKLOG)  # settled here before they were applied
        self._lock = asyncio.Lock()
        store.on_owned(self._owned)

    async def load(self) -> State:
        """Read the stored state, or store the initial one; until then the proxy is not ready."""
        async with self._lock:
            stored = await self.store.load()
            if stored is None:
                fresh = initial_state(self.initial_active, now=time.time())
                try:
                    stored = await self.store.write(fresh, expected_revision=-1)
                except StoreConflict as exc:
                    stored = exc.current
            self._swap(stored, flipped=False)
            self.loaded = True
            # debug: the app's "listening" line says the same once the replica serves, and a start that fails
            # after this (an address in use) then ends with one line, the error
            log(
                logger,
                "state_loaded",
                level=logging.DEBUG,
                store=self.store.name,
                active=stored.active.value,
                revision=stored.revision,
            )
            return stored

    async def change(self, decide: Decision) -> State:
        """Apply a decision through the store; on a conflict decide again from the newer state."""
        async with self._lock:
            for _ in range(MAX_CONFLICT_RETRIES):
                base = self.current
                new = decide(base)
                if new is base:
                    return base
                self._writing = new
                try:
                    stored = await self.store.write(new, expected_revision=base.revision)
                except StoreConflict as exc:
                    # Expected with several replicas (their timers race for each step): decide again, quietly.
                    log(logger, "state_conflict", level=logging.DEBUG, revision=exc.current.revision)
                    self._apply(exc.current)
                    continue
                finally:
                    self._writing = None
                self._apply(stored, own=stored == new)
                return stored
            raise StoreError("the state kept changing concurrently; try again")

    async def follow(self) -> None:
        """Apply the states written by others (the store delivers them in the order they happened); runs until
        cancelled."""
        async for state in self.store.changes():
            self._apply(state)

    def _owned(self, state: State) -> None:
        """The store says this replica's write settled `state`, a change made outside bgproxy: this replica owns it.
        Tell the listeners again, as its writer; or, not applied yet, when it is."""
        for i, (old, new) in enumerate(self._unowned):
            if new == state:
                del self._unowned[i]
                self._tell_owners(old, new)
                return
        if state.revision > self.current.revision:
            self._owned_early.append(state)

    def _apply(self, new: State, *, own: bool = False) -> None:
        old = self.current
        # A store may deliver this replica's own write through its change stream before the write returns.
        own = own or (self._writing is not None and new == self._writing)
        if not own and new in self._owned_early:
            self._owned_early.remove(new)
            own = True
        if new == old:
            return
        flipped = new.active is not old.active
        self._swap(new, flipped=flipped)
        if new.revision == old.revision:
            # The same change read again: a store restored its own copy, or an edit every replica applied came back
            # as the copy the store settled on (its time is the winner's). Nothing happened; history shows that copy,
            # so its time, and a webhook's id, are the same on every replica.
            if self.history and self.history[0]["revision"] == new.revision:
                self.history[0]["when"] = new.updated_at
            return
        kind = event(old, new)
        self.history.appendleft(
            {
                "when": new.updated_at,
                "event": kind,
                "from": old.active.value,
                "to": new.active.value,
                "weight": new.weight,
                "revision": new.revision,
                "source": new.source,
                "reason": new.reason,
                "forced": new.forced,
            }
        )
        sent_to = new.active if flipped else new.standby if new.weight > old.weight else None
        if sent_to is not None and not self.metrics.healthy[sent_to]:
            # Git is the source of truth for a ConfigMap change: applied, but nobody should miss it.
            self.metrics.unhealthy_switches.labels(new.source).inc()
            log(logger, "switched_to_unhealthy", level=logging.WARNING, to=sent_to.value, source=new.source)
        log(
            logger,
            kind,
            old=old.active.value,
            new=new.active.value,
            weight=new.weight,
            step=new.rollout.step if new.rollout is not None else None,
            revision=new.revision,
            source=new.source,
            reason=new.reason,
        )
        for listener in self.listeners:
            listener(old, new)
        if own:
            self._tell_owners(old, new)
        else:
            self._unowned.append((old, new))

    def _tell_owners(self, old: State, new: State) -> None:
        for owner in self.owners:
            owner(old, new)

    def _swap(self, new: State, *, flipped: bool) -> None:
        self.current = new
        self.metrics.state_changed(new, flipped=flipped)
