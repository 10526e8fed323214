"""`GET /metrics`: the monitor's numbers in the Prometheus text format, read at scrape time.

Nothing is done per request for Prometheus: a custom collector turns the ConcurrencyMonitor's
counters and histograms into metric families when scraped, so the cost stays the monitor's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from utils.monitor_state import State, cumulative

PREFIX = "llm_proxy"
CONTENT_TYPE = CONTENT_TYPE_LATEST
_HISTOGRAM_HELP = {
    "duration": ("request_duration_seconds", "Non-streamed successful requests: admission to the last byte."),
    "stream_duration": ("stream_duration_seconds", "Successful streams (SSE): admission to the last byte."),
    "headers": ("time_to_headers_seconds", "Time from admission to the response headers."),
    "ttft": ("time_to_first_token_seconds", "Streams: time from admission to the first SSE event carrying text."),
    "queue_wait": ("queue_wait_seconds", "Time spent waiting for admission (requests that were queued)."),
}


class MonitorCollector(Collector):
    """Metric families from a monitor state: this worker's, or the whole server's (see app.workers)."""

    def __init__(self, state: Callable[[], State]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state()
        active = GaugeMetricFamily(f"{PREFIX}_requests_active", "Requests in progress (admitted).", labels=["endpoint"])
        queued = GaugeMetricFamily(f"{PREFIX}_requests_queued", "Requests waiting for admission.", labels=["endpoint"])
        cancelled = CounterMetricFamily(
            f"{PREFIX}_requests_cancelled", "Requests the client left before the end.", labels=["endpoint"]
        )
        for endpoint, (n_active, n_queued, _, _, n_cancelled) in state["endpoints"].items():
            active.add_metric([endpoint], n_active)
            queued.add_metric([endpoint], n_queued)
            cancelled.add_metric([endpoint], n_cancelled)
        yield active
        yield queued
        yield GaugeMetricFamily(
            f"{PREFIX}_requests_active_peak",
            "Highest active since start (several workers: the sum of their peaks, an upper bound).",
            value=state["peak"],
        )
        yield cancelled
        finished = CounterMetricFamily(
            f"{PREFIX}_requests",
            "Finished requests by endpoint and status code (0: no response).",
            labels=["endpoint", "code"],
        )
        for endpoint, code, count in sorted(state["responses"]):
            finished.add_metric([endpoint, str(code)], count)
        yield finished
        failed = CounterMetricFamily(f"{PREFIX}_requests_failed", "Failed requests by reason.", labels=["reason"])
        for reason, count in state["failed_reasons"].items():
            failed.add_metric([reason], count)
        yield failed
        for kind, (name, help_text) in _HISTOGRAM_HELP.items():
            family = HistogramMetricFamily(f"{PREFIX}_{name}", help_text, labels=["endpoint"])
            for endpoint, (counts, total, _) in sorted(state["histograms"].get(kind, {}).items()):
                family.add_metric([endpoint], cumulative(counts), total)
            yield family
        yield GaugeMetricFamily(
            f"{PREFIX}_workers", "Worker processes counted in these numbers.", value=state["workers"]
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_uptime_seconds", "Seconds since the (oldest) worker started.", value=state["uptime_seconds"]
        )


def new_registry(state: Callable[[], State]) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(MonitorCollector(state))
    registry.register(ProcessCollector(registry=None))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
