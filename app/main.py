"""The ASGI app: `create_app()` builds it, `app` is what `uvicorn app.main:app` serves."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.config import ConfigError, Settings, load_settings
from app.errors import error_body
from app.gate import GATED_PREFIX, Admission, ProxyGate
from app.logs import configure_logging
from app.metrics import CONTENT_TYPE, exposition, new_registry
from app.proxy import UpstreamProxy
from app.upstream import new_upstream_client
from app.workers import WorkerBoard, board_dir
from utils.concurrency_monitor import (
    ASGIApp,
    ConcurrencyMiddleware,
    ConcurrencyMonitor,
    MonitorReporter,
    Receive,
    Scope,
    Send,
)
from utils.monitor_state import State, snapshot_from_state

logger = logging.getLogger("app")


def load_settings_or_exit() -> Settings:
    """Settings from the environment; a bad value is one error line and exit 1, never a traceback."""
    try:
        return load_settings()
    except ConfigError as exc:
        logger.error("configuration error: %s", exc)
        sys.exit(1)


def _error(status: int, message: str, type_: str, code: str) -> Response:
    return Response(error_body(message, type_, code), status_code=status, media_type="application/json")


def _monitoring_off() -> Response:
    message = "Concurrency monitoring is off (ENABLE_CONCURRENCY_MONITOR=false)."
    return _error(404, message, "not_found", "monitor_disabled")


# Young-generation collections every 10,000 container allocations instead of 700 (measured:
# 700 -> 10,000 is +6% requests/s at 16 connections on top of gc.freeze).
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """Keep the start-up objects out of every later collection, and collect less often.

    What start-up made (modules, the app, settings: about 70,000 objects) lives as long as the
    process, yet a full collection walked all of it twice a second under load: about 6% of
    the proxy's time. gc.freeze() moves it to the permanent generation (+8% requests/s at 16
    connections); fewer young collections also promote fewer in-flight requests' objects.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def create_app(settings: Settings | None = None) -> ProxyApp:
    if settings is None:
        settings = load_settings_or_exit()
    try:
        configure_logging(settings)
    except ConfigError as exc:
        logger.error("configuration error: %s", exc)
        sys.exit(1)

    monitor = ConcurrencyMonitor() if settings.enable_concurrency_monitor else None
    # Several workers: each publishes its numbers, the one that answers adds them all up.
    board_folder = board_dir(settings) if monitor is not None and settings.workers > 1 else None
    boards: list[WorkerBoard] = []

    def server_state() -> State:
        assert monitor is not None
        if boards:
            return boards[0].server_state()
        return monitor.export_state(max_system_age=1.0)

    proxy = UpstreamProxy(settings)
    upstream_kind = "built-in simulator" if settings.uses_simulator else "external"

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        proxy.client = new_upstream_client(settings)
        publisher: asyncio.Task[None] | None = None
        if board_folder is not None and monitor is not None:
            # Made here, in the worker process (its pid), not where the app object was built.
            monitor.pid = os.getpid()
            boards.append(WorkerBoard(board_folder, monitor))
            publisher = asyncio.get_running_loop().create_task(boards[0].run())
        reporter: asyncio.Task[None] | None = None
        if monitor is not None and settings.debug:
            reporter = asyncio.get_running_loop().create_task(
                MonitorReporter(monitor, settings.monitor_update_interval).run()
            )
        tune_gc()
        if monitor is None:
            monitoring = "off"
        elif settings.debug:
            monitoring = f"on, metric lines every {settings.monitor_update_interval:g}s"
        else:
            monitoring = "on (metric lines need DEBUG=true)"
        logger.info(
            "proxy pid %d: /v1/* -> %s (%s); monitor %s", os.getpid(), settings.upstream_base, upstream_kind, monitoring
        )
        try:
            yield
        finally:
            for task in (reporter, publisher):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await proxy.client.aclose()

    api = FastAPI(title="LLM concurrency proxy", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @api.get("/health")
    async def health() -> dict[str, object]:
        return {
            "status": "ok",
            "upstream": settings.upstream_base,
            "upstream_kind": upstream_kind,
            "monitor": monitor is not None,
            "pid": os.getpid(),
        }

    @api.get("/monitor")
    async def monitor_snapshot() -> Response:
        if monitor is None:
            return _monitoring_off()
        return JSONResponse(snapshot_from_state(server_state()))

    registry = new_registry(server_state) if monitor is not None else None

    @api.get("/metrics")
    async def metrics() -> Response:
        if registry is None:
            return _monitoring_off()
        return Response(exposition(registry), media_type=CONTENT_TYPE)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, str(exc.detail), "invalid_request_error", code)

    @api.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> Response:
        return _error(500, "Internal proxy error.", "server_error", "internal")

    # MAX_CONCURRENT_REQUESTS and MAX_QUEUE_SIZE are for the whole server: each of N workers
    # admits (and queues) its 1/N share, at least 1.
    share = settings.workers
    admission = Admission(
        max(1, settings.max_concurrent_requests // share),
        max(1, settings.max_queue_size // share),
        settings.queue_timeout,
    )
    return ProxyApp(settings, api, proxy, admission, monitor)


class _Dispatch:
    """`/v1/*` straight to the forwarding endpoint (no framework layers on the hot path); the rest to FastAPI."""

    def __init__(self, api: FastAPI, proxy: UpstreamProxy) -> None:
        self.api = api
        self.proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(GATED_PREFIX):
            await self.proxy(scope, receive, send)
        else:
            await self.api(scope, receive, send)


class ProxyApp:
    """The served ASGI app: gate (key, queue) -> concurrency middleware -> dispatch."""

    def __init__(
        self,
        settings: Settings,
        api: FastAPI,
        proxy: UpstreamProxy,
        admission: Admission,
        monitor: ConcurrencyMonitor | None,
    ) -> None:
        self.api = api
        self.settings = settings
        self.monitor = monitor
        self.admission = admission
        inner: ASGIApp = _Dispatch(api, proxy)
        if monitor is not None:
            inner = ConcurrencyMiddleware(inner, monitor)
        self._app = ProxyGate(
            inner,
            admission,
            max_body_size=settings.max_body_size,
            api_key=settings.proxy_api_key,
            monitor=monitor,
            metrics_public=settings.metrics_public,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


def __getattr__(name: str) -> ProxyApp:
    """`app` is built on first access (by uvicorn), so importing this module has no side effects."""
    if name == "app":
        built = create_app()
        globals()["app"] = built
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
