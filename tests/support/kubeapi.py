"""A small, protocol-faithful Kubernetes API server for tests (ConfigMaps and core/v1 Events).

No kube-apiserver can be installed where these tests run, yet bgproxy's ``configmap`` state backend must be
tested against the real wire protocol: the official ``kubernetes`` Python client, ``kubectl``, resourceVersion
preconditions, 409/410 Status objects, watch streams that resume, expire and end.  This module serves exactly
that subset of the API on 127.0.0.1 from a background thread with its own event loop, so synchronous clients,
async tests and ``bgproxy serve`` subprocesses can all talk to it.

Semantics copied from the real server (and tested in ``tests/test_kubeapi.py``):

* one global resourceVersion counter; every write bumps it, a no-op write does not;
* ``metadata.resourceVersion`` in a PUT body or in a patched object is a precondition (409 Conflict);
* watches resume strictly after ``resourceVersion``; a version older than the retained history gets a single
  ``ERROR`` event carrying a 410 ``Expired`` Status; bookmarks and ``timeoutSeconds`` behave as upstream;
* discovery and OpenAPI v3 are just rich enough for kubectl 1.32 (legacy discovery is accepted by kubectl
  after it asks for the aggregated format; OpenAPI v3 advertises server-side ``fieldValidation``), and the
  protobuf body that ``kubectl create configmap`` sends is decoded;
* Events (core/v1, what client-go's recorder and ``kubectl get events``/``kubectl events`` use) share the one
  resourceVersion counter; their field selectors (``involvedObject.name``, ``reason``, ``type``...) and server-side
  table (LAST SEEN, TYPE, REASON, OBJECT, MESSAGE, and with ``-o wide`` SOURCE, COUNT...) are the apiserver's.

Deliberately left out: other resources, authentication, managedFields and server-side apply, ``limit`` and
``continue`` paging (servers may return everything), set-based label selectors, dry runs, the TTL after which the
real server deletes Events (an hour by default), events.k8s.io/v1.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import random
import re
import shutil
import socket
import subprocess
import threading
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}  # Go's strconv.ParseBool, which the apiserver uses
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}
_TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")  # RFC 3339
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
_NS_MISMATCH = "the namespace of the provided object does not match the namespace sent on the request"


class ApiError(Exception):
    """An error the API server reports as a ``Status`` object (what clients parse into typed errors)."""

    def __init__(
        self, code: int, message: str, reason: str | None = None, name: str | None = None, resource: str = "configmaps"
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.name, self.resource = code, message, name, resource
        self.reason = reason or _REASONS.get(code, "")

    def status(self) -> Obj:
        details: Obj = {"name": self.name, "kind": self.resource} if self.name else {}
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": details,
            "code": self.code,
        }

    def response(self) -> web.Response:
        headers = {"Retry-After": "1"} if self.code == 429 else None
        return web.json_response(self.status(), status=self.code, headers=headers)


def _not_found(name: str, resource: str = "configmaps") -> ApiError:
    return ApiError(404, f'{resource} "{name}" not found', name=name, resource=resource)


def _conflict(
    name: str,
    why: str = "the object has been modified; please apply your changes to the latest version and try again",
    resource: str = "configmaps",
) -> ApiError:
    return ApiError(409, f'Operation cannot be fulfilled on {resource} "{name}": {why}', name=name, resource=resource)


def _expired(rv: int, oldest: int) -> ApiError:
    return ApiError(410, f"too old resource version: {rv} ({oldest})")


def parse_bool(value: str | None, param: str) -> bool:
    """Parse a boolean query parameter the way the apiserver does (``watch=1``, ``watch=True``...)."""
    if value is None or value == "":
        return False
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise ApiError(400, f'invalid value for {param}: strconv.ParseBool: parsing "{value}": invalid syntax')


@dataclass(frozen=True)
class Event:
    """One committed write: the object after it (for DELETED: the last state, at the deletion's RV)."""

    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    obj: Obj
    prev: Obj | None


Subscriber = Callable[[Event], None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Clock:
    """etcd's one revision counter, shared by every resource."""

    def __init__(self) -> None:
        self.rv = 1


class ObjectStore:
    """Thread-safe storage of one resource (ConfigMaps, Events) with etcd-like revisions and a bounded event history.

    Writes come from the server's loop and, directly, from test threads; watchers are notified through a
    callback that must be thread-safe (the server uses ``loop.call_soon_threadsafe``). The stores of one server
    share their lock, condition and revision counter (``shared``), as every resource shares etcd's.
    """

    def __init__(
        self,
        history_size: int = 1000,
        *,
        resource: str = "configmaps",
        kind: str = "ConfigMap",
        shared: ObjectStore | None = None,
    ) -> None:
        self.resource, self.kind = resource, kind
        self.validate = _VALIDATORS[kind]
        self.lock: threading.RLock = shared.lock if shared is not None else threading.RLock()
        # notified on every write and every request
        self.changed: threading.Condition = shared.changed if shared is not None else threading.Condition(self.lock)
        self._clock: _Clock = shared._clock if shared is not None else _Clock()
        self.history_size = history_size
        self.compacted_rv = 1  # events with rv <= compacted_rv are forgotten; watching from older is 410
        self._objects: dict[Key, Obj] = {}
        self._history: deque[Event] = deque()
        self._subscribers: set[Subscriber] = set()

    @property
    def rv(self) -> int:
        return self._clock.rv

    @rv.setter
    def rv(self, value: int) -> None:
        self._clock.rv = value

    def get(self, ns: str, name: str) -> Obj | None:
        with self.lock:
            obj = self._objects.get((ns, name))
            return copy.deepcopy(obj) if obj is not None else None

    def snapshot(self, ns: str | None, rv: int | None = None, exact: bool = False) -> tuple[list[Obj], int]:
        """Current objects (with ``exact``: the state as of ``rv``, rebuilt from history) and the list RV."""
        with self.lock:
            if rv is not None and rv > self.rv:
                raise ApiError(504, f"Too large resource version: {rv}, current: {self.rv}", "Timeout")
            state, list_rv = dict(self._objects), self.rv
            if exact and rv is not None:
                if rv < self.compacted_rv:
                    raise _expired(rv, self.compacted_rv)
                for ev in reversed(self._history):
                    if ev.rv <= rv:
                        break
                    key = _key(ev.obj)
                    if ev.prev is None:
                        state.pop(key, None)
                    else:
                        state[key] = ev.prev
                list_rv = rv
            items = [state[k] for k in sorted(state) if ns is None or k[0] == ns]
            return copy.deepcopy(items), list_rv

    def create(self, obj: Obj) -> Obj:
        with self.lock:
            meta = obj["metadata"]
            if (meta["namespace"], meta["name"]) in self._objects:
                name = meta["name"]
                raise ApiError(409, f'{self.resource} "{name}" already exists', "AlreadyExists", name, self.resource)
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now())
            return self._commit("ADDED", obj, None)

    def update(self, ns: str, name: str, change: Callable[[Obj], Obj]) -> Obj:
        """Apply ``change`` to a copy of the current object, atomically.

        A resourceVersion or uid left in the result is a precondition (409 when stale), as in the apiserver.
        """
        with self.lock:
            cur = self._objects.get((ns, name))
            if cur is None:
                raise _not_found(name, self.resource)
            new = change(copy.deepcopy(cur))
            if not isinstance(new, dict) or not isinstance(new.get("metadata"), dict):
                raise ApiError(422, f'{self.kind} "{name}" is invalid: the result is not an object')
            meta, cur_meta = new["metadata"], cur["metadata"]
            if meta.get("resourceVersion") not in (None, "", cur_meta["resourceVersion"]):
                raise _conflict(name, resource=self.resource)
            if meta.get("uid") not in (None, "", cur_meta["uid"]):
                raise _conflict(
                    name,
                    f"Precondition failed: UID in precondition: {cur_meta['uid']}, UID in object meta: {meta['uid']}",
                    self.resource,
                )
            for system_field in ("uid", "resourceVersion", "creationTimestamp"):
                meta[system_field] = cur_meta[system_field]
            meta.update(name=name, namespace=ns)
            self.validate(new)
            new.update(kind=self.kind, apiVersion="v1")
            if new == cur:  # etcd skips identical writes: no new resourceVersion, no event
                return copy.deepcopy(cur)
            return self._commit("MODIFIED", new, cur)

    def delete(self, ns: str, name: str, rv: str | None = None, uid: str | None = None) -> Obj:
        with self.lock:
            cur = self._objects.get((ns, name))
            if cur is None:
                raise _not_found(name, self.resource)
            if (rv and rv != cur["metadata"]["resourceVersion"]) or (uid and uid != cur["metadata"]["uid"]):
                raise _conflict(name, "Precondition failed", self.resource)
            return self._commit("DELETED", copy.deepcopy(cur), cur)

    def subscribe(self, callback: Subscriber, rv: str) -> tuple[list[Event], int]:
        """Register a watcher; return the events it must see first and the RV after which live events count.

        Snapshot and registration happen under one lock, so no write can fall between them.  ``""``/``"0"``
        means "current state as synthetic ADDED events, then changes".
        """
        with self.lock:
            since = 0
            if rv in ("", "0"):
                initial = [
                    Event(int(o["metadata"]["resourceVersion"]), "ADDED", copy.deepcopy(o), None)
                    for _, o in sorted(self._objects.items())
                ]
            else:
                since = _parse_rv(rv)
                if since < self.compacted_rv:
                    raise _expired(since, self.compacted_rv)
                initial = [ev for ev in self._history if ev.rv > since]
            self._subscribers.add(callback)
            return initial, max(self.rv, since)

    def unsubscribe(self, callback: Subscriber) -> None:
        with self.lock:
            self._subscribers.discard(callback)

    def compact(self, keep: int = 0) -> None:
        """Forget all but the newest ``keep`` events, like etcd compaction: older watch RVs become 410."""
        with self.lock:
            while len(self._history) > keep:
                self.compacted_rv = self._history.popleft().rv
            if not keep:
                self.compacted_rv = self.rv

    def _commit(self, kind: str, obj: Obj, prev: Obj | None) -> Obj:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        key = _key(obj)
        if kind == "DELETED":
            del self._objects[key]
        else:
            self._objects[key] = obj
        ev = Event(self.rv, kind, copy.deepcopy(obj), copy.deepcopy(prev))
        self._history.append(ev)
        while len(self._history) > self.history_size:
            self.compacted_rv = self._history.popleft().rv
        for callback in list(self._subscribers):
            callback(ev)
        self.changed.notify_all()
        return copy.deepcopy(obj)


def _key(obj: Obj) -> Key:
    return obj["metadata"]["namespace"], obj["metadata"]["name"]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_rv(rv: str) -> int:
    try:
        return int(rv)
    except ValueError:
        raise ApiError(400, f"invalid resource version: {rv}") from None


def _validate_configmap(obj: Obj) -> None:
    """Reject what the real server cannot even decode (non-string data values) or would not accept."""
    _check_kind(obj, "ConfigMap")
    meta = obj["metadata"]
    for section, parent in (("data", obj), ("binaryData", obj), ("labels", meta), ("annotations", meta)):
        value = parent.get(section)
        if value is None:
            continue
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ApiError(400, f"json: cannot unmarshal {section} into map[string]string")
    _check_name(obj, "ConfigMap")


def _validate_event(obj: Obj) -> None:
    """A core/v1 Event as the apiserver decodes and validates it (its legacy rules: an Event without eventTime)."""
    _check_kind(obj, "Event")
    for field_name in ("involvedObject", "source", "metadata"):
        if not isinstance(obj.get(field_name, {}), dict):
            raise ApiError(400, f"json: cannot unmarshal {field_name} into Go struct field Event.{field_name}")
    for field_name in ("reason", "message", "type", "reportingComponent", "reportingInstance", "action"):
        if not isinstance(obj.get(field_name, ""), str):
            message = f"json: cannot unmarshal {field_name} into Go struct field Event.{field_name} of type string"
            raise ApiError(400, message)
    count = obj.get("count", 0)
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or not -(2**31) <= count < 2**31):
        raise ApiError(400, "json: cannot unmarshal count into Go struct field Event.count of type int32")
    for field_name in ("firstTimestamp", "lastTimestamp"):
        value = obj.get(field_name)
        if value is not None and not (isinstance(value, str) and _TIME_RE.fullmatch(value)):
            raise ApiError(400, f'parsing time "{value}" as "2006-01-02T15:04:05Z07:00": cannot parse')
    _check_name(obj, "Event")
    involved_ns = (obj.get("involvedObject") or {}).get("namespace", "")
    if involved_ns and involved_ns != obj["metadata"]["namespace"]:
        name = obj["metadata"]["name"]
        raise ApiError(
            422,
            f'Event "{name}" is invalid: involvedObject.namespace: Invalid value: "{involved_ns}": '
            "does not match event.namespace",
            name=name,
            resource="events",
        )


