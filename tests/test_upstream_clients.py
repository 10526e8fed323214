"""Every upstream client the proxy can use (UPSTREAM_CLIENT) keeps the forwarding contract."""

from __future__ import annotations

import base64
import gzip
import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import Server, free_port, raw_request, start_proxy, start_simulator
from tests.upstreams import GZIP_TEXT

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
CLIENTS = ["aiohttp", "httpx", "httpx2"]


@pytest.fixture(scope="module", params=CLIENTS)
def client_name(request: pytest.FixtureRequest) -> str:
    module = "httpx2" if request.param == "httpx2" else request.param
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -r bench/requirements.txt)")
    return str(request.param)


@pytest.fixture(scope="module")
def via_echo(client_name: str, server_dir: Path, echo: Server) -> Iterator[Server]:
    proxy = start_proxy(server_dir, echo.url, {"UPSTREAM_CLIENT": client_name, "UPSTREAM_TIMEOUT": "1"})
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def via_sim(client_name: str, server_dir: Path) -> Iterator[tuple[Server, Server]]:
    sim = start_simulator(server_dir, "--ttft-ms", "20", "--token-ms", "40", "--tokens", "8")
    proxy = start_proxy(server_dir, sim.url, {"UPSTREAM_CLIENT": client_name, "UPSTREAM_TIMEOUT": "1"})
    yield proxy, sim
    proxy.stop()
    sim.stop()


def test_bytes_query_and_headers_exact(via_echo: Server) -> None:
    body = bytes(range(256))
    r = httpx.post(
        via_echo.url + "/v1/x%2Fy?q=%2F1&q=2", content=body, headers={"X-Custom": "kept", "Content-Type": "a/b"}
    )
    echo = r.json()
    assert echo["raw_path"] == "/v1/x%2Fy"
    assert echo["query_string"] == "q=%2F1&q=2"
    assert base64.b64decode(echo["body_b64"]) == body
    headers = dict(echo["headers"])
    assert headers["x-custom"] == "kept"
    assert headers["content-type"] == "a/b"
    # a bare request: the client library adds none of its defaults (User-Agent, Accept, Accept-Encoding)
    status, raw = raw_request(via_echo.port, b"GET /v1/bare HTTP/1.0\r\nHost: x\r\n\r\n")
    assert status == 200
    body = raw[raw.index(b"{") : raw.rindex(b"}") + 1]
    sent = {k for k, _ in json.loads(body)["headers"]}
    assert sent == {"host", "x-forwarded-for", "x-forwarded-proto"}


def test_compressed_body_passes_raw(via_echo: Server) -> None:
    with httpx.stream("GET", via_echo.url + "/v1/gzip", headers={"Accept-Encoding": "gzip"}) as r:
        raw = b"".join(r.iter_raw())
    assert r.headers["content-encoding"] == "gzip"
    assert gzip.decompress(raw) == GZIP_TEXT


def test_stream_is_not_buffered(via_sim: tuple[Server, Server]) -> None:
    proxy, _ = via_sim
    times = []
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    times.append(time.monotonic())
            elif line == "data: [DONE]":
                times.append(time.monotonic())
    assert len(times) == 9
    assert times[-2] - times[0] > 0.2  # 8 tokens 40 ms apart arrive spread out, not in one lump


def test_errors_map_to_502_and_504(via_sim: tuple[Server, Server], client_name: str, tmp_path: Path) -> None:
    proxy, _ = via_sim
    r = httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, headers={"X-Simulator-Fault": "hang"}, timeout=10)
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_timeout"
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream(
            "POST",
            proxy.url + "/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers={"X-Simulator-Fault": "drop"},
        ) as cut:
            for _ in cut.iter_raw():
                pass
    down = start_proxy(tmp_path, f"http://127.0.0.1:{free_port()}", {"UPSTREAM_CLIENT": client_name})
    try:
        r = httpx.post(down.url + "/v1/chat/completions", json=CHAT)
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "upstream_unavailable"
    finally:
        down.stop()
