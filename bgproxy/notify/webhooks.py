"""Webhooks: every state change this replica owns is POSTed as JSON to each of `WEBHOOK_URLS`, signed with
HMAC-SHA256 when a secret is set. One outbox per receiver, so a slow one delays neither a flip nor the others.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .. import __version__
from ..core.model import State
from ..metrics import Metrics
from ..state import StateHolder
from .outbox import BACKOFF, QUEUE_SIZE, DeliveryError, Notice, Outbox

SIGNATURE_HEADER = "X-Bgproxy-Signature"
EVENT_HEADER = "X-Bgproxy-Event"


def payload(notice: Notice) -> dict[str, Any]:
    """The JSON body of one change (README, "Webhooks")."""
    new = notice.new
    return {
        "id": notice.id,
        "event": notice.event,
        "active": new.active.value,
        "previous": new.previous.value if new.previous is not None else None,
        "weight": new.weight,
        "rollout": new.rollout.to_dict() if new.rollout is not None else None,
        "release": new.release,
        "revision": new.revision,
        "source": new.source,
        "reason": new.reason,
        "forced": new.forced,
        "at": new.updated_at,
    }


def signature(secret: bytes, body: bytes) -> str:
    """The `X-Bgproxy-Signature` value: `sha256=` and the hex HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def receiver(url: str) -> str:
    """A receiver as logs may name it: scheme, host and port only (a Slack-style URL carries its secret in the path)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


class Webhooks:
    """The webhook notifier: a holder listener and one outbox per URL; `start` and `stop` belong to the app."""

    def __init__(
        self,
        holder: StateHolder,
        metrics: Metrics,
        urls: tuple[str, ...],
        *,
        secret: str | None,
        timeout: float,
        queue_size: int = QUEUE_SIZE,
        backoff: float = BACKOFF,
    ) -> None:
        self.holder = holder
        self.secret = secret.encode() if secret is not None else None
        self.timeout = timeout  # seconds per try, which the outbox enforces
        self.outboxes = [
            Outbox(
                "webhook",
                functools.partial(self._post, url),
                metrics.webhook_deliveries,
                timeout=timeout,
                size=queue_size,
                backoff=backoff,
                fields={"receiver": receiver(url), "index": i},
            )
            for i, url in enumerate(urls)
        ]
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": f"bgproxy/{__version__}"},
        )
        for outbox in self.outboxes:
            outbox.start()
        self.holder.owners.append(self.changed)

    async def stop(self) -> None:
        if self.changed in self.holder.owners:
            self.holder.owners.remove(self.changed)
        for outbox in self.outboxes:
            await outbox.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def changed(self, old: State, new: State) -> None:
        """A holder owner: only the replica that owns the change (it wrote it) delivers it."""
        notice = Notice.of(old, new)
        for outbox in self.outboxes:
            outbox.put(notice)

    async def _post(self, url: str, notice: Notice) -> None:
        assert self._session is not None
        body = json.dumps(payload(notice), separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", EVENT_HEADER: notice.event}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = signature(self.secret, body)
        try:
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                if not 200 <= resp.status < 300:
                    raise DeliveryError(f"answered {resp.status} {resp.reason or ''}".rstrip())
        except TimeoutError:
            raise DeliveryError(f"no answer within {self.timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
