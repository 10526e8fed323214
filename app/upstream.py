"""The upstream HTTP client, behind one small interface so that it can change again.

`UPSTREAM_CLIENT` picks the implementation: `aiohttp` (the default: fastest in
bench/run.sh and passing every proxy test), `httpx`, `httpx2` (when installed), or
`httpx-aiohttp` (httpx's API over aiohttp's transport, when installed). Every one gives
the raw body bytes (never decompressed) as they arrive, maps its exceptions to the three
`UpstreamError` codes, and closes the connection when a response is abandoned midway.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

from app.config import Settings

ErrorCode = Literal["upstream_unavailable", "upstream_timeout", "upstream_error"]
KEEPALIVE_EXPIRY = 30.0
CONNECT_TIMEOUT = 5.0


class UpstreamError(Exception):
    """The upstream could not be reached (unavailable), was too slow (timeout) or broke (error)."""

    def __init__(self, code: ErrorCode, kind: str) -> None:
        super().__init__(f"{code} ({kind})")
        self.code = code
        self.kind = kind


class UpstreamResponse(Protocol):
    status: int
    headers: list[tuple[bytes, bytes]]

    def aiter_raw(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class UpstreamClient(Protocol):
    async def send(
        self, method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes | None
    ) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


# -- httpx and its API twins ---------------------------------------------------------------


class _HttpxResponse:
    def __init__(self, response: Any, errors: Any) -> None:
        self._response = response
        self._errors = errors
        self.status: int = response.status_code
        self.headers: list[tuple[bytes, bytes]] = response.headers.raw

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except self._errors.TimeoutException as exc:
            raise UpstreamError("upstream_timeout", type(exc).__name__) from None
        except self._errors.TransportError as exc:
            raise UpstreamError("upstream_error", type(exc).__name__) from None

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxClient:
    """httpx (or a module with its API): one pooled `AsyncClient`."""

    def __init__(self, settings: Settings, module: str = "httpx", transport: Any = None) -> None:
        self._httpx = importlib.import_module(module)
        size = settings.max_concurrent_requests
        self._client = self._httpx.AsyncClient(
            limits=self._httpx.Limits(
                max_connections=size, max_keepalive_connections=size, keepalive_expiry=KEEPALIVE_EXPIRY
            ),
            timeout=self._httpx.Timeout(
                connect=CONNECT_TIMEOUT, read=settings.upstream_timeout, write=settings.upstream_timeout, pool=30.0
            ),
            follow_redirects=False,
            trust_env=False,
            transport=transport,
        )

    async def send(
        self, method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes | None
    ) -> UpstreamResponse:
        httpx = self._httpx
        # A bare Request: the client's default headers (User-Agent, Accept-Encoding, ...) are not added.
        request = httpx.Request(method, url, headers=headers, content=body)
        try:
            response = await self._client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise UpstreamError("upstream_unavailable", type(exc).__name__) from None
        except httpx.TimeoutException as exc:
            raise UpstreamError("upstream_timeout", type(exc).__name__) from None
        except httpx.TransportError as exc:
            raise UpstreamError("upstream_error", type(exc).__name__) from None
        return _HttpxResponse(response, httpx)

    async def aclose(self) -> None:
        await self._client.aclose()


# -- aiohttp ---------------------------------------------------------------------------------


class _AiohttpResponse:
    def __init__(self, response: Any, aiohttp: Any) -> None:
        self._response = response
        self._aiohttp = aiohttp
        self._done = False
        self.status: int = response.status
        self.headers: list[tuple[bytes, bytes]] = list(response.raw_headers)

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        aiohttp = self._aiohttp
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamError("upstream_timeout", type(exc).__name__) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError("upstream_error", type(exc).__name__) from None
        self._done = True

    async def aclose(self) -> None:
        if self._done or self._response.content.is_eof():
            self._response.release()  # fully read: the connection goes back to the pool
        else:
            self._response.close()  # abandoned midway: the connection is closed, never reused


class AiohttpClient:
    """aiohttp's `ClientSession`, with its conveniences turned off: raw bytes, no added headers."""

    def __init__(self, settings: Settings) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._settings = settings
        self._session: Any = None

    def _open(self) -> Any:
        aiohttp = self._aiohttp
        size = self._settings.max_concurrent_requests
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=size, limit_per_host=size, keepalive_timeout=KEEPALIVE_EXPIRY),
            timeout=aiohttp.ClientTimeout(
                total=None, connect=CONNECT_TIMEOUT, sock_read=self._settings.upstream_timeout
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            trust_env=False,
        )

    async def send(
        self, method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes | None
    ) -> UpstreamResponse:
        aiohttp = self._aiohttp
        if self._session is None:
            self._session = self._open()  # made inside the running loop, as aiohttp requires
        str_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
        try:
            response = await self._session.request(
                method, self._yarl(url), headers=str_headers, data=body, allow_redirects=False
            )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise UpstreamError("upstream_unavailable", type(exc).__name__) from None
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamError("upstream_timeout", type(exc).__name__) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError("upstream_error", type(exc).__name__) from None
        return _AiohttpResponse(response, aiohttp)

    @staticmethod
    def _yarl(url: str) -> Any:
        import yarl

        # encoded=True: the path and query go upstream exactly as the client sent them.
        return yarl.URL(url, encoded=True)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def new_upstream_client(settings: Settings) -> UpstreamClient:
    name = settings.upstream_client
    if name == "aiohttp":
        return AiohttpClient(settings)
    if name == "httpx-aiohttp":
        transport = importlib.import_module("httpx_aiohttp").AiohttpTransport()
        return HttpxClient(settings, "httpx", transport=transport)
    return HttpxClient(settings, name)
