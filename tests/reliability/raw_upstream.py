"""An upstream that misbehaves at the HTTP level: `python -m tests.reliability.raw_upstream PORT MODE`.

GET /health answers 200; any other request gets, by MODE: `garbage` (bytes that are not HTTP,
then close), `bigbody` (200 with a 1 GiB body of zeros, streamed in 1 MiB writes).
"""

from __future__ import annotations

import asyncio
import sys

CHUNK = b"\0" * (1 << 20)
BIG = 1 << 30


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: str) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            if head.startswith(b"GET /health "):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}")
                await writer.drain()
                continue
            if mode == "garbage":
                writer.write(b"THIS IS NOT HTTP\r\n\x00\x01\x02\r\n\r\n")
                await writer.drain()
                break
            head_out = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n"
            writer.write(head_out % BIG)
            for _ in range(BIG // len(CHUNK)):
                writer.write(CHUNK)
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main(port: int, mode: str) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, mode), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
