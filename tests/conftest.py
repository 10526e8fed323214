from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import Server, start_asgi, start_proxy, start_simulator


@pytest.fixture(scope="session")
def server_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def simulator(server_dir: Path) -> Iterator[Server]:
    """A fast simulator: 20 ms to the first token, 5 ms per token, 20 tokens."""
    server = start_simulator(server_dir, "--ttft-ms", "20", "--token-ms", "5", "--tokens", "20")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def proxy(server_dir: Path, simulator: Server) -> Iterator[Server]:
    server = start_proxy(server_dir, simulator.url, {"UPSTREAM_TIMEOUT": "5"})
    yield server
    server.stop()


@pytest.fixture(scope="session")
def echo(server_dir: Path) -> Iterator[Server]:
    server = start_asgi(server_dir, "tests.upstreams:echo_app")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def echo_proxy(server_dir: Path, echo: Server) -> Iterator[Server]:
    server = start_proxy(server_dir, echo.url + "/v1", {"LOG_LEVEL": "debug"})
    yield server
    server.stop()


@pytest.fixture
def tmp_server_dir(tmp_path: Path) -> Path:
    return tmp_path