def _check_kind(obj: Obj, kind: str) -> None:
    if obj.get("kind", kind) != kind or obj.get("apiVersion", "v1") != "v1":
        raise ApiError(400, f"expected {kind} v1, got {obj.get('kind')} {obj.get('apiVersion')}")


def _check_name(obj: Obj, kind: str) -> None:
    name = obj["metadata"].get("name", "")
    if len(name) > 253 or not _NAME_RE.match(name):
        raise ApiError(
            422,
            f'{kind} "{name}" is invalid: metadata.name: Invalid value: "{name}": '
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
            "'-' or '.'",
            name=name,
            resource=_RESOURCES[kind],
        )


_VALIDATORS: dict[str, Callable[[Obj], None]] = {"ConfigMap": _validate_configmap, "Event": _validate_event}
_RESOURCES = {"ConfigMap": "configmaps", "Event": "events"}


# --- patches ------------------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any, strategic: bool = False) -> Any:
    """RFC 7386 merge patch; ``strategic`` adds the ``$patch``/``$...`` directives (ConfigMaps have no lists
    with merge keys that matter, so strategic merge patch degenerates to this)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if strategic and patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if strategic and k.startswith("$"):
            continue
        if v is None or (strategic and isinstance(v, dict) and v.get("$patch") == "delete"):
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v, strategic)
    return result


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch; decode errors are 400, failed operations 422 (as the apiserver reports them)."""
    if not isinstance(ops, list) or not all(isinstance(o, dict) and {"op", "path"} <= o.keys() for o in ops):
        raise ApiError(400, "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    for op in ops:
        path = _pointer(op["path"])
        try:
            if op["op"] == "test":
                if _resolve(doc, path) != op.get("value"):
                    raise ApiError(422, f"testing value {op['path']} failed: test failed")
            elif op["op"] in ("remove", "move"):
                value = _resolve(doc, path if op["op"] == "remove" else _pointer(op["from"]))
                doc = _remove(doc, path if op["op"] == "remove" else _pointer(op["from"]))
                if op["op"] == "move":
                    doc = _add(doc, path, value, replace=False)
            elif op["op"] in ("add", "replace", "copy"):
                value = _resolve(doc, _pointer(op["from"])) if op["op"] == "copy" else op["value"]
                doc = _add(doc, path, copy.deepcopy(value), replace=op["op"] == "replace")
            else:
                raise ApiError(400, f"Unexpected kind: {op['op']}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            message = f"{op['op']} operation does not apply: doc is missing path: {op['path']}"
            raise ApiError(422, message) from exc
    return doc


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(400, f"invalid JSON pointer: {path}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _resolve(doc: Any, tokens: list[str]) -> Any:
    for t in tokens:
        doc = doc[int(t)] if isinstance(doc, list) else doc[t]
    return doc


def _add(doc: Any, tokens: list[str], value: Any, replace: bool) -> Any:
    if not tokens:
        return value
    parent, last = _resolve(doc, tokens[:-1]), tokens[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if replace:
            parent[index] = value
        elif 0 <= index <= len(parent):
            parent.insert(index, value)
        else:
            raise IndexError(index)
    else:
        if replace and last not in parent:
            raise KeyError(last)
        parent[last] = value
    return doc


def _remove(doc: Any, tokens: list[str]) -> Any:
    parent, last = _resolve(doc, tokens[:-1]), tokens[-1]
    del parent[int(last) if isinstance(parent, list) else last]
    return doc


# --- protobuf (kubectl create configmap sends application/vnd.kubernetes.protobuf) --------------------------


def _pb_fields(buf: bytes) -> Iterator[tuple[int, Any]]:
    """Yield (field number, value) of a protobuf message: ints for varints, bytes for length-delimited."""

    def varint(i: int) -> tuple[int, int]:
        shift = result = 0
        while True:
            b = buf[i]
            result |= (b & 0x7F) << shift
            i, shift = i + 1, shift + 7
            if not b & 0x80:
                return result, i

    i = 0
    value: int | bytes
    while i < len(buf):
        key, i = varint(i)
        wire = key & 7
        if wire == 0:
            value, i = varint(i)
        elif wire == 2:
            n, i = varint(i)
            value, i = buf[i : i + n], i + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            value, i = buf[i : i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield key >> 3, value


def _pb_map(entries: list[bytes], binary: bool = False) -> dict[str, str]:
    out = {}
    for entry in entries:
        kv = dict(_pb_fields(entry))
        value = kv.get(2, b"")
        out[kv.get(1, b"").decode()] = base64.b64encode(value).decode() if binary else value.decode()
    return out


def decode_configmap_protobuf(body: bytes) -> Obj:
    """Decode the ``k8s\\0`` + runtime.Unknown envelope holding a v1.ConfigMap into its JSON form."""
    if not body.startswith(b"k8s\x00"):
        raise ApiError(400, "protobuf body lacks the k8s envelope magic")
    try:
        unknown = dict(_pb_fields(body[4:]))
        type_meta = dict(_pb_fields(unknown.get(1, b"")))
        cm_fields = list(_pb_fields(unknown.get(2, b"")))
        meta_fields = list(_pb_fields(next((v for f, v in cm_fields if f == 1), b"")))
    except (IndexError, ValueError) as exc:
        raise ApiError(400, f"cannot decode protobuf body: {exc}") from None
    names = {1: "name", 2: "generateName", 3: "namespace", 5: "uid", 6: "resourceVersion"}
    meta: Obj = {names[f]: v.decode() for f, v in meta_fields if f in names and v}
    for number, section in ((11, "labels"), (12, "annotations")):
        if entries := [v for f, v in meta_fields if f == number]:
            meta[section] = _pb_map(entries)
    obj: Obj = {
        "kind": type_meta.get(2, b"ConfigMap").decode(),
        "metadata": meta,
        "apiVersion": type_meta.get(1, b"v1").decode(),
    }
    for number, section in ((2, "data"), (3, "binaryData")):
        if entries := [v for f, v in cm_fields if f == number]:
            obj[section] = _pb_map(entries, binary=number == 3)
    if any(f == 4 for f, _ in cm_fields):
        obj["immutable"] = bool(next(v for f, v in cm_fields if f == 4))
    return obj


# --- selectors ----------------------------------------------------------------------------------------------


# The fields each resource can be selected by (the apiserver's ToSelectableFields): a dotted path into the object.
_META_FIELDS = ("metadata.name", "metadata.namespace")
_EVENT_FIELDS = (
    *_META_FIELDS,
    *(
        f"involvedObject.{f}"
        for f in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
    ),
    "reason",
    "reportingComponent",
    "source",
    "type",
)
_FIELDS = {"configmaps": _META_FIELDS, "events": _EVENT_FIELDS}


def _field(obj: Obj, path: str) -> str:
    if path == "source":  # an Event's source: its component, else the reporting controller
        return str((obj.get("source") or {}).get("component") or obj.get("reportingComponent") or "")
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def selector(field_selector: str, label_selector: str, resource: str = "configmaps") -> Callable[[Obj], bool]:
    """Build a predicate from ``fieldSelector`` (metadata.name / metadata.namespace, and an Event's own fields) and
    equality-based ``labelSelector`` terms (``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``)."""
    requirements: list[tuple[bool, str, str, str]] = []  # (on labels?, key, "=" | "!=" | "in" | "!in", value)
    for term in filter(None, (t.strip() for t in field_selector.split(","))):
        m = re.fullmatch(r"([^=!]+)(==|=|!=)(.*)", term)
        if not m or m[1] not in _FIELDS[resource]:
            raise ApiError(400, f"field label not supported: {m[1] if m else term}")
        requirements.append((False, m[1], "!=" if m[2] == "!=" else "=", m[3]))
    for term in filter(None, (t.strip() for t in label_selector.split(","))):
        m = re.fullmatch(r"(!?)([A-Za-z0-9._/-]+)(?:(==|=|!=)([A-Za-z0-9._-]*))?", term)
        if not m:
            raise ApiError(400, f"unable to parse requirement: {term}")
        bang, key, op, want = m.groups()
        op = {None: "!in" if bang else "in", "==": "="}.get(op, op)
        requirements.append((True, key, op, want or ""))

    def match(obj: Obj) -> bool:
        for on_labels, key, op, want in requirements:
            labels = obj["metadata"].get("labels") or {}
            if op in ("in", "!in"):
                ok = (key in labels) == (op == "in")
            else:
                ok = ((labels.get(key) if on_labels else _field(obj, key)) == want) == (op == "=")
            if not ok:
                return False
        return True

    return match


def _filter_event(ev: Event, match: Callable[[Obj], bool]) -> str | None:
    """The event type a selective watcher sees: objects entering/leaving the selection are ADDED/DELETED."""
    now, before = match(ev.obj), ev.prev is not None and match(ev.prev)
    if ev.type == "MODIFIED":
        return {(True, True): "MODIFIED", (True, False): "ADDED", (False, True): "DELETED"}.get((now, before))
    return ev.type if now else None


# --- the HTTP server ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    verb: str  # get | list | watch | create | update | patch | delete | discovery
    content_type: str
    resource: str = "configmaps"  # or "events"; "" for discovery


def _concerns(record_resource: str, resource: str | None) -> bool:
    """Whether a request on `record_resource` counts for (or is failed by) what names `resource`: None is every
    resource, and discovery, which has none, counts for each."""
    return resource is None or record_resource in (resource, "")


@dataclass
class _Fault:
    verb: str
    remaining: int
    status: int | None  # None: hang until release_hung() or stop()
    message: str = "injected failure"
    resource: str | None = "configmaps"


@dataclass(eq=False)
class _Watch:
    queue: asyncio.Queue[Event | None]
    request: web.Request
    closed: bool = field(default=False)


class KubeAPIServer:
    """The fake API server: start/stop (restartable on the same port), data access, faults, counts.

    Use it as ``with KubeAPIServer() as api:`` (sync) or ``async with KubeAPIServer() as api:`` (async: start
    and stop run in a worker thread so the caller's loop is never blocked).  The HTTP side runs in its own
    thread and event loop; the store survives restarts, like etcd behind a restarted apiserver.
    """

    def __init__(
        self, port: int = 0, *, history_size: int = 1000, bookmark_interval: float = 1.0, host: str = "127.0.0.1"
    ) -> None:
        self.host, self.port = host, port
        self.bookmark_interval = bookmark_interval
        self.store = ObjectStore(history_size)  # ConfigMaps
        self.event_store = ObjectStore(history_size, resource="events", kind="Event", shared=self.store)
        self._stores = {"configmaps": self.store, "events": self.event_store}
        self.requests: list[RequestRecord] = []
        self._faults: list[_Fault] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._watches: set[_Watch] = set()
        self._hung: dict[int, web.Request] = {}
        self._release: asyncio.Event | None = None
        self._sock: socket.socket | None = None  # the listening socket

    # --- lifecycle ------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> KubeAPIServer:
        """Bind (SO_REUSEADDR, same port on a restart) and serve from a fresh thread and event loop."""
        if self._thread is not None:
            raise RuntimeError("already running")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kubeapi", daemon=True)
        self._thread.start()
        self._run(self._astart(sock))
        return self

    def stop(self, abort: bool = False) -> None:
        """Stop listening (new connections are refused) and end every open watch stream.

        Watches end cleanly (as on an apiserver's graceful shutdown) unless ``abort``, which resets the
        connections like a crash.  Hung requests are always reset.
        """
        if self._thread is None or self._loop is None:
            return
        try:
            self._run(self._astop(abort))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
            self._thread = self._loop = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> KubeAPIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> KubeAPIServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.stop)

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        """Write a kubeconfig (JSON is YAML) for the Python client and kubectl: plain http, no auth."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "current-context": "kubeapi",
            "clusters": [{"name": "kubeapi", "cluster": {"server": self.url}}],
            "users": [{"name": "kubeapi", "user": {}}],
            "contexts": [
                {"name": "kubeapi", "context": {"cluster": "kubeapi", "user": "kubeapi", "namespace": namespace}}
            ],
        }
        path = Path(path)
        path.write_text(json.dumps(config, indent=2))
        return path

    # --- test controls --------------------------------------------------------------------------------------

    def get_configmap(self, name: str, namespace: str = "default") -> Obj | None:
        return self.store.get(namespace, name)

    def configmaps(self, namespace: str | None = None) -> list[Obj]:
        return self.store.snapshot(namespace)[0]

    def events(self, namespace: str | None = None) -> list[Obj]:
        """The Events stored now (core/v1), ordered by namespace and name."""
        return self.event_store.snapshot(namespace)[0]

    def set_configmap(
        self, name: str, data: dict[str, str], namespace: str = "default", labels: dict[str, str] | None = None
    ) -> Obj:
        """Create or overwrite ``data`` (and ``labels``) unconditionally, as another writer would."""
        obj: Obj = {
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "data": dict(data),
            "metadata": {"name": name, "namespace": namespace},
        }
        if labels is not None:
            obj["metadata"]["labels"] = dict(labels)
        with self.store.lock:
            if self.store.get(namespace, name) is None:
                _validate_configmap(obj)
                return self.store.create(obj)

            def overwrite(cur: Obj) -> Obj:
                cur["data"] = dict(data)
                if labels is not None:
                    cur["metadata"]["labels"] = dict(labels)
                return cur

            return self.store.update(namespace, name, overwrite)

    def delete_configmap(self, name: str, namespace: str = "default") -> Obj:
        return self.store.delete(namespace, name)

    @property
    def resource_version(self) -> int:
        return self.store.rv

    def compact(self, keep: int = 0) -> None:
        self.store.compact(keep)

    def fail(
        self,
        verb: str,
        times: int = 1,
        status: int = 500,
        message: str = "injected failure",
        resource: str | None = "configmaps",
    ) -> None:
        """Make the next ``times`` requests of ``verb`` (get, list, watch, create, update, patch, delete,
        discovery, or ``*``) on ``resource`` (``events``; None: any) fail with a Status of code ``status``."""
        with self.store.lock:
            self._faults.append(_Fault(verb, times, status, message, resource))

    def hang(self, verb: str, times: int = 1, resource: str | None = "configmaps") -> None:
        """Make the next ``times`` requests of ``verb`` hang until ``release_hung()`` or ``stop()``."""
        with self.store.lock:
            self._faults.append(_Fault(verb, times, None, resource=resource))

    def release_hung(self) -> None:
        """Let the requests hung so far proceed normally (later ``hang`` faults hang again)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._new_release)

    def _new_release(self) -> None:
        if self._release is not None:
            self._release.set()
        self._release = asyncio.Event()

    def clear_faults(self) -> None:
        with self.store.lock:
            self._faults.clear()

    def request_count(
        self, verb: str | None = None, method: str | None = None, resource: str | None = "configmaps"
    ) -> int:
        with self.store.lock:
            return sum(
                1
                for r in self.requests
                if verb in (None, r.verb) and method in (None, r.method) and _concerns(r.resource, resource)
            )

    @property
    def watch_count(self) -> int:
        """Open watch streams right now (wait on this to know a client is watching)."""
        with self.store.lock:
            return len(self._watches)

    def close_watches(self, abort: bool = False) -> None:
        """End every open watch stream while the server stays up (clients must re-watch)."""
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._end_watches(abort), self._loop).result(10)

    def wait_for(self, predicate: Callable[[], object], timeout: float = 10.0) -> None:
        """Block until ``predicate()`` is true; re-checked on every write and every request."""
        with self.store.changed:
            if not self.store.changed.wait_for(predicate, timeout):
                raise TimeoutError(f"condition not met within {timeout}s")

    async def await_for(self, predicate: Callable[[], object], within: float = 10.0) -> None:
        """``wait_for`` for async tests: waits in a worker thread, never blocking the caller's loop."""
        await asyncio.to_thread(self.wait_for, predicate, within)

    # --- internals: lifecycle -------------------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _astart(self, sock: socket.socket) -> None:
        self._release = asyncio.Event()
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/version", self._version)
        app.router.add_get("/api", self._api)
        app.router.add_get("/apis", self._apis)
        app.router.add_get("/api/v1", self._api_v1)
        app.router.add_get("/openapi/v3", self._openapi_root)
        app.router.add_get("/openapi/v3/api/v1", self._openapi_v1)
        for probe in ("/healthz", "/readyz", "/livez"):
            app.router.add_get(probe, self._ok)
        resource = "{resource:configmaps|events}"
        app.router.add_get(f"/api/v1/{resource}", self._collection)
        app.router.add_route("*", f"/api/v1/namespaces/{{ns}}/{resource}", self._collection)
        app.router.add_route("*", f"/api/v1/namespaces/{{ns}}/{resource}/{{name}}", self._item)
        self._runner = web.AppRunner(
            app, handle_signals=False, handler_cancellation=True, shutdown_timeout=1.0, access_log=None
        )
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        self._sock = sock

    async def _astop(self, abort: bool) -> None:
        await self._end_watches(abort)
        for request in list(self._hung.values()):
            if request.transport is not None:
                request.transport.abort()
        if self._runner is not None:
            # Stop accepting first, and let the connections already accepted be made: asyncio (3.11) drops a socket
            # accepted but not yet made when its server closes, unclosed (a ResourceWarning, a flaky test).
            if self._sock is not None and self._sock.fileno() != -1:
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            for _ in range(5):
                await asyncio.sleep(0)
            await self._runner.cleanup()
            self._runner = None

    async def _end_watches(self, abort: bool) -> None:
        for watch in list(self._watches):
            watch.closed = True
            if abort and watch.request.transport is not None:
                watch.request.transport.abort()
            watch.queue.put_nowait(None)

    # --- internals: request handling ------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        verb = _verb(request)
        resource = request.match_info.get("resource", "")
        with self.store.changed:
            self.requests.append(
                RequestRecord(
                    request.method,
                    request.path,
                    dict(request.query),
                    verb,
                    request.headers.get("Content-Type", ""),
                    resource,
                )
            )
            fault = next(
                (
                    f
                    for f in self._faults
                    if f.verb in (verb, "*") and _concerns(resource, f.resource) and f.remaining > 0
                ),
                None,
            )
            if fault is not None:
                fault.remaining -= 1
            self.store.changed.notify_all()
        try:
            if fault is not None and fault.status is not None:
                raise ApiError(fault.status, fault.message)
            if fault is not None:
                release = self._release
                assert release is not None
                self._hung[id(request)] = request
                try:
                    await release.wait()
                finally:
                    self._hung.pop(id(request), None)
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:
            if exc.status == 405:
                message = "the server does not allow this method on the requested resource"
                return ApiError(405, message).response()
            return ApiError(exc.status, "the server could not find the requested resource").response()

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        ns = request.match_info.get("ns")
        store = self._stores[request.match_info["resource"]]
        if request.method == "POST" and ns is not None:
            return await self._create(request, store, ns)
        if request.method != "GET":
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        q = request.query
        selected = selector(q.get("fieldSelector", ""), q.get("labelSelector", ""), store.resource)

        def match(obj: Obj) -> bool:
            return (ns is None or obj["metadata"]["namespace"] == ns) and selected(obj)

        if parse_bool(q.get("watch"), "watch"):
            return await self._watch(request, store, match)
        rv, rv_match = q.get("resourceVersion", ""), q.get("resourceVersionMatch", "")
        exact = rv_match == "Exact"
        if rv_match and (rv_match not in ("Exact", "NotOlderThan") or not rv or (exact and rv == "0")):
            raise ApiError(422, f"resourceVersionMatch: Invalid value: {rv_match!r} (resourceVersion {rv!r})")
        since = _parse_rv(rv) if rv not in ("", "0") else None
        items, list_rv = store.snapshot(ns, since, exact=exact)
        items = [o for o in items if match(o)]
        if table := _as_table(request, items, str(list_rv)):
            return web.json_response(table)
        items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in items]
        return web.json_response(
            {
                "kind": f"{store.kind}List",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(list_rv)},
                "items": items,
            }
        )

    async def _create(self, request: web.Request, store: ObjectStore, ns: str) -> web.Response:
        obj = await _body(request)
        meta = obj.setdefault("metadata", {})
        if meta.get("namespace", ns) != ns:
            raise ApiError(400, _NS_MISMATCH)
        if meta.get("resourceVersion"):  # etcd3's store refuses it with a plain error: a 500
            raise ApiError(500, "Internal error occurred: resourceVersion should not be set on objects to be created")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
        if not meta.get("name"):
            raise ApiError(
                422, f"{store.kind} is invalid: metadata.name: Required value: name or generateName is required"
            )
        meta.update(namespace=ns)
        obj.update(kind=store.kind, apiVersion="v1")
        store.validate(obj)
        return web.json_response(store.create(obj), status=201)

    async def _item(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        store = self._stores[request.match_info["resource"]]
        if request.method == "GET":
            obj = store.get(ns, name)
            if obj is None:
                raise _not_found(name, store.resource)
            return web.json_response(_as_table(request, [obj], obj["metadata"]["resourceVersion"]) or obj)
        if request.method == "PUT":
            body = await _body(request)
            if body.get("metadata", {}).get("name", name) != name:
                raise ApiError(
                    400,
                    f"the name of the object ({body['metadata']['name']}) does not match the name on the URL ({name})",
                )
            if body.get("metadata", {}).get("namespace", ns) != ns:
                raise ApiError(400, _NS_MISMATCH)
            return web.json_response(store.update(ns, name, lambda cur: body))
        if request.method == "PATCH":
            return web.json_response(store.update(ns, name, await _patcher(request)))
        if request.method == "DELETE":
            raw = await request.read()
            options = json.loads(raw) if raw.strip() and request.content_type.endswith("json") else {}
            pre = options.get("preconditions") or {}
            deleted = store.delete(ns, name, pre.get("resourceVersion"), pre.get("uid"))
            details = {"name": name, "kind": store.resource, "uid": deleted["metadata"]["uid"]}
            return web.json_response(
                {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
            )
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "PUT", "PATCH", "DELETE"])

    async def _watch(
        self, request: web.Request, store: ObjectStore, match: Callable[[Obj], bool]
    ) -> web.StreamResponse:
        q = request.query
        bookmarks = parse_bool(q.get("allowWatchBookmarks"), "allowWatchBookmarks")
        initial_events = parse_bool(q.get("sendInitialEvents"), "sendInitialEvents")
        if initial_events and (q.get("resourceVersionMatch") != "NotOlderThan" or not bookmarks):
            raise ApiError(
                422, "sendInitialEvents requires resourceVersionMatch=NotOlderThan and allowWatchBookmarks=true"
            )
        try:
            timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        except ValueError:
            raise ApiError(400, f"invalid timeoutSeconds: {q['timeoutSeconds']}") from None
        loop = asyncio.get_running_loop()
        watch = _Watch(asyncio.Queue(), request)

        def push(ev: Event) -> None:
            loop.call_soon_threadsafe(watch.queue.put_nowait, ev)

        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            rv = "" if initial_events else q.get("resourceVersion", "")
            initial, last_rv = store.subscribe(push, rv)
        except ApiError as exc:
            if exc.code != 410:
                raise
            await response.prepare(request)  # an expired watch is a 200 stream with one ERROR event
            await response.write(json.dumps({"type": "ERROR", "object": exc.status()}).encode() + b"\n")
            await response.write_eof()
            return response
        with self.store.lock:
            self._watches.add(watch)
            self.store.changed.notify_all()

        async def send(kind: str, obj: Obj) -> None:
            if kind != "BOOKMARK":
                obj = _as_table(request, [obj], obj["metadata"]["resourceVersion"]) or obj
            await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        def bookmark(annotations: dict[str, str] | None = None) -> Obj:
            meta: Obj = {"resourceVersion": str(last_rv)}
            if annotations:
                meta["annotations"] = annotations
            return {"kind": store.kind, "apiVersion": "v1", "metadata": meta}

        try:
            await response.prepare(request)
            for ev in initial:
                if kind := _filter_event(ev, match):
                    await send(kind, ev.obj)
            if initial_events:
                await send("BOOKMARK", bookmark({INITIAL_EVENTS_END: "true"}))
            deadline = loop.time() + timeout if timeout is not None else None
            next_bookmark = loop.time() + self.bookmark_interval if bookmarks else None
            while not watch.closed:
                wake = min((t for t in (deadline, next_bookmark) if t is not None), default=None)
                try:
                    async with asyncio.timeout_at(wake):
                        item = await watch.queue.get()
                except TimeoutError:
                    if deadline is not None and loop.time() >= deadline:
                        break
                    await send("BOOKMARK", bookmark())
                    next_bookmark = loop.time() + self.bookmark_interval
                    continue
                if item is None:
                    break
                if item.rv <= last_rv:  # a watch from a future RV only sees what comes after it
                    continue
                last_rv = item.rv
                if kind := _filter_event(item, match):
                    await send(kind, item.obj)
            await response.write_eof()
        except ConnectionError:  # the client went away
            pass
        finally:
            store.unsubscribe(push)
            with self.store.lock:
                self._watches.discard(watch)
                self.store.changed.notify_all()
        return response

    # --- discovery ------------------------------------------------------------------------------------------

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "major": "1",
                "minor": "32",
                "gitVersion": "v1.32.0-kubeapi",
                "gitCommit": "0",
                "gitTreeState": "clean",
                "buildDate": "2025-01-01",
                "goVersion": "go1.23",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        )

    async def _api(self, request: web.Request) -> web.Response:
        # Answering the aggregated-discovery Accept with the legacy format is allowed; clients fall back.
        return web.json_response(
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                ],
            }
        )

    async def _apis(self, request: web.Request) -> web.Response:
        return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})

    async def _api_v1(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "kind": "APIResourceList",
                "groupVersion": "v1",
                "resources": [
                    {
                        "name": "configmaps",
                        "singularName": "configmap",
                        "namespaced": True,
                        "kind": "ConfigMap",
                        "verbs": _VERBS,
                        "shortNames": ["cm"],
                        "storageVersionHash": "qFsyl6wFWjQ=",
                    },
                    {
                        "name": "events",
                        "singularName": "event",
                        "namespaced": True,
                        "kind": "Event",
                        "verbs": _VERBS,
                        "shortNames": ["ev"],
                        "storageVersionHash": "r2yiGXH7wu8=",
                    },
                ],
            }
        )

    async def _openapi_root(self, request: web.Request) -> web.Response:
        return web.json_response({"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=1"}}})

    async def _openapi_v1(self, request: web.Request) -> web.Response:
        """What kubectl's field-validation check reads: the ConfigMap PATCH operation's query parameters."""
        params = [
            {"name": n, "in": "query", "schema": {"type": "string"}}
            for n in ("dryRun", "fieldManager", "fieldValidation", "force")
        ]
        gvk = {"group": "", "version": "v1", "kind": "ConfigMap"}
        operation = {
            "operationId": "patchCoreV1NamespacedConfigMap",
            "parameters": params,
            "responses": {},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": gvk,
        }
        return web.json_response(
            {
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": "v1.32.0"},
                "paths": {"/api/v1/namespaces/{namespace}/configmaps/{name}": {"patch": operation}},
                "components": {"schemas": {}},
            }
        )

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")


