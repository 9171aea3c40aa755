"""What happened to each system during a run: ok, failed (with the first reason) or skipped."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass
class Status:
    state: str = "ok"  # ok | failed | skipped
    reasons: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


class Statuses(dict[str, Status]):
    def fail(self, name: str, reason: str, *, state: str = "failed") -> None:
        status = self.setdefault(name, Status())
        if status.state == "ok":
            status.state = state
        if reason not in status.reasons:
            status.reasons.append(reason)
        first, _, rest = reason.partition("\n")
        print(f"bench: {name} {state}: {first}", file=sys.stderr)
        if rest:
            print("  " + rest.replace("\n", "\n  "), file=sys.stderr)

    def ok(self, name: str) -> bool:
        return self.get(name, Status()).state == "ok"
