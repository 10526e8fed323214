"""ConcurrencyMonitor and its middleware, in-process (pure functions and a bare ASGI app)."""

from __future__ import annotations

import asyncio
import random
import re
import string

import pytest

from utils.concurrency_monitor import (
    ALWAYS_LISTED,
    ConcurrencyMiddleware,
    ConcurrencyMonitor,
    Message,
    Receive,
    Scope,
    Send,
    endpoint_of,
    format_uptime,
)

CONCURRENCY_RE = re.compile(
    r"^\[CONCURRENCY\] Active: (\d+)/(\d+) \| Peak: (\d+) \| Total: (\d+) \| Failed: (\d+) \| Queue: (\d+)"
    r" \| Uptime: \d+h \d{1,2}m \d{1,2}s$"
)
ENDPOINTS_RE = re.compile(
    r"^\[ENDPOINTS\] /v1/chat/completions: \d+ \| /v1/completions: \d+ \| /v1/models: \d+( \| \S+: \d+)*$"
)
SYSTEM_RE = re.compile(r"^\[SYSTEM\] CPU: \d+\.\d% \| Memory: \d+\.\dMB \| Threads: \d+$")
_MS = r"(?:\d+(?:\.\d)?ms|-)"
LATENCY_RE = re.compile(rf"^\[LATENCY\] p50: {_MS} \| p95: {_MS} \| p99: {_MS} \| TTFT p50: {_MS} \| TTFT p95: {_MS}$")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0h 0m 0s"), (59, "0h 0m 59s"), (3600, "1h 0m 0s"), (5025, "1h 23m 45s"), (90000, "25h 0m 0s")],
)
def test_uptime_format(seconds: float, text: str) -> None:
    assert format_uptime(seconds) == text


@pytest.mark.parametrize(
    ("path", "endpoint"),
    [
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/v1/chat/completions/", "/v1/chat/completions"),
        ("/v1/models/llama-3", "/v1/models"),
        ("/v1/embeddings", "/v1/embeddings"),
        ("/health", "/health"),
        ("/v1/files/file-abc/content", "/v1/files"),
        ("/monitor", None),
        ("/metrics", None),
        ("/wp-login.php", "other"),
        ("/v1/unknown", "other"),
    ],
)
def test_endpoint_of(path: str, endpoint: str | None) -> None:
    assert endpoint_of(path) == endpoint


def test_lines_match_the_guide() -> None:
    monitor = ConcurrencyMonitor()
    monitor.request_started("/v1/chat/completions")
    monitor.request_started("/v1/embeddings")
    concurrency, endpoints, system, latency = monitor.format_lines()
    assert latency == "[LATENCY] p50: - | p95: - | p99: - | TTFT p50: - | TTFT p95: -"
    match = CONCURRENCY_RE.match(concurrency)
    assert match, concurrency
    assert match.groups() == ("2", "2", "2", "2", "0", "0")
    assert ENDPOINTS_RE.match(endpoints), endpoints
    assert endpoints.startswith("[ENDPOINTS] /v1/chat/completions: 1 | /v1/completions: 0 | /v1/models: 0 |")
    assert endpoints.endswith("/v1/embeddings: 1")
    assert SYSTEM_RE.match(system), system


def test_snapshot_keys_and_types() -> None:
    monitor = ConcurrencyMonitor()
    snap = monitor.snapshot()
    for key in ("active", "peak", "total_requests", "failed_requests", "cancelled_requests", "queue_depth"):
        assert snap[key] == 0
        assert type(snap[key]) is int
    assert list(snap["endpoints"]) == list(ALWAYS_LISTED)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", snap["timestamp"])
    assert snap["uptime"] == format_uptime(snap["uptime_seconds"])
    assert isinstance(snap["system"]["memory_mb"], float)
    assert isinstance(snap["system"]["threads"], int)


def test_queue_and_peak_accounting() -> None:
    monitor = ConcurrencyMonitor()
    for _ in range(4):
        monitor.request_started("/v1/completions")
    for _ in range(6):
        monitor.queue_entered("/v1/completions")
    assert (monitor.active, monitor.queued, monitor.total, monitor.peak) == (4, 6, 10, 4)
    monitor.queue_left("/v1/completions")
    monitor.record("/v1/completions", "failed")  # queue timeout
    monitor.request_finished("/v1/completions", "ok")
    assert (monitor.active, monitor.queued, monitor.total, monitor.failed, monitor.ok) == (3, 5, 10, 1, 1)


def _app(kind: str):  # type: ignore[no-untyped-def]
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if kind == "raise":
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": 500 if kind == "500" else 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        if kind == "leave":
            await receive()  # the client disconnects
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


