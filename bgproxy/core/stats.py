"""Each colour's per-request counters and live window (`ColorStats`): plain integers the data plane bumps once per
request, compiled with the rest of the core so that a request's bookkeeping runs native. Prometheus reads the
all-time counters at scrape time (`bgproxy.metrics`); the automatic rollback and /state read the live figures.

The live figures over the last ANALYSIS_WINDOW are counters per time slot, so a request costs the same however
busy the colour is, and memory stays bounded. Pure: every clock reading is handed in.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from itertools import compress
from typing import Final

from .analysis import Figures
from .model import Color

# Seconds; proxied requests are usually milliseconds, websockets and downloads can last minutes.
BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    math.inf,
)

# The live window's latency histogram: log-spaced bounds, each 4% above the one below, so a percentile read as its
# bucket's geometric middle is within 2% of the true value; from 10 µs (and below) to an hour (and above). BUCKETS'
# bounds are among them, so that one search per request finds the bucket of both histograms.
LATENCY_GROWTH: Final = 1.04
LATENCY_MIN: Final = 1e-5
LATENCY_MAX: Final = 3600.0


_LOG_STEPS: Final = math.ceil(math.log(LATENCY_MAX / LATENCY_MIN, LATENCY_GROWTH)) + 1


def _bounds() -> tuple[float, ...]:
    """The upper bounds (inclusive, as Prometheus' `le`); the last bucket holds what is above them."""
    return tuple(sorted({LATENCY_MIN * LATENCY_GROWTH**k for k in range(_LOG_STEPS)} | set(BUCKETS[:-1])))


BOUNDS: Final = _bounds()
LATENCY_BUCKETS: Final = len(BOUNDS) + 1
# Fine bucket -> BUCKETS index.
_PROMETHEUS: Final[tuple[int, ...]] = tuple(bisect_left(BUCKETS, bound) for bound in (*BOUNDS, math.inf))


def _values() -> tuple[float, ...]:
    """What each bucket stands for: its geometric middle (the end buckets: their one bound)."""
    last = len(BOUNDS)
    return tuple(
        BOUNDS[0] if i == 0 else BOUNDS[-1] if i == last else math.sqrt(BOUNDS[i - 1] * BOUNDS[i])
        for i in range(LATENCY_BUCKETS)
    )


_VALUES: Final = _values()
MAX_SLOTS: Final = 60  # a window longer than a minute gets wider slots (an hour: one per minute), not more of them


# Where each log-spaced bound LATENCY_MIN * LATENCY_GROWTH**k is in BOUNDS (which has BUCKETS' bounds among them).
_LOG_AT: Final = tuple(BOUNDS.index(LATENCY_MIN * LATENCY_GROWTH**k) for k in range(_LOG_STEPS))
_LOG_GROWTH: Final = math.log(LATENCY_GROWTH)


def latency_bucket(seconds: float) -> int:
    """The live histogram's bucket of a duration: the first bound at or above it (as `bisect_left`). Found from its
    logarithm, then a step or two along BOUNDS: compiled, a few native operations per request instead of a
    bisection's nine boxed comparisons."""
    if not seconds > LATENCY_MIN:  # (NaN too, as bisect_left puts it)
        return 0
    if seconds > BOUNDS[-1]:
        return len(BOUNDS)
    k = int(math.log(seconds / LATENCY_MIN) / _LOG_GROWTH)
    i = _LOG_AT[min(k, _LOG_STEPS - 1)]
    while BOUNDS[i] < seconds:
        i += 1
    while i > 0 and BOUNDS[i - 1] >= seconds:
        i -= 1
    return i


def bucket_value(i: int) -> float:
    return _VALUES[i]


class _Slot:
    """What ended in one time slot: a latency histogram (its sum is the requests), the buckets it has counts in
    (a few dozen of its hundreds: `figures` adds up only those), and the 5xx answers."""

    __slots__ = ("errors", "latency", "tick", "used")

    tick: int
    errors: int
    latency: list[int]
    used: list[int]

    def __init__(self) -> None:
        self.clear(-1)

    def clear(self, tick: int) -> None:
        self.tick = tick
        self.errors = 0
        self.latency = [0] * LATENCY_BUCKETS
        self.used = []


class _Count:
    """The answers of one (method, status) pair: a cell that the pair's next answer bumps in place."""

    __slots__ = ("n",)

    n: int

    def __init__(self) -> None:
        self.n = 0


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
        "_code",
        "_count",
        "_method",
        "buckets",
        "color",
        "counts",
        "ended",
        "inflight",
        "previews",
        "rate",
        "seconds",
        "since",
        "slot",
        "slots",
        "sum",
        "turn_at",
    )

    color: Color
    inflight: int
    previews: int
    ended: float
    counts: dict[tuple[bytes, int], _Count]
    _method: bytes
    _code: int
    _count: _Count
    buckets: list[int]
    sum: float
    seconds: float
    rate: float
    slots: list[_Slot]
    since: float
    slot: _Slot
    turn_at: float

    def __init__(self, color: Color, *, window: float | None = 30.0, now: float) -> None:
        self.color = color
        self.inflight = 0
        self.previews = 0
        self.ended = now
        self.counts = {}
        # The pair counted last and its cell: nearly every answer repeats it (GET, 200), and then costs no lookup.
        self._method = b""
        self._code = -1
        self._count = _Count()
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
    def requests(self) -> dict[tuple[bytes, int], int]:
        """Answers by method and status code, all time (what Prometheus reads)."""
        return {key: count.n for key, count in self.counts.items()}

    @property
    def live(self) -> int:
        """What is in flight as live traffic (requests and websockets, not previews)."""
        return self.inflight - self.previews

    def done(self, method: bytes, code: int, started: float, now: float) -> float:
        """Count an exchange that started at `started` and ended `now`; returns its duration."""
        seconds = now - started
        # llhttp accepts only its fixed list of methods and a status is 100-999: the keys stay few.
        count = self._count
        if code != self._code or method != self._method:
            key = (method, code)
            found = self.counts.get(key)
            if found is None:
                found = self.counts[key] = _Count()
            count = self._count = found
            self._method = method
            self._code = code
        count.n += 1
        i = latency_bucket(seconds)
        # `xs[j] = xs[j] + 1` rather than `+=`: compiled, an augmented item assignment is a generic number call.
        buckets = self.buckets
        j = _PROMETHEUS[i]
        buckets[j] = buckets[j] + 1
        self.sum += seconds
        if started >= self.since and code != 101:
            slot = self.slot if now < self.turn_at else self._turn(now)
            latency = slot.latency
            n = latency[i]
            if not n:
                slot.used.append(i)
            latency[i] = n + 1
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
        # A window is ~30 slots of ~500 buckets, nearly all empty: only the buckets each slot used are added up (all
        # of them cost a replica under a split ~1M instructions per colour per look, a millisecond's stall each second).
        merged = [0] * LATENCY_BUCKETS
        requests = errors = 0
        for slot in self.slots:
            if oldest <= slot.tick <= tick:
                errors += slot.errors
                latency = slot.latency
                for i in slot.used:
                    n = latency[i]
                    merged[i] = merged[i] + n
                    requests += n
        span = min(self.seconds, now - self.since)
        if not requests:
            return Figures(inflight=self.inflight, span=span)
        return Figures(
            requests=requests,
            errors=errors,
            p50=_quantile(merged, requests, 0.50),
            p99=_quantile(merged, requests, 0.99),
            inflight=self.inflight,
            span=span,
        )
