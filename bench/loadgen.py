"""A small HTTP/1.1 load generator: keep-alive connections, fixed concurrency, bounded in time.

    python bench/loadgen.py --url http://127.0.0.1:9999/v1/chat/completions -c 16 -d 5 [--stream]

Raw asyncio streams (uvloop when installed), so that the generator costs far less per request
than the servers it measures. Prints one JSON object: requests, errors, rps, latency
percentiles (ms) and, for streams, time to first content token percentiles. Only loopback
addresses are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

CHAT_BODY = json.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "Say hello in a few words."}], "max_tokens": 20}
).encode()
CONTENT_RE = re.compile(rb'"content":"[^"]')
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def _read_body(reader: asyncio.StreamReader, head: bytes, started: float, stats: Stats) -> bool:
    """Read one response body; returns whether the connection may be reused."""
    lower = head.lower()
    ttft: float | None = None
    if b"transfer-encoding: chunked" in lower:
        while True:
            size_line = await reader.readline()
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                break
            chunk = await reader.readexactly(size + 2)
            if ttft is None and CONTENT_RE.search(chunk):
                ttft = time.perf_counter() - started
    else:
        match = re.search(rb"content-length: *(\d+)", lower)
        length = int(match.group(1)) if match else 0
        body = await reader.readexactly(length)
        if ttft is None and CONTENT_RE.search(body):
            ttft = time.perf_counter() - started
    if ttft is not None:
        stats.ttfts.append(ttft)
    return b"connection: close" not in lower


async def worker(host: str, port: int, request: bytes, deadline: float, max_requests: int, stats: Stats) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    loop = asyncio.get_running_loop()
    done = 0
    while loop.time() < deadline and done < max_requests:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            reusable = await _read_body(reader, head, started, stats)
            stats.latencies.append(time.perf_counter() - started)
            stats.statuses[status] = stats.statuses.get(status, 0) + 1
            if status >= 400:
                stats.errors += 1
            if not reusable:
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            stats.errors += 1
            if writer is not None:
                writer.close()
            writer = None
        done += 1
    if writer is not None:
        writer.close()


def build_request(url: str, stream: bool, method: str) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    if host not in LOOPBACK:
        raise SystemExit(f"loadgen: {host} is not a loopback address")
    port = parts.port or 80
    path = parts.path or "/"
    if method == "GET":
        head = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"
        return host, port, head.encode()
    payload = json.loads(CHAT_BODY)
    if stream:
        payload["stream"] = True
    body = json.dumps(payload).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return host, port, head.encode() + body


async def run(
    url: str, concurrency: int, duration: float, stream: bool = False, method: str = "POST", max_requests: int = 0
) -> dict[str, Any]:
    host, port, request = build_request(url, stream, method)
    stats = Stats()
    loop = asyncio.get_running_loop()
    limit = max_requests // concurrency if max_requests else 1 << 60
    started = loop.time()
    deadline = started + duration
    await asyncio.gather(*(worker(host, port, request, deadline, limit, stats) for _ in range(concurrency)))
    elapsed = loop.time() - started

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    return {
        "url": url,
        "concurrency": concurrency,
        "stream": stream,
        "requests": len(stats.latencies),
        "errors": stats.errors,
        "statuses": stats.statuses,
        "seconds": round(elapsed, 3),
        "rps": round(len(stats.latencies) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": ms(percentile(stats.latencies, 50)),
        "p90_ms": ms(percentile(stats.latencies, 90)),
        "p99_ms": ms(percentile(stats.latencies, 99)),
        "ttft_p50_ms": ms(percentile(stats.ttfts, 50)),
        "ttft_p99_ms": ms(percentile(stats.ttfts, 99)),
    }


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main() -> None:
    parser = argparse.ArgumentParser(description="HTTP/1.1 load generator (loopback only)")
    parser.add_argument("--url", required=True)
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("-n", "--requests", type=int, default=0, help="stop after this many requests (0: none)")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--method", choices=("GET", "POST"), default="POST")
    args = parser.parse_args()
    install_uvloop()
    result = asyncio.run(run(args.url, args.concurrency, args.duration, args.stream, args.method, args.requests))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
