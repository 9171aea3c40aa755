"""Prometheus metrics, in one private registry served on the admin port.

The per-request figures (requests, durations, in-flight) are plain integers in one `core.stats.ColorStats` per
colour (compiled, bumped by the data plane), turned into metric families here only when Prometheus scrapes: a
request pays a dict update and a bisect instead of prometheus-client's locks. Everything rarer uses
prometheus-client's own objects.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from time import perf_counter

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from .core.analysis import BreachKind
from .core.model import Color, State
from .core.stats import BUCKETS, ColorStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ERROR_KINDS = ("connect", "timeout", "reset", "protocol")
# What became of a change notification (a webhook delivery, a Kubernetes Event): delivered, failed after every
# try, or dropped because its queue was full (or the process stopped first).
NOTICE_RESULTS = ("ok", "failed", "dropped")
BREACH_KINDS: tuple[BreachKind, ...] = ("error_rate", "latency")


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
                buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
            duration.add_metric([color.value], buckets, st.sum)
            inflight.add_metric([color.value], st.inflight)
        yield requests
        yield duration
        yield inflight


class Metrics:
    """All of bgproxy's metrics; one instance per process, passed to whoever records."""

    def __init__(self, *, window: float | None = 30.0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        now = perf_counter()
        self.colors = {c: ColorStats(c, window=window, now=now) for c in Color}
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
