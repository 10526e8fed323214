"""The proxy against real upstreams: the simulator and a small echo server."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.servers import PROJECT_DIR, Server, free_port, raw_request, start_proxy, start_simulator, wait_until
from tests.upstreams import GZIP_TEXT

CHAT = {"model": "llama", "messages": [{"role": "user", "content": "test"}]}


def sse_events(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]


def test_chat_completion(proxy: Server) -> None:
    r = httpx.post(proxy.url + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "llama"
    assert body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 20
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 20


def test_completions_embeddings_models(proxy: Server) -> None:
    r = httpx.post(proxy.url + "/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 3})
    assert r.status_code == 200
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert r.json()["usage"]["completion_tokens"] == 3
    r = httpx.post(proxy.url + "/v1/embeddings", json={"model": "m", "input": ["a", "b"], "dimensions": 8})
    assert r.status_code == 200
    data = r.json()["data"]
    assert [d["index"] for d in data] == [0, 1]
    assert all(len(d["embedding"]) == 8 for d in data)
    r = httpx.get(proxy.url + "/v1/models")
    assert r.status_code == 200
    assert r.json()["data"][0]["id"] == "simulator"
    assert httpx.get(proxy.url + "/v1/models/llama").json()["id"] == "llama"


def test_health_is_independent_of_upstream(tmp_path: Path) -> None:
    proxy = start_proxy(tmp_path, f"http://127.0.0.1:{free_port()}")
    try:
        r = httpx.get(proxy.url + "/health")
        assert r.status_code == 200
        assert r.json()["status"] == "ok"
    finally:
        proxy.stop()


async def test_stream_arrives_incrementally(tmp_path: Path) -> None:
    """Each token is forwarded as it is produced: nothing buffers the stream."""
    sim = start_simulator(tmp_path, "--ttft-ms", "50", "--token-ms", "60", "--tokens", "10")
    proxy = start_proxy(tmp_path, sim.url)
    try:
        arrivals: list[tuple[float, str]] = []
        request = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        async with httpx.AsyncClient(timeout=10) as client:
            async with client.stream("POST", proxy.url + "/v1/chat/completions", json=request) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                assert r.headers["x-accel-buffering"] == "no"
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        arrivals.append((time.monotonic(), line[len("data: ") :]))
        payloads = [p for _, p in arrivals]
        assert payloads[-1] == "[DONE]"
        chunks = [json.loads(p) for p in payloads[:-1]]  # every chunk intact
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
        assert "".join(c for c in contents if c).startswith("Sure here is")
        assert chunks[-1]["usage"]["completion_tokens"] == 10
        content_times = [
            t
            for (t, p), c in zip(arrivals, chunks, strict=False)
            if c["choices"] and c["choices"][0]["delta"].get("content")
        ]
        # 10 tokens 60 ms apart: the first arrives about 540 ms before the last.
        assert content_times[-1] - content_times[0] > 0.4
    finally:
        proxy.stop()
        sim.stop()


def test_upstream_4xx_passed_through_verbatim(proxy: Server, simulator: Server) -> None:
    bad = {"model": "m"}
    direct = httpx.post(simulator.url + "/v1/chat/completions", json=bad)
    via = httpx.post(proxy.url + "/v1/chat/completions", json=bad)
    assert via.status_code == direct.status_code == 400
    assert via.content == direct.content
    assert via.json()["error"]["param"] == "messages"
    r = httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, headers={"X-Simulator-Fault": "error-429"})
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"


def test_upstream_500_passed_through(proxy: Server) -> None:
    r = httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, headers={"X-Simulator-Fault": "error-500"})
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "simulated_error"


def test_upstream_unreachable_is_502(tmp_path: Path) -> None:
    proxy = start_proxy(tmp_path, f"http://127.0.0.1:{free_port()}")
    try:
        r = httpx.post(proxy.url + "/v1/chat/completions", json=CHAT)
        assert r.status_code == 502
        error = r.json()["error"]
        assert error["code"] == "upstream_unavailable"
        assert set(error) == {"message", "type", "code"}
    finally:
        proxy.stop()


def test_upstream_silent_is_504_after_timeout(tmp_path: Path, simulator: Server) -> None:
    proxy = start_proxy(tmp_path, simulator.url, {"UPSTREAM_TIMEOUT": "1"})
    try:
        started = time.monotonic()
        r = httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, headers={"X-Simulator-Fault": "hang"}, timeout=10)
        elapsed = time.monotonic() - started
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "upstream_timeout"
        assert 0.9 < elapsed < 5
    finally:
        proxy.stop()


def test_upstream_drop_mid_stream_cuts_the_client(proxy: Server) -> None:
    request = {**CHAT, "stream": True}
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream(
            "POST", proxy.url + "/v1/chat/completions", json=request, headers={"X-Simulator-Fault": "drop"}
        ) as r,
    ):
        assert r.status_code == 200
        for _ in r.iter_raw():
            pass
    # the proxy keeps serving
    assert httpx.post(proxy.url + "/v1/chat/completions", json=CHAT).status_code == 200


def test_body_too_large_is_413(tmp_path: Path, simulator: Server) -> None:
    proxy = start_proxy(tmp_path, simulator.url, {"MAX_BODY_SIZE": "1000"})
    try:
        big = {"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]}
        r = httpx.post(proxy.url + "/v1/chat/completions", json=big)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_too_large"

        def chunked() -> object:
            for _ in range(10):
                yield b"y" * 300

        r = httpx.post(proxy.url + "/v1/chat/completions", content=chunked())
        assert r.status_code == 413
        small = httpx.post(proxy.url + "/v1/chat/completions", json=CHAT)
        assert small.status_code == 200
    finally:
        proxy.stop()


def test_api_key(tmp_path: Path, echo: Server) -> None:
    proxy = start_proxy(tmp_path, echo.url, {"PROXY_API_KEY": "proxy-secret-1"})
    try:
        url = proxy.url + "/v1/chat/completions"
        assert httpx.post(url, json=CHAT).status_code == 401
        wrong = httpx.post(url, json=CHAT, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["type"] == "authentication_error"
        ok = httpx.post(url, json=CHAT, headers={"Authorization": "Bearer proxy-secret-1"})
        assert ok.status_code == 200
        # the proxy's key is not the upstream's: it is not passed on
        assert "authorization" not in {k for k, _ in ok.json()["headers"]}
        assert httpx.get(proxy.url + "/health").status_code == 200
    finally:
        proxy.stop()


def test_upstream_api_key_replaces_authorization(tmp_path: Path, echo: Server) -> None:
    proxy = start_proxy(tmp_path, echo.url, {"UPSTREAM_API_KEY": "upstream-secret-2"})
    try:
        r = httpx.post(proxy.url + "/v1/x", json=CHAT, headers={"Authorization": "Bearer client"})
        auth = [v for k, v in r.json()["headers"] if k == "authorization"]
        assert auth == ["Bearer upstream-secret-2"]
    finally:
        proxy.stop()


def test_query_body_and_headers_forwarded_exactly(echo_proxy: Server) -> None:
    body = bytes(range(256)) * 4  # not JSON, not UTF-8
    r = httpx.put(
        echo_proxy.url + "/v1/files/abc%20def?purpose=fine-tune&x=%2F1&x=2",
        content=body,
        headers={
            "Content-Type": "application/octet-stream",
            "X-Custom": "kept",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "dropped",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
        },
    )
    assert r.status_code == 200
    echo = r.json()
    assert echo["method"] == "PUT"
    assert echo["raw_path"] == "/v1/files/abc%20def"
    assert echo["query_string"] == "purpose=fine-tune&x=%2F1&x=2"
    assert base64.b64decode(echo["body_b64"]) == body
    headers = dict(echo["headers"])
    assert headers["x-custom"] == "kept"
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-length"] == str(len(body))
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    for hop in ("x-hop", "keep-alive", "te"):
        assert hop not in headers
    assert headers["host"] != f"127.0.0.1:{echo_proxy.port}"  # the client's Host is not passed on


def test_raw_body_is_not_decompressed(echo_proxy: Server) -> None:
    r = httpx.get(echo_proxy.url + "/v1/gzip", headers={"Accept-Encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip"
    assert r.content == GZIP_TEXT  # httpx decodes; the raw stream was the upstream's gzip bytes
    with httpx.stream("GET", echo_proxy.url + "/v1/gzip", headers={"Accept-Encoding": "gzip"}) as raw:
        compressed = b"".join(raw.iter_raw())
    assert gzip.decompress(compressed) == GZIP_TEXT


@pytest.mark.parametrize("path", ["/v1/../health", "/v1/%2e%2e/admin", "/v1/models/..%2F..%2Fsecret", "/v1/./x"])
def test_path_escaping_v1_is_400(echo_proxy: Server, path: str) -> None:
    status, response = raw_request(
        echo_proxy.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert status == 400
    assert b'"invalid_path"' in response


def test_unknown_route_is_openai_shaped_404(proxy: Server) -> None:
    r = httpx.get(proxy.url + "/nope")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


async def test_client_aborts_leave_the_pool_healthy(tmp_path: Path) -> None:
    """200 clients leave mid-stream: the upstream is told at once and no pooled connection leaks."""
    sim = start_simulator(tmp_path, "--ttft-ms", "0", "--token-ms", "20", "--tokens", "200")
    proxy = start_proxy(tmp_path, sim.url, {"MAX_CONCURRENT_REQUESTS": "16"})
    try:
        request = {**CHAT, "stream": True}

        async def abort_after_first_chunk(client: httpx.AsyncClient) -> None:
            async with client.stream("POST", proxy.url + "/v1/chat/completions", json=request) as r:
                async for _ in r.aiter_raw():
                    break

        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=20)) as client:
            for _ in range(10):
                await asyncio.gather(*(abort_after_first_chunk(client) for _ in range(20)))

        def aborted() -> int:
            stats = httpx.get(sim.url + "/sim/stats").json()
            return stats["aborted"] >= 200 and stats["active"] == 0

        wait_until(aborted, timeout=10)
        async with httpx.AsyncClient(timeout=10) as client:
            results = await asyncio.gather(
                *(client.post(proxy.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 2}) for _ in range(50))
            )
        assert [r.status_code for r in results] == [200] * 50
        upstream_connections = [
            c for c in psutil.Process(proxy.pid).net_connections("tcp") if c.raddr and c.raddr.port == sim.port
        ]
        assert len(upstream_connections) <= 16
    finally:
        proxy.stop()
        sim.stop()


def test_no_secret_or_body_in_the_log(echo_proxy: Server) -> None:
    secret = "sk-do-not-log-4242"
    body_marker = "body-marker-7e1f"
    httpx.post(
        echo_proxy.url + f"/v1/chat/completions?api_key={secret}",
        json={"messages": [{"role": "user", "content": body_marker}]},
        headers={"Authorization": f"Bearer {secret}"},
    )
    httpx.get(echo_proxy.url + "/v1/models", headers={"Authorization": f"Bearer {secret}"})
    log = wait_until(
        lambda: echo_proxy.log_file.read_text() if "POST /v1/chat" in echo_proxy.log_file.read_text() else ""
    )
    assert secret not in log
    assert body_marker not in log


@pytest.mark.parametrize(
    ("name", "value"),
    [("PROXY_PORT", "abc"), ("MONITOR_UPDATE_INTERVAL", "-1"), ("UPSTREAM_URL", "localhost:8000"), ("DEBUG", "maybe")],
)
def test_bad_setting_is_one_line_and_exit_1(tmp_path: Path, name: str, value: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "LOG_FILE": str(tmp_path / "p.log"), name: value}
    result = subprocess.run(
        [sys.executable, "-m", "app"], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0]
    assert repr(value) in lines[0]
    assert "Traceback" not in result.stderr


def test_gc_is_tuned_for_a_long_running_server() -> None:
    """Start-up objects are frozen out of collections and young collections are less frequent."""
    import gc

    from app.main import GC_THRESHOLDS, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 10_000  # every module imported so far
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
