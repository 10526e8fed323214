"""A built-in OpenAI-compatible LLM server simulator, for demos, tests and benchmarks.

`python -m app.simulator [--port 9998] [--ttft-ms 200] [--token-ms 30] [--tokens 60] [--slots 0] [--error-rate 0]`

Endpoints: GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions, POST /v1/completions
(streaming SSE ending in `data: [DONE]`, or one JSON body with `usage`), POST /v1/embeddings,
GET /health, and GET /sim/stats (its own counters, for tests). It is a pure ASGI app, so it
costs little as a benchmark upstream.

Faults, per request, with the header `X-Simulator-Fault`: `error-500`, `error-429`, `drop`
(the stream or body is cut off midway), `hang` (no answer until the client gives up),
`delay-<ms>` (extra time before the first token), `stall` (a stream goes silent midway).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import math
import os
import random
import struct
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from utils.concurrency_monitor import Receive, Scope, Send

MODEL_ID = "simulator"
GENERATING = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
MAX_BODY = 10 * 1024 * 1024
WORDS = (
    "Sure",
    "here",
    "is",
    "a",
    "simulated",
    "answer",
    "from",
    "the",
    "built-in",
    "model",
    "with",
    "realistic",
    "timing",
    "and",
    "tokens",
    "streamed",
    "one",
    "by",
    "one",
    "to",
    "you.",
)


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 9998
    ttft_ms: float = 200.0
    token_ms: float = 30.0
    tokens: int = 60
    slots: int = 0
    error_rate: float = 0.0


@dataclass
class SimStats:
    requests: int = 0
    active: int = 0
    completed: int = 0
    aborted: int = 0
    faults: int = 0


def _json_bytes(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


async def _send_json(send: Send, status: int, data: object, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = _json_bytes(data)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _error(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _count_prompt_tokens(value: Any) -> int:
    """A rough token count (words) of any prompt shape."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_count_prompt_tokens(v) for v in value)
    if isinstance(value, dict):
        return sum(_count_prompt_tokens(v) for k, v in value.items() if k in ("content", "text"))
    return 0


def _positive_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(f"'{name}' must be a positive integer", name)
    return value


def _validate_chat(body: Mapping[str, Any]) -> None:
    messages = body.get("messages")
    if messages is None:
        raise BadRequest("'messages' is a required property", "messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a 'role'", f"messages[{i}]")


def _validate_completion(body: Mapping[str, Any]) -> None:
    prompt = body.get("prompt")
    if prompt is None:
        raise BadRequest("'prompt' is a required property", "prompt")
    if not isinstance(prompt, (str, list)):
        raise BadRequest("'prompt' must be a string or an array", "prompt")


