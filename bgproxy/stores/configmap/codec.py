"""The ConfigMap's data and the state it holds, both ways. Pure: no Kubernetes client, no asyncio, no threads.

The keys and who owns them are listed once, below. A new key is parsed in `_desired` (people's keys) or written
into the `state` blob (bgproxy's), written by `configmap_data`, and gets rows in tests/stores/test_configmap_codec.py.
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass

from ...core.model import MAX_REASON, MAX_WEIGHT, Color, InvalidColor, State

# Keys people and Git own: an edit of one is a change that every replica applies.
KEY_ACTIVE = "active"  # blue|green, the colour that serves ordinary traffic
KEY_WEIGHT = "weight"  # "0".."100", the standby colour's percent of ordinary traffic; absent means 0
KEY_REASON = "reason"  # why: given with an edit, and written by bgproxy with every change (`kubectl get` shows it)
# Keys bgproxy owns: written back after every change, not meant to be edited.
KEY_STATE = "state"  # JSON of the whole state (active, previous, revision, updated_at, source, reason, ...)

EDITED = "ConfigMap edited"  # the reason of an edit that gave none


@dataclass(frozen=True, slots=True)
class Reading:
    """What a ConfigMap's data means.

    `state` is None when the data is invalid (keep the last good state). `normalise` asks for the `state` blob
    to be written back: after an edit of `active` or `weight`, or when the blob is missing or corrupt. `problems`
    are logged and counted as config errors.
    """

    state: State | None
    normalise: bool = False
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Desired:
    """What the keys people and Git own ask for."""

    active: Color
    weight: int

    def held_by(self, state: State) -> bool:
        """`state` already is what these keys ask for: no edit to apply (a stepped promotion writes its weight)."""
        return state.active is self.active and state.weight == self.weight


def read_configmap(data: Mapping[str, str] | None, last: State | None, *, now: float) -> Reading:
    """The state a ConfigMap's `data` holds, given `last`, the last state this replica saw (None at start)."""
    data = data or {}
    desired = _desired(data)
    if isinstance(desired, tuple):  # invalid: the whole edit is ignored, never half of it applied
        return Reading(None, problems=desired)
    blob, problems = _blob(data)
    # The blob is current unless this replica already applied something newer: an edit of `active` or `weight`
    # not yet written back, or an old snapshot of the ConfigMap re-applied. Revisions never go backwards.
    base = blob if blob is not None and (last is None or blob.revision >= last.revision) else last
    if base is blob and blob is not None and desired.held_by(blob):
        return Reading(blob, problems=problems)
    if base is not None and desired.held_by(base):
        # No edit: the blob is missing, corrupt or stale but the state is what we serve. Restore the blob.
        return Reading(base, normalise=True, problems=problems)
    # `active`, `weight` or both were edited (kubectl, Git): one change. Like a manual shift, it ends a stepped
    # promotion: the keys now say what traffic does.
    reason = data.get(KEY_REASON, "").strip()[:MAX_REASON]
    if reason in {s.reason for s in (blob, last) if s is not None}:
        reason = ""  # the reason bgproxy wrote with an earlier state, not one given with this edit
    if base is None:
        previous = None
    else:
        previous = base.active if desired.active is not base.active else base.previous
    state = State(
        active=desired.active,
        previous=previous,
        revision=(base.revision if base is not None else 0) + 1,
        updated_at=now,
        source="configmap",
        reason=reason or EDITED,
        weight=desired.weight,
    )
    return Reading(state, normalise=True, problems=problems)


def configmap_data(state: State) -> dict[str, str]:
    """The ConfigMap data that stores `state` (merged into whatever other keys the ConfigMap has)."""
    blob = {k: v for k, v in state.to_dict().items() if k != "standby"}
    return {
        KEY_ACTIVE: state.active.value,
        KEY_WEIGHT: str(state.weight),
        KEY_REASON: state.reason,
        KEY_STATE: json.dumps(blob, sort_keys=True, separators=(",", ":")),
    }


def _desired(data: Mapping[str, str]) -> Desired | tuple[str, ...]:
    """The people-owned keys, parsed; else what is wrong with each invalid one (the whole reading is then ignored:
    an invalid weight next to a valid `active` is not half applied, since the old weight would mean another colour).
    """
    problems: list[str] = []
    active: Color | None = None
    raw = data.get(KEY_ACTIVE)
    if raw is None:
        problems.append(f"key {KEY_ACTIVE!r} is missing: expected blue or green")
    else:
        try:
            active = Color.parse(raw)
        except InvalidColor as exc:
            problems.append(f"key {KEY_ACTIVE!r}: {exc}")
    weight = _weight(data.get(KEY_WEIGHT))
    if weight is None:
        problems.append(
            f'key {KEY_WEIGHT!r}: expected a whole number from 0 to {MAX_WEIGHT} in plain digits, such as "20", '
            f"got {reprlib.repr(data.get(KEY_WEIGHT))}"
        )
    if active is None or weight is None:
        return tuple(problems)
    return Desired(active, weight)


def _weight(raw: str | None) -> int | None:
    """The `weight` key: absent is 0; surrounding blanks are dropped (as for `active`); anything but 1-3 plain
    digits up to 100 is invalid (None): "5.5", "-1", "+5", "1e1" or "abc" are refused, never rounded or guessed."""
    if raw is None:
        return 0
    text = raw.strip()
    if not (1 <= len(text) <= 3 and text.isascii() and text.isdigit()) or int(text) > MAX_WEIGHT:
        return None
    return int(text)


def _blob(data: Mapping[str, str]) -> tuple[State | None, tuple[str, ...]]:
    """The state bgproxy wrote last, if there is one and it parses; else None and, if corrupt, why."""
    raw = data.get(KEY_STATE)
    if raw is None:
        return None, ()
    try:
        return State.from_dict(json.loads(raw)), ()
    except ValueError as exc:
        return None, (f"key {KEY_STATE!r} is not a bgproxy state ({exc}); taking {KEY_ACTIVE!r} as an edit",)
