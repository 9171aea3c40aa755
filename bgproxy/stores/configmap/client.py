"""The Kubernetes API as the ConfigMap store sees it: the client's configuration, bounded calls on one ConfigMap (and
on the Events about it), the wording of what went wrong (for people: logs, /switch errors), and the backoff between
attempts.

Errors leave this module as ours: `Refused` when the API server answered with an error status, `StoreError` when
it could not be reached or did not answer in time.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable, Mapping
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from ..interface import StoreError

BACKOFF_START, BACKOFF_CAP = 0.2, 2.0  # seconds: reconnects and retries double from 0.2 s up to 2 s, with jitter
MERGE_PATCH = "application/merge-patch+json"
EVENT_CREATE, EVENT_PATCH = "create an Event about", "patch an Event about"  # what a refusal's message says
LABELS = {"app.kubernetes.io/name": "bgproxy"}  # on a ConfigMap bgproxy creates

# A transport failure, as the client raises it: the API server was not reached, or did not answer in time.
UNREACHABLE = (urllib3.exceptions.HTTPError, OSError, ValueError)


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


class Refused(StoreError):
    """The API server answered with an error `status` (404 missing, 409 conflict, 410 expired, 403 RBAC, ...)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


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
    # No retries inside urllib3: the store retries, with backoff, where a retry is safe.
    configuration.retries = False
    configuration.keep_alive = True  # client-go's TCP keepalive: a silently dead peer is noticed
    return client.ApiClient(configuration)


class ConfigMapApi:
    """The calls on one ConfigMap, blocking (run them in a thread), each bounded by `timeout` seconds to connect
    and then to read. Each returns the API server's answer as JSON, or raises `Refused` or `StoreError`."""

    def __init__(self, name: str, namespace: str, *, timeout: float) -> None:
        self.name = name
        self.namespace = namespace
        self.timeout = timeout
        self._client = api_client()
        self._v1 = client.CoreV1Api(self._client)
        self._host = self._client.configuration.host
        # Every list and watch selects the one ConfigMap: RBAC can then be limited to it.
        self._selector = f"metadata.name={name}"

    @property
    def where(self) -> str:
        return f"ConfigMap {self.namespace}/{self.name}"

    def list(self) -> dict[str, Any]:
        """A list with a field selector: unlike a get, it gives a version to watch from even when it is missing."""
        return self._call("list", self._v1.list_namespaced_config_map, self.namespace, field_selector=self._selector)

    def read(self) -> dict[str, Any]:
        return self._call("read", self._v1.read_namespaced_config_map, self.name, self.namespace)

    def create(self, data: dict[str, str]) -> dict[str, Any]:
        body = {"metadata": {"name": self.name, "labels": LABELS}, "data": data}
        return self._call("create", self._v1.create_namespaced_config_map, self.namespace, body)

    def patch(self, data: Mapping[str, str | None], *, resource_version: str) -> dict[str, Any]:
        """Merge `data` in (a key whose value is None is removed), if the ConfigMap is still at `resource_version`
        (else `Refused` with 409)."""
        patch = {"metadata": {"resourceVersion": resource_version}, "data": data}
        call = self._v1.patch_namespaced_config_map
        return self._call("patch", call, self.name, self.namespace, patch, _content_type=MERGE_PATCH)

    def create_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """Create a core/v1 Event in the ConfigMap's namespace (`Refused` with 409 when one of its name exists)."""
        return self._call(EVENT_CREATE, self._v1.create_namespaced_event, self.namespace, event)

    def patch_event(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge `patch` into the Event `name`. An empty patch changes nothing and answers the Event as it is: the
        read that RBAC's create and patch on events allow."""
        call = self._v1.patch_namespaced_event
        return self._call(EVENT_PATCH, call, name, self.namespace, patch, _content_type=MERGE_PATCH)

    def watch(self, resource_version: str, *, seconds: int, read_timeout: float) -> urllib3.BaseHTTPResponse:
        """Open a watch from `resource_version` that the server ends after `seconds`; the caller streams it.

        Bookmarks keep the version to resume from current while the ConfigMap does not change."""
        try:
            # With _preload_content=False the client returns the raw urllib3 response, which streams.
            resp: urllib3.BaseHTTPResponse = self._v1.list_namespaced_config_map(  # type: ignore[assignment]
                self.namespace,
                field_selector=self._selector,
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=seconds,
                _preload_content=False,
                _request_timeout=(self.timeout, read_timeout),
            )
        except ApiException as exc:
            raise self._refused("watch", exc) from None
        except UNREACHABLE as exc:
            raise StoreError(self.unreachable("watch", exc)) from None
        return resp

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    def _call(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            resp = call(*args, _preload_content=False, _request_timeout=(self.timeout, self.timeout), **kwargs)
            try:
                body: dict[str, Any] = json.loads(resp.data)
            finally:
                resp.release_conn()
        except ApiException as exc:
            raise self._refused(what, exc) from None
        except UNREACHABLE as exc:
            raise StoreError(self.unreachable(what, exc)) from None
        return body

    # --- what went wrong, for people ----------------------------------------------------------------------

    def unreachable(self, what: str, exc: BaseException) -> str:
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

    def refusal(self, what: str, status: int, message: str) -> Refused:
        text = f"the Kubernetes API server refused to {what} {self.where}: {status} {message}"
        if status in (401, 403) and what in (EVENT_CREATE, EVENT_PATCH):
            text += " (the service account needs create and patch on events: see deploy/base/rbac.yaml)"
        elif status in (401, 403):
            text += (
                f" (the service account needs get, list, watch and patch on configmaps/{self.name}, and create "
                "to create it: see deploy/base/rbac.yaml)"
            )
        return Refused(text, status=status)

    def _refused(self, what: str, exc: ApiException) -> Refused:
        message = exc.reason or ""
        try:
            status = json.loads(exc.body or "")
            message = status.get("message") or message
        except (ValueError, AttributeError):
            pass
        return self.refusal(what, exc.status, message)