def _column(name: str, priority: int = 0, fmt: str = "") -> Obj:
    return {"name": name, "type": "string", "format": fmt, "description": name, "priority": priority}


# Upstream's printers (pkg/printers/internalversion): the server always sends every column (priority 1: only with
# `kubectl get -o wide`), and kubectl drops what it does not show.
_COLUMNS = {
    "configmaps": [_column("Name", fmt="name"), _column("Data"), _column("Age")],
    "events": [
        _column("Last Seen"),
        _column("Type"),
        _column("Reason"),
        _column("Object"),
        _column("Subobject", 1),
        _column("Source", 1),
        _column("Message"),
        _column("First Seen", 1),
        _column("Count", 1),
        _column("Name", 1, fmt="name"),
    ],
}


def _cells(obj: Obj) -> list[Any]:
    if obj.get("kind") != "Event":
        size = len(obj.get("data") or {}) + len(obj.get("binaryData") or {})
        return [obj["metadata"]["name"], size, _age(obj["metadata"]["creationTimestamp"])]
    first = _age(obj.get("firstTimestamp"))
    if first == _UNKNOWN:
        first = _age(obj.get("eventTime"))
    last = _age(obj.get("lastTimestamp"))
    if last == _UNKNOWN:
        last = first
    count = obj.get("count") or 1  # singleton events of the new API have none
    if obj.get("series"):
        last, count = _age(obj["series"].get("lastObservedTime")), obj["series"].get("count", count)
    involved = obj.get("involvedObject") or {}
    target = str(involved.get("kind", "")).lower()
    target += f"/{involved['name']}" if involved.get("name") else ""
    source = obj.get("source") or {}
    component = source.get("component") or obj.get("reportingComponent") or ""
    instance = source.get("host") or obj.get("reportingInstance") or ""
    shown_source = "<unknown>" if not component else f"{component}, {instance}" if instance else component
    return [
        last,
        obj.get("type", ""),
        obj.get("reason", ""),
        target,
        involved.get("fieldPath", ""),
        shown_source,
        str(obj.get("message", "")).strip(),
        first,
        count,
        obj["metadata"]["name"],
    ]


