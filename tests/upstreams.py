"""Small real upstreams for what the simulator does not do: echo the request, answer gzip."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

from utils.concurrency_monitor import Receive, Scope, Send

GZIP_TEXT = b'{"hello": "compressed world"}' * 20


async def _reply(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """/health; /v1/gzip answers a gzip body; anything else echoes the request as JSON."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/health":
        await _reply(send, 200, b'{"status":"ok"}', [(b"content-type", b"application/json")])
        return
    if scope["path"] == "/v1/gzip":
        await _reply(send, 200, gzip.compress(GZIP_TEXT), [(b"content-encoding", b"gzip")])
        return
    echo: dict[str, Any] = {
        "method": scope["method"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        "body_b64": base64.b64encode(body).decode(),
    }
    await _reply(send, 200, json.dumps(echo).encode(), [(b"content-type", b"application/json")])
