"""The monitor inside the real proxy: exact counts under mixed traffic, the queue, the log lines."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.servers import Server, start_proxy, start_simulator, wait_until
from tests.test_monitor_unit import CONCURRENCY_RE, ENDPOINTS_RE, LATENCY_RE, SYSTEM_RE

CHAT = {"model": "llama", "messages": [{"role": "user", "content": "test"}]}
PREFIX_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO concurrency\[(\d+)\]: (.*)$")


def monitor(proxy: Server) -> dict:
    return httpx.get(proxy.url + "/monitor").json()


def metric_lines(log_file: Path, pid: int) -> list[str]:
    lines = []
    for line in log_file.read_text().splitlines():
        match = PREFIX_RE.match(line)
        if match and int(match.group(1)) == pid:
            lines.append(match.group(2))
    return lines


@pytest.fixture
def slow_sim(tmp_path: Path):  # type: ignore[no-untyped-def]
    sim = start_simulator(tmp_path, "--ttft-ms", "1500", "--token-ms", "1", "--tokens", "3")
    yield sim
    sim.stop()


async def test_ten_simultaneous_requests_show_active_ten(tmp_path: Path, slow_sim: Server) -> None:
    """The guide's Basic Monitoring scenario: 10 parallel chat completions -> Active 10, Peak 10, Total 10."""
    proxy = start_proxy(tmp_path, slow_sim.url, {"DEBUG": "true", "MONITOR_UPDATE_INTERVAL": "0.2"})
    try:
        base = monitor(proxy)["total_requests"]  # the readiness probes of /health are counted too
        async with httpx.AsyncClient(timeout=20) as client:
            requests = [
                asyncio.ensure_future(client.post(proxy.url + "/v1/chat/completions", json=CHAT)) for _ in range(10)
            ]
            snap = await asyncio.to_thread(wait_until, lambda: (s := monitor(proxy))["active"] == 10 and s)
            assert snap["peak"] == 10
            assert snap["total_requests"] == base + 10
            assert snap["endpoints"]["/v1/chat/completions"] == 10
            log_file: Path = proxy.log_file  # type: ignore[attr-defined]

            def busy_line() -> bool:
                return any(
                    line.startswith(
                        f"[CONCURRENCY] Active: 10/10 | Peak: 10 | Total: {base + 10} | Failed: 0 | Queue: 0"
                    )
                    for line in metric_lines(log_file, proxy.pid)
                )

            await asyncio.to_thread(wait_until, busy_line)
            assert any(
                line.startswith("[ENDPOINTS] /v1/chat/completions: 10 | /v1/completions: 0 | /v1/models: 0")
                for line in metric_lines(log_file, proxy.pid)
            )
            responses = await asyncio.gather(*requests)
        assert [r.status_code for r in responses] == [200] * 10
        snap = monitor(proxy)
        assert (snap["active"], snap["peak"], snap["total_requests"], snap["failed_requests"]) == (0, 10, base + 10, 0)
    finally:
        proxy.stop()


async def test_queue_cap_four_queue_six(tmp_path: Path, slow_sim: Server) -> None:
    proxy = start_proxy(tmp_path, slow_sim.url, {"MAX_CONCURRENT_REQUESTS": "4", "MAX_QUEUE_SIZE": "6"})
    try:
        base = monitor(proxy)["total_requests"]
        async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=20)) as client:
            requests = [
                asyncio.ensure_future(client.post(proxy.url + "/v1/chat/completions", json=CHAT)) for _ in range(12)
            ]
            snap = await asyncio.to_thread(wait_until, lambda: (s := monitor(proxy))["queue_depth"] == 6 and s)
            assert snap["active"] == 4
            assert snap["peak"] == 4
            responses = await asyncio.gather(*requests)
        statuses = Counter(r.status_code for r in responses)
        assert statuses == {200: 10, 503: 2}
        rejected = [r for r in responses if r.status_code == 503]
        for r in rejected:
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "queue_full"
        snap = monitor(proxy)
        assert (snap["active"], snap["queue_depth"], snap["peak"]) == (0, 0, 4)
        assert (snap["total_requests"], snap["failed_requests"]) == (base + 12, 2)
    finally:
        proxy.stop()


