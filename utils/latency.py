"""Latency bookkeeping for the concurrency monitor: rolling percentiles and fixed-bucket histograms.

Both cost O(1) per observation; the work (sorting, summing) happens when they are read.
"""

from __future__ import annotations

import math
import time
from array import array
from bisect import bisect_left

WINDOW_SECONDS = 300.0
WINDOW_MAX_SAMPLES = 10_000
# Seconds; the same buckets for every histogram (Prometheus `le` bounds, +Inf implied).
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class RollingWindow:
    """The most recent samples — at most `max_samples`, none older than `seconds` — for exact percentiles.

    At more than max_samples per window the percentiles cover the newest max_samples requests.
    The samples are raw doubles in two preallocated ring buffers: adding one allocates nothing
    and frees nothing (a deque of tuples freed a sample 10,000 requests old, from cold memory,
    on every request).
    """

    __slots__ = ("_count", "_next", "_times", "_values", "max_samples", "seconds")

    def __init__(self, seconds: float = WINDOW_SECONDS, max_samples: int = WINDOW_MAX_SAMPLES) -> None:
        self.seconds = seconds
        self.max_samples = max_samples
        self._times = array("d", bytes(8 * max_samples))
        self._values = array("d", bytes(8 * max_samples))
        self._next = 0  # the slot the next sample goes to
        self._count = 0  # slots filled, up to max_samples

    def add(self, value: float, now: float | None = None) -> None:
        """`now`: a time.perf_counter() value (the caller usually has one at hand)."""
        slot = self._next
        self._times[slot] = time.perf_counter() if now is None else now
        self._values[slot] = value
        slot += 1
        if slot == self.max_samples:
            slot = 0
        self._next = slot
        if self._count < self.max_samples:
            self._count += 1

    def percentiles(self, qs: tuple[float, ...], now: float | None = None) -> list[float | None]:
        """Nearest-rank percentiles (q in 0..100) of the samples in the window; None when it is empty."""
        cutoff = (time.perf_counter() if now is None else now) - self.seconds
        count = self._count
        values = sorted(v for t, v in zip(self._times[:count], self._values[:count], strict=True) if t >= cutoff)
        if not values:
            return [None] * len(qs)
        n = len(values)
        return [values[min(n - 1, max(0, math.ceil(q / 100 * n) - 1))] for q in qs]

    def __len__(self) -> int:
        """Samples kept (some may be older than the window until they are overwritten)."""
        return self._count


class Histogram:
    """Counts per bucket (not cumulative), their sum and count: what Prometheus exposes."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BUCKETS, value)] += 1
        self.sum += value
        self.count += 1


def format_ms(seconds: float | None) -> str:
    """`120ms`, `3.4ms` below 10 ms, `-` when there is no sample."""
    if seconds is None:
        return "-"
    ms = seconds * 1000
    return f"{ms:.0f}ms" if ms >= 10 else f"{ms:.1f}ms"


def to_ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
