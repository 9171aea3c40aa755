"""Prometheus metrics, in one private registry served on the admin port, and each colour's live figures.

The per-request figures (requests, durations, in-flight) are plain integers in one `ColorStats` per colour,
turned into metric families only when Prometheus scrapes: the data plane pays a dict update and a bisect per
request instead of prometheus-client's locks. Everything rarer uses prometheus-client's own objects. The live
figures over the last ANALYSIS_WINDOW (what the automatic rollback judges and /state shows) are counters per time
slot in the same `ColorStats`, so a request costs the same however busy the colour is, and memory stays bounded.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator
from itertools import compress
from time import perf_counter

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from .core.analysis import BreachKind, Figures
from .core.model import Color, State

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds; proxied requests are usually milliseconds, websockets and downloads can last minutes.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, float("inf"))
ERROR_KINDS = ("connect", "timeout", "reset", "protocol")
# What became of a change notification (a webhook delivery, a Kubernetes Event): delivered, failed after every
# try, or dropped because its queue was full (or the process stopped first).
NOTICE_RESULTS = ("ok", "failed", "dropped")
BREACH_KINDS: tuple[BreachKind, ...] = ("error_rate", "latency")

# The live window's latency histogram: log-spaced bounds, each 4% above the one below, so a percentile read as its
# bucket's geometric middle is within 2% of the true value; from 10 µs (and below) to an hour (and above). BUCKETS'
# bounds are among them, so that one bisect per request finds the bucket of both histograms.
LATENCY_GROWTH = 1.04
LATENCY_MIN, LATENCY_MAX = 1e-5, 3600.0
BOUNDS = tuple(
    sorted(
        {
            LATENCY_MIN * LATENCY_GROWTH**k
            for k in range(math.ceil(math.log(LATENCY_MAX / LATENCY_MIN, LATENCY_GROWTH)) + 1)
        }
        | set(BUCKETS[:-1])
    )
)  # upper bounds (inclusive, as Prometheus' `le`); the last bucket holds what is above them
LATENCY_BUCKETS = len(BOUNDS) + 1
_PROMETHEUS = tuple(bisect_left(BUCKETS, bound) for bound in (*BOUNDS, float("inf")))  # fine bucket -> BUCKETS index
_VALUES = tuple(
    BOUNDS[0] if i == 0 else BOUNDS[-1] if i == len(BOUNDS) else math.sqrt(BOUNDS[i - 1] * BOUNDS[i])
    for i in range(LATENCY_BUCKETS)
)  # what a bucket stands for: its geometric middle
MAX_SLOTS = 60  # a window longer than a minute gets wider slots (an hour: one per minute), not more of them


def latency_bucket(seconds: float) -> int:
    """The live histogram's bucket of a duration (`ColorStats.done` computes it inline)."""
    return bisect_left(BOUNDS, seconds)


def bucket_value(i: int) -> float:
    return _VALUES[i]


class _Slot:
    """What ended in one time slot: a latency histogram (its sum is the requests) and the 5xx answers."""

    __slots__ = ("errors", "latency", "tick")

    def __init__(self) -> None:
        self.clear(-1)

    def clear(self, tick: int) -> None:
        self.tick = tick
        self.errors = 0
        self.latency = [0] * LATENCY_BUCKETS


def _quantile(histogram: list[int], n: int, q: float) -> float:
    """The smallest bucket value at or below which a share `q` of the `n` counted durations lie."""
    rank = max(1, math.ceil(q * n))
    seen = 0
    for i in compress(range(len(histogram)), histogram):
        seen += histogram[i]
        if seen >= rank:
            return _VALUES[i]
    raise AssertionError("the histogram holds fewer durations than counted")


