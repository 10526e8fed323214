"""Concurrency monitor: exact request counts, their log lines and JSON, and a pure ASGI middleware.

This module depends on nothing but the standard library and psutil, so it can be
used in any ASGI app. The proxy (``app/``) imports it; never the reverse.

Definitions (DESIGN.md, "Metrics"):

- active: requests admitted and not yet fully answered (streams included);
- queued: requests waiting for admission (reported by whoever runs the queue);
- peak: the highest ``active`` since start;
- total: every request received, so ``total == ok + failed + cancelled + active + queued``
  at every instant, which is how it is computed;
- failed: ended with status >= 500 or an exception; cancelled: the client left first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

import psutil

from utils.latency import Histogram, RollingWindow, format_ms
from utils.monitor_state import export_state, format_uptime, snapshot_from_state

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

Outcome = Literal["ok", "failed", "cancelled"]

# An app may say why a request failed by setting this scope key (the proxy does: upstream_unavailable,
# upstream_timeout, upstream_error, queue_full, queue_timeout); otherwise a failure is "internal".
FAILURE_REASON_KEY = "concurrency_monitor.failure_reason"
FAILURE_REASONS: tuple[str, ...] = (
    "upstream_unavailable",
    "upstream_timeout",
    "upstream_error",
    "queue_full",
    "queue_timeout",
    "internal",
)
# The first SSE event that carries generated text (not the role-only chunk): chat or completions.
_CONTENT_RE = re.compile(rb'"(?:content|text|reasoning_content)":"[^"]')

LOGGER_NAME = "concurrency"
# The pid tells several workers apart; the prefix has no `|` and no `%` (the guide's awk recipes split on them).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"

# Always listed in [ENDPOINTS], in this order, even at 0.
ALWAYS_LISTED: tuple[str, ...] = ("/v1/chat/completions", "/v1/completions", "/v1/models")
# Other endpoints of the OpenAI API (and the proxy's /health): listed once seen.
KNOWN_ENDPOINTS: frozenset[str] = frozenset(
    {
        *ALWAYS_LISTED,
        "/v1/embeddings",
        "/v1/responses",
        "/v1/moderations",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/images/variations",
        "/v1/audio/speech",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/files",
        "/v1/batches",
        "/v1/fine_tuning/jobs",
        "/v1/assistants",
        "/v1/threads",
        "/v1/vector_stores",
        "/v1/uploads",
        "/v1/rerank",
        "/v1/score",
        "/v1/tokenize",
        "/v1/detokenize",
        "/health",
    }
)
# Paths with an id below them (`/v1/models/{id}` is counted as `/v1/models`).
_ID_FAMILIES: tuple[str, ...] = (
    "/v1/models/",
    "/v1/responses/",
    "/v1/files/",
    "/v1/batches/",
    "/v1/fine_tuning/jobs/",
    "/v1/assistants/",
    "/v1/threads/",
    "/v1/vector_stores/",
    "/v1/uploads/",
)
# Observation endpoints: watching must not change what is watched.
UNCOUNTED: frozenset[str] = frozenset({"/monitor", "/metrics"})
OTHER = "other"


def endpoint_of(path: str) -> str | None:
    """The endpoint a request path is counted under; ``None`` for the observation endpoints."""
    if path in KNOWN_ENDPOINTS:
        return path
    if path in UNCOUNTED:
        return None
    trimmed = path.rstrip("/")
    if trimmed in KNOWN_ENDPOINTS:
        return trimmed
    if trimmed in UNCOUNTED:
        return None
    for family in _ID_FAMILIES:
        if trimmed.startswith(family):
            return family[:-1]
    return OTHER


# Histogram kind -> the _Counts attribute that holds it.
_HISTOGRAM_ATTRS: dict[str, str] = {
    "duration": "h_duration",
    "stream_duration": "h_stream",
    "headers": "h_headers",
    "ttft": "h_ttft",
    "queue_wait": "h_queue",
}


class _Counts:
    """Everything counted for one endpoint: plain attributes, so that an update is one store."""

    __slots__ = (
        "active",
        "cancelled",
        "failed",
        "h_duration",
        "h_headers",
        "h_queue",
        "h_stream",
        "h_ttft",
        "ok",
        "queued",
        "statuses",
    )

    def __init__(self) -> None:
        self.active = 0
        self.queued = 0
        self.ok = 0
        self.failed = 0
        self.cancelled = 0
        self.statuses: dict[int, int] = {}
        self.h_duration = Histogram()
        self.h_stream = Histogram()
        self.h_headers = Histogram()
        self.h_ttft = Histogram()
        self.h_queue = Histogram()

    @property
    def total(self) -> int:
        return self.ok + self.failed + self.cancelled + self.active + self.queued


class _SystemSampler:
    """CPU (since the previous sample), resident memory and threads of this process."""

    def __init__(self) -> None:
        self._process = psutil.Process(os.getpid())
        self._process.cpu_percent(None)  # the first call only sets the reference point
        self._taken = 0.0
        self.cpu_percent = 0.0
        self.memory_mb = 0.0
        self.threads = 0

    def sample(self, max_age: float = 0.0) -> None:
        now = time.monotonic()
        if self._taken and now - self._taken < max_age:
            return
        with self._process.oneshot():
            self.cpu_percent = self._process.cpu_percent(None)
            self.memory_mb = self._process.memory_info().rss / (1024 * 1024)
            self.threads = self._process.num_threads()
        self._taken = now


class ConcurrencyMonitor:
    """The one shared object holding every count. All updates are O(1) and run on the event loop."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self.pid = os.getpid()
        self.active = 0
        self.peak = 0
        self.queued = 0
        self.ok = 0
        self.failed = 0
        self.cancelled = 0
        self._endpoints: dict[str, _Counts] = {name: _Counts() for name in ALWAYS_LISTED}
        self._system: _SystemSampler | None = None
        # Latency: rolling windows for the percentiles (non-streamed durations, streams' time to
        # first token: a stream's duration is generation time and would poison the first) ...
        self.latency_window = RollingWindow()
        self.ttft_window = RollingWindow()
        # ... and, per endpoint (in _Counts), cumulative histograms and status counts for Prometheus.
        self.failed_reasons: dict[str, int] = dict.fromkeys(FAILURE_REASONS, 0)

    # -- updates (the per-request path) -------------------------------------------------

    def _counts(self, endpoint: str) -> _Counts:
        counts = self._endpoints.get(endpoint)
        if counts is None:
            counts = self._endpoints[endpoint] = _Counts()
        return counts

    def request_started(self, endpoint: str) -> _Counts:
        """A request became active (admitted). Returns the endpoint's counts, for `_end`."""
        counts = self._counts(endpoint)
        counts.active += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        return counts

    def request_finished(
        self,
        endpoint: str,
        outcome: Outcome,
        status: int = 0,
        reason: str | None = None,
        duration: float | None = None,
        headers_after: float | None = None,
        ttft: float | None = None,
        stream: bool = False,
        now: float | None = None,
    ) -> None:
        """An active request ended; the times are seconds since it became active, `now` a perf_counter()."""
        self._end(
            self._counts(endpoint),
            outcome,
            status,
            reason,
            duration,
            headers_after,
            ttft,
            stream,
            time.perf_counter() if now is None else now,
        )

    def _end(
        self,
        counts: _Counts,
        outcome: Outcome,
        status: int,
        reason: str | None,
        duration: float | None,
        headers_after: float | None,
        ttft: float | None,
        stream: bool,
        now: float,
    ) -> None:
        """`request_finished` with the endpoint's counts at hand (the middleware's per-request path)."""
        counts.active -= 1
        self.active -= 1
        self._tally(counts, outcome, status, reason)
        if headers_after is not None:
            counts.h_headers.observe(headers_after)
        if ttft is not None:
            counts.h_ttft.observe(ttft)
            self.ttft_window.add(ttft, now)
        if duration is not None and outcome == "ok":
            if stream:
                counts.h_stream.observe(duration)
            else:
                counts.h_duration.observe(duration)
                self.latency_window.add(duration, now)

    def queue_entered(self, endpoint: str) -> None:
        self._counts(endpoint).queued += 1
        self.queued += 1

    def queue_left(self, endpoint: str, waited: float | None = None) -> None:
        counts = self._counts(endpoint)
        counts.queued -= 1
        self.queued -= 1
        if waited is not None:
            counts.h_queue.observe(waited)

    def record(self, endpoint: str, outcome: Outcome, status: int = 0, reason: str | None = None) -> None:
        """A request answered without ever becoming active (refused at the door, or left the queue)."""
        self._tally(self._counts(endpoint), outcome, status, reason)

    def _tally(self, counts: _Counts, outcome: Outcome, status: int, reason: str | None) -> None:
        statuses = counts.statuses
        statuses[status] = statuses.get(status, 0) + 1
        if outcome == "ok":
            counts.ok += 1
            self.ok += 1
        elif outcome == "failed":
            counts.failed += 1
            self.failed += 1
            reason = reason if reason in self.failed_reasons else "internal"
            self.failed_reasons[reason] += 1  # type: ignore[index]
        else:
            counts.cancelled += 1
            self.cancelled += 1

    @property
    def histograms(self) -> dict[str, dict[str, Histogram]]:
        """kind -> endpoint -> histogram, for the endpoints that observed something."""
        return {
            kind: {name: h for name, c in self._endpoints.items() if (h := getattr(c, attr)).count}
            for kind, attr in _HISTOGRAM_ATTRS.items()
        }

    @property
    def responses(self) -> dict[tuple[str, int], int]:
        """(endpoint, status code) -> finished requests."""
        return {(name, code): n for name, c in self._endpoints.items() for code, n in c.statuses.items()}

    # -- reading -------------------------------------------------------------------------

    @property
    def total(self) -> int:
        return self.ok + self.failed + self.cancelled + self.active + self.queued

    @property
    def uptime_seconds(self) -> float:
        return time.monotonic() - self._started

    def endpoint_active(self) -> dict[str, int]:
        """Active count per endpoint: the always-listed ones first, then the others in order of first sight."""
        return {name: counts.active for name, counts in self._endpoints.items()}

    def sample_system(self, max_age: float = 0.0) -> _SystemSampler:
        """Sample psutil (at most once per ``max_age`` seconds); kept off the per-request path."""
        if self._system is None:
            self._system = _SystemSampler()
        self._system.sample(max_age)
        return self._system

    def latency_percentiles(self) -> tuple[list[float | None], list[float | None]]:
        """Seconds: (p50, p95, p99) of non-streamed durations and of streams' time to first token."""
        qs = (50.0, 95.0, 99.0)
        return self.latency_window.percentiles(qs), self.ttft_window.percentiles(qs)

    def endpoint_counts(self) -> dict[str, _Counts]:
        return self._endpoints

    def export_state(self, max_system_age: float = 1.0) -> dict[str, Any]:
        """This worker's numbers as plain data (see utils.monitor_state)."""
        return export_state(self, max_system_age)

    def snapshot(self, max_system_age: float = 1.0) -> dict[str, Any]:
        """The JSON of ``GET /monitor`` (DESIGN.md, "JSON")."""
        return snapshot_from_state(export_state(self, max_system_age))

    def format_lines(self) -> tuple[str, str, str, str]:
        """The four metric lines (the logging prefix, `LOG_FORMAT`, adds time, level and pid)."""
        system = self.sample_system()
        concurrency = (
            f"[CONCURRENCY] Active: {self.active}/{self.peak} | Peak: {self.peak} | Total: {self.total}"
            f" | Failed: {self.failed} | Queue: {self.queued} | Uptime: {format_uptime(self.uptime_seconds)}"
        )
        endpoints = "[ENDPOINTS] " + " | ".join(f"{name}: {n}" for name, n in self.endpoint_active().items())
        system_line = (
            f"[SYSTEM] CPU: {system.cpu_percent:.1f}% | Memory: {system.memory_mb:.1f}MB | Threads: {system.threads}"
        )
        (p50, p95, p99), (t50, t95, _) = self.latency_percentiles()
        latency = (
            f"[LATENCY] p50: {format_ms(p50)} | p95: {format_ms(p95)} | p99: {format_ms(p99)}"
            f" | TTFT p50: {format_ms(t50)} | TTFT p95: {format_ms(t95)}"
        )
        return concurrency, endpoints, system_line, latency


