"""Micro-benchmark: the monitor's own cost per request, beside prometheus-fastapi-instrumentator's.

    .venv/bin/python bench/monitor_overhead.py [--requests 50000] [--rounds 7]

The same one-route FastAPI app is driven in-process through ASGI calls (no network, no server)
bare, with ConcurrencyMiddleware, and with prometheus-fastapi-instrumentator (when installed:
`pip install -r bench/requirements.txt`). Rounds are interleaved (bare, monitor, instrumentator,
bare, ...) and each cost is the median difference to the bare app in the same round.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi import FastAPI
from fastapi.responses import Response

from utils.concurrency_monitor import ASGIApp, ConcurrencyMiddleware, ConcurrencyMonitor, Message

App = ASGIApp
SCOPE_TEMPLATE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "method": "POST",
    "scheme": "http",
    "path": "/v1/chat/completions",
    "raw_path": b"/v1/chat/completions",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"bench"), (b"content-type", b"application/json")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 9999),
}


def build_app(kind: str) -> App:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/chat/completions")
    async def chat() -> Response:
        return Response(b"{}", media_type="application/json")

    if kind == "monitor":
        app.add_middleware(ConcurrencyMiddleware, monitor=ConcurrencyMonitor())
    elif kind == "instrumentator":
        from prometheus_client import CollectorRegistry
        from prometheus_fastapi_instrumentator import Instrumentator

        Instrumentator(registry=CollectorRegistry()).instrument(app)
    return app


async def _receive() -> Message:
    return {"type": "http.request", "body": b"{}", "more_body": False}


async def _send(message: Message) -> None:
    return None


async def drive(app: App, requests: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(requests):
        await app(dict(SCOPE_TEMPLATE), _receive, _send)
    return (time.perf_counter_ns() - started) / requests


def instrumentator_available() -> bool:
    try:
        import prometheus_fastapi_instrumentator  # noqa: F401
    except ImportError:
        return False
    return True


async def measure(requests: int = 50_000, rounds: int = 7) -> dict[str, float | None]:
    """Median ns/request of each app, and of each middleware's cost over the bare app."""
    kinds = ["bare", "monitor"] + (["instrumentator"] if instrumentator_available() else [])
    apps = {kind: build_app(kind) for kind in kinds}
    # Starlette builds its middleware stack on the first call (lifespan is not needed here).
    for app in apps.values():
        await drive(app, 2_000)
    per_round: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(rounds):
        for kind in kinds:
            per_round[kind].append(await drive(apps[kind], requests))
    result: dict[str, float | None] = {f"{kind}_ns": statistics.median(v) for kind, v in per_round.items()}
    for kind in kinds[1:]:
        result[f"{kind}_cost_ns"] = statistics.median(
            b - a for a, b in zip(per_round["bare"], per_round[kind], strict=True)
        )
    result.setdefault("instrumentator_cost_ns", None)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    result = asyncio.run(measure(args.requests, args.rounds))
    print(f"requests per round: {args.requests}, rounds: {args.rounds} (interleaved)")
    print(f"bare FastAPI app:                    {result['bare_ns']:9.0f} ns/request")
    print(f"ConcurrencyMiddleware cost:          {result['monitor_cost_ns']:9.0f} ns/request")
    if result["instrumentator_cost_ns"] is None:
        print("prometheus-fastapi-instrumentator:   not installed (pip install -r bench/requirements.txt)")
    else:
        print(f"prometheus-fastapi-instrumentator:   {result['instrumentator_cost_ns']:9.0f} ns/request")


if __name__ == "__main__":
    main()