def _as_table(request: web.Request, items: list[Obj], rv: str) -> Obj | None:
    """Server-side printing, which ``kubectl get`` asks for (``as=Table``): for ConfigMaps NAME, DATA, AGE, for
    Events LAST SEEN, TYPE, REASON, OBJECT, MESSAGE (and more with ``-o wide``), like upstream."""
    if "as=Table" not in request.headers.get("Accept", ""):
        return None
    include = request.query.get("includeObject", "PartialObjectMetadata")
    columns = _COLUMNS[request.match_info.get("resource", "configmaps")]
    rows = []
    for obj in items:
        row: Obj = {"cells": _cells(obj)}
        if include == "Object":
            row["object"] = obj
        elif include != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": columns,
        "rows": rows,
    }


_UNKNOWN = "<unknown>"


def _age(timestamp: str | None) -> str:
    """apimachinery's HumanDuration, coarsened: 45s, 3m20s, 15m, 2h5m, 20h, 3d; `<unknown>` for no time."""
    if not timestamp:
        return _UNKNOWN
    created = datetime.fromisoformat(timestamp)
    s = max(0, int((datetime.now(UTC) - created).total_seconds()))
    m, h = s // 60, s // 3600
    if s < 120:
        return f"{s}s"
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if h < 3:
        return f"{m}m"
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    return f"{h}h" if h < 48 else f"{h // 24}d"


