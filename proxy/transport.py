"""An HTTP/1.1 client transport for the proxy's upstream calls, on asyncio Protocols.

httpx's default transport goes through several layers of Python, for every pooled
connection on every request, to ask whether the socket has become readable; under
concurrency that is where most of the proxy's CPU time goes. Here the Protocol keeps each
connection's state in flags as the event loop reports it (data, end of stream, loss), and
taking a connection from the pool costs one direct ``poll`` of its socket (about half a
microsecond) for what the loop has not reported yet. Responses are parsed by httptools
(llhttp) and their bodies streamed chunk by chunk as they arrive, with read flow control.

Use it as httpx's transports are used, through ``handle_async_request``::

    transport = PooledTransport(max_connections_per_host=64)
    response = await transport.handle_async_request(request)
    try:
        async for chunk in response.stream:
            ...
    finally:
        await response.aclose()

Timeouts come from ``request.extensions["timeout"]`` (``connect``, ``read``, ``write``,
``pool``; seconds, None for no limit), as with httpx.

A request is sent again, once and on a new connection, only when that cannot execute it
twice (RFC 9110 section 9.2.2):

- nothing of it left the proxy: the connection was found closed, or the first write
  failed at once (any method, the body not read yet);
- a reused connection closed before any byte of the response, and the method is
  idempotent (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) with a body held in memory.

Any other request whose connection closes before its response is a
``httpx.RemoteProtocolError``: a POST the upstream may have received is never sent twice.
A connection that fails to open is not tried again (``httpx.ConnectError``). Before a
pooled connection is reused, one ``poll`` of its socket checks that the upstream has
neither closed it nor sent anything since its last response.

Responses are framed by RFC 9112: interim responses (1xx) are skipped and 101 is refused,
since the proxy never asks for an upgrade; a response to HEAD and a 204 or 304 response
end with their headers; trailers after a chunked body are dropped, never taken as
headers; anything but blank lines after the end of a response (a body on a 204, bytes
past the Content-Length, a second response) closes the connection, which is never reused.
An invalid head or framing (Content-Length and Transfer-Encoding together, a bad chunk
size, folded header lines) is a ``httpx.RemoteProtocolError``.
"""

from __future__ import annotations

import asyncio
import re
import select
import ssl
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import cast

import httptools
import httpx

from proxy.errors import StaleConnectionError
from proxy.flow import WriteFlow

__all__ = ["PooledTransport", "RawResponse", "request_head"]

_HTTP_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
_REQUEST_VERSION = b" HTTP/1.1\r\n"
_HEADER_SEPARATOR = b": "
_CRLF = b"\r\n"
_END_OF_HEAD = b"\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_CHUNK = b"%x\r\n%b\r\n"
_TRANSFER_ENCODING = b"transfer-encoding"
_CONTENT_LENGTH = b"content-length"
_CHUNKED = b"chunked"
_COMMA = b","
_LINE_ENDS_AND_NUL = b"\r\n\x00"
"""Deleted from a head to count them in one pass."""
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_READABLE = select.POLLIN | select.POLLPRI
# A body up to this size goes out in the same write as the head; copying a larger one
# to join them would cost more than the second write.
_COALESCE_LIMIT = 64 * 1024
_NO_TIMEOUTS: Mapping[str, float | None] = {}
_new_object = object.__new__

MAX_RESPONSE_HEAD_BYTES = 64 * 1024
"""A response head past this size (status line, header lines, any interim responses
before it) is an error: the connection is closed and the request fails (502), as
nginx's ``proxy_buffer_size`` does."""

# Where a connection is: checked out for an exchange, waiting in the idle pool, or
# closed and no longer counted against its host's limit.
_BUSY, _IDLE, _GONE = 0, 1, 2

_CLOSED_BEFORE_RESPONSE = "the upstream closed the connection without sending a response"
_CLOSED_MID_BODY = "the upstream closed the connection before the end of the response body"
_SWITCHED = "the upstream answered 101 Switching Protocols, but no upgrade was asked for"


