"""Micro-benchmark: the ConcurrencyMiddleware's own cost per request, in nanoseconds.

    .venv/bin/python bench/monitor_overhead.py [--requests 200000] [--rounds 7]

Drives a trivial ASGI app in-process (no network, no server) with and without the middleware,
interleaved A B A B, and prints the median difference per request. Both sides run in the same
process and the same moment, so the figure is a difference measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.concurrency_monitor import ConcurrencyMiddleware, ConcurrencyMonitor, Message, Receive, Scope, Send

START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
BODY = {"type": "http.response.body", "body": b"{}", "more_body": False}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send(START)
    await send(BODY)


async def receive() -> Message:
    return {"type": "http.request", "body": b"{}", "more_body": False}


async def send(message: Message) -> None:
    return None


async def drive(target: object, requests: int) -> float:
    scope = {"type": "http", "path": "/v1/chat/completions", "method": "POST", "headers": []}
    call = target  # type: ignore[assignment]
    started = time.perf_counter_ns()
    for _ in range(requests):
        await call(scope, receive, send)  # type: ignore[operator]
    return (time.perf_counter_ns() - started) / requests


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    monitor = ConcurrencyMonitor()
    wrapped = ConcurrencyMiddleware(app, monitor)
    bare_ns: list[float] = []
    monitored_ns: list[float] = []
    await drive(app, 10_000)
    await drive(wrapped, 10_000)
    for _ in range(args.rounds):
        bare_ns.append(await drive(app, args.requests))
        monitored_ns.append(await drive(wrapped, args.requests))
    bare = statistics.median(bare_ns)
    monitored = statistics.median(monitored_ns)
    assert monitor.active == 0
    print(f"requests per round: {args.requests}, rounds: {args.rounds}")
    print(f"bare app:          {bare:8.0f} ns/request")
    print(f"with middleware:   {monitored:8.0f} ns/request")
    print(f"middleware cost:   {monitored - bare:8.0f} ns/request (median of interleaved rounds)")


if __name__ == "__main__":
    asyncio.run(main())
