"""A monitor's numbers as plain data: exported by each worker, merged for the whole server.

`export_state()` turns a ConcurrencyMonitor into a JSON-serialisable dict; `merge_states()`
adds up the dicts of several workers; `snapshot_from_state()` gives the JSON of GET /monitor.
Counts add up exactly. Two figures cannot be summed and say so: `peak` of several workers is
the sum of their peaks (an upper bound of the server's true peak), and the latency
percentiles are those of the slowest worker.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from utils.latency import BUCKETS, to_ms

if TYPE_CHECKING:
    from utils.concurrency_monitor import ConcurrencyMonitor

State = dict[str, Any]
_COUNTS = ("active", "queued", "ok", "failed", "cancelled")


def format_uptime(seconds: float) -> str:
    """``Hh Mm Ss``, hours unbounded: 90000 s is ``25h 0m 0s``."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes}m {secs}s"


def export_state(monitor: ConcurrencyMonitor, max_system_age: float = 1.0) -> State:
    system = monitor.sample_system(max_system_age)
    latency, ttft = monitor.latency_percentiles()
    return {
        "pid": monitor.pid,
        "time": time.time(),
        "peak": monitor.peak,
        "uptime_seconds": monitor.uptime_seconds,
        "endpoints": {name: [getattr(c, key) for key in _COUNTS] for name, c in monitor.endpoint_counts().items()},
        "responses": [[endpoint, code, n] for (endpoint, code), n in monitor.responses.items()],
        "failed_reasons": dict(monitor.failed_reasons),
        "histograms": {
            kind: {endpoint: [h.counts, h.sum, h.count] for endpoint, h in per_endpoint.items()}
            for kind, per_endpoint in monitor.histograms.items()
        },
        "latency": latency,
        "ttft": ttft,
        "latency_window_seconds": monitor.latency_window.seconds,
        "system": [system.cpu_percent, system.memory_mb, system.threads],
        "workers": 1,
        "pids": [monitor.pid],
    }


def _max_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def merge_states(states: list[State]) -> State:
    """One state for several workers: counts summed; peak summed; percentiles the slowest worker's."""
    if len(states) == 1:
        return states[0]
    merged: State = {
        "pid": None,
        "time": max(s["time"] for s in states),
        "peak": sum(s["peak"] for s in states),
        "uptime_seconds": max(s["uptime_seconds"] for s in states),
        "endpoints": {},
        "responses": [],
        "failed_reasons": {},
        "histograms": {},
        "latency": [_max_or_none([s["latency"][i] for s in states]) for i in range(3)],
        "ttft": [_max_or_none([s["ttft"][i] for s in states]) for i in range(3)],
        "latency_window_seconds": states[0]["latency_window_seconds"],
        "system": [
            sum(s["system"][0] for s in states),
            sum(s["system"][1] for s in states),
            sum(s["system"][2] for s in states),
        ],
        "workers": sum(s["workers"] for s in states),
        "pids": [pid for s in states for pid in s["pids"]],
    }
    responses: dict[tuple[str, int], int] = {}
    for state in states:
        for name, counts in state["endpoints"].items():
            into = merged["endpoints"].setdefault(name, [0] * len(_COUNTS))
            for i, value in enumerate(counts):
                into[i] += value
        for endpoint, code, n in state["responses"]:
            responses[endpoint, code] = responses.get((endpoint, code), 0) + n
        for reason, n in state["failed_reasons"].items():
            merged["failed_reasons"][reason] = merged["failed_reasons"].get(reason, 0) + n
        for kind, per_endpoint in state["histograms"].items():
            into_kind = merged["histograms"].setdefault(kind, {})
            for endpoint, (counts, total, count) in per_endpoint.items():
                acc = into_kind.setdefault(endpoint, [[0] * len(counts), 0.0, 0])
                acc[0] = [a + b for a, b in zip(acc[0], counts, strict=True)]
                acc[1] += total
                acc[2] += count
    merged["responses"] = [[endpoint, code, n] for (endpoint, code), n in responses.items()]
    return merged


def snapshot_from_state(state: State) -> dict[str, Any]:
    """The JSON of ``GET /monitor`` (DESIGN.md, "JSON"), for one worker or the whole server."""
    endpoints = state["endpoints"]
    totals = [sum(counts[i] for counts in endpoints.values()) for i in range(len(_COUNTS))]
    active, queued, ok, failed, cancelled = totals
    cpu, memory, threads = state["system"]
    workers = state["workers"]
    snapshot: dict[str, Any] = {
        "timestamp": datetime.fromtimestamp(state["time"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "active": active,
        "peak": state["peak"],
        "total_requests": ok + failed + cancelled + active + queued,
        "failed_requests": failed,
        "cancelled_requests": cancelled,
        "queue_depth": queued,
        "uptime": format_uptime(state["uptime_seconds"]),
        "uptime_seconds": int(state["uptime_seconds"]),
        "endpoints": {name: counts[0] for name, counts in endpoints.items()},
        "endpoint_stats": {
            name: {
                "active": c[0],
                "queued": c[1],
                "total": sum(c),
                "failed": c[3],
                "cancelled": c[4],
            }
            for name, c in endpoints.items()
        },
        "system": {"cpu_percent": round(cpu, 1), "memory_mb": round(memory, 1), "threads": threads},
        "latency_ms": dict(zip(("p50", "p95", "p99"), map(to_ms, state["latency"]), strict=True)),
        "ttft_ms": dict(zip(("p50", "p95", "p99"), map(to_ms, state["ttft"]), strict=True)),
        "latency_window_seconds": int(state["latency_window_seconds"]),
        "failed_by_reason": dict(state["failed_reasons"]),
        "workers": workers,
        "pid": state["pid"],
    }
    if workers > 1:
        snapshot["pids"] = state["pids"]
        snapshot["peak_is"] = "sum of the workers' peaks (an upper bound of the server's peak)"
        snapshot["latency_is"] = "the slowest worker's percentiles"
    return snapshot


def cumulative(counts: list[int]) -> list[tuple[str, int]]:
    """Prometheus buckets [(le, cumulative count), ...] ending with +Inf."""
    out = []
    running = 0
    for bound, count in zip((*BUCKETS, math.inf), counts, strict=True):
        running += count
        out.append(("+Inf" if bound == math.inf else repr(bound), running))
    return out
