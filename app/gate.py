"""The door of `/v1/*`: API key check and the FIFO admission queue.

The queue belongs to the proxy and works with monitoring off. It sits outside the
concurrency middleware so that a queued request is never counted as active: when a
monitor is given, the gate reports queue entries and exits to it, and counts the
requests it answers itself (401, 503) so that every request is counted exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections import deque
from typing import Literal

from app.errors import send_error
from utils.concurrency_monitor import (
    ASGIApp,
    ConcurrencyMonitor,
    Message,
    Receive,
    Scope,
    Send,
    endpoint_of,
)

logger = logging.getLogger("app.gate")

GATED_PREFIX = "/v1/"
OBSERVATION_PATHS = frozenset({"/monitor", "/metrics"})
WaitResult = Literal["admitted", "timeout", "gone"]


class ResponseAborted(Exception):
    """The response had started when the upstream broke: the client connection must be cut, not finished."""


class Admission:
    """At most ``limit`` requests inside; up to ``max_waiting`` more wait, first in, first out."""

    def __init__(self, limit: int, max_waiting: int, timeout: float) -> None:
        self.limit = limit
        self.max_waiting = max_waiting
        self.timeout = timeout
        self.inside = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_enter(self) -> bool:
        if self.inside < self.limit and not self._waiters:
            self.inside += 1
            return True
        return False

    def leave(self) -> None:
        """Free a slot: hand it straight to the oldest waiter, if any."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.inside -= 1

    def enqueue(self) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    def abandon(self, waiter: asyncio.Future[None]) -> None:
        """A waiter gives up; if a slot was handed to it meanwhile, pass the slot on."""
        if waiter.done() and not waiter.cancelled():
            self.leave()
            return
        waiter.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)


class ProxyGate:
    """Pure ASGI middleware in front of the app (and of the concurrency middleware)."""

    def __init__(
        self,
        app: ASGIApp,
        admission: Admission,
        max_body_size: int,
        api_key: str | None = None,
        monitor: ConcurrencyMonitor | None = None,
        metrics_public: bool = False,
    ) -> None:
        self.app = app
        # With a key, /monitor and /metrics need it too unless METRICS_PUBLIC=true.
        self._guard_observation = api_key is not None and not metrics_public
        self.admission = admission
        self.max_body_size = max_body_size
        self._expected_auth = f"Bearer {api_key}".encode() if api_key else None
        self.monitor = monitor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(GATED_PREFIX):
            if (
                self._guard_observation
                and scope["type"] == "http"
                and scope["path"] in OBSERVATION_PATHS
                and not self._authorized(scope)
            ):
                await self._unauthorized(send)  # not counted, as these paths never are
                return
            await self._call(scope, receive, send)
            return
        if self._expected_auth is not None and not self._authorized(scope):
            await self._unauthorized(send)
            self._record(scope, "ok", 401)
            return
        admission = self.admission
        if admission.try_enter():
            try:
                await self._call(scope, receive, send)
            finally:
                admission.leave()
            return
        if admission.waiting >= admission.max_waiting:
            await self._unavailable(send, "queue_full", "The proxy's request queue is full; retry later.")
            self._record(scope, "failed", 503, "queue_full")
            return
        await self._queued(scope, receive, send)

    @staticmethod
    async def _unauthorized(send: Send) -> None:
        await send_error(
            send,
            401,
            "Missing or invalid API key: send 'Authorization: Bearer <key>'.",
            "authentication_error",
            "invalid_api_key",
            [(b"www-authenticate", b"Bearer")],
        )

    def _authorized(self, scope: Scope) -> bool:
        expected = self._expected_auth
        assert expected is not None
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, expected)
        return hmac.compare_digest(b"", expected)

    async def _call(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except ResponseAborted as exc:
            # Already counted as failed (upstream_error) by the monitor; the server cuts the connection.
            logger.warning("response aborted: %s", exc)

    def _record(
        self, scope: Scope, outcome: Literal["ok", "failed", "cancelled"], status: int = 0, reason: str | None = None
    ) -> None:
        if self.monitor is not None:
            endpoint = endpoint_of(scope["path"])
            if endpoint is not None:
                self.monitor.record(endpoint, outcome, status, reason)

    @staticmethod
    async def _unavailable(send: Send, code: str, message: str) -> None:
        await send_error(send, 503, message, "server_overloaded", code, [(b"retry-after", b"1")])

    async def _queued(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Wait for a slot while watching the client: a client that leaves, leaves the queue at once."""
        admission = self.admission
        monitor = self.monitor
        endpoint = endpoint_of(scope["path"]) if monitor is not None else None
        loop = asyncio.get_running_loop()
        waiter = admission.enqueue()
        if endpoint is not None:
            monitor.queue_entered(endpoint)  # type: ignore[union-attr]
        buffered: list[Message] = []
        body_size = 0
        reader: asyncio.Task[Message] | None = loop.create_task(receive())
        entered = loop.time()
        deadline = entered + admission.timeout
        result: WaitResult = "timeout"
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                pending: set[asyncio.Future[object]] = {waiter}  # type: ignore[arg-type]
                if reader is not None:
                    pending.add(reader)  # type: ignore[arg-type]
                await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if waiter.done():
                    result = "admitted"
                    break
                if reader is not None and reader.done():
                    message = reader.result()
                    reader = None
                    if message["type"] == "http.disconnect":
                        result = "gone"
                        break
                    buffered.append(message)
                    body_size += len(message.get("body", b""))
                    # Keep listening (for a disconnect) unless the body is already too big to keep.
                    if body_size <= self.max_body_size:
                        reader = loop.create_task(receive())
        except BaseException:
            result = "timeout"
            self._record(scope, "failed", 0, "internal")  # cancelled by the server (shutdown): keep the count exact
            raise
        finally:
            if result != "admitted":
                admission.abandon(waiter)
                if reader is not None:
                    reader.cancel()
            if endpoint is not None:
                monitor.queue_left(endpoint, loop.time() - entered)  # type: ignore[union-attr]

        if result == "gone":
            self._record(scope, "cancelled")
            return
        if result == "timeout":
            await self._unavailable(send, "queue_timeout", "The request waited too long in the proxy's queue.")
            self._record(scope, "failed", 503, "queue_timeout")
            return

        async def replay() -> Message:
            nonlocal reader
            if buffered:
                return buffered.pop(0)
            if reader is not None:
                task, reader = reader, None
                return await task
            return await receive()

        try:
            await self._call(scope, replay, send)
        finally:
            if reader is not None:
                reader.cancel()
            admission.leave()
