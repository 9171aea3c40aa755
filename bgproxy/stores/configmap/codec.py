"""The ConfigMap's data and the state it holds, both ways. Pure: no Kubernetes client, no asyncio, no threads.

The keys and who owns them are listed once, below. A new key is parsed in `_desired` (people's keys) or written
into the `state` blob (bgproxy's), written by `configmap_data`, and gets rows in tests/stores/test_configmap_codec.py.

No flapping under GitOps: while an automatic rollback holds traffic off what the people's keys ask for, bgproxy
leaves those keys as they were (it writes `state` and `hold`), and reading them unchanged again (a re-sync of the same
Git state) changes nothing; an edit of any of them is a new decision and clears the hold.
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ...core import routing
from ...core.model import MAX_REASON, MAX_WEIGHT, Color, InvalidColor, InvalidPlan, State, check_release

# Keys people and Git own: an edit of one is a change that every replica applies.
KEY_ACTIVE = "active"  # blue|green, the colour that serves ordinary traffic
KEY_WEIGHT = "weight"  # "0".."100", the standby colour's percent of ordinary traffic; absent means 0
KEY_RELEASE = "release"  # optional label of what is deployed on the standby colour (v43, an image tag); absent: none
KEY_REASON = "reason"  # why: given with an edit, and written by bgproxy with every change (`kubectl get` shows it)
# Keys bgproxy owns: written back after every change, not meant to be edited.
KEY_STATE = "state"  # JSON of the whole state (active, previous, revision, updated_at, source, reason, ...)
KEY_HOLD = "hold"  # JSON of the hold while an automatic rollback refuses what the keys above ask for; else absent
OPTIONAL = (KEY_RELEASE, KEY_HOLD)  # keys a state may have no value for: a patch removes them then
SOURCE = "configmap"  # the source of an edit of the people's keys

EDITED = "ConfigMap edited"  # the reason of an edit that gave none


@dataclass(frozen=True, slots=True)
class Reading:
    """What a ConfigMap's data means.

    `state` is None when the data is invalid (keep the last good state). `normalise` asks for the `state` blob
    to be written back: after an edit of `active`, `weight` or `release`, or when the blob is missing or corrupt.
    `problems` are logged and counted as config errors.
    """

    state: State | None
    normalise: bool = False
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Desired:
    """What the keys people and Git own ask for."""

    active: Color
    weight: int
    release: str | None = None

    def held_by(self, state: State) -> bool:
        """`state` already is what these keys ask for, so there is no edit to apply: it serves them (a stepped
        promotion writes its weight), or it holds traffic off exactly them (an automatic rollback refused them)."""
        return _asked(state) == (self.active, self.weight, self.release)


def _asked(state: State) -> tuple[Color, int, str | None]:
    """What the people's keys say of `state`: what it serves or, while a hold is set, what was refused (what
    `Hold.asks` compares with)."""
    if state.hold is not None:
        return state.hold.active, state.hold.weight, state.hold.release
    return state.active, state.weight, state.release


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
    # `active`, `weight`, `release` or several were edited (kubectl, Git): one change.
    reason = data.get(KEY_REASON, "").strip()[:MAX_REASON]
    if reason in {s.reason for s in (blob, last) if s is not None}:
        reason = ""  # the reason bgproxy wrote with an earlier state, not one given with this edit
    if base is None:
        first = State(desired.active, None, 1, now, SOURCE, reason or EDITED, weight=desired.weight)
        return Reading(replace(first, release=desired.release), normalise=True, problems=problems)
    return Reading(_edited(base, desired, reason=reason or EDITED, now=now), normalise=True, problems=problems)


def _edited(base: State, desired: Desired, *, reason: str, now: float) -> State:
    """An edit of the people's keys applied to what `base` serves; it clears a hold.

    A new `release` alone is what `set_release` does: the release is on the standby colour, waiting for a promotion
    while no traffic is split; traffic stays where it is. An edit of `active` or `weight` says what traffic does, as a
    flip or a manual shift would (it ends a stepped promotion, a flip starts the watch of the new colour).
    """
    active, weight, _ = _asked(base)
    if (desired.active, desired.weight) == (active, weight):
        new = routing.set_release(base, desired.release, source=SOURCE, reason=reason, now=now)
        return new if new is not base else routing.revised(base, now=now, source=SOURCE, reason=reason)
    flipped = desired.active is not base.active
    if flipped:
        moved = replace(
            routing.switch(base, desired.active, source=SOURCE, reason=reason, now=now), weight=desired.weight
        )
    else:
        moved = routing.shift(base, desired.weight, source=SOURCE, reason=reason, now=now)
    pending = desired.release != base.release and desired.release is not None and not flipped and not moved.split
    return replace(moved, release=desired.release, release_pending=pending)


def configmap_data(state: State) -> dict[str, str]:
    """The ConfigMap data that stores `state`: the keys that have a value (see `configmap_patch` for a write).

    The people's keys say what traffic does, except while a hold is set: then they stay what the store asked for and
    was refused (as Git set them), so that a re-sync of the unchanged Git state is no edit.
    """
    active, weight, release = _asked(state)
    blob = {k: v for k, v in state.to_dict().items() if k != "standby"}
    data = {
        KEY_ACTIVE: active.value,
        KEY_WEIGHT: str(weight),
        KEY_REASON: state.reason,
        KEY_STATE: _json(blob),
    }
    if release is not None:
        data[KEY_RELEASE] = release
    if state.hold is not None:
        data[KEY_HOLD] = _json(state.hold.to_dict())
    return data


def configmap_patch(state: State) -> dict[str, str | None]:
    """`configmap_data` as a merge patch into whatever other keys the ConfigMap has: an OPTIONAL key without a value
    (no release, no hold) is removed (null)."""
    return {**dict.fromkeys(OPTIONAL), **configmap_data(state)}


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


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
    release: str | None = None
    raw = data.get(KEY_RELEASE)
    try:
        release = check_release(raw.strip() if raw is not None else None)
    except InvalidPlan:
        problems.append(
            f"key {KEY_RELEASE!r}: expected a label such as v43 or an image tag (visible ASCII, no spaces), "
            f"got {reprlib.repr(raw)}"
        )
    if active is None or weight is None or len(problems) > 0:
        return tuple(problems)
    return Desired(active, weight, release)


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
