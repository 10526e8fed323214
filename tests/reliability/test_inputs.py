"""Bad input and security: slow clients, broken framing, odd targets, keys, secrets in logs."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from app.config import load_settings
from tests.reliability.conftest import Ledger
from tests.reliability.test_faults import drift, settle, snap
from tests.servers import Server, raw_request, start_proxy, start_simulator, wait_until

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def echoed(response: bytes) -> dict:
    return json.loads(response[response.index(b"{") : response.rindex(b"}") + 1])


def test_slowloris_clients_do_not_block_others(tmp_path: Path, simulator: Server, ledger: Ledger) -> None:
    proxy = start_proxy(tmp_path, simulator.url)
    stop = threading.Event()
    sockets: list[socket.socket] = []

    def trickle() -> None:
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", proxy.port))
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            sockets.append(sock)
        for i in range(30):  # bounded: 3 s of one header byte per 0.1 s on every connection
            if stop.is_set():
                return
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X-Slow-%d: y\r\n" % i if i % 5 == 0 else b"")
            time.sleep(0.1)

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        wait_until(lambda: len(sockets) == 50)
        started = time.monotonic()
        codes = Counter(httpx.get(proxy.url + "/v1/models").status_code for _ in range(50))
        elapsed = time.monotonic() - started
        assert codes == {200: 50}
        ledger.add(
            "50 slowloris connections trickling headers",
            "other clients served normally",
            f"50 x 200 meanwhile, in {elapsed:.2f}s",
        )
    finally:
        stop.set()
        thread.join()
        for sock in sockets:
            sock.close()
        proxy.stop()


def test_broken_framing(tmp_path: Path, echo: Server, ledger: Ledger) -> None:
    proxy = start_proxy(tmp_path, echo.url)
    try:
        before = snap(proxy)
        # a folded header line (obsolete line folding, a CRLF inside a value): refused, nothing forwarded
        status, _ = raw_request(
            proxy.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: one\r\n Injected: two\r\nConnection: close\r\n\r\n"
        )
        assert status == 400
        # a 64 KiB header: answered (not a hang), then the proxy serves on
        big = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\nConnection: close\r\n\r\n"
        status_big, _ = raw_request(proxy.port, big)
        assert status_big in (200, 400, 431)
        # Content-Length that is not a number
        status_cl, _ = raw_request(
            proxy.port, b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\nConnection: close\r\n\r\n"
        )
        assert status_cl == 400
        # Content-Length that lies (100 declared, 10 sent, then the client leaves)
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        after = settle(proxy)
        assert httpx.get(proxy.url + "/v1/models").status_code == 200
        counted = (status_big == 200) + 1  # the lying request reached the proxy; the 400s never did
        ledger.add(
            "folded header, 64 KiB header, Content-Length 'abc', Content-Length that lies",
            "400s from the server; the lying one counted cancelled; still serving",
            f"{status}, {status_big}, {status_cl}; lying one cancelled",
            drift=drift(before, after, counted, 0, 1),
        )
    finally:
        proxy.stop()


def test_absolute_uri_target_fetches_only_the_upstream(tmp_path: Path, echo: Server, ledger: Ledger) -> None:
    proxy = start_proxy(tmp_path, echo.url)
    try:
        target = b"GET http://elsewhere.invalid/v1/models?x=1 HTTP/1.1\r\n"
        status, response = raw_request(proxy.port, target + b"Host: elsewhere.invalid\r\nConnection: close\r\n\r\n")
        assert status == 200
        seen = echoed(response)
        assert seen["raw_path"] == "/v1/models"
        assert dict(seen["headers"])["host"].startswith("127.0.0.1:")
        ledger.add(
            "absolute-URI target `GET http://elsewhere/...`",
            "only UPSTREAM_URL is ever requested",
            f"upstream got {seen['raw_path']} with Host {dict(seen['headers'])['host']}",
        )
    finally:
        proxy.stop()


def test_observation_endpoints_need_the_key(tmp_path: Path, simulator: Server, ledger: Ledger) -> None:
    key = {"Authorization": "Bearer obs-key-1"}
    guarded = start_proxy(tmp_path, simulator.url, {"PROXY_API_KEY": "obs-key-1"})
    public = start_proxy(tmp_path, simulator.url, {"PROXY_API_KEY": "obs-key-1", "METRICS_PUBLIC": "true"})
    try:
        for path in ("/monitor", "/metrics"):
            assert httpx.get(guarded.url + path).status_code == 401
            assert httpx.get(guarded.url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert httpx.get(guarded.url + path, headers=key).status_code == 200
            assert httpx.get(public.url + path).status_code == 200
        assert httpx.get(guarded.url + "/health").status_code == 200
        assert load_settings({}).host == "127.0.0.1"
        ledger.add(
            "PROXY_API_KEY set: /monitor and /metrics without, or with a wrong, key",
            "401 unless METRICS_PUBLIC=true; /health open; default bind 127.0.0.1",
            "401, 401, 200 with the key, 200 when public",
        )
    finally:
        guarded.stop()
        public.stop()


def test_no_secret_or_body_in_any_log(tmp_path: Path, ledger: Ledger) -> None:
    sim = start_simulator(tmp_path)
    secrets = {"client": "sk-client-9d1", "proxy": "pk-proxy-5e2", "upstream": "up-key-7c3", "body": "body-8f4"}
    proxy = start_proxy(
        tmp_path,
        sim.url,
        {
            "PROXY_API_KEY": secrets["proxy"],
            "UPSTREAM_API_KEY": secrets["upstream"],
            "LOG_LEVEL": "trace",
            "DEBUG": "true",
            "MONITOR_UPDATE_INTERVAL": "0.1",
        },
    )
    try:
        auth = {"Authorization": f"Bearer {secrets['proxy']}", "X-Api-Key": secrets["client"]}
        payload = {"messages": [{"role": "user", "content": secrets["body"]}]}
        httpx.post(proxy.url + f"/v1/chat/completions?key={secrets['client']}", json=payload, headers=auth)
        client_auth = {"Authorization": "Bearer " + secrets["client"]}
        httpx.post(proxy.url + "/v1/chat/completions", json=payload, headers=client_auth)
        httpx.post(proxy.url + "/v1/chat/completions", json=payload, headers={**auth, "X-Simulator-Fault": "error-500"})
        log_file: Path = proxy.log_file  # type: ignore[attr-defined]
        wait_until(lambda: log_file.read_text().count("[CONCURRENCY]") >= 2)
        proxy.stop()
        texts = [log_file.read_text(errors="replace"), proxy.output(), sim.output()]
        leaks = [name for name, secret in secrets.items() for text in texts if secret in text]
        assert leaks == []
        ledger.add(
            "keys in Authorization, X-Api-Key, query string; a marker in the body; LOG_LEVEL=trace",
            "none of them in any log",
            "0 found in the proxy log, its output and the upstream's",
        )
    finally:
        proxy.stop()
        sim.stop()
