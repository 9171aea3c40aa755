"""The ConfigMap's data and the state it holds, both ways. Pure: no Kubernetes client, no asyncio, no threads.

The keys and who owns them are listed once, below. A new key is parsed in `_desired` (people's keys) or written
into the `state` blob (bgproxy's), written by `configmap_data`, and gets rows in tests/stores/test_configmap_codec.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from ...core.model import MAX_REASON, Color, InvalidColor, State

# Keys people and Git own: an edit of one is a change that every replica applies.
KEY_ACTIVE = "active"  # blue|green, the colour that serves ordinary traffic
KEY_REASON = "reason"  # why: given with an edit, and written by bgproxy with every change (`kubectl get` shows it)
# Keys bgproxy owns: written back after every change, not meant to be edited.
KEY_STATE = "state"  # JSON of the whole state (active, previous, revision, updated_at, source, reason, ...)

EDITED = "ConfigMap edited"  # the reason of an edit that gave none


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


@dataclass(frozen=True, slots=True)
class Desired:
    """What the keys people and Git own ask for."""

    active: Color

    def held_by(self, state: State) -> bool:
        """`state` already is what these keys ask for: no edit to apply."""
        return state.active is self.active


def read_configmap(data: Mapping[str, str] | None, last: State | None, *, now: float) -> Reading:
    """The state a ConfigMap's `data` holds, given `last`, the last state this replica saw (None at start)."""
    data = data or {}
    try:
        desired = _desired(data)
    except ValueError as exc:
        return Reading(None, problems=(str(exc),))
    blob, problems = _blob(data)
    # The blob is current unless this replica already applied something newer: an edit of `active` not yet
    # written back, or an old snapshot of the ConfigMap re-applied. Revisions never go backwards.
    base = blob if blob is not None and (last is None or blob.revision >= last.revision) else last
    if base is blob and blob is not None and desired.held_by(blob):
        return Reading(blob, problems=problems)
    if base is not None and desired.held_by(base):
        # No edit: the blob is missing, corrupt or stale but the state is what we serve. Restore the blob.
        return Reading(base, normalise=True, problems=problems)
    # `active` was edited (kubectl, Git): a flip.
    reason = data.get(KEY_REASON, "").strip()[:MAX_REASON]
    if reason in {s.reason for s in (blob, last) if s is not None}:
        reason = ""  # the reason bgproxy wrote with an earlier state, not one given with this edit
    state = State(
        active=desired.active,
        previous=base.active if base is not None else None,
        revision=(base.revision if base is not None else 0) + 1,
        updated_at=now,
        source="configmap",
        reason=reason or EDITED,
    )
    return Reading(state, normalise=True, problems=problems)


def configmap_data(state: State) -> dict[str, str]:
    """The ConfigMap data that stores `state` (merged into whatever other keys the ConfigMap has)."""
    blob = {k: v for k, v in state.to_dict().items() if k != "standby"}
    return {
        KEY_ACTIVE: state.active.value,
        KEY_REASON: state.reason,
        KEY_STATE: json.dumps(blob, sort_keys=True, separators=(",", ":")),
    }


def _desired(data: Mapping[str, str]) -> Desired:
    """The people-owned keys, parsed; a ValueError says which one is invalid (the whole reading is then ignored)."""
    raw = data.get(KEY_ACTIVE)
    if raw is None:
        raise ValueError(f"key {KEY_ACTIVE!r} is missing: expected blue or green")
    try:
        active = Color.parse(raw)
    except InvalidColor as exc:
        raise ValueError(f"key {KEY_ACTIVE!r}: {exc}") from None
    return Desired(active)


def _blob(data: Mapping[str, str]) -> tuple[State | None, tuple[str, ...]]:
    """The state bgproxy wrote last, if there is one and it parses; else None and, if corrupt, why."""
    raw = data.get(KEY_STATE)
    if raw is None:
        return None, ()
    try:
        return State.from_dict(json.loads(raw)), ()
    except ValueError as exc:
        return None, (f"key {KEY_STATE!r} is not a bgproxy state ({exc}); taking {KEY_ACTIVE!r} as an edit",)
