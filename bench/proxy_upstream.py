"""A small, fast HTTP/1.1 upstream for the proxy benchmark: plain asyncio, one thread.

    python -m bench.proxy_upstream --port 8001 [--port 8002] [--delay-ms 0]

Endpoints (any method; request bodies are read and dropped):

- ``/small``: a JSON chat completion of about 300 bytes;
- ``/sse?events=N&gap_ms=M``: ``text/event-stream``, N OpenAI-style ``data: {...}``
  chunks M ms apart, then ``data: [DONE]`` (chunked transfer encoding);
- ``/big?mb=N``: N MiB of bytes in 64 KiB writes, honouring the socket's back pressure;
- ``/stats``: ``{"requests": n}``, the requests answered so far (not counting these).

``--delay-ms`` makes every answer wait that long first (a slower version of the app).
Keep-alive by default; ``Connection: close`` and HTTP/1.0 close after the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

CHUNK = 64 * 1024
SMALL = json.dumps(
    {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion",
        "created": 1767225600,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Your order shipped today."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49},
    },
    separators=(",", ":"),
).encode()
EVENT = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1767225600,'
    b'"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"token"},'
    b'"finish_reason":null}]}\n\n'
)
DONE = b"data: [DONE]\n\n"
MAX_HEAD = 64 * 1024
STREAMS = ("/sse", "/big")


class BadRequestError(Exception):
    """The request cannot be parsed; the connection is closed."""


class Request:
    __slots__ = ("keep_alive", "method", "target")

    def __init__(self, method: str, target: str, keep_alive: bool) -> None:
        self.method = method
        self.target = target
        self.keep_alive = keep_alive


def _parse_head(head: bytes) -> tuple[Request, int | None, bool]:
    """The request, its Content-Length and whether the body is chunked."""
    lines = head.split(b"\r\n")
    try:
        method, target, version = lines[0].decode("latin-1").split(" ")
    except ValueError:
        raise BadRequestError(lines[0][:80]) from None
    length: int | None = None
    chunked = False
    keep_alive = version == "HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif key == b"connection":
            token = value.strip().lower()
            keep_alive = token != b"close" and (keep_alive or token == b"keep-alive")
    return Request(method, target, keep_alive), length, chunked


def _chunked_body_end(buffer: bytes | bytearray, start: int) -> int | None:
    """Offset just past a complete chunked body that starts at ``start``, if complete."""
    position = start
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", line_end)
            if trailer_end == line_end:
                return line_end + 4
            return None if trailer_end < 0 else trailer_end + 4
        position = line_end + 2 + size + 2
        if position > len(buffer):
            return None


def _head(status: str, content_type: str, extra: str, keep_alive: bool) -> bytes:
    connection = "keep-alive" if keep_alive else "close"
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n{extra}"
        f"connection: {connection}\r\n\r\n"
    ).encode("latin-1")


class Upstream(asyncio.Protocol):
    """One connection: requests are answered in order, one at a time."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.task: asyncio.Future[None] | None = None
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        """Answer the requests in the buffer until one must wait or none is complete."""
        while not self.busy and self.transport is not None:
            request = self._take_request()
            if request is None:
                return
            path = urlsplit(request.target).path
            if path == "/stats" or (self.server.delay == 0 and path not in STREAMS):
                self._answer_now(request)
                continue
            self.busy = True
            self.task = asyncio.ensure_future(self._answer_later(request))

    def _take_request(self) -> Request | None:
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self.buffer) > MAX_HEAD:
                self._abort()
            return None
        try:
            request, length, chunked = _parse_head(bytes(self.buffer[:head_end]))
        except (BadRequestError, ValueError):
            self._abort()
            return None
        body_start = head_end + 4
        if chunked:
            end = _chunked_body_end(self.buffer, body_start)
            if end is None:
                return None
        else:
            end = body_start + (length or 0)
            if end > len(self.buffer):
                return None
        del self.buffer[:end]
        return request

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _finish(self, request: Request) -> None:
        self.server.requests += request.target != "/stats"
        if not request.keep_alive and self.transport is not None:
            self.transport.close()

    def _answer_now(self, request: Request) -> None:
        assert self.transport is not None
        path = urlsplit(request.target).path
        if path == "/stats":
            body = json.dumps({"requests": self.server.requests}).encode()
        elif path == "/small":
            body = SMALL
        else:
            self.transport.write(
                _head("404 Not Found", "text/plain", "content-length: 0\r\n", request.keep_alive)
            )
            self._finish(request)
            return
        self.transport.write(
            _head(
                "200 OK", "application/json", f"content-length: {len(body)}\r\n", request.keep_alive
            )
            + body
        )
        self._finish(request)

    async def _answer_later(self, request: Request) -> None:
        try:
            if self.server.delay:
                await asyncio.sleep(self.server.delay)
            split = urlsplit(request.target)
            query = {key: values[-1] for key, values in parse_qs(split.query).items()}
            if split.path == "/sse":
                await self._sse(
                    request, int(query.get("events", 10)), float(query.get("gap_ms", 0))
                )
            elif split.path == "/big":
                await self._big(request, int(query.get("mb", 1)))
            elif self.transport is not None:
                self._answer_now(request)
            if split.path in STREAMS:
                self._finish(request)
        except (ConnectionError, ValueError):
            self._abort()
        finally:
            self.busy = False
        if self.buffer:
            self._next()

    async def _write(self, data: bytes) -> None:
        if self.transport is None:
            raise ConnectionResetError
        self.transport.write(data)
        await self.writable.wait()

    async def _sse(self, request: Request, events: int, gap_ms: float) -> None:
        extra = "cache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
        await self._write(_head("200 OK", "text/event-stream", extra, request.keep_alive))
        for index in range(events):
            if index and gap_ms:
                await asyncio.sleep(gap_ms / 1000)
            await self._write(b"%x\r\n%s\r\n" % (len(EVENT), EVENT))
        await self._write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(DONE), DONE))

    async def _big(self, request: Request, mib: int) -> None:
        total = mib * 1024 * 1024
        extra = f"content-length: {total}\r\n"
        await self._write(_head("200 OK", "application/octet-stream", extra, request.keep_alive))
        block = b"x" * CHUNK
        for _ in range(total // CHUNK):
            await self._write(block)


class Server:
    def __init__(self, delay_ms: float) -> None:
        self.delay = delay_ms / 1000
        self.requests = 0


async def serve(ports: Sequence[int], delay_ms: float, host: str = "127.0.0.1") -> None:
    """Serve on every port until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    state = Server(delay_ms)
    servers = [
        await loop.create_server(lambda: Upstream(state), host, port, backlog=1024)
        for port in ports
    ]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, action="append", required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.delay_ms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
