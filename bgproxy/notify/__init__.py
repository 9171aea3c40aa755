"""Telling the world about state changes, once per change across replicas: webhooks (`webhooks`) and, with the
`configmap` store, Kubernetes Events on the ConfigMap (`events`). Both listen to the state holder, act only on the
changes this replica wrote (the holder's `own` flag), and deliver from a bounded queue in the background
(`outbox`), so that no receiver can delay a flip or the data plane.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..metrics import Metrics
    from ..settings import Settings
    from ..state import StateHolder


class Notifier(Protocol):
    def start(self) -> None:
        """Listen to the holder and start delivering."""

    async def stop(self) -> None:
        """Stop listening, cancel the delivery and wait for it; what is still queued is counted as dropped."""


def open_notifiers(settings: Settings, holder: StateHolder, metrics: Metrics) -> list[Notifier]:
    """The notifiers the settings ask for; imports lazily so that `memory` and `file` never load the kubernetes
    client."""
    notifiers: list[Notifier] = []
    if settings.webhook_urls:
        from .webhooks import Webhooks

        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret is not None else None
        notifiers.append(
            Webhooks(holder, metrics, settings.webhook_urls, secret=secret, timeout=settings.webhook_timeout)
        )
    if settings.state_backend == "configmap":
        from .events import KubeEvents

        notifiers.append(
            KubeEvents(
                holder,
                metrics,
                configmap=settings.configmap_name,
                namespace=settings.namespace,
                timeout=settings.configmap_timeout,
            )
        )
    return notifiers