class _OverrunError(Exception):
    """Bytes after the end of the response: raised from a parser callback to stop it."""


def _expire_pool_wait(
    waiter: asyncio.Future[_Connection | None], request: httpx.Request | None
) -> None:
    if not waiter.done():
        waiter.set_exception(
            httpx.PoolTimeout("no connection to the upstream became free", request=request)
        )


class _HostPool:
    """The connections to one (scheme, host, port) and the requests waiting for one."""

    __slots__ = (
        "conns",
        "host",
        "idle",
        "idle_timeout",
        "max_idle",
        "open",
        "peak_buffered",
        "port",
        "server_hostname",
        "ssl",
        "waiters",
    )

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        *,
        max_idle: int,
        idle_timeout: float,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl_context
        self.server_hostname = host if ssl_context is not None else None
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.idle: deque[_Connection] = deque()
        """Reusable connections, the most recently used on the right."""
        self.waiters: deque[asyncio.Future[_Connection | None]] = deque()
        """Requests waiting for a connection (a reused one, or None: a slot to open one)."""
        self.conns: set[_Connection] = set()
        self.open = 0
        """Slots taken: connections open or being opened."""
        self.peak_buffered = 0
        """The most response body bytes any one connection held unread."""

    def take_idle(self) -> _Connection | None:
        """The most recently used idle connection that is still open and silent, if any."""
        idle = self.idle
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            conn.state = _BUSY
            if not conn.closed and conn.idle_deadline > now:
                # conn.readable(), in line
                poller = conn.poller
                if poller is None:
                    return conn
                sock = conn.transport.get_extra_info("socket")
                if sock is not None and sock.fileno() >= 0 and not poller.poll(0):
                    return conn
            conn.close()
            self.discard(conn)
        return None

    def release(self, conn: _Connection) -> None:
        """A connection after a clean exchange: to the first waiter, else to the idle pool."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        idle = self.idle
        now = time.monotonic()
        while idle and idle[0].idle_deadline <= now:
            self._evict(idle[0])
        if len(idle) >= self.max_idle:
            if not idle:
                conn.close()
                self.discard(conn)
                return
            self._evict(idle[0])
        conn.state = _IDLE
        conn.idle_deadline = now + self.idle_timeout
        idle.append(conn)

    def discard(self, conn: _Connection) -> None:
        """Forget a closed connection and pass its slot on."""
        if conn.state == _GONE:
            return
        if conn.state == _IDLE:
            self.idle.remove(conn)
        conn.state = _GONE
        self.conns.discard(conn)
        self.free_slot()

    def forget(self, conn: _Connection) -> None:
        """Forget a closed connection whose slot its replacement takes over."""
        conn.state = _GONE
        self.conns.discard(conn)

    def free_slot(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.open -= 1

    def give_back(self, waiter: asyncio.Future[_Connection | None]) -> None:
        """What a waiter got as it was cancelled goes to the next one in line."""
        if waiter.exception() is not None:
            return
        conn = waiter.result()
        if conn is None:
            self.free_slot()
        elif conn.closed:
            self.discard(conn)
        else:
            self.release(conn)

    def _evict(self, conn: _Connection) -> None:
        conn.close()
        self.discard(conn)


class _Connection(WriteFlow, asyncio.Protocol):
    """One HTTP/1.1 connection: the Protocol the event loop drives, and the state of the
    exchange in progress on it."""

    __slots__ = (
        "active",
        "buffered",
        "chunks",
        "closed",
        "complete",
        "error",
        "head",
        "head_fed",
        "headers",
        "headers_done",
        "idle_deadline",
        "junk",
        "keep_alive",
        "limit",
        "loop",
        "max_head",
        "parser",
        "poller",
        "pool",
        "read_deadline",
        "read_timer",
        "reading_paused",
        "reason",
        "received",
        "request_sent",
        "resume_at",
        "state",
        "status",
        "transport",
        "version",
        "waiter",
    )

    transport: asyncio.Transport

    def __init__(
        self,
        pool: _HostPool,
        limit: int,
        loop: asyncio.AbstractEventLoop,
        max_head: int = MAX_RESPONSE_HEAD_BYTES,
    ) -> None:
        self.pool = pool
        self.loop = loop
        self.limit = limit
        self.max_head = max_head
        """Bytes a response head may take (interim responses included)."""
        self.head_fed = 0
        self.resume_at = limit // 2
        self.state = _BUSY
        self.closed = False
        self.idle_deadline = 0.0
        self.parser: httptools.HttpResponseParser | None = None
        self.poller: select.poll | None = None
        """Registered once with the connection's socket: the check before reuse."""
        WriteFlow.__init__(self)
        self.waiter: asyncio.Future[bool] | None = None
        self.read_timer: asyncio.TimerHandle | None = None
        self.read_deadline: float | None = None
        """When the wait in progress times out (loop time); None: it has no limit."""
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.reading_paused = False
        self.active = False
        self.head = False
        self.status = 0
        self.reason = b""
        self.version = b"HTTP/1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.received = False
        self.request_sent = False
        self.junk = False
        self.error: str | None = None

    # -- the event loop's side ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.fileno() >= 0:
            self.poller = select.poll()
            self.poller.register(sock.fileno(), _READABLE)

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if not self.active or parser is None:
            # bytes nobody asked for: the connection's framing can no longer be trusted
            self.close()
            if self.state == _IDLE:
                self.pool.discard(self)
            return
        self.received = True
        try:
            parser.feed_data(data)
            if not self.headers_done:
                self.head_fed += len(data)
                if self.head_fed > self.max_head:
                    # the parser keeps a header line whole until it ends: cut it here
                    self.error = f"the upstream's response head is over {self.max_head} bytes"
        except httptools.HttpParserUpgrade:
            self.error = _SWITCHED
        except httptools.HttpParserError as error:
            if self.complete:
                # whatever follows a complete response is not part of it
                self.junk = True
            elif self.error is None:
                self.error = f"invalid HTTP response from the upstream: {error}"
        if self.error is not None or self.junk:
            self.close()
            self._wake()

    def eof_received(self) -> bool | None:
        self._peer_closed()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._peer_closed()
        self._wake()
        self.release_writer()

    def write_lost(self) -> bool:
        return self.closed

    # -- httptools callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.headers_done:
            # a second response to one request, or anything else past the end of this one
            self.junk = True
            raise _OverrunError
        # the head of an interim response before it is forgotten
        self.headers = []
        self.reason = b""

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.headers_done:
            self.headers.append((name, value))
        # else a trailer after a chunked body: dropped, it is no header of the response

    def on_headers_complete(self) -> None:
        if self.headers_done:
            return
        parser = self.parser
        assert parser is not None
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                self.error = _SWITCHED
            # else an interim response (100 Continue, 103 Early Hints): the final one follows
            return
        self.status = status
        self.keep_alive = parser.should_keep_alive()
        self.version = _HTTP_VERSIONS.get(parser.get_http_version(), b"HTTP/1.1")
        self.headers_done = True
        if self.head:
            self.complete = True
            # it would wait for the body the headers announce, which never comes
            self.parser = None
        waiter = self.waiter  # _wake, in line
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def on_body(self, body: bytes) -> None:
        if self.complete:
            # a body after a response to HEAD
            self.junk = True
            raise _OverrunError
        self.chunks.append(body)
        buffered = self.buffered + len(body)
        self.buffered = buffered
        pool = self.pool
        if buffered > pool.peak_buffered:  # noqa: PLR1730 (max() is a call: it costs more)
            pool.peak_buffered = buffered
        if buffered > self.limit and not self.reading_paused and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def on_message_complete(self) -> None:
        if self.headers_done and not self.complete:
            self.complete = True
            waiter = self.waiter  # _wake, in line
            if waiter is not None and not waiter.done():
                waiter.set_result(True)

    # -- the exchange's side ----------------------------------------------------------

    async def send(  # noqa: C901, PLR0912 (the exchange's start in line: a call costs as much)
        self,
        method: str,
        head: bytes,
        body: bytes | None,
        stream: AsyncIterable[bytes] | None,
        chunked: bool,
        timeouts: Mapping[str, float | None],
        request: httpx.Request | None,
    ) -> RawResponse:
        """Write the request and wait for the response's headers.

        ``StaleConnectionError`` when the connection closed before any byte of the
        response, saying whether any byte of the request may have reached the upstream.
        """
        # the exchange begins (in line: a call costs as much as the rest of it)
        if self.parser is None:
            self.parser = httptools.HttpResponseParser(self)
        self.active = True
        self.head = method == "HEAD"
        self.status = 0
        self.reason = b""
        self.headers = []
        self.headers_done = self.complete = self.keep_alive = False
        self.received = self.request_sent = self.junk = False
        self.head_fed = 0
        self.error = None
        transport = self.transport
        if self.closed or transport.is_closing():
            raise StaleConnectionError(sent=False)
        if body is None:
            transport.write(head)
        else:
            if chunked:
                body = _CHUNK % (len(body), body) + _LAST_CHUNK if body else _LAST_CHUNK
            if len(body) <= _COALESCE_LIMIT:
                transport.write(head + body)
            else:
                transport.write(head)
                if not transport.is_closing():
                    transport.write(body)
        if transport.is_closing():
            # the socket refused the first bytes: nothing left, a streamed body is unread
            raise StaleConnectionError(sent=False)
        if body is not None:
            if self.write_paused:
                await self._drain(timeouts.get("write"), request)
            self.request_sent = not self.closed
        else:
            await self._write_stream(stream, chunked, timeouts.get("write"), request)
        read_timeout = timeouts.get("read")
        while not self.headers_done:
            if self.error is not None:
                raise httpx.RemoteProtocolError(self.error, request=request)
            if self.closed:
                if not self.received:
                    raise StaleConnectionError(sent=True)
                raise httpx.RemoteProtocolError(_CLOSED_BEFORE_RESPONSE, request=request)
            try:
                answered = await self._arm(read_timeout)
            finally:
                self.waiter = None
            if not answered:
                raise httpx.ReadTimeout("the upstream did not answer in time", request=request)
        return self._response(request, read_timeout)

    async def next_body(self, request: httpx.Request | None, timeout: float | None) -> None:
        """Wait until a body chunk is buffered or the body has ended."""
        while not self.chunks and not self.complete:
            if self.error is not None:
                raise httpx.RemoteProtocolError(self.error, request=request)
            if self.closed:
                raise httpx.RemoteProtocolError(_CLOSED_MID_BODY, request=request)
            try:
                answered = await self._arm(timeout)
            finally:
                self.waiter = None
            if not answered:
                raise httpx.ReadTimeout("the upstream did not answer in time", request=request)

    def take(self) -> bytes:
        """The oldest buffered body chunk; reading resumes once the buffer has drained."""
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.reading_paused and self.buffered <= self.resume_at and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()
        return chunk

    def finish(self) -> None:
        """The response has ended: back to the pool if both sides allow it, else closed."""
        self.active = False
        self.chunks.clear()
        self.buffered = 0
        if self.keep_alive and self.request_sent and not self.junk and not self.closed:
            if self.reading_paused:
                self.reading_paused = False
                self.transport.resume_reading()
            self.pool.release(self)
        else:
            self.close()
            self.pool.discard(self)

    def abandon(self) -> None:
        """Give up on the exchange: closing the connection tells the upstream."""
        self.active = False
        self.chunks.clear()
        self.buffered = 0
        self.close()
        self.pool.discard(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abort()
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None

    def readable(self) -> bool:
        """Whether the upstream closed the idle connection or sent bytes on it that the
        event loop has not reported yet: either way it is not to be reused."""
        if self.poller is None:
            return False
        sock = self.transport.get_extra_info("socket")
        if sock is None or sock.fileno() < 0:
            return True
        return bool(self.poller.poll(0))

    async def _write_stream(
        self,
        stream: AsyncIterable[bytes] | None,
        chunked: bool,
        timeout: float | None,
        request: httpx.Request | None,
    ) -> None:
        if stream is None or not hasattr(stream, "__aiter__"):
            raise RuntimeError("a request body for an async transport must be async")
        transport = self.transport
        async for chunk in stream:
            if self.closed or transport.is_closing():
                return
            if chunk:
                transport.write(_CHUNK % (len(chunk), chunk) if chunked else chunk)
                if self.write_paused:
                    await self._drain(timeout, request)
        if self.closed or transport.is_closing():
            return
        if chunked:
            transport.write(_LAST_CHUNK)
        self.request_sent = True

    async def _drain(self, timeout: float | None, request: httpx.Request | None) -> None:
        if not await self.wait_writable(timeout):
            raise httpx.WriteTimeout(
                "the upstream did not take the request in time", request=request
            )

    def _arm(self, timeout: float | None) -> asyncio.Future[bool]:
        """The future a wait for the upstream awaits (True: something came; False: the
        read timed out), with the read timer armed for it. The caller awaits it and
        clears ``waiter`` after (a coroutine for the wait cost more than the wait)."""
        waiter = self.loop.create_future()
        self.waiter = waiter
        if timeout is None:
            self.read_deadline = None
        else:
            self.read_deadline = self.loop.time() + timeout
            if self.read_timer is None:
                self.read_timer = self.loop.call_later(timeout, self._read_too_slow)
        return waiter

    def _read_too_slow(self) -> None:
        """The read timer: armed by a wait and left armed after it (a timer made and
        cancelled for every wait cost 3% of a request's instructions); when it fires
        early for the wait in progress, it is armed again for what that wait has left."""
        self.read_timer = None
        waiter, deadline = self.waiter, self.read_deadline
        if waiter is None or waiter.done() or deadline is None or self.closed:
            return  # no wait with a limit now: the next one arms it again
        left = deadline - self.loop.time()
        if left > 0:
            self.read_timer = self.loop.call_later(left, self._read_too_slow)
        else:
            waiter.set_result(False)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def _peer_closed(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.active and self.headers_done and not self.complete and self.error is None:
            if self._close_delimited():
                self.complete = True
            else:
                self.error = _CLOSED_MID_BODY
        self._wake()
        if self.state == _IDLE:
            self.pool.discard(self)

    def _close_delimited(self) -> bool:
        """Whether the response's body ends where the connection does: no Content-Length,
        and chunked is not the final transfer coding (RFC 9112 section 6.3)."""
        final_coding = b""
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == _CONTENT_LENGTH:
                return False
            if lowered == _TRANSFER_ENCODING:
                final_coding = value.rsplit(_COMMA, 1)[-1].strip().lower()
        return final_coding != _CHUNKED

    def _response(self, request: httpx.Request | None, read_timeout: float | None) -> RawResponse:
        status, headers, reason, version = self.status, self.headers, self.reason, self.version
        if self.complete:
            body = b"".join(self.chunks)
            self.finish()
            # RawResponse(status, headers, _NO_BODY, reason, version, body), without the
            # call of its __init__
            response = _new_object(RawResponse)
            response.status, response.headers, response.stream = status, headers, _NO_BODY
            response.reason, response.version, response.body = reason, version, body
            return response
        stream = _ResponseStream(self, request, read_timeout)
        return RawResponse(status, headers, stream, reason, version)


class RawResponse:
    """A response as the upstream sent it: status, header lines (names as sent), and
    the body: ``body`` when it had all come with the head, else chunk by chunk from
    ``stream`` (``aclose`` before its end closes the connection)."""

    __slots__ = ("body", "headers", "reason", "status", "stream", "version")

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        stream: httpx.AsyncByteStream,
        reason: bytes = b"",
        version: bytes = b"HTTP/1.1",
        body: bytes | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.stream = stream
        self.reason = reason
        self.version = version
        self.body = body
        """The whole body, when it came with the head (then ``stream`` is empty)."""

    async def aclose(self) -> None:
        await self.stream.aclose()


class _ResponseStream(httpx.AsyncByteStream):
    """A response body, each chunk as it came off the connection."""

    def __init__(
        self, conn: _Connection, request: httpx.Request | None, read_timeout: float | None
    ) -> None:
        self._conn: _Connection | None = conn
        self._request = request
        self._read_timeout = read_timeout

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        if not conn.chunks and not conn.complete:
            try:
                await conn.next_body(self._request, self._read_timeout)
            except BaseException:
                self._conn = None
                conn.abandon()
                raise
        if not conn.chunks:
            self._conn = None
            conn.finish()
            raise StopAsyncIteration
        chunk = conn.take()
        if conn.complete and not conn.chunks:
            # the connection can serve the next request while this chunk is consumed
            self._conn = None
            conn.finish()
        return chunk

    async def aclose(self) -> None:
        """Before the end of the body this closes the connection, which is how the
        upstream learns that nobody wants the rest."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            if conn.complete:
                conn.finish()
            else:
                conn.abandon()


class _NoBody(httpx.AsyncByteStream):
    """The body of a HEAD, 204 or 304 response, or one that ended with its headers."""

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration


_NO_BODY = _NoBody()


def _may_send_again(method: str, body: bytes | None, sent: bool, reused: bool) -> bool:
    """Whether a request whose connection closed before any byte of its response can go
    once more without being executed twice: none of it left the proxy, or the upstream
    closed a reused connection and the request is idempotent with its body in memory."""
    if not sent:
        return True
    return reused and body is not None and method in _IDEMPOTENT


_TARGET = re.compile(rb"/[\x21-\x7e]*")
"""An origin-form request-target (RFC 9112 3.2.1) of visible ASCII: no space, control
character or byte past 0x7e can end the request line early or add a line."""


def _request_head(request: httpx.Request) -> tuple[bytes, bool]:
    """The request line and headers, and whether the body goes in chunked framing."""
    target = request.extensions.get("target")
    if target is None:
        target = request.url.raw_path
    try:
        return request_head(request.method, target, request.headers.raw)
    except httpx.LocalProtocolError as error:
        error.request = request
        raise


def request_head(
    method: str, target: object, headers: list[tuple[bytes, bytes]], chunked: bool | None = None
) -> tuple[bytes, bool]:
    """The request line and header lines, and whether the body goes in chunked framing
    (read from the headers unless ``chunked`` says): ``httpx.LocalProtocolError`` for a
    target that is not origin-form visible ASCII, or a header that would end its line
    early."""
    if not isinstance(target, bytes) or not _TARGET.fullmatch(target):
        raise httpx.LocalProtocolError(f"not a request-target: {target!r}")
    lines = _CRLF.join(map(_HEADER_SEPARATOR.join, headers))
    head = b"".join(
        (
            method.encode("ascii"),
            b" ",
            target,
            _REQUEST_VERSION,
            lines,
            _END_OF_HEAD if headers else _CRLF,
        )
    )
    # Each header line adds exactly one CR and one LF; more would be injected lines.
    line_ends = len(headers) + 2
    if len(head) - len(head.translate(None, _LINE_ENDS_AND_NUL)) != 2 * line_ends:
        raise httpx.LocalProtocolError("a request header contains a line break or NUL")
    if chunked is None:
        chunked = _TRANSFER_ENCODING in lines.lower() and any(
            name.lower() == _TRANSFER_ENCODING and _CHUNKED in value.lower()
            for name, value in headers
        )
    return head, chunked


class PooledTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 to upstreams over pooled keep-alive connections.

    ``max_connections_per_host`` caps the connections to one (scheme, host, port);
    requests over the cap wait in line, up to the ``pool`` timeout. At most
    ``max_idle_per_host`` connections are kept idle, each for at most ``idle_timeout``
    seconds. A response body is held in memory up to ``read_buffer_limit`` bytes
    before reading from the upstream pauses until the consumer catches up.

    The request's ``target`` extension, when given, is the request-target sent (as
    with httpcore): the URL then only says where to connect.
    """

    def __init__(
        self,
        *,
        max_connections_per_host: int | None = None,
        max_idle_per_host: int = 256,
        idle_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        read_buffer_limit: int = 256 * 1024,
        max_head_bytes: int = MAX_RESPONSE_HEAD_BYTES,
    ) -> None:
        if max_connections_per_host is not None and max_connections_per_host < 1:
            raise ValueError("max_connections_per_host must be at least 1")
        self._max_per_host = max_connections_per_host
        self._max_idle = max_idle_per_host
        self._idle_timeout = idle_timeout
        self._ssl_context = ssl_context
        self._read_buffer_limit = read_buffer_limit
        self._max_head_bytes = max_head_bytes
        self._pools: dict[tuple[bytes, bytes, int | None], _HostPool] = {}
        self._peak_before_close = 0

    @property
    def peak_buffered_bytes(self) -> int:
        """The most response body bytes one connection has held unread so far."""
        pools = self._pools.values()
        return max([self._peak_before_close, *(pool.peak_buffered for pool in pools)])

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        head, chunked = _request_head(request)
        stream = request.stream
        body: bytes | AsyncIterable[bytes]
        if isinstance(stream, httpx.ByteStream):
            body = b"".join(stream)
        elif isinstance(stream, httpx.AsyncByteStream):
            body = stream
        else:
            raise RuntimeError("a request body for an async transport must be async")
        timeouts = request.extensions.get("timeout") or _NO_TIMEOUTS
        origin = (url.raw_scheme, url.raw_host, url.port)
        raw = await self.exchange(origin, request.method, head, body, chunked, timeouts, request)
        return httpx.Response(
            raw.status,
            headers=raw.headers,
            stream=raw.stream if raw.body is None else httpx.ByteStream(raw.body),
            extensions={"http_version": raw.version, "reason_phrase": raw.reason},
        )

    async def exchange(
        self,
        origin: tuple[bytes, bytes, int | None],
        method: str,
        head: bytes,
        body: bytes | AsyncIterable[bytes],
        chunked: bool,
        timeouts: Mapping[str, float | None],
        request: httpx.Request | None = None,
    ) -> RawResponse:
        """One request to ``origin`` (scheme, host, port), its head already made by
        ``request_head``: the response once its head is in. ``handle_async_request``
        without httpx's request and response objects (about 14 µs a request between
        them); errors are httpx's (``request`` is put in them when given)."""
        pool = self._pools.get(origin) or self._new_pool(origin, request)
        whole, stream = (body, None) if isinstance(body, bytes) else (None, body)
        conn = pool.take_idle()
        if conn is not None:
            reused = True
        else:
            conn, reused = await self._acquire(pool, request, timeouts)
        try:
            return await conn.send(method, head, whole, stream, chunked, timeouts, request)
        except StaleConnectionError as stale:
            if not _may_send_again(method, whole, stale.sent, reused):
                conn.abandon()
                raise httpx.RemoteProtocolError(_CLOSED_BEFORE_RESPONSE, request=request) from None
        except BaseException:
            conn.abandon()
            raise
        # Most often the upstream closed an idle connection just as it was taken (its
        # keep-alive timeout ran out). The request goes once more on a new connection in
        # the same slot.
        conn.close()
        pool.forget(conn)
        conn = await self._open(pool, request, timeouts.get("connect"))
        try:
            return await conn.send(method, head, whole, stream, chunked, timeouts, request)
        except StaleConnectionError:
            conn.abandon()
            raise httpx.RemoteProtocolError(_CLOSED_BEFORE_RESPONSE, request=request) from None
        except BaseException:
            conn.abandon()
            raise

    async def aclose(self) -> None:
        """Close every connection, idle or in use."""
        self._peak_before_close = self.peak_buffered_bytes
        pools = list(self._pools.values())
        self._pools.clear()
        for pool in pools:
            for conn in list(pool.conns):
                conn.close()
            pool.idle.clear()
        # lets the event loop run the transports' connection_lost callbacks
        await asyncio.sleep(0)

    def _new_pool(
        self, key: tuple[bytes, bytes, int | None], request: httpx.Request | None
    ) -> _HostPool:
        scheme, host, port = key
        default_port = _DEFAULT_PORTS.get(scheme)
        if default_port is None:
            raise httpx.UnsupportedProtocol(
                f"the URL scheme {scheme.decode('ascii')!r} is not http or https",
                request=request,
            )
        context = None
        if scheme == b"https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            context = self._ssl_context
        pool = _HostPool(
            host.decode("ascii"),
            port or default_port,
            context,
            max_idle=self._max_idle,
            idle_timeout=self._idle_timeout,
        )
        self._pools[key] = pool
        return pool

    async def _acquire(
        self,
        pool: _HostPool,
        request: httpx.Request | None,
        timeouts: Mapping[str, float | None],
    ) -> tuple[_Connection, bool]:
        """A connection for the request, and whether it served requests before."""
        limit = self._max_per_host
        while True:
            conn = pool.take_idle()
            if conn is not None:
                return conn, True
            if limit is None or pool.open < limit:
                pool.open += 1
                break
            conn = await self._wait_for_slot(pool, request, timeouts.get("pool"))
            if conn is None:
                break
            if not conn.closed and not conn.readable():
                return conn, True
            conn.close()
            pool.discard(conn)
        return await self._open(pool, request, timeouts.get("connect")), False

    async def _wait_for_slot(
        self, pool: _HostPool, request: httpx.Request | None, timeout: float | None
    ) -> _Connection | None:
        """Wait in line for a connection to reuse, or None: a free slot to open one in."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[_Connection | None] = loop.create_future()
        pool.waiters.append(waiter)
        timer = (
            None
            if timeout is None
            else loop.call_later(timeout, _expire_pool_wait, waiter, request)
        )
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                pool.give_back(waiter)
            if waiter in pool.waiters:
                pool.waiters.remove(waiter)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    async def _open(
        self, pool: _HostPool, request: httpx.Request | None, timeout: float | None
    ) -> _Connection:
        """A new connection in a slot already counted in ``pool.open``."""
        loop = asyncio.get_running_loop()
        conn = _Connection(pool, self._read_buffer_limit, loop, self._max_head_bytes)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: conn,
                    pool.host,
                    pool.port,
                    ssl=pool.ssl,
                    server_hostname=pool.server_hostname,
                )
        except BaseException as error:
            pool.free_slot()
            if isinstance(error, TimeoutError):
                raise httpx.ConnectTimeout(
                    f"connecting to {pool.host}:{pool.port} timed out", request=request
                ) from error
            if isinstance(error, OSError):
                raise httpx.ConnectError(
                    f"cannot connect to {pool.host}:{pool.port}: {error}", request=request
                ) from error
            raise
        pool.conns.add(conn)
        return conn
