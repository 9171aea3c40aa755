"""Kubernetes Events about state changes, with the `configmap` store: each change this replica owns becomes an Event
on the ConfigMap, which `kubectl get events` and `kubectl describe configmap` show.

Deduplicated across replicas as client-go's event correlator does within one process: the Event's name is derived
from what it says (the ConfigMap's uid, type, reason and message), so a repeat of the same change, written by any
replica, finds the Event there and patches its `count` and `lastTimestamp` (with a resourceVersion precondition)
instead of creating another. RBAC grants create and patch on events, nothing more: a patch that changes nothing is
the read.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from typing import Any

from ..core.model import State
from ..metrics import Metrics
from ..state import StateHolder
from ..stores import StoreError
from ..stores.configmap.client import LABELS, ConfigMapApi, Refused
from .outbox import BACKOFF, QUEUE_SIZE, DeliveryError, Notice, Outbox

COMPONENT = "bgproxy"  # the Event's source, as kubectl shows it
NORMAL, WARNING = "Normal", "Warning"
# A change's history event -> the Event's reason (CamelCase, as Kubernetes' own) and type.
REASONS: dict[str, tuple[str, str]] = {
    "switch": ("Switched", NORMAL),
    "promoted": ("Promoted", NORMAL),
    "shift": ("Shifted", NORMAL),
    "step": ("Stepped", NORMAL),
    "paused": ("Paused", NORMAL),
    "resumed": ("Resumed", NORMAL),
    "aborted": ("Aborted", NORMAL),
    "auto-rollback": ("AutoRollback", WARNING),
    "auto-promote": ("AutoPromoted", NORMAL),
    "release": ("Released", NORMAL),
}
MAX_MESSAGE = 1024  # characters (events.k8s.io's limit for a note; core/v1 has none, kubectl prints it whole)
MAX_NAME = 253
DIGEST = 16  # hex digits of the name's hash: 64 bits, no two different Events of one ConfigMap share a name
MAX_RACES = 5  # patches that lose to a concurrent one (another replica's repeat) before giving up this try


def message(notice: Notice) -> str:
    """What happened, then why: `green is active (was blue): release 42`."""
    old, new = notice.old, notice.new
    if new.active is not old.active:
        what = f"{new.active.value} is active (was {old.active.value})"
    elif notice.event == "release":
        what = f"release {new.release} on {new.standby.value}"
    elif new.rollout is not None:
        plan = new.rollout
        what = f"step {plan.step + 1} of {len(plan.steps)}: {new.weight}% to {new.standby.value}"
        what += " (paused)" if plan.paused else ""
    elif new.weight == 0:
        what = f"all traffic on {new.active.value}"
    else:
        what = f"{new.weight}% to {new.standby.value}"
    reason = new.reason.strip()
    return (f"{what}: {reason}" if reason else what)[:MAX_MESSAGE]


def event_name(configmap: str, uid: str, kind: str, reason: str, text: str) -> str:
    """The same name for the same Event from every replica: what client-go's correlator keys repeats on."""
    digest = hashlib.sha256("\0".join((uid, kind, reason, text)).encode()).hexdigest()[:DIGEST]
    return f"{configmap[: MAX_NAME - DIGEST - 1]}.{digest}"


def timestamp(seconds: float) -> str:
    """metav1.Time: RFC 3339 in UTC, whole seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class KubeEvents:
    """The Events notifier: a holder listener and one outbox; `start` and `stop` belong to the app."""

    def __init__(
        self,
        holder: StateHolder,
        metrics: Metrics,
        *,
        configmap: str,
        namespace: str,
        timeout: float,
        queue_size: int = QUEUE_SIZE,
        backoff: float = BACKOFF,
    ) -> None:
        self.holder = holder
        self._api = ConfigMapApi(configmap, namespace, timeout=timeout)  # each call bounded by `timeout`
        self.instance = socket.gethostname()  # in a pod: the pod's name
        self.outbox = Outbox(
            "kubernetes_event", self._record, metrics.kubernetes_events, timeout=None, size=queue_size, backoff=backoff
        )

    def start(self) -> None:
        self.outbox.start()
        self.holder.owners.append(self.changed)

    async def stop(self) -> None:
        if self.changed in self.holder.owners:
            self.holder.owners.remove(self.changed)
        await self.outbox.stop()
        self._api.close()

    def changed(self, old: State, new: State) -> None:
        """A holder owner: only the replica that owns the change (it wrote it) records it."""
        self.outbox.put(Notice.of(old, new))

    async def _record(self, notice: Notice) -> None:
        """One try: create the Event, or count a repeat of it."""
        try:
            await self._create_or_count(notice)
        except StoreError as exc:
            raise DeliveryError(str(exc)) from None

    async def _create_or_count(self, notice: Notice) -> None:
        configmap = await asyncio.to_thread(self._api.read)
        meta = configmap["metadata"]
        reason, kind = REASONS.get(notice.event, ("Changed", NORMAL))
        text = message(notice)
        name = event_name(self._api.name, meta["uid"], kind, reason, text)
        at = timestamp(notice.new.updated_at)
        event: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": self._api.namespace, "labels": LABELS},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "namespace": self._api.namespace,
                "name": self._api.name,
                "uid": meta["uid"],
                "resourceVersion": meta["resourceVersion"],
            },
            "type": kind,
            "reason": reason,
            "message": text,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance,
            "firstTimestamp": at,
            "lastTimestamp": at,
            "count": 1,
        }
        for _ in range(MAX_RACES):
            try:
                await asyncio.to_thread(self._api.create_event, event)
                return
            except Refused as exc:
                if exc.status != 409:  # 409: it exists, a repeat
                    raise
            try:
                current = await asyncio.to_thread(self._api.patch_event, name, {})
                repeat = {
                    "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                    "count": int(current.get("count") or 1) + 1,
                    "lastTimestamp": at,
                    "reportingInstance": self.instance,
                }
                await asyncio.to_thread(self._api.patch_event, name, repeat)
                return
            except Refused as exc:
                if exc.status not in (404, 409):  # 404: it expired meanwhile; 409: another replica counted first
                    raise
        raise DeliveryError(f"the Event {name} kept changing concurrently")
