"""Raw upstreams for transport tests: asyncio servers on loopback that read requests as
they arrive and answer with exact bytes, and the client side that drives a
``PooledTransport`` against them on both event loops."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import uvloop

from proxy.transport import PooledTransport

T = TypeVar("T")
Run = Callable[[Coroutine[Any, Any, T]], T]

# generous limits that only stop a broken test from hanging; no test measures time
TIMEOUTS = {"connect": 10.0, "read": 10.0, "write": 10.0, "pool": 10.0}
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def runner(loop: str) -> Run[Any]:
    """Runs a coroutine to completion on a fresh event loop of the kind named."""
    factory = LOOPS[loop]

    def run(coroutine: Coroutine[Any, Any, T]) -> T:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coroutine)

    return run


# --------------------------------------------------------------------------- servers


@dataclass
class Received:
    """A request as a raw server read it."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    raw_body: bytes
    connection: int


@dataclass
class Peer:
    """One accepted connection on a raw server."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    index: int
    server: RawServer

    async def request(self) -> Received | None:
        """The next request on the connection, or None once the client has closed it."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        request_line, *lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = raw_body = b""
        if "content-length" in headers:
            body = raw_body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            body, raw_body = await self._read_chunked()
        received = Received(method, target, headers, body, raw_body, self.index)
        self.server.requests.append(received)
        return received

    async def _read_chunked(self) -> tuple[bytes, bytes]:
        body, raw = bytearray(), bytearray()
        while True:
            size_line = await self.reader.readuntil(b"\r\n")
            raw += size_line
            size = int(size_line.strip(), 16)
            data = await self.reader.readexactly(size + 2)
            raw += data
            assert data.endswith(b"\r\n")
            if size == 0:
                return bytes(body), bytes(raw)
            body += data[:-2]

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def sees_eof(self) -> bool:
        """Read until the client closes the connection; True then."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass
        return True


Handler = Callable[[Peer], Awaitable[None]]


@dataclass
class RawServer:
    """An asyncio server on 127.0.0.1 whose every connection runs ``handler``."""

    handler: Handler
    ssl_context: ssl.SSLContext | None = None
    accepted: int = 0
    finished: int = 0
    """Connections whose handler returned: the client closed them, or the script ended."""
    requests: list[Received] = field(default_factory=list)
    url: str = ""
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        port = self._server.sockets[0].getsockname()[1]
        scheme = "https" if self.ssl_context else "http"
        self.url = f"{scheme}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def paths(self) -> list[str]:
        return [request.target for request in self.requests]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        try:
            await self.handler(Peer(reader, writer, self.accepted, self))
            self.finished += 1
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            # ends the task normally: asyncio's stream server reports cancelled handlers
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()


def answer(body: bytes = b"ok", *, status: bytes = b"200 OK", headers: bytes = b"") -> bytes:
    """A response with a Content-Length."""
    return b"HTTP/1.1 %b\r\nContent-Length: %d\r\n%b\r\n" % (status, len(body), headers) + body


def chunk(data: bytes) -> bytes:
    """``data`` in chunked framing (empty: the last chunk)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def answering(reply: Callable[[Received], bytes] = lambda _: answer()) -> Handler:
    """A keep-alive handler that answers each request with ``reply(request)``."""

    async def handler(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            peer.send(reply(request))
            await peer.writer.drain()

    return handler


# --------------------------------------------------------------------------- client side


def make_request(
    url: str,
    method: str = "GET",
    content: bytes | AsyncIterator[bytes] | None = None,
    **timeouts: float,
) -> httpx.Request:
    return httpx.Request(
        method, url, content=content, extensions={"timeout": {**TIMEOUTS, **timeouts}}
    )


def chunks_of(response: httpx.Response) -> AsyncIterator[bytes]:
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    return aiter(stream)


async def read_all(response: httpx.Response) -> bytes:
    try:
        return b"".join([chunk async for chunk in chunks_of(response)])
    finally:
        await response.aclose()


async def fetch(
    transport: PooledTransport, url: str, method: str = "GET", **options: Any
) -> tuple[httpx.Response, bytes]:
    response = await transport.handle_async_request(make_request(url, method, **options))
    return response, await read_all(response)


async def parts(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        await asyncio.sleep(0)
        yield piece


async def wait_for(condition: Callable[[], bool]) -> None:
    """Yield until ``condition`` holds (callers bound it with ``within``)."""
    while not condition():
        await asyncio.sleep(0.001)


async def within(awaitable: Awaitable[T]) -> T:
    """``awaitable``, failing the test instead of hanging if it never completes."""
    async with asyncio.timeout(10):
        return await awaitable
