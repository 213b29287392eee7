"""A minimal HTTP/1.1 server for the benchmarks' loopback receivers: plain asyncio, one
thread, keep-alive, ``Content-Length`` bodies only (what httpx and requests send).

A receiver is one coroutine, ``answer(request) -> (status, content type, body)``;
``serve_forever`` runs it on a port until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

MAX_HEAD: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    body: bytes
    wire_bytes: int
    """Bytes read from the socket for it: request line, headers and body."""
    connection: int
    """Which connection it came on (numbered from 1 in the order they were opened)."""


Answer = tuple[str, str, bytes]
Handler = Callable[[Request], Awaitable[Answer]]


def parse_head(head: bytes) -> tuple[str, str, int]:
    """Method, target and Content-Length of a request head."""
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return method, target, length


class Connections:
    """Serves each connection's requests in order."""

    def __init__(self, answer: Handler) -> None:
        self.answer = answer
        self.opened = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        connection = self.opened
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                method, target, length = parse_head(head)
                body = await reader.readexactly(length) if length else b""
                request = Request(method, target, body, len(head) + len(body), connection)
                status, content_type, answer = await self.answer(request)
                writer.write(
                    f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n"
                    f"content-length: {len(answer)}\r\n\r\n".encode("latin-1")
                    + answer
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


async def serve_forever(connections: Connections, port: int, host: str = "127.0.0.1") -> None:
    server = await asyncio.start_server(connections.serve, host, port, limit=MAX_HEAD, backlog=256)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