class MonitorReporter:
    """Writes the metric lines every ``interval`` seconds through the ``concurrency`` logger."""

    def __init__(self, monitor: ConcurrencyMonitor, interval: float, logger: logging.Logger | None = None) -> None:
        self.monitor = monitor
        self.interval = interval
        self.logger = logger or logging.getLogger(LOGGER_NAME)

    def report(self) -> None:
        for line in self.monitor.format_lines():
            self.logger.info("%s", line)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            self.report()
            # Keep a fixed cadence: a slow write does not push every later line back.
            next_at += self.interval
            delay = next_at - loop.time()
            if delay < 0:
                next_at = loop.time()
                delay = 0
            await asyncio.sleep(delay)


class ConcurrencyMiddleware:
    """Pure ASGI middleware that counts every HTTP request in a `ConcurrencyMonitor`.

    Per-request state lives in locals; ``self`` holds only the app and the monitor.
    """

    def __init__(self, app: ASGIApp, monitor: ConcurrencyMonitor) -> None:
        self.app = app
        self.monitor = monitor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = endpoint_of(scope["path"])
        if endpoint is None:
            await self.app(scope, receive, send)
            return

        status = 0
        completed = False
        stream = False
        headers_at = 0.0
        first_token_at = 0.0
        clock = time.perf_counter

        async def counting_send(message: Message) -> None:
            nonlocal status, completed, stream, headers_at, first_token_at
            kind = message["type"]
            if kind == "http.response.body":
                if stream and not first_token_at and _CONTENT_RE.search(message.get("body", b"")):
                    first_token_at = clock()
                if not message.get("more_body", False):
                    completed = True
            elif kind == "http.response.start":
                status = message["status"]
                headers_at = clock()
                for name, value in message.get("headers", ()):
                    if name == b"content-type":  # ASGI header names are lowercase
                        stream = value.startswith(b"text/event-stream")
                        break
            elif kind == "http.response.pathsend":
                completed = True
            await send(message)

        monitor = self.monitor
        counts = monitor.request_started(endpoint)
        started = clock()
        outcome: Outcome = "failed"  # an exception (cancellation included) is a failure
        try:
            # `receive` is not wrapped: one coroutine less per call on every request. Whether
            # the client left is asked only in the rare case that needs it (below).
            await self.app(scope, receive, counting_send)
            if completed:
                outcome = "failed" if status >= 500 else "ok"
            elif status or await _client_gone(receive):
                # The app stopped sending because the client went away.
                outcome = "cancelled"
            # else: it returned without a response; the server answers 500 — a failure.
        finally:
            ended = clock()
            monitor._end(
                counts,
                outcome,
                status,
                None if outcome == "ok" else scope.get(FAILURE_REASON_KEY),
                ended - started,
                headers_at - started if headers_at else None,
                first_token_at - started if first_token_at else None,
                stream,
                ended,
            )


async def _client_gone(receive: Receive) -> bool:
    """True when the server already knows the client disconnected (its `receive` says so at once).

    Asked after the app returned without a response. A server answers `http.disconnect` without
    waiting once the connection is gone; otherwise `receive` would wait, so it gets one turn of
    the event loop and is then cancelled.
    """
    task = asyncio.ensure_future(receive())
    await asyncio.sleep(0)
    if not task.done():
        task.cancel()
        return False
    return not task.cancelled() and task.exception() is None and task.result()["type"] == "http.disconnect"