class Simulator:
    """The ASGI app. Per-request state lives in locals; ``stats`` are the simulator's own counters."""

    def __init__(self, config: SimConfig, seed: int | None = None) -> None:
        self.config = config
        self.stats = SimStats()
        self._rng = random.Random(seed)
        self._slots: asyncio.Semaphore | None = asyncio.Semaphore(config.slots) if config.slots > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"].rstrip("/") or "/"
        method: str = scope["method"]
        if path == "/health":
            await _send_json(send, 200, {"status": "ok", "model": MODEL_ID})
            return
        if path == "/sim/stats":
            await _send_json(send, 200, self.stats.__dict__)
            return
        if path == "/v1/models" and method == "GET":
            await _send_json(send, 200, {"object": "list", "data": [self._model_card(MODEL_ID)]})
            return
        if path.startswith("/v1/models/") and method == "GET":
            await _send_json(send, 200, self._model_card(path[len("/v1/models/") :]))
            return
        if path not in GENERATING:
            await _send_json(send, 404, _error(f"Unknown endpoint {path}", "invalid_request_error", "not_found"))
            return
        if method != "POST":
            await _send_json(send, 405, _error("Method not allowed", "invalid_request_error", "method_not_allowed"))
            return
        self.stats.requests += 1
        self.stats.active += 1
        try:
            await self._generate(scope, receive, send, path)
        finally:
            self.stats.active -= 1

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    @staticmethod
    def _model_card(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 1700000000, "owned_by": "simulator"}

    async def _generate(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        raw = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.stats.aborted += 1
                return
            raw += message.get("body", b"")
            if len(raw) > MAX_BODY:
                await _send_json(send, 413, _error("Request too large", "invalid_request_error", "too_large"))
                return
            if not message.get("more_body", False):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        fault = headers.get("x-simulator-fault", "").strip().lower()
        extra_delay = 0.0
        if fault.startswith("delay-"):
            try:
                extra_delay = max(0.0, float(fault[len("delay-") :]) / 1000)
            except ValueError:
                extra_delay = 0.0
            fault = ""
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            await _send_json(send, 400, _error("Invalid JSON body", "invalid_request_error", "invalid_json"))
            return
        try:
            if not isinstance(body, dict):
                raise BadRequest("The body must be a JSON object")
            validate = {"/v1/chat/completions": _validate_chat, "/v1/completions": _validate_completion}.get(path)
            if validate is not None:
                validate(body)
            elif body.get("input") is None:
                raise BadRequest("'input' is a required property", "input")
            max_tokens = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
        except BadRequest as exc:
            await _send_json(send, 400, _error(str(exc), "invalid_request_error", "invalid_value", exc.param))
            return

        random_error = not fault and self.config.error_rate > 0 and self._rng.random() < self.config.error_rate
        if fault == "error-500" or random_error:
            self.stats.faults += 1
            await _send_json(send, 500, _error("Simulated internal server error", "server_error", "simulated_error"))
            return
        if fault == "error-429":
            self.stats.faults += 1
            await _send_json(
                send,
                429,
                _error("Simulated rate limit", "rate_limit_error", "rate_limit_exceeded"),
                [(b"retry-after", b"1")],
            )
            return

        gone = asyncio.Event()

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    return

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            if fault == "hang":
                self.stats.faults += 1
                await gone.wait()
                self.stats.aborted += 1
                return
            if self._slots is not None:
                await self._slots.acquire()
            try:
                if path == "/v1/embeddings":
                    await self._embeddings(body, send, gone, extra_delay)
                else:
                    await self._completion(body, send, gone, path, max_tokens, extra_delay, fault)
            finally:
                if self._slots is not None:
                    self._slots.release()
        finally:
            watcher.cancel()

    async def _sleep_unless_gone(self, delay: float, gone: asyncio.Event) -> bool:
        """Sleep; True when the client went away meanwhile."""
        if delay > 0:
            try:
                await asyncio.wait_for(gone.wait(), delay)
            except TimeoutError:
                return False
            return True
        return gone.is_set()

    async def _embeddings(self, body: dict[str, Any], send: Send, gone: asyncio.Event, extra_delay: float) -> None:
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dims = body.get("dimensions") if isinstance(body.get("dimensions"), int) else 64
        if await self._sleep_unless_gone(self.config.ttft_ms / 1000 + extra_delay, gone):
            self.stats.aborted += 1
            return
        data = []
        for index, item in enumerate(inputs):
            vector = _embed(json.dumps(item), dims)
            embedding: Any = vector
            if body.get("encoding_format") == "base64":
                embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = _count_prompt_tokens(inputs)
        await _send_json(
            send,
            200,
            {
                "object": "list",
                "data": data,
                "model": body.get("model") or MODEL_ID,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )
        self.stats.completed += 1

    async def _completion(
        self,
        body: dict[str, Any],
        send: Send,
        gone: asyncio.Event,
        path: str,
        max_tokens: int | None,
        extra_delay: float,
        fault: str,
    ) -> None:
        chat = path == "/v1/chat/completions"
        drop = fault == "drop"
        model = body.get("model") or MODEL_ID
        count = self.config.tokens if max_tokens is None else min(self.config.tokens, max_tokens)
        finish_reason = "length" if max_tokens is not None and max_tokens <= self.config.tokens else "stop"
        pieces = [(" " if i else "") + WORDS[i % len(WORDS)] for i in range(count)]
        prompt_tokens = max(1, _count_prompt_tokens(body.get("messages") if chat else body.get("prompt")))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": count, "total_tokens": prompt_tokens + count}
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        loop = asyncio.get_running_loop()
        start = loop.time() + self.config.ttft_ms / 1000 + extra_delay
        token_s = self.config.token_ms / 1000

        if not body.get("stream"):
            if await self._sleep_unless_gone(start - loop.time() + token_s * max(0, count - 1), gone):
                self.stats.aborted += 1
                return
            text = "".join(pieces)
            choice: dict[str, Any]
            if chat:
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            payload = _json_bytes(
                {
                    "id": ident,
                    "object": "chat.completion" if chat else "text_completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fp_simulator",
                    "choices": [choice],
                    "usage": usage,
                }
            )
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            if drop:
                self.stats.faults += 1
                await send({"type": "http.response.body", "body": payload[: len(payload) // 2], "more_body": True})
                return  # the server cuts the connection: the body is short of its Content-Length
            await send({"type": "http.response.body", "body": payload})
            self.stats.completed += 1
            return

        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        base = {
            "id": ident,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_simulator",
        }

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            chunk = {**base, "choices": choices, **extra}
            if include_usage and "usage" not in extra:
                chunk["usage"] = None
            return b"data: " + _json_bytes(chunk) + b"\n\n"

        def piece(text: str, finish: str | None = None, role: bool = False) -> bytes:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": text} if role else {"content": text}
                if finish is not None:
                    delta = {}
                return event([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])
            return event([{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}])

        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        if chat:
            await send({"type": "http.response.body", "body": piece("", role=True), "more_body": True})
        for i, text in enumerate(pieces):
            if await self._sleep_unless_gone(start + i * token_s - loop.time(), gone):
                self.stats.aborted += 1
                return
            if drop and i >= len(pieces) // 2:
                self.stats.faults += 1
                return  # cut off midway: no final chunk, no [DONE]
            if fault == "stall" and i >= len(pieces) // 2:
                self.stats.faults += 1
                await gone.wait()  # silent midway until the client gives up
                self.stats.aborted += 1
                return
            await send({"type": "http.response.body", "body": piece(text), "more_body": True})
        tail = piece("", finish=finish_reason)
        if include_usage:
            tail += event([], usage=usage)
        tail += b"data: [DONE]\n\n"
        await send({"type": "http.response.body", "body": tail, "more_body": False})
        self.stats.completed += 1


def _embed(text: str, dims: int) -> list[float]:
    """A deterministic unit vector for ``text``."""
    values: list[float] = []
    counter = 0
    while len(values) < dims:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values.extend((b - 127.5) / 127.5 for b in digest)
        counter += 1
    values = values[:dims]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def _env_default(name: str, default: str) -> str:
    return os.environ.get(name, default)


def parse_args(argv: list[str] | None = None) -> SimConfig:
    parser = argparse.ArgumentParser(prog="python -m app.simulator", description="OpenAI-compatible LLM simulator")

    def non_negative(kind: type) -> Any:
        def parse(raw: str) -> Any:
            try:
                value = kind(raw)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
            if value < 0 or (isinstance(value, float) and not math.isfinite(value)):
                raise argparse.ArgumentTypeError(f"{raw!r} must not be negative")
            return value

        return parse

    def port(raw: str) -> int:
        value = non_negative(int)(raw)
        if not 1 <= value <= 65535:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a port (1-65535)")
        return int(value)

    def rate(raw: str) -> float:
        value = non_negative(float)(raw)
        if value > 1:
            raise argparse.ArgumentTypeError(f"{raw!r} must be between 0 and 1")
        return float(value)

    parser.add_argument("--host", default=_env_default("SIM_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=port, default=_env_default("SIM_PORT", "9998"))
    parser.add_argument("--ttft-ms", type=non_negative(float), default=_env_default("SIM_TTFT_MS", "200"))
    parser.add_argument("--token-ms", type=non_negative(float), default=_env_default("SIM_TOKEN_MS", "30"))
    parser.add_argument("--tokens", type=non_negative(int), default=_env_default("SIM_TOKENS", "60"))
    parser.add_argument("--slots", type=non_negative(int), default=_env_default("SIM_SLOTS", "0"))
    parser.add_argument("--error-rate", type=rate, default=_env_default("SIM_ERROR_RATE", "0.0"))
    args = parser.parse_args(argv)
    return SimConfig(
        host=args.host,
        port=args.port,
        ttft_ms=args.ttft_ms,
        token_ms=args.token_ms,
        tokens=args.tokens,
        slots=args.slots,
        error_rate=args.error_rate,
    )


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    config = parse_args(argv)
    print(
        f"simulator: listening on http://{config.host}:{config.port} (ttft {config.ttft_ms:g} ms, "
        f"{config.token_ms:g} ms/token, {config.tokens} tokens, slots {config.slots or 'unlimited'}, "
        f"error rate {config.error_rate:g})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        Simulator(config),
        host=config.host,
        port=config.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
