"""Settings of the proxy, read once from the environment and validated.

Every setting is an environment variable (see DESIGN.md); `run_proxy.sh` flags
set the same variables. A bad value raises `ConfigError` with one line naming
the variable and the value; `python -m app.config` checks the environment and
exits 1 with that line, which is how `run_proxy.sh` validates before starting.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar
from urllib.parse import urlsplit

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
UpstreamClientName = Literal["aiohttp", "httpx", "httpx2", "httpx-aiohttp"]

LOG_LEVELS: tuple[str, ...] = ("critical", "error", "warning", "info", "debug", "trace")
UPSTREAM_CLIENTS: tuple[str, ...] = ("aiohttp", "httpx", "httpx2", "httpx-aiohttp")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting has a value the proxy cannot run with."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 9999
    upstream_url: str | None = None
    upstream_api_key: str | None = None
    upstream_timeout: float = 600.0
    proxy_api_key: str | None = None
    max_concurrent_requests: int = 64
    max_queue_size: int = 256
    queue_timeout: float = 60.0
    max_body_size: int = 10 * 1024 * 1024
    debug: bool = False
    enable_concurrency_monitor: bool = True
    monitor_update_interval: float = 2.0
    log_level: LogLevel = "info"
    log_file: str = "logs/proxy.log"
    log_max_bytes: int = 50 * 1024 * 1024
    log_backup_count: int = 5
    log_console: bool = True
    workers: int = 1
    pid_file: str = "logs/proxy.pid"
    simulator_port: int = 9998
    stop_timeout: float = 30.0
    upstream_client: UpstreamClientName = "aiohttp"
    metrics_public: bool = False

    @property
    def upstream_base(self) -> str:
        """The upstream's base URL without a trailing `/` or `/v1`: request paths are appended to it."""
        url = self.upstream_url or f"http://127.0.0.1:{self.simulator_port}"
        url = url.rstrip("/")
        url = url.removesuffix("/v1")
        return url

    @property
    def uses_simulator(self) -> bool:
        return self.upstream_url is None


def _parse_int(name: str, raw: str, minimum: int, maximum: int | None = None) -> int:
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(f"{name}={raw!r} must be {bound}")
    return value


def _parse_float(name: str, raw: str, positive: bool = True) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or (positive and value <= 0):
        raise ConfigError(f"{name}={raw!r} must be a positive number of seconds")
    return value


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} must be true or false")


def _parse_url(name: str, raw: str) -> str:
    value = raw.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name}={raw!r} must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ConfigError(f"{name}={raw!r} must not have a query string or fragment")
    return value


def _parse_level(name: str, raw: str) -> LogLevel:
    lowered = raw.strip().lower()
    if lowered not in LOG_LEVELS:
        raise ConfigError(f"{name}={raw!r} must be one of {', '.join(LOG_LEVELS)}")
    return lowered  # type: ignore[return-value]


def _parse_client(name: str, raw: str) -> UpstreamClientName:
    lowered = raw.strip().lower()
    if lowered not in UPSTREAM_CLIENTS:
        raise ConfigError(f"{name}={raw!r} must be one of {', '.join(UPSTREAM_CLIENTS)}")
    return lowered  # type: ignore[return-value]


def _parse_nonempty(name: str, raw: str) -> str:
    if not raw.strip():
        raise ConfigError(f"{name}={raw!r} must not be empty")
    return raw


def _port(name: str, raw: str) -> int:
    return _parse_int(name, raw, 1, 65535)


def _optional(raw: str | None) -> str | None:
    return raw or None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from `env` (default: `os.environ`), raising `ConfigError` on the first bad value."""
    env = os.environ if env is None else env
    defaults = Settings()

    def get(name: str, parse: Callable[[str, str], T], default: T) -> T:
        raw = env.get(name)
        return default if raw is None else parse(name, raw)

    upstream = env.get("UPSTREAM_URL")
    debug = get("DEBUG", _parse_bool, defaults.debug)
    settings = Settings(
        host=get("PROXY_HOST", _parse_nonempty, defaults.host),
        port=get("PROXY_PORT", _port, defaults.port),
        upstream_url=_parse_url("UPSTREAM_URL", upstream) if upstream else None,
        upstream_api_key=_optional(env.get("UPSTREAM_API_KEY")),
        upstream_timeout=get("UPSTREAM_TIMEOUT", _parse_float, defaults.upstream_timeout),
        proxy_api_key=_optional(env.get("PROXY_API_KEY")),
        max_concurrent_requests=get(
            "MAX_CONCURRENT_REQUESTS", lambda n, r: _parse_int(n, r, 1), defaults.max_concurrent_requests
        ),
        max_queue_size=get("MAX_QUEUE_SIZE", lambda n, r: _parse_int(n, r, 0), defaults.max_queue_size),
        queue_timeout=get("QUEUE_TIMEOUT", _parse_float, defaults.queue_timeout),
        max_body_size=get("MAX_BODY_SIZE", lambda n, r: _parse_int(n, r, 1), defaults.max_body_size),
        debug=debug,
        enable_concurrency_monitor=get("ENABLE_CONCURRENCY_MONITOR", _parse_bool, defaults.enable_concurrency_monitor),
        monitor_update_interval=get("MONITOR_UPDATE_INTERVAL", _parse_float, defaults.monitor_update_interval),
        # DEBUG=true means app logging at debug, unless LOG_LEVEL says otherwise.
        log_level=get("LOG_LEVEL", _parse_level, "debug" if debug else defaults.log_level),
        log_file=get("LOG_FILE", _parse_nonempty, defaults.log_file),
        log_max_bytes=get("LOG_MAX_BYTES", lambda n, r: _parse_int(n, r, 0), defaults.log_max_bytes),
        log_backup_count=get("LOG_BACKUP_COUNT", lambda n, r: _parse_int(n, r, 0), defaults.log_backup_count),
        log_console=get("LOG_CONSOLE", _parse_bool, defaults.log_console),
        workers=get("WORKERS", lambda n, r: _parse_int(n, r, 1, 64), defaults.workers),
        pid_file=get("PID_FILE", _parse_nonempty, defaults.pid_file),
        simulator_port=get("SIMULATOR_PORT", _port, defaults.simulator_port),
        stop_timeout=get("STOP_TIMEOUT", _parse_float, defaults.stop_timeout),
        upstream_client=get("UPSTREAM_CLIENT", _parse_client, defaults.upstream_client),
        metrics_public=get("METRICS_PUBLIC", _parse_bool, defaults.metrics_public),
    )
    if settings.upstream_url is None and settings.simulator_port == settings.port:
        raise ConfigError(f"SIMULATOR_PORT={settings.simulator_port} must differ from PROXY_PORT")
    return settings


def main() -> int:
    """`python -m app.config`: validate the environment; print the error line and exit 1 when it is bad."""
    try:
        load_settings()
    except ConfigError as exc:
        print(f"config: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