class ColorStats:
    """Counters of one colour, updated by the data plane without any lookup by label.

    Besides the all-time counters Prometheus reads, the live figures over a sliding window (`window` seconds): a
    ring of time slots, each with its requests, 5xx answers and latency histogram, so a request costs the same
    however busy the colour is (the current slot's counters and one bucket) and memory stays bounded (at most
    MAX_SLOTS + 1 slots). Requests count there when they end, and only those that started after `mark`: the figures
    then describe what the colour does since it began getting its current traffic. Websockets (101) count in flight
    only. With `window` None (ANALYSIS_ENABLED=false) no slots are kept, nor paid for.

    For the drained signal: `previews` in flight (what is in flight besides them is live traffic) and `ended`, when
    the last live exchange ended. The data plane (`Exchange`) keeps them beside `inflight`. Clocks are perf_counter.
    """

    __slots__ = (
        "buckets",
        "color",
        "ended",
        "inflight",
        "previews",
        "rate",
        "requests",
        "seconds",
        "since",
        "slot",
        "slots",
        "sum",
        "turn_at",
    )

    def __init__(self, color: Color, *, window: float | None = 30.0, now: float | None = None) -> None:
        now = perf_counter() if now is None else now
        self.color = color
        self.inflight = 0
        self.previews = 0
        self.ended = now
        self.requests: dict[tuple[bytes, int], int] = {}
        self.buckets = [0] * len(BUCKETS)
        self.sum = 0.0
        self.seconds = window or 0.0
        n = min(math.ceil(window), MAX_SLOTS) if window else 0
        self.rate = n / window if window else 0.0  # slots per second
        self.slots = [_Slot() for _ in range(n + 1)] if window else []  # the window's and the one now filling
        self.since = now if window else math.inf  # requests that started earlier do not count
        self.slot = _Slot()  # the one now filling, until `turn_at`
        self.turn_at = -math.inf

    @property
    def kept(self) -> bool:
        """Whether live figures are kept."""
        return bool(self.slots)

    @property
    def live(self) -> int:
        """What is in flight as live traffic (requests and websockets, not previews)."""
        return self.inflight - self.previews

    def done(self, method: bytes, code: int, started: float, now: float) -> float:
        """Count an exchange that started at `started` and ended `now`; returns its duration."""
        seconds = now - started
        # llhttp accepts only its fixed list of methods and a status is 100-999: the keys stay few.
        key = (method, code)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        i = bisect_left(BOUNDS, seconds)
        self.buckets[_PROMETHEUS[i]] += 1
        self.sum += seconds
        if started >= self.since and code != 101:
            slot = self.slot if now < self.turn_at else self._turn(now)
            slot.latency[i] += 1
            if 500 <= code < 600:
                slot.errors += 1
        return seconds

    def _turn(self, now: float) -> _Slot:
        """The slot for requests that end `now`: it replaces the oldest one."""
        tick = int(now * self.rate)
        slot = self.slot = self.slots[tick % len(self.slots)]
        if slot.tick != tick:
            slot.clear(tick)
        self.turn_at = (tick + 1) / self.rate
        return slot

    def mark(self, now: float) -> None:
        """Forget the live figures so far: from now on only requests that start from `now` count."""
        if self.slots:
            self.since = now
            for slot in self.slots:
                slot.clear(-1)
            self.turn_at = -math.inf

    def figures(self, now: float) -> Figures:
        """Requests that ended within the window (and started after the mark), their 5xx count, p50 and p99; what
        is in flight."""
        if not self.slots:
            return Figures(inflight=self.inflight)
        tick = int(now * self.rate)
        oldest = tick - len(self.slots) + 1
        live = [s for s in self.slots if oldest <= s.tick <= tick]
        merged = [sum(column) for column in zip(*(s.latency for s in live), strict=True)] if live else []
        requests = sum(merged)
        span = min(self.seconds, now - self.since)
        if not requests:
            return Figures(inflight=self.inflight, span=span)
        return Figures(
            requests=requests,
            errors=sum(s.errors for s in live),
            p50=_quantile(merged, requests, 0.50),
            p99=_quantile(merged, requests, 0.99),
            inflight=self.inflight,
            span=span,
        )


