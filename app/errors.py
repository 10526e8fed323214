"""OpenAI-shaped JSON errors: ``{"error": {"message", "type", "code"}}``."""

from __future__ import annotations

import json
from collections.abc import Iterable

from utils.concurrency_monitor import Send


def error_body(message: str, type_: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "code": code}}).encode()


async def send_error(
    send: Send,
    status: int,
    message: str,
    type_: str,
    code: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Send a complete JSON error response."""
    body = error_body(message, type_, code)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