async def test_queue_timeout_is_503(tmp_path: Path, slow_sim: Server) -> None:
    proxy = start_proxy(tmp_path, slow_sim.url, {"MAX_CONCURRENT_REQUESTS": "1", "QUEUE_TIMEOUT": "0.3"})
    try:
        async with httpx.AsyncClient(timeout=20) as client:
            first = asyncio.ensure_future(client.post(proxy.url + "/v1/chat/completions", json=CHAT))
            await asyncio.to_thread(wait_until, lambda: monitor(proxy)["active"] == 1)
            second = await client.post(proxy.url + "/v1/completions", json={"prompt": "x"})
            assert second.status_code == 503
            assert second.json()["error"]["code"] == "queue_timeout"
            assert second.headers["retry-after"] == "1"
            assert (await first).status_code == 200
        # the timed-out request is counted once, as failed
        snap = monitor(proxy)
        assert snap["endpoint_stats"]["/v1/completions"] == {
            "active": 0,
            "queued": 0,
            "total": 1,
            "failed": 1,
            "cancelled": 0,
        }
    finally:
        proxy.stop()


async def test_health_and_monitor_are_never_queued(tmp_path: Path, slow_sim: Server) -> None:
    proxy = start_proxy(tmp_path, slow_sim.url, {"MAX_CONCURRENT_REQUESTS": "1", "MAX_QUEUE_SIZE": "1"})
    try:
        async with httpx.AsyncClient(timeout=20) as client:
            busy = [asyncio.ensure_future(client.post(proxy.url + "/v1/chat/completions", json=CHAT)) for _ in range(2)]
            await asyncio.to_thread(wait_until, lambda: monitor(proxy)["queue_depth"] == 1)
            health = await client.get(proxy.url + "/health", timeout=1)
            assert health.status_code == 200
            assert (await client.get(proxy.url + "/monitor", timeout=1)).json()["active"] == 1
            await asyncio.gather(*busy)
    finally:
        proxy.stop()


async def test_counts_are_exact_under_mixed_faults(tmp_path: Path) -> None:
    """200 concurrent requests: successes, upstream 500s and drops, client aborts mid-stream and while
    queued, queue timeouts. Every one is counted once, under the outcome the client saw."""
    sim = start_simulator(tmp_path, "--ttft-ms", "100", "--token-ms", "20", "--tokens", "10")
    proxy = start_proxy(
        tmp_path, sim.url, {"MAX_CONCURRENT_REQUESTS": "20", "MAX_QUEUE_SIZE": "500", "QUEUE_TIMEOUT": "1.0"}
    )
    seen: Counter[tuple[str, str]] = Counter()
    try:
        base = monitor(proxy)["total_requests"]
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:

            async def one(kind: str) -> None:
                endpoint = "/v1/completions" if kind == "plain" else "/v1/chat/completions"
                body = {"prompt": "hi"} if kind == "plain" else {**CHAT, "stream": kind != "error"}
                headers = {"error": {"X-Simulator-Fault": "error-500"}, "drop": {"X-Simulator-Fault": "drop"}}
                timeout = 0.4 if kind == "queued-abort" else 30
                try:
                    async with client.stream(
                        "POST", proxy.url + endpoint, json=body, headers=headers.get(kind, {}), timeout=timeout
                    ) as r:
                        if r.status_code >= 500:
                            seen[endpoint, "failed"] += 1
                            return
                        if kind == "stream-abort":
                            async for _ in r.aiter_raw():
                                break
                            seen[endpoint, "cancelled"] += 1
                            return
                        async for _ in r.aiter_raw():
                            pass
                        seen[endpoint, "ok"] += 1
                except httpx.RemoteProtocolError:
                    seen[endpoint, "failed"] += 1  # the upstream dropped the stream: the proxy cut ours
                except httpx.TimeoutException:
                    seen[endpoint, "cancelled"] += 1  # we gave up while queued or waiting

            first = ["ok"] * 40 + ["plain"] * 30 + ["error"] * 30 + ["drop"] * 30 + ["stream-abort"] * 30
            tasks = [asyncio.ensure_future(one(kind)) for kind in first]
            await asyncio.to_thread(wait_until, lambda: monitor(proxy)["queue_depth"] >= 100)
            tasks += [asyncio.ensure_future(one("queued-abort")) for _ in range(40)]
            await asyncio.gather(*tasks)

        snap = await asyncio.to_thread(
            wait_until, lambda: (s := monitor(proxy))["active"] == 0 and s["queue_depth"] == 0 and s
        )
        assert snap["total_requests"] == base + 200
        assert snap["failed_requests"] == sum(n for (_, outcome), n in seen.items() if outcome == "failed")
        assert snap["cancelled_requests"] == sum(n for (_, outcome), n in seen.items() if outcome == "cancelled")
        for endpoint in ("/v1/chat/completions", "/v1/completions"):
            stats = snap["endpoint_stats"][endpoint]
            assert stats["active"] == stats["queued"] == 0
            assert stats["total"] == sum(n for (ep, _), n in seen.items() if ep == endpoint)
            assert stats["failed"] == seen[endpoint, "failed"]
            assert stats["cancelled"] == seen[endpoint, "cancelled"]
        assert seen[("/v1/chat/completions", "cancelled")] >= 30  # both kinds of abort really happened
        assert snap["failed_requests"] >= 60
    finally:
        proxy.stop()
        sim.stop()