class _DataPlaneCollector:
    def __init__(self, stats: dict[Color, ColorStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "bgproxy_requests",
            "Requests answered, by colour, method and status code",
            labels=("color", "method", "code"),
        )
        duration = HistogramMetricFamily(
            "bgproxy_request_duration_seconds", "Time from request head to end of response", labels=("color",)
        )
        inflight = GaugeMetricFamily("bgproxy_inflight_requests", "Requests being answered", labels=("color",))
        for color, st in self._stats.items():
            for (method, code), n in sorted(st.requests.items()):
                requests.add_metric([color.value, method.decode("latin-1"), str(code)], n)
            cumulative, buckets = 0, []
            for bound, n in zip(BUCKETS, st.buckets, strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            duration.add_metric([color.value], buckets, st.sum)
            inflight.add_metric([color.value], st.inflight)
        yield requests
        yield duration
        yield inflight


class Metrics:
    """All of bgproxy's metrics; one instance per process, passed to whoever records."""

    def __init__(self, *, window: float | None = 30.0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.colors = {c: ColorStats(c, window=window) for c in Color}
        self.registry.register(_DataPlaneCollector(self.colors))
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.upstream_errors = Counter(
            "bgproxy_upstream_errors", "Upstream failures by colour and kind", ("color", "kind"), registry=r
        )
        self.active_color = Gauge(
            "bgproxy_active_color", "1 for the active colour, 0 otherwise", ("color",), registry=r
        )
        self.switches = Counter(
            "bgproxy_switches", "Flips applied, by source and target colour", ("source", "to"), registry=r
        )
        self.state_revision = Gauge("bgproxy_state_revision", "Revision of the routing state", registry=r)
        self.weight = Gauge("bgproxy_weight", "Percent of ordinary traffic sent to the standby colour", registry=r)
        self.rollout_step = Gauge(
            "bgproxy_rollout_step", "Index of the stepped promotion's current step; -1 when none runs", registry=r
        )
        self.rollout_step.set(-1)
        self.config_errors = Counter(
            "bgproxy_config_errors", "Invalid state values received and ignored, by source", ("source",), registry=r
        )
        self.unhealthy_switches = Counter(
            "bgproxy_unhealthy_switches",
            "Flips applied to a colour that was failing its health checks (forced, or from the ConfigMap)",
            ("source",),
            registry=r,
        )
        # Exported only by a replica on the ConfigMap store (`configmap_figures`): elsewhere it would read 0 for ever,
        # and the alert on a lost watch would page for every replica on the file store.
        self.watch_connected = Gauge(
            "bgproxy_configmap_watch_connected", "1 while the ConfigMap watch is connected", registry=None
        )
        self.kubernetes_events = Counter(
            "bgproxy_kubernetes_events",
            "Kubernetes Events about state changes, by result: ok, failed (after every try), dropped (queue full)",
            ("result",),
            registry=None,
        )
        self._configmap_exported = False
        self.webhook_deliveries = Counter(
            "bgproxy_webhook_deliveries",
            "Webhook deliveries, by result: ok, failed (after every try), dropped (queue full)",
            ("result",),
            registry=r,
        )
        for result in NOTICE_RESULTS:  # at 0 from the start: the first failure is an increase Prometheus sees
            self.webhook_deliveries.labels(result)
        self.backend_up = Gauge(
            "bgproxy_backend_up", "1 while the colour's upstream is considered healthy", ("color",), registry=r
        )
        self.auto_rollbacks = Counter(
            "bgproxy_auto_rollbacks",
            "Automatic rollbacks this replica wrote, by the colour taken off traffic and the figure that breached",
            ("color", "reason"),
            registry=r,
        )
        for c in Color:  # every series from 0: the first rollback is an increase Prometheus can see
            for kind in BREACH_KINDS:
                self.auto_rollbacks.labels(c.value, kind)
        # Read at scrape time from the drained signal (`release.live`); 0 until that is wired.
        self.drained = Gauge(
            "bgproxy_drained",
            "1 once the colour gets no ordinary traffic and nothing live has been in flight on it for DRAINED_AFTER",
            ("color",),
            registry=r,
        )
        for c in Color:
            self.drained.labels(c.value)
        # Set by the composition root (`set_build`), which knows which build runs (`bgproxy.build`).
        self.build_info = Gauge(
            "bgproxy_build_info",
            "1, labelled with the version and whether the data plane runs compiled (mypyc) or as pure Python",
            ("compiled", "version"),
            registry=r,
        )
        # Children resolved once, so that an error on the data plane costs one attribute lookup.
        self.error_counters = {(c, k): self.upstream_errors.labels(c.value, k) for c in Color for k in ERROR_KINDS}
        self.healthy = dict.fromkeys(Color, True)
        for c in Color:
            self.backend_up.labels(c.value).set(1)

    def configmap_figures(self) -> Gauge:
        """Export the ConfigMap store's figures (its watch, its Events); returns the watch's gauge. The counters
        start at 0, so that the first invalid value is an increase Prometheus can see rather than a series that
        appears at 1."""
        if not self._configmap_exported:
            self._configmap_exported = True
            self.registry.register(self.watch_connected)
            self.registry.register(self.kubernetes_events)
            self.config_errors.labels("configmap")
            for result in NOTICE_RESULTS:
                self.kubernetes_events.labels(result)
        return self.watch_connected

    def set_build(self, version: str, *, compiled: bool) -> None:
        self.build_info.labels("true" if compiled else "false", version).set(1)

    def set_healthy(self, color: Color, healthy: bool) -> None:
        if self.healthy[color] is not healthy:
            self.healthy[color] = healthy
            self.backend_up.labels(color.value).set(1 if healthy else 0)

    def state_changed(self, state: State, *, flipped: bool) -> None:
        for c in Color:
            self.active_color.labels(c.value).set(1 if c is state.active else 0)
        self.state_revision.set(state.revision)
        self.weight.set(state.weight)
        self.rollout_step.set(state.rollout.step if state.rollout is not None else -1)
        if flipped:
            self.switches.labels(state.source, state.active.value).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
