"""Faults of clients, upstreams and the machine, thrown at the real proxy; each adds a ledger row."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest

from tests.reliability.conftest import Ledger

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import loadgen

from tests.servers import Server, free_port, start_proxy, start_simulator, wait_until

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
LIMITS = httpx.Limits(max_connections=400, max_keepalive_connections=0)


def snap(proxy: Server) -> dict:
    return httpx.get(proxy.url + "/monitor").json()


def settle(proxy: Server) -> dict:
    """The monitor once traffic has stopped: active and queue back to 0."""
    return wait_until(lambda: (s := snap(proxy))["active"] == 0 and s["queue_depth"] == 0 and s, 10)  # type: ignore[return-value]


def drift(before: dict, after: dict, sent: int, failed: int, cancelled: int) -> int:
    return (
        abs(after["total_requests"] - before["total_requests"] - sent)
        + abs(after["failed_requests"] - before["failed_requests"] - failed)
        + abs(after["cancelled_requests"] - before["cancelled_requests"] - cancelled)
        + after["active"]
        + after["queue_depth"]
    )


async def test_client_aborts_at_every_point_of_a_stream(tmp_path: Path, ledger: Ledger) -> None:
    sim = start_simulator(tmp_path, "--ttft-ms", "0", "--token-ms", "10", "--tokens", "30")
    proxy = start_proxy(tmp_path, sim.url)
    try:
        before = snap(proxy)
        rng = random.Random(3)
        # raw reads before leaving: at most 15 of the 30 tokens' time, so that the stream is still
        # running when the client leaves (leaving at the very end races the last byte)
        cut_after = [rng.randrange(0, 15) for _ in range(300)]

        async def one(client: httpx.AsyncClient, chunks: int) -> str:
            async with client.stream("POST", proxy.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
                seen = 0
                received = b""
                async for data in r.aiter_raw():
                    seen += 1
                    received += data
                    if seen > chunks:
                        # reads can batch under load: a client that already has the end did not leave early
                        return "complete" if b"data: [DONE]" in received else "left"
            return "complete"

        async with httpx.AsyncClient(timeout=30, limits=LIMITS) as client:
            outcomes = Counter(await asyncio.gather(*(one(client, n) for n in cut_after)))
        after = settle(proxy)
        aborted = wait_until(lambda: httpx.get(sim.url + "/sim/stats").json()["active"] == 0, 10)
        assert aborted
        d = drift(before, after, 300, 0, outcomes["left"])
        ledger.add(
            "client leaves a stream after 0-14 reads, 300 times",
            "each counted cancelled; upstream told at once",
            f"{outcomes['left']} cancelled, {outcomes['complete']} complete, upstream idle after",
            lost=300 - sum(outcomes.values()),
            drift=d,
        )
    finally:
        proxy.stop()
        sim.stop()


async def test_client_aborts_while_queued_and_before_headers(tmp_path: Path, ledger: Ledger) -> None:
    sim = start_simulator(tmp_path, "--ttft-ms", "800", "--token-ms", "1", "--tokens", "2")
    proxy = start_proxy(tmp_path, sim.url, {"MAX_CONCURRENT_REQUESTS": "20", "MAX_QUEUE_SIZE": "500"})
    try:
        before = snap(proxy)

        async def one(client: httpx.AsyncClient) -> str:
            try:
                await client.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=0.3)
            except httpx.TimeoutException:
                return "gave up"
            return "answered"

        async with httpx.AsyncClient(timeout=30, limits=LIMITS) as client:
            outcomes = Counter(await asyncio.gather(*(one(client) for _ in range(200))))
        after = settle(proxy)
        assert outcomes["gave up"] == 200  # 20 before headers, 180 while queued
        ledger.add(
            "client gives up while queued (180) or before headers (20)",
            "each counted cancelled, leaves the queue at once",
            f"{after['cancelled_requests'] - before['cancelled_requests']} cancelled, queue 0, active 0",
            lost=200 - sum(outcomes.values()),
            drift=drift(before, after, 200, 0, 200),
        )
    finally:
        proxy.stop()
        sim.stop()


def test_upstream_refuses_connections(tmp_path: Path, ledger: Ledger) -> None:
    proxy = start_proxy(tmp_path, f"http://127.0.0.1:{free_port()}")
    try:
        before = snap(proxy)
        codes = Counter(httpx.post(proxy.url + "/v1/chat/completions", json=CHAT).status_code for _ in range(50))
        after = settle(proxy)
        assert codes == {502: 50}
        assert after["failed_by_reason"]["upstream_unavailable"] == 50
        ledger.add(
            "upstream refuses connections, 50 requests",
            "502 upstream_unavailable each",
            "50 x 502",
            drift=drift(before, after, 50, 50, 0),
        )
    finally:
        proxy.stop()


def test_upstream_resets_mid_body_and_stalls(tmp_path: Path, ledger: Ledger) -> None:
    sim = start_simulator(tmp_path, "--ttft-ms", "0", "--token-ms", "5", "--tokens", "20")
    proxy = start_proxy(tmp_path, sim.url, {"UPSTREAM_TIMEOUT": "0.3"})
    try:
        for fault, reason in (("drop", "upstream_error"), ("stall", "upstream_timeout")):
            before = snap(proxy)
            cut = 0
            for _ in range(10):
                with pytest.raises(httpx.RemoteProtocolError):  # cut, never a silent truncation
                    with httpx.stream(
                        "POST",
                        proxy.url + "/v1/chat/completions",
                        json={**CHAT, "stream": True},
                        headers={"X-Simulator-Fault": fault},
                        timeout=10,
                    ) as r:
                        for _ in r.iter_raw():
                            pass
                cut += 1
            after = settle(proxy)
            assert after["failed_by_reason"][reason] - before["failed_by_reason"][reason] == 10
            ledger.add(
                f"upstream {'resets' if fault == 'drop' else 'goes silent'} mid-stream, 10 times",
                f"client connection cut (no [DONE]), failed {reason}",
                f"{cut} cut, {reason} +10",
                drift=drift(before, after, 10, 10, 0),
            )
    finally:
        proxy.stop()
        sim.stop()


def start_raw(tmp_path: Path, mode: str) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "tests.reliability.raw_upstream", str(port), mode]
    return Server(cmd, port, tmp_path / f"raw-{mode}.log").wait_healthy()


def test_upstream_sends_malformed_http(tmp_path: Path, ledger: Ledger) -> None:
    raw = start_raw(tmp_path, "garbage")
    proxy = start_proxy(tmp_path, raw.url)
    try:
        before = snap(proxy)
        codes = Counter(httpx.post(proxy.url + "/v1/chat/completions", json=CHAT).status_code for _ in range(20))
        after = settle(proxy)
        assert codes == {502: 20}
        ledger.add(
            "upstream answers bytes that are not HTTP, 20 times",
            "502 upstream_error",
            "20 x 502",
            drift=drift(before, after, 20, 20, 0),
        )
    finally:
        proxy.stop()
        raw.stop()


def test_upstream_hangs_before_headers(tmp_path: Path, ledger: Ledger) -> None:
    sim = start_simulator(tmp_path)
    proxy = start_proxy(tmp_path, sim.url, {"UPSTREAM_TIMEOUT": "0.3"})
    try:
        before = snap(proxy)
        codes = Counter(
            httpx.post(
                proxy.url + "/v1/completions", json={"prompt": "x"}, headers={"X-Simulator-Fault": "hang"}, timeout=10
            ).status_code
            for _ in range(10)
        )
        after = settle(proxy)
        assert codes == {504: 10}
        assert wait_until(lambda: httpx.get(sim.url + "/sim/stats").json()["active"] == 0, 5)
        ledger.add(
            "upstream never answers (UPSTREAM_TIMEOUT=0.3), 10 times",
            "504 upstream_timeout; upstream released",
            "10 x 504, upstream idle",
            drift=drift(before, after, 10, 10, 0),
        )
    finally:
        proxy.stop()
        sim.stop()


def test_one_gib_body_streams_with_bounded_memory(tmp_path: Path, ledger: Ledger) -> None:
    raw = start_raw(tmp_path, "bigbody")
    proxy = start_proxy(tmp_path, raw.url)
    try:
        process = psutil.Process(proxy.pid)
        idle = process.memory_info().rss
        peak = idle
        received = 0
        with httpx.stream("GET", proxy.url + "/v1/files/big/content", timeout=60) as r:
            for chunk in r.iter_raw(1 << 20):
                received += len(chunk)
                if received % (64 << 20) < len(chunk):
                    peak = max(peak, process.memory_info().rss)
        grew_mb = (peak - idle) / (1 << 20)
        assert received == 1 << 30
        assert grew_mb < 64
        ledger.add(
            "upstream returns a 1 GiB body",
            "streamed through, memory bounded",
            f"{received >> 20} MiB received, proxy RSS +{grew_mb:.1f} MB at most",
        )
    finally:
        proxy.stop()
        raw.stop()


async def test_sigterm_under_load_lets_streams_finish(tmp_path: Path, ledger: Ledger) -> None:
    sim = start_simulator(tmp_path, "--ttft-ms", "0", "--token-ms", "50", "--tokens", "20")
    proxy = start_proxy(tmp_path, sim.url, {"STOP_TIMEOUT": "20"})
    try:

        async def one(client: httpx.AsyncClient) -> bool:
            async with client.stream("POST", proxy.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
                body = b"".join([chunk async for chunk in r.aiter_raw()])
            return body.rstrip().endswith(b"data: [DONE]")

        async with httpx.AsyncClient(timeout=30, limits=LIMITS) as client:
            tasks = [asyncio.ensure_future(one(client)) for _ in range(40)]
            await asyncio.to_thread(wait_until, lambda: snap(proxy)["active"] == 40)
            os.kill(proxy.pid, signal.SIGTERM)
            done = await asyncio.gather(*tasks, return_exceptions=True)
        complete = sum(1 for d in done if d is True)
        assert complete == 40, done
        # uvicorn re-raises the signal it handled once shut down, so the exit is "killed by SIGTERM"
        assert proxy.process.wait(20) in (0, -signal.SIGTERM)
        ledger.add(
            "SIGTERM with 40 one-second streams in flight",
            "every stream ends with [DONE], then exit",
            f"{complete} of 40 complete, then exit",
            lost=40 - complete,
        )
    finally:
        proxy.stop()
        sim.stop()


@pytest.mark.parametrize("kind", ["full disk (/dev/full)", "log deleted while running"])
def test_log_file_failures_do_not_stop_serving(tmp_path: Path, ledger: Ledger, kind: str) -> None:
    sim = start_simulator(tmp_path)
    log = Path("/dev/full") if kind.startswith("full") else tmp_path / "proxy.log"
    settings = {"LOG_FILE": str(log), "LOG_MAX_BYTES": "0", "DEBUG": "true", "MONITOR_UPDATE_INTERVAL": "0.05"}
    proxy = start_proxy(tmp_path, sim.url, settings)
    try:
        if kind.startswith("log deleted"):
            wait_until(log.exists)
            log.unlink()
        codes = Counter(httpx.get(proxy.url + "/v1/models").status_code for _ in range(100))
        wait_until(lambda: "proxy: " in proxy.output(), 5)
        said = [line for line in proxy.output().splitlines() if line.startswith("proxy: ")]
        assert codes == {200: 100}
        assert len(said) == 1, said
        assert "Traceback" not in proxy.output()
        if kind.startswith("log deleted"):
            wait_until(lambda: log.exists() and "[CONCURRENCY]" in log.read_text(), 5)
        ledger.add(f"log file: {kind}", "keeps serving, says so once", f"100 x 200; one line: {said[0][:60]}…")
    finally:
        proxy.stop()
        sim.stop()


async def test_ten_thousand_requests_at_concurrency_200(tmp_path: Path, ledger: Ledger) -> None:
    sim = start_simulator(tmp_path, "--ttft-ms", "5", "--token-ms", "0", "--tokens", "10")
    proxy = start_proxy(tmp_path, sim.url, {"MAX_CONCURRENT_REQUESTS": "256"})
    try:
        before = snap(proxy)
        # bench/loadgen.py: 200 keep-alive connections, 50 requests each, bounded to 60 s
        result = await loadgen.run(proxy.url + "/v1/chat/completions", 200, 60.0, max_requests=10_000)
        codes = Counter({int(k): v for k, v in result["statuses"].items()})
        after = settle(proxy)
        assert result["errors"] == 0
        assert codes == {200: 10_000}
        ledger.add(
            "10,000 requests at concurrency 200",
            "all 200, counts exact",
            f"{codes[200]:,} x 200, total +{after['total_requests'] - before['total_requests']:,}",
            drift=drift(before, after, 10_000, 0, 0),
        )
    finally:
        proxy.stop()
        sim.stop()