def test_lines_with_log_level_warning(tmp_path: Path, simulator: Server) -> None:
    proxy = start_proxy(
        tmp_path, simulator.url, {"DEBUG": "true", "LOG_LEVEL": "warning", "MONITOR_UPDATE_INTERVAL": "0.1"}
    )
    try:
        httpx.post(proxy.url + "/v1/chat/completions", json=CHAT)
        log_file: Path = proxy.log_file  # type: ignore[attr-defined]
        wait_until(lambda: len(metric_lines(log_file, proxy.pid)) >= 8)
        lines = metric_lines(log_file, proxy.pid)
        kinds = [line.split("]")[0] + "]" for line in lines[:8]]
        assert kinds == ["[CONCURRENCY]", "[ENDPOINTS]", "[SYSTEM]", "[LATENCY]"] * 2
        for line in lines[: len(lines) - len(lines) % 4]:
            regex = {
                "[CONCURRENCY]": CONCURRENCY_RE,
                "[ENDPOINTS]": ENDPOINTS_RE,
                "[SYSTEM]": SYSTEM_RE,
                "[LATENCY]": LATENCY_RE,
            }
            assert regex[line.split("]")[0] + "]"].match(line), line
        text = log_file.read_text()
        assert " INFO uvicorn" not in text  # LOG_LEVEL=warning silences the rest
        for line in text.splitlines():
            if "concurrency[" in line:
                prefix = line.split(": [", 1)[0]
                assert "|" not in prefix
                assert "%" not in prefix
    finally:
        proxy.stop()


def test_monitoring_off(tmp_path: Path, simulator: Server) -> None:
    proxy = start_proxy(
        tmp_path,
        simulator.url,
        {"DEBUG": "true", "ENABLE_CONCURRENCY_MONITOR": "false", "MONITOR_UPDATE_INTERVAL": "0.1"},
    )
    try:
        r = httpx.get(proxy.url + "/monitor")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "monitor_disabled"
        assert httpx.post(proxy.url + "/v1/chat/completions", json=CHAT).status_code == 200
        log_file: Path = proxy.log_file  # type: ignore[attr-defined]
        # the reporter would have written its first lines as the app started: it does not exist
        text = str(wait_until(lambda: (t := log_file.read_text()) and "monitor off" in t and t))
        assert "[CONCURRENCY]" not in text
        assert "[ENDPOINTS]" not in text
    finally:
        proxy.stop()


async def test_queued_client_that_leaves_leaves_the_queue_at_once(tmp_path: Path, slow_sim: Server) -> None:
    proxy = start_proxy(tmp_path, slow_sim.url, {"MAX_CONCURRENT_REQUESTS": "1"})
    try:
        async with httpx.AsyncClient(timeout=20) as client:
            first = asyncio.ensure_future(client.post(proxy.url + "/v1/chat/completions", json=CHAT))
            await asyncio.to_thread(wait_until, lambda: monitor(proxy)["active"] == 1)
            with pytest.raises(httpx.ReadTimeout):
                await client.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=0.3)
            # gone from the queue while the first request still holds the only slot
            snap = await asyncio.to_thread(wait_until, lambda: (s := monitor(proxy))["queue_depth"] == 0 and s, 1.0)
            assert snap["active"] == 1
            assert snap["cancelled_requests"] == 1
            assert (await first).status_code == 200
    finally:
        proxy.stop()