@pytest.mark.parametrize(
    ("kind", "ok", "failed", "cancelled"), [("ok", 1, 0, 0), ("500", 0, 1, 0), ("raise", 0, 1, 0), ("leave", 0, 0, 1)]
)
async def test_middleware_outcomes(kind: str, ok: int, failed: int, cancelled: int) -> None:
    monitor = ConcurrencyMonitor()
    middleware = ConcurrencyMiddleware(_app(kind), monitor)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        pass

    scope = {"type": "http", "path": "/v1/chat/completions", "method": "POST", "headers": []}
    if kind == "raise":
        with pytest.raises(RuntimeError):
            await middleware(scope, receive, send)
    else:
        await middleware(scope, receive, send)
        # the observation endpoints pass straight through, uncounted
        await middleware({**scope, "path": "/monitor"}, receive, send)
    counts = (monitor.ok, monitor.failed, monitor.cancelled, monitor.active, monitor.total)
    assert counts == (ok, failed, cancelled, 0, 1)


@pytest.mark.parametrize(("client_left", "failed", "cancelled"), [(True, 0, 1), (False, 1, 0)])
async def test_app_returning_without_a_response(client_left: bool, failed: int, cancelled: int) -> None:
    """Nothing sent: cancelled if the server says the client is gone, else a failure (the server answers 500)."""
    monitor = ConcurrencyMonitor()

    async def silent(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    never = asyncio.Event()

    async def receive() -> Message:
        if client_left:
            return {"type": "http.disconnect"}
        await never.wait()  # a connected client with nothing more to send: receive waits
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        raise AssertionError("nothing is sent")

    scope = {"type": "http", "path": "/v1/completions", "method": "POST", "headers": []}
    await asyncio.wait_for(ConcurrencyMiddleware(silent, monitor)(scope, receive, send), 5)
    assert (monitor.failed, monitor.cancelled, monitor.active, monitor.total) == (failed, cancelled, 0, 1)


async def test_cancelled_task_is_counted_and_active_returns_to_zero() -> None:
    monitor = ConcurrencyMonitor()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(10)

    middleware = ConcurrencyMiddleware(slow, monitor)

    async def nothing(*_: object) -> Message:
        return {"type": "http.disconnect"}

    scope = {"type": "http", "path": "/v1/completions", "method": "POST", "headers": []}
    task = asyncio.ensure_future(middleware(scope, nothing, nothing))
    await asyncio.sleep(0)
    assert monitor.active == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (monitor.active, monitor.failed, monitor.total) == (0, 1, 1)


def test_endpoint_map_stays_bounded() -> None:
    monitor = ConcurrencyMonitor()
    rng = random.Random(7)
    for _ in range(10_000):
        path = "/" + "".join(rng.choices(string.ascii_lowercase + "/", k=12))
        endpoint = endpoint_of(path)
        if endpoint is not None:
            monitor.request_started(endpoint)
            monitor.request_finished(endpoint, "ok")
    assert len(monitor.endpoint_active()) <= len(ALWAYS_LISTED) + 2  # + "other" (and /health at most)
    assert monitor.total == monitor.ok


def test_percentiles_of_known_latencies() -> None:
    monitor = ConcurrencyMonitor()
    for ms in range(1, 101):  # 1..100 ms, non-streamed
        monitor.request_started("/v1/completions")
        monitor.request_finished("/v1/completions", "ok", 200, duration=ms / 1000)
    for ms in (200, 210, 220, 600):  # streams: their duration stays out of the latency percentiles
        monitor.request_started("/v1/chat/completions")
        monitor.request_finished("/v1/chat/completions", "ok", 200, duration=5.0, ttft=ms / 1000, stream=True)
    snap = monitor.snapshot()
    assert snap["latency_ms"] == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    assert snap["ttft_ms"] == {"p50": 210.0, "p95": 600.0, "p99": 600.0}
    latency_line = monitor.format_lines()[3]
    assert latency_line == "[LATENCY] p50: 50ms | p95: 95ms | p99: 99ms | TTFT p50: 210ms | TTFT p95: 600ms"
    assert LATENCY_RE.match(latency_line)
    # histograms for Prometheus: every ok request's duration, by endpoint
    assert monitor.histograms["duration"]["/v1/completions"].count == 100
    assert monitor.histograms["ttft"]["/v1/chat/completions"].count == 4
    assert monitor.histograms["stream_duration"]["/v1/chat/completions"].count == 4


def test_rolling_window_forgets_old_samples() -> None:
    from utils.latency import RollingWindow

    window = RollingWindow(seconds=300, max_samples=5)
    for i in range(10):
        window.add(float(i), now=100.0 + i)
    assert len(window) == 5  # only the newest max_samples are kept
    assert window.percentiles((50.0,), now=110.0) == [7.0]
    assert window.percentiles((50.0,), now=1000.0) == [None]  # all older than the window


def test_failure_reasons() -> None:
    monitor = ConcurrencyMonitor()
    monitor.record("/v1/completions", "failed", 503, "queue_full")
    monitor.request_started("/v1/completions")
    monitor.request_finished("/v1/completions", "failed", 502, "upstream_unavailable")
    monitor.request_started("/v1/completions")
    monitor.request_finished("/v1/completions", "failed", 500, None)
    assert monitor.failed_reasons["queue_full"] == 1
    assert monitor.failed_reasons["upstream_unavailable"] == 1
    assert monitor.failed_reasons["internal"] == 1
    assert monitor.responses[("/v1/completions", 502)] == 1