def _verb(request: web.Request) -> str:
    if not request.match_info.get("resource"):
        return "discovery"
    if request.method == "GET":
        if "name" in request.match_info:
            return "get"
        return "watch" if request.query.get("watch", "") in _TRUE else "list"
    verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
    return verbs.get(request.method, "other")


async def _body(request: web.Request) -> Obj:
    raw = await request.read()
    if request.content_type == "application/vnd.kubernetes.protobuf":
        return decode_configmap_protobuf(raw)
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"couldn't get version/kind; json parse error: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


async def _patcher(request: web.Request) -> Callable[[Obj], Obj]:
    """Parse a PATCH body into the change to apply under the store lock."""
    kind = request.content_type
    if kind not in (
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
    ):
        raise ApiError(415, f"the server does not support patch content type {kind!r}")
    raw = await request.read()
    try:
        patch = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"error decoding patch: {exc}") from None
    if kind == "application/json-patch+json":
        return lambda cur: json_patch(cur, copy.deepcopy(patch))
    if not isinstance(patch, dict):
        raise ApiError(400, "a merge patch must be a JSON object")
    return lambda cur: merge_patch(cur, patch, strategic=kind.startswith("application/strategic"))


AsyncKubectl = Callable[..., Coroutine[Any, Any, "subprocess.CompletedProcess[str]"]]


def kubectl_runner(kubeconfig: Path, workdir: Path, *, timeout: float) -> AsyncKubectl | None:
    """An async `kubectl` against this kubeconfig with its own HOME and discovery cache; None if not installed."""
    binary = shutil.which("kubectl")
    if binary is None:
        return None
    home = workdir / "kubectl-home"
    home.mkdir(exist_ok=True)

    async def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [binary, "--kubeconfig", str(kubeconfig), "--cache-dir", str(workdir / "kcache"), *args]
        env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
        done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=timeout, env=env)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {done.stderr}")
        return done

    return run
