"""GET /metrics (Prometheus) and the latency / time-to-first-token figures, against known traffic."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import start_proxy, start_simulator

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_metrics_after_known_traffic(tmp_path: Path) -> None:
    sim = start_simulator(tmp_path, "--ttft-ms", "20", "--token-ms", "5", "--tokens", "5")
    proxy = start_proxy(tmp_path, sim.url, {"MAX_CONCURRENT_REQUESTS": "1", "QUEUE_TIMEOUT": "0.2"})
    try:
        url = proxy.url + "/v1/chat/completions"
        for _ in range(3):
            assert httpx.post(url, json=CHAT).status_code == 200
        assert httpx.post(url, json=CHAT, headers={"X-Simulator-Fault": "error-500"}).status_code == 500
        # a stream whose first content token the simulator delays by 300 ms
        with httpx.stream("POST", url, json={**CHAT, "stream": True}, headers={"X-Simulator-Fault": "delay-300"}) as r:
            assert r.status_code == 200
            r.read()
        before = httpx.get(proxy.url + "/monitor").json()["total_requests"]
        r = httpx.get(proxy.url + "/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        values = samples(r.text)
        chat = ("endpoint", "/v1/chat/completions")
        assert values["llm_proxy_requests_total", (("code", "200"), chat)] == 4
        assert values["llm_proxy_requests_total", (("code", "500"), chat)] == 1
        assert values["llm_proxy_requests_failed_total", (("reason", "upstream_error"),)] == 1
        assert values["llm_proxy_requests_failed_total", (("reason", "queue_full"),)] == 0
        assert values["llm_proxy_requests_active", (chat,)] == 0
        assert values["llm_proxy_requests_queued", (chat,)] == 0
        assert values["llm_proxy_requests_active_peak", ()] == 1
        assert values["llm_proxy_requests_cancelled_total", (chat,)] == 0
        assert values["llm_proxy_time_to_first_token_seconds_count", (chat,)] == 1
        assert 0.3 <= values["llm_proxy_time_to_first_token_seconds_sum", (chat,)] < 0.6
        assert values["llm_proxy_time_to_first_token_seconds_bucket", (chat, ("le", "0.25"))] == 0
        assert values["llm_proxy_time_to_first_token_seconds_bucket", (chat, ("le", "0.5"))] == 1
        assert values["llm_proxy_request_duration_seconds_count", (chat,)] == 3  # the 500 is not a success
        assert values["llm_proxy_stream_duration_seconds_count", (chat,)] == 1
        assert values["llm_proxy_time_to_headers_seconds_count", (chat,)] == 5
        assert values["process_resident_memory_bytes", ()] > 10_000_000
        # the time to first token percentiles come from the same stream; /metrics is not counted
        snap = httpx.get(proxy.url + "/monitor").json()
        assert 300 <= snap["ttft_ms"]["p50"] < 600
        assert snap["latency_ms"]["p50"] is not None and snap["latency_ms"]["p50"] < 300
        assert snap["total_requests"] == before
        assert snap["failed_by_reason"]["upstream_error"] == 1
    finally:
        proxy.stop()
        sim.stop()


def test_metrics_off_with_the_monitor(tmp_path: Path) -> None:
    sim = start_simulator(tmp_path)
    proxy = start_proxy(tmp_path, sim.url, {"ENABLE_CONCURRENCY_MONITOR": "false"})
    try:
        r = httpx.get(proxy.url + "/metrics")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "monitor_disabled"
    finally:
        proxy.stop()
        sim.stop()
