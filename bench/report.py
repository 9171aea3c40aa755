"""Medians over repetitions, ratios to nginx, the markdown table and results.md / results.json."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .flip import FlipRun
from .status import Statuses
from .stream import Transfer
from .systems import BASELINE, BGPROXY_VARIANTS
from .throughput import Sample

TARGET_RPS_RATIO = 0.65
TARGET_P99_RATIO = 1.5
TARGET_RSS_GROWTH_MIB = 16.0
TARGET_FIGURES_COST = 0.05  # issue 11: the live figures may cost at most this share of bgproxy's throughput
NOISE_PCT = 5.0


@dataclass
class Row:
    system: str
    path: str
    reps: int
    rps: float
    rps_min: float
    rps_max: float
    p50_ms: float
    p99_ms: float
    cpu_pct: float
    cpu_us_per_req: float
    sut_core_pct: float | None
    core_us_per_req: float | None
    load_core_pct: float | None
    other_pct: float
    errors: int
    rps_ratio: float | None = None
    p99_ratio: float | None = None


def _median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(samples: Sequence[Sample], order: Sequence[str], paths: Sequence[str]) -> list[Row]:
    rows: list[Row] = []
    for path in paths:
        group: list[Row] = []
        for name in order:
            mine = [s for s in samples if s.system == name and s.path == path]
            if not mine:
                continue
            rps = [s.wrk.rps for s in mine]
            group.append(
                Row(
                    name,
                    path,
                    len(mine),
                    statistics.median(rps),
                    min(rps),
                    max(rps),
                    statistics.median(s.wrk.p50_ms for s in mine),
                    statistics.median(s.wrk.p99_ms for s in mine),
                    statistics.median(s.cpu_pct for s in mine),
                    statistics.median(s.cpu_us_per_req for s in mine),
                    _median_or_none([100 * s.sut_core for s in mine if s.sut_core is not None]),
                    _median_or_none([s.core_us_per_req for s in mine if s.core_us_per_req is not None]),
                    _median_or_none([100 * s.load_core for s in mine if s.load_core is not None]),
                    statistics.median(s.foreign_pct for s in mine),
                    sum(s.wrk.socket_errors + s.wrk.status_errors for s in mine),
                )
            )
        base = next((r for r in group if r.system == BASELINE), None)
        for r in group:
            if base and base.rps and base.p99_ms:
                r.rps_ratio, r.p99_ratio = r.rps / base.rps, r.p99_ms / base.p99_ms
        rows.extend(group)
    return rows


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(header)]

    def fmt(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
            + " |"
        )

    sep = "|" + "|".join("-" * (w + 1) + ":" if i else ":" + "-" * (w + 1) for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt(header), sep, *(fmt(c) for c in lines)])


def _x(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}x"


THROUGHPUT_HEADER = (
    "system", "rps", "rps min-max", "p50 ms", "p99 ms", "CPU %", "CPU µs/req",
    "SUT core %", "core µs/req", "load core %", "other %", "rps xnginx", "p99 xnginx", "errors",
)  # fmt: skip


def _f(v: float | None, digits: int) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def throughput_table(rows: Sequence[Row], statuses: Statuses, order: Sequence[str], path: str) -> str:
    lines = []
    for name in order:
        r = next((r for r in rows if r.system == name and r.path == path), None)
        if r is None:
            st = statuses.get(name)
            lines.append([name, st.state if st else "not run", *["—"] * (len(THROUGHPUT_HEADER) - 2)])
            continue
        lines.append([
            name + ("" if statuses.ok(name) else " (!)"), f"{r.rps:.0f}", f"{r.rps_min:.0f}-{r.rps_max:.0f}",
            f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.cpu_pct:.0f}", f"{r.cpu_us_per_req:.1f}",
            _f(r.sut_core_pct, 0), _f(r.core_us_per_req, 1), _f(r.load_core_pct, 0), f"{r.other_pct:.0f}",
            _x(r.rps_ratio), _x(r.p99_ratio), str(r.errors),
        ])  # fmt: skip
    return _table(THROUGHPUT_HEADER, lines)


def stream_table(transfers: Sequence[Transfer], order: Sequence[str]) -> str:
    header = ["system", "direction", "MiB/s", "xnginx", "RSS before MiB", "RSS peak MiB", "RSS growth MiB"]
    lines = []
    for direction in ("download", "upload"):

        def median(name: str, key: str, d: str = direction) -> float | None:
            vals = [getattr(t, key) for t in transfers if t.system == name and t.direction == d]
            return statistics.median(vals) if vals else None

        base = median(BASELINE, "mib_s")
        for name in order:
            speed = median(name, "mib_s")
            if speed is None:
                continue
            lines.append(
                [
                    name,
                    direction,
                    f"{speed:.0f}",
                    _x(speed / base if base else None),
                    f"{median(name, 'rss_base_mib'):.1f}",
                    f"{median(name, 'rss_peak_mib'):.1f}",
                    f"{median(name, 'rss_growth_mib'):.1f}",
                ]
            )
    return _table(header, lines)


def flip_summary(runs: Sequence[FlipRun]) -> dict[str, dict[str, dict[str, object]]]:
    """{variant: {"steady" | "flipping": medians and sums over the reps}}."""
    out: dict[str, dict[str, dict[str, object]]] = {}
    for variant in BGPROXY_VARIANTS:
        for flipping, key in ((False, "steady"), (True, "flipping")):
            mine = [r for r in runs if r.variant == variant and r.flipping == flipping]
            if mine:
                switch_p99 = [r.switch_p99_ms for r in mine if r.switch_p99_ms is not None]
                out.setdefault(variant, {})[key] = {
                    "reps": len(mine),
                    "rps": statistics.median(r.wrk.rps for r in mine),
                    "p50_ms": statistics.median(r.wrk.p50_ms for r in mine),
                    "p99_ms": statistics.median(r.wrk.p99_ms for r in mine),
                    "max_ms": max(r.wrk.max_ms for r in mine),
                    "non2xx": sum(r.wrk.non2xx or 0 for r in mine),
                    "socket_errors": sum(r.wrk.socket_errors for r in mine),
                    "flips_ok": sum(r.flips_ok for r in mine),
                    "flips_failed": sum(r.flips_failed for r in mine),
                    "switch_p99_ms": max(switch_p99) if switch_p99 else None,
                    "served_blue": sum(r.wrk.blue or 0 for r in mine),
                    "served_green": sum(r.wrk.green or 0 for r in mine),
                }
    return out


def flip_table(summary: dict[str, dict[str, dict[str, object]]]) -> str:
    header = [
        "bgproxy settings",
        "run",
        "rps",
        "p50 ms",
        "p99 ms",
        "max ms",
        "non-2xx",
        "socket errors",
        "flips ok/failed",
        "POST /switch p99 ms",
        "served blue/green",
    ]
    lines = []
    for variant, runs in summary.items():
        for key in ("steady", "flipping"):
            s = runs.get(key)
            if s is not None:
                switch = s["switch_p99_ms"]
                lines.append(
                    [
                        BGPROXY_VARIANTS[variant],
                        key,
                        f"{s['rps']:.0f}",
                        f"{s['p50_ms']:.2f}",
                        f"{s['p99_ms']:.2f}",
                        f"{s['max_ms']:.1f}",
                        str(s["non2xx"]),
                        str(s["socket_errors"]),
                        f"{s['flips_ok']}/{s['flips_failed']}",
                        "—" if switch is None else f"{switch:.1f}",
                        f"{s['served_blue']}/{s['served_green']}",
                    ]
                )
    return _table(header, lines)


def targets(
    rows: Sequence[Row], transfers: Sequence[Transfer], flip: dict[str, dict[str, dict[str, object]]]
) -> list[str]:
    """Issue 4's targets (and issue 11's cost of the live figures), checked for bgproxy against this run."""
    out = []
    for r in rows:
        if r.path not in ("/small", "/16k"):
            continue  # the targets are for wrk's own requests
        if r.system == "bgproxy" and r.rps_ratio is not None and r.p99_ratio is not None:
            ok = r.rps_ratio >= TARGET_RPS_RATIO and r.p99_ratio <= TARGET_P99_RATIO
            out.append(
                f"{'PASS' if ok else 'MISS'} {r.path}: {r.rps_ratio:.2f}x nginx rps (target >= "
                f"{TARGET_RPS_RATIO}), p99 {r.p99_ratio:.2f}x nginx (target <= {TARGET_P99_RATIO})"
            )
        off = next((o for o in rows if o.system == "bgproxy-noanalysis" and o.path == r.path), None)
        if r.system == "bgproxy" and off is not None and off.rps:
            cost = 1 - r.rps / off.rps
            out.append(
                f"{'PASS' if cost < TARGET_FIGURES_COST else 'MISS'} {r.path}: the live figures cost {cost:.1%} of "
                f"the throughput ({r.rps:.0f} rps against {off.rps:.0f} without; target < "
                f"{TARGET_FIGURES_COST:.0%}), CPU {r.cpu_us_per_req:.1f} against {off.cpu_us_per_req:.1f} µs/req"
            )
        for other, what in (("bgproxy-weight50", "a 50/50 split"), ("bgproxy-rev", "the other commit")):
            o = next((o for o in rows if o.system == other and o.path == r.path), None)
            if r.system == "bgproxy" and o is not None and r.rps:
                out.append(
                    f"INFO {r.path}: {what} runs at {o.rps / r.rps:.2f}x bgproxy's rps ({o.rps:.0f} against "
                    f"{r.rps:.0f}), CPU {o.cpu_us_per_req:.1f} against {r.cpu_us_per_req:.1f} µs/req"
                )
    for t in transfers:
        if t.system == "bgproxy":
            ok = t.rss_growth_mib < TARGET_RSS_GROWTH_MIB
            out.append(
                f"{'PASS' if ok else 'MISS'} stream {t.direction}: RSS +{t.rss_growth_mib:.1f} MiB "
                f"(target < {TARGET_RSS_GROWTH_MIB:.0f}), {t.mib_s:.0f} MiB/s"
            )
    nginx_p99 = [r.p99_ms for r in rows if r.system == BASELINE and r.path == "/small"]
    limit = TARGET_P99_RATIO * nginx_p99[0] if nginx_p99 else None
    for variant, runs in flip.items():
        steady, flipping = runs.get("steady"), runs.get("flipping")
        if steady is None or flipping is None:
            continue
        errors = int(flipping["non2xx"]) + int(flipping["socket_errors"])  # type: ignore[call-overload]
        p99, steady_p99 = float(flipping["p99_ms"]), float(steady["p99_ms"])  # type: ignore[arg-type]
        ok = errors == 0 and flipping["flips_failed"] == 0 and (limit is None or p99 <= limit)
        out.append(
            f"{'PASS' if ok else 'MISS'} flip under load ({BGPROXY_VARIANTS[variant]}): {errors} errors, "
            f"{flipping['flips_ok']} flips, p99 {p99:.2f} ms vs {steady_p99:.2f} ms steady"
            + (f" (limit 1.5x nginx p99 = {limit:.2f} ms)" if limit else "")
        )
    return out


def render(
    meta: dict[str, object],
    statuses: Statuses,
    order: Sequence[str],
    paths: Sequence[str],
    rows: Sequence[Row],
    samples: Sequence[Sample],
    transfers: Sequence[Transfer],
    flip: dict[str, dict[str, dict[str, object]]],
) -> str:
    parts = [
        "# bgproxy benchmark",
        "",
        f"{meta['when']}: {meta['cpu_model']}, {meta['cpus']} CPUs, kernel {meta['kernel']}. "
        f"System under test on CPU {meta['sut_cpu']}, wrk and the nginx origin on CPU {meta['load_cpu']}. "
        f"wrk -t1 -c{meta['connections']}, {meta['reps']} interleaved reps of {meta['duration']} s; medians. "
        "CPU % and CPU µs/req: the system's processes (utime + stime, children such as nginx workers "
        "included; for `direct` the origin nginx, which shares its core with wrk). SUT core % and core µs/req: "
        "the whole core from /proc/stat, with the irq/softirq time the kernel charges to no process (on "
        "loopback, the TCP receive work for what the proxy sends). load core %: the core of wrk and the origin; "
        "near 100 means the load side, not the system, limited the run. other %: CPU used meanwhile by "
        "processes this benchmark did not start, as % of one core; above a few % the figures are noisy. "
        f"The machine was {meta.get('machine_busy_before_pct', '?')}% busy (all cores) just before the start.",
        "",
    ]
    if rows:
        for path in paths:
            title = path.replace("+ingress", ", with an Ingress's 13 request headers")
            parts += [f"## Throughput, GET {title}", "", throughput_table(rows, statuses, order, path), ""]
    if transfers:
        mib = transfers[0].bytes // (1024 * 1024)
        parts += [
            f"## Streaming {mib} MiB (curl through the proxy; RSS summed over its processes, sampled every 100 ms)",
            "",
            stream_table(transfers, order),
            "",
        ]
    if flip:
        parts += [
            f"## bgproxy flip under load (POST /switch every {meta['flip_interval_s']} s, GET /small)",
            "",
            flip_table(flip),
            "",
        ]
    noisy = [s for s in samples if s.foreign_pct > NOISE_PCT]
    if noisy:
        parts += [
            f"**Noise:** in {len(noisy)} of {len(samples)} runs other processes used more than {NOISE_PCT:.0f}% "
            f"of a core (up to {max(s.foreign_pct for s in noisy):.0f}%): rerun on an idle machine.",
            "",
        ]
    checks = targets(rows, transfers, flip)
    if checks:
        parts += ["## Targets (issues 4 and 11)", "", *(f"- {c}" for c in checks), ""]
    problems = [
        f"- {name}: {st.state}: " + st.reason.replace("\n", "\n  ") for name, st in statuses.items() if st.state != "ok"
    ]
    if problems:
        parts += ["## Problems", "", *problems, ""]
    parts += ["## Versions", "", *(f"- {k}: {v}" for k, v in dict(meta["versions"]).items()), ""]  # type: ignore[call-overload]
    return "\n".join(parts)


def write(out: Path, stem: str, markdown: str, payload: dict[str, object]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{stem}.md", out / f"{stem}.json"
    md.write_text(markdown)
    js.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    return md, js


def _jsonable(obj: object) -> object:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)  # type: ignore[call-overload]
    raise TypeError(type(obj).__name__)
