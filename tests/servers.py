"""Real servers for tests: subprocesses on free loopback ports, stopped by pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

PROJECT_DIR = Path(__file__).resolve().parent.parent
START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> object:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


class Server:
    """A process serving HTTP on 127.0.0.1:port, with its output in ``log_path``."""

    def __init__(self, args: list[str], port: int, log_path: Path, env: Mapping[str, str] | None = None) -> None:
        self.port = port
        self.log_path = log_path
        # The caller's settings are not inherited, except the upstream client under test.
        full_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PROXY_", "UPSTREAM_", "SIM_")) or k == "UPSTREAM_CLIENT"
        }
        full_env.update(env or {})
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            args, cwd=PROJECT_DIR, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> Server:
        def healthy() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                return httpx.get(self.url + "/health", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout)
        return self

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode


def start_simulator(tmp: Path, *args: str) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "app.simulator", "--port", str(port), *args]
    return Server(cmd, port, tmp / f"simulator-{port}.log").wait_healthy()


def start_proxy(tmp: Path, upstream: str, env: Mapping[str, str] | None = None, wait: bool = True) -> Server:
    port = free_port()
    settings = {
        "PROXY_PORT": str(port),
        "UPSTREAM_URL": upstream,
        "LOG_FILE": str(tmp / f"proxy-{port}.log"),
        "LOG_CONSOLE": "false",
        **(env or {}),
    }
    server = Server([sys.executable, "-m", "app"], port, tmp / f"proxy-{port}.out", settings)
    server.log_file = Path(settings["LOG_FILE"])  # type: ignore[attr-defined]
    return server.wait_healthy() if wait else server


def start_asgi(tmp: Path, target: str, env: Mapping[str, str] | None = None) -> Server:
    """Any ASGI app of the tests, served by uvicorn."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", target, "--port", str(port), "--log-level", "warning", "--lifespan", "off"]
    return Server(cmd, port, tmp / f"asgi-{port}.log", env).wait_healthy()


def raw_request(port: int, head: bytes, body: bytes = b"", timeout: float = 10.0) -> tuple[int, bytes]:
    """Send bytes exactly as given (no client-side normalisation); return the status and the raw response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    response = b"".join(chunks)
    status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0
    return status, response
