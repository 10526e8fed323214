"""Forwarding of `/v1/*` to the upstream, as a pure ASGI endpoint.

Method, path, query string and body go upstream byte for byte; the response comes
back with the upstream's status, headers and raw (never decompressed) body, streamed
as it arrives. The upstream response is closed on completion, on error and when the
client goes away, so pooled connections never leak.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import unquote_to_bytes

from app.config import Settings
from app.errors import send_error
from app.gate import ResponseAborted
from app.upstream import UpstreamClient, UpstreamError, UpstreamResponse
from utils.concurrency_monitor import FAILURE_REASON_KEY, Receive, Scope, Send

logger = logging.getLogger("app.proxy")

# Hop-by-hop headers (RFC 9110 7.6.1) and those the client library sets itself.
_REQUEST_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
    }
)
# The server sets its own Date and Server, as nginx's proxy_hide_header does by default.
_RESPONSE_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"date",
        b"server",
    }
)
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


class _ClientGone(Exception):
    pass


def escapes_prefix(raw_path: bytes) -> bool:
    """True when the path has a `.` or `..` segment once percent-decoded: it could leave `/v1/` upstream."""
    if b"." not in raw_path and b"%" not in raw_path:
        return False  # the common case, without decoding
    decoded = unquote_to_bytes(raw_path).replace(b"\\", b"/")
    return any(segment in (b".", b"..") for segment in decoded.split(b"/"))


class UpstreamProxy:
    """ASGI endpoint for `/v1/{path}`; ``client`` is set by the app's lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base = settings.upstream_base
        self.client: UpstreamClient | None = None
        self._auth: bytes | None = f"Bearer {settings.upstream_api_key}".encode() if settings.upstream_api_key else None
        # The client's key for the proxy is not the upstream's key: never pass it on.
        self._strip_auth = settings.upstream_api_key is not None or settings.proxy_api_key is not None

    def _request_headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        forwarded_for = b""
        connection_tokens: set[bytes] = set()
        for name, value in scope["headers"]:
            if name == b"connection":
                connection_tokens.update(t.strip().lower() for t in value.split(b","))
            elif name == b"x-forwarded-for":
                forwarded_for = value
        for name, value in scope["headers"]:
            if name in _REQUEST_DROP or name in connection_tokens:
                continue
            if name == b"authorization" and self._strip_auth:
                continue
            headers.append((name, value))
        if self._auth is not None:
            headers.append((b"authorization", self._auth))
        client = scope.get("client")
        if client:
            peer = client[0].encode()
            headers.append((b"x-forwarded-for", forwarded_for + b", " + peer if forwarded_for else peer))
        headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
        return headers

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole request body, or None after answering 413 (checked while reading, never buffered past it)."""
        limit = self.settings.max_body_size
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_error(
                        send, 400, "Invalid Content-Length header.", "invalid_request_error", "bad_request"
                    )
                    return None
                if declared > limit:
                    await self._too_large(send, limit)
                    return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    await self._too_large(send, limit)
                    return None
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @staticmethod
    async def _too_large(send: Send, limit: int) -> None:
        await send_error(
            send,
            413,
            f"Request body is larger than MAX_BODY_SIZE ({limit} bytes).",
            "invalid_request_error",
            "request_too_large",
            [(b"connection", b"close")],
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._forward(scope, receive, send)
        except (ResponseAborted, asyncio.CancelledError):
            raise
        except Exception:
            # An OpenAI-shaped 500 if nothing was sent yet (the server refuses a second start
            # otherwise), then the exception goes on, as starlette's ServerErrorMiddleware does.
            with contextlib.suppress(RuntimeError):
                await send_error(send, 500, "Internal proxy error.", "server_error", "internal")
            raise

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        if escapes_prefix(raw_path):
            await send_error(send, 400, "Invalid request path.", "invalid_request_error", "invalid_path")
            return
        try:
            body = await self._read_body(scope, receive, send)
        except _ClientGone:
            return
        if body is None:
            return
        client = self.client
        assert client is not None, "the lifespan opens the upstream client"
        query: bytes = scope.get("query_string", b"")
        url = self.base + raw_path.decode("latin-1")
        if query:
            url += "?" + query.decode("latin-1")
        method: str = scope["method"]
        content = body if body or method not in _BODYLESS_METHODS else None
        await self._exchange(client, scope, method, url, content, receive, send)

    async def _exchange(
        self,
        client: UpstreamClient,
        scope: Scope,
        method: str,
        url: str,
        body: bytes | None,
        receive: Receive,
        send: Send,
    ) -> None:
        """Send upstream and stream the answer back, stopping at once if the client disconnects.

        A watcher task waits for `http.disconnect` and cancels this task; the cancellation is
        caught here and nothing else (the server never cancels request tasks itself).
        """
        task = asyncio.current_task()
        assert task is not None
        gone = False
        finished = False

        async def watch() -> None:
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect" and not finished:
                gone = True
                task.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        response: UpstreamResponse | None = None
        try:
            try:
                try:
                    response = await client.send(method, url, self._request_headers(scope), body)
                except UpstreamError as exc:
                    scope[FAILURE_REASON_KEY] = exc.code
                    await self._upstream_error(send, exc)
                    return
                if response.status >= 500:
                    scope[FAILURE_REASON_KEY] = "upstream_error"
                last = await self._stream_back(response, method, url, send, scope)
                # `finished` is set before the last send: completing the response wakes the watcher.
                finished = True
                await send({"type": "http.response.body", "body": last, "more_body": False})
            finally:
                finished = True  # from here on, the watcher must not cancel us
                watcher.cancel()
                if response is not None:
                    await response.aclose()
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()

    async def _stream_back(self, response: UpstreamResponse, method: str, url: str, send: Send, scope: Scope) -> bytes:
        """Send the status, headers and every body chunk as it arrives, but the last.

        The last chunk is returned for the caller to send as the final message: when the
        upstream gave a Content-Length, the chunk that completes it is known to be the last,
        which saves a separate empty final message (one send per response).
        """
        headers: list[tuple[bytes, bytes]] = []
        event_stream = False
        remaining = -1
        for name, value in response.headers:
            lowered = name.lower()
            if lowered in _RESPONSE_DROP:
                continue
            if lowered == b"content-type" and value.startswith(b"text/event-stream"):
                event_stream = True
            elif lowered == b"content-length" and value.isdigit():
                remaining = int(value)
            headers.append((lowered, value))
        if event_stream:
            headers.append((b"x-accel-buffering", b"no"))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        last = b""
        try:
            async for chunk in response.aiter_raw():
                if not chunk:
                    continue
                if remaining >= 0:
                    remaining -= len(chunk)
                    if remaining <= 0:
                        last += chunk  # complete: held back for the final message
                        continue
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            # Headers are out: the only honest signal left is to cut the connection.
            scope[FAILURE_REASON_KEY] = exc.code
            path = url[len(self.base) :].split("?", 1)[0]
            raise ResponseAborted(f"upstream broke mid-response ({exc.kind}) on {method} {path}") from None
        return last

    async def _upstream_error(self, send: Send, exc: UpstreamError) -> None:
        code, kind = exc.code, exc.kind
        status = 504 if code == "upstream_timeout" else 502
        logger.warning("upstream %s: %s (%s)", code.replace("_", " "), self.base, kind)
        messages = {
            "upstream_unavailable": f"The upstream server at {self.base} is unreachable ({kind}).",
            "upstream_timeout": f"The upstream server did not answer within {self.settings.upstream_timeout:g}s.",
            "upstream_error": f"The upstream server broke the connection ({kind}).",
        }
        await send_error(send, status, messages[code], "upstream_error", code)
