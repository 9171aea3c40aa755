"""The soak's figures, as text for the person running it and as JSON for keeping."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

from tests.support.soak.chaos import Soak
from tests.support.soak.cluster import Cluster
from tests.support.soak.resources import FIGURES, Growth
from tests.support.soak.workload import Stats


def growth_table(cluster: Cluster, warmup: float) -> list[dict[str, Any]]:
    rows = []
    for m in cluster.members:
        for g in m.generations:
            row: dict[str, Any] = {
                "process": g.label,
                "pid": g.pid,
                "lived": f"{g.started:.0f}-{(g.ended if g.ended is not None else cluster.rel()):.0f}s",
            }
            for figure in FIGURES:
                gr = g.growth(figure, warmup)
                row[figure] = None if gr is None else asdict(gr) | {"change": gr.change}
            rows.append(row)
    return rows


def _fmt(gr: dict[str, Any] | None, unit: str) -> str:
    if gr is None:
        return "-"
    return f"{gr['first']:.1f}->{gr['last']:.1f}{unit} ({gr['per_10min']:+.1f}/10min)"


def render(soak: Soak, stats: Stats, *, seconds: float, seed: int, warmup: float, final: dict[str, Any] | None) -> str:
    c = soak.cluster
    lines = [f"soak: {seconds:g}s of chaos behind nginx, seed {seed}, endpoints by {c.endpoints_mode}"]
    lines.append(f"  requests: {stats.total()} answered checks, {len(stats.failures)} failed")
    for kind, counts in sorted(stats.counts.items()):
        parts = ", ".join(f"{cls} {n}" for cls, n in counts.most_common())
        lines.append(f"    {kind}: {sum(counts.values())} ({parts})")
    lines.append(
        f"  colours served {dict(stats.colours)}; {stats.bytes_checked / (1 << 20):.0f} MiB of bodies checked; "
        f"{stats.ws_messages} websocket messages echoed; {stats.failovers} answers after an Ingress retry"
    )
    by_action: Counter[str] = Counter(f"{e.action}: {e.result}" for e in soak.events)
    lines.append(f"  chaos: {', '.join(f'{k} {n}' for k, n in sorted(by_action.items()))}")
    why: Counter[str] = Counter(_refusal(e.detail) for e in soak.events if e.result in ("refused", "skipped"))
    if why:
        lines.append(f"  refused as expected: {', '.join(f'{k} {n}' for k, n in why.most_common())}")
    lines.append(f"  state changes: {soak.timeline.changes()}, final state {_state(final)}")
    seen = c.ingress.access({f.request_id for f in stats.failures[:20]})
    for f in stats.failures[:20]:
        lines.append(f"  FAILED {f.kind} at {f.start:.2f}-{f.end:.2f}s via {f.replica}: {f.detail} [{f.request_id}]")
        entry = seen.get(f.request_id)
        lines.append(
            f"    nginx: {entry if entry is not None else 'no access log line (never reached it, or no answer)'}"
        )
    for e in soak.events:
        if e.result == "failed":
            lines.append(f"  CHAOS FAILED {e.action} at {e.start:.1f}s: {e.detail}")
    for a in c.anomalies + soak.unconverged:
        lines.append(f"  ANOMALY {a}")
    lines.append(
        f"  per replica process, from {warmup:g}s after ready until SIGTERM: median of the first -> last quarter "
        "of the samples (least-squares slope per 10 min):"
    )
    for row in growth_table(c, warmup):
        lines.append(
            f"    {row['process']} pid {row['pid']} {row['lived']}: RSS {_fmt(row['rss_mib'], ' MiB')}, "
            f"fds {_fmt(row['fds'], '')}, threads {_fmt(row['threads'], '')}, tasks {_fmt(row['tasks'], '')}"
        )
    return "\n".join(lines)


def _refusal(detail: str) -> str:
    """The kind of an expected refusal, for counting (the details are in the JSON report)."""
    for marker, kind in (
        ("whose health is failing", "409 for a colour failing its health checks"),
        ("nothing to roll back", "409 with nothing to roll back to"),
        ("503 while the API server is down", "admin 503 while the API server was down"),
        ("the API server is down", "kubectl while the API server was down"),
        ("shutting down", "a replica shutting down"),
    ):
        if marker in detail:
            return kind
    return detail[:80]


def _state(state: dict[str, Any] | None) -> str:
    if state is None:
        return "NOT CONVERGED"
    return f"{state['active']} at revision {state['revision']} (source {state['source']})"


def as_json(
    soak: Soak, stats: Stats, *, seconds: float, seed: int, warmup: float, final: dict[str, Any] | None
) -> dict[str, Any]:
    c = soak.cluster
    return {
        "seconds": seconds,
        "seed": seed,
        "endpoints": c.endpoints_mode,
        "requests": {k: dict(v) for k, v in stats.counts.items()},
        "colours": dict(stats.colours),
        "bytes_checked": stats.bytes_checked,
        "ws_messages": stats.ws_messages,
        "failovers": stats.failovers,
        "failures": [asdict(f) for f in stats.failures],
        "chaos": [asdict(e) for e in soak.events],
        "anomalies": c.anomalies,
        "unconverged": soak.unconverged,
        "final_state": final,
        "events": c.events,
        "warmup": warmup,
        "growth": growth_table(c, warmup),
        "samples": {g.label: [asdict(s) for s in g.samples] for m in c.members for g in m.generations},
    }


__all__ = ["Growth", "as_json", "growth_table", "render"]
