"""The proxy's client connections: HTTP/1.1 on httptools, held to limits, serving one
ASGI application.

uvicorn's own httptools protocol is general: it serves any ASGI application, and pays
for that on every request (a fresh event per request, header checks by regular
expression, a write for the response head and another for each body part). This
protocol serves the proxy alone (``ProxyApp``, or any ASGI app that answers with
``http.response.start`` then ``http.response.body`` messages), under uvicorn's
``Server`` (sockets, workers, signals, lifespan and graceful shutdown stay uvicorn's):

- **size**: a request head (request line and header lines) is fed to the parser no
  further than ``max_head_bytes``; past it the client gets 431 and the connection is
  closed. Trailers are held to the same size (past it the connection is closed).
- **time**: a head must be whole within ``header_timeout`` seconds of its first byte
  (else 408 and close); a request body may not stall (no byte) for ``body_timeout``
  seconds (else 408, or a plain close once the response has begun); a connection on
  which nothing arrives for ``idle_timeout`` seconds, new or between two requests, is
  closed.
- **trailers** are read and dropped: they never join the request's headers.
- **framing** (RFC 9112): the response head goes out with the first part of its body, in
  one write; a response without a length goes chunked to an HTTP/1.1 client and ends the
  connection for an HTTP/1.0 one; a response to HEAD, and a 204 or 304, carries no body.
  Pipelined requests are answered in order, one at a time. A request asking for an
  upgrade is answered as any other, and its connection closed after the response (the
  proxy upgrades nothing). A head the parser refuses gets 400 and the connection closed.
- **flow**: reading pauses while a request body waits unread beyond 64 KiB, and a
  response body waits while the client's write buffer is full.

It also tells the application when a client goes while its request is answered: each
request's scope carries a ``ClientGone`` under the ``coalmine.client_gone`` extension,
fired by ``connection_lost``, which spares the application a task per request that
waits on ``receive()`` for ``http.disconnect``; and, under ``coalmine.send_whole``
(``proxy/send_whole.py``), a call that writes a whole response at once, which spares it
the two ``send`` messages of a body that came whole.

An application with a ``serve_direct`` (``proxy/direct.py``; the proxy's own) is called
with each request as parsed instead of by ASGI: no scope, no callables made per request.

Not supported, since the proxy is not configured with them: uvicorn's
``limit_concurrency``, ``root_path``, access log and WebSocket upgrades.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, cast
from urllib.parse import unquote

import httptools
from uvicorn.config import Config
from uvicorn.server import ServerState

from proxy.client_gone import CLIENT_GONE, ClientGone
from proxy.direct import SERVE_DIRECT, ServeDirect, WholeTo
from proxy.flow import WriteFlow
from proxy.send_whole import SEND_WHOLE

log = logging.getLogger("coalmine.proxy")

BODY_BUFFER_BYTES = 65536
"""Request body bytes held unread before reading from the client pauses."""


class TimeoutPhase:
    """The ``phase`` label of the client-timeouts metric."""

    HEAD = "head"
    """A request head not whole in time: 408."""
    IDLE = "idle"
    """A new connection on which no request began in time."""
    BODY = "body"
    """A request body that stalled: 408 (or closed once the response had begun)."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What a client connection may take, and where to report what it overstepped."""

    max_head_bytes: int = 65536
    header_timeout: float = 10.0
    idle_timeout: float = 5.0
    body_timeout: float = 60.0
    on_refused: Callable[[str], None] = lambda _reason: None
    """Called with the refused-requests reason (``headers_too_large``, ``header_timeout``,
    ``body_timeout``)."""
    on_timeout: Callable[[str], None] = lambda _phase: None
    """Called with a ``TimeoutPhase`` when a connection is cut for time."""


def protocol_with(limits: ConnectionLimits) -> type[ProxyHttpProtocol]:
    """The protocol class to give uvicorn (``Config(http=...)``), bound to ``limits``."""

    class Bounded(ProxyHttpProtocol):
        pass

    Bounded.limits = limits
    return Bounded


def _status_line(status: int) -> bytes:
    from http import HTTPStatus  # noqa: PLC0415 (only while the table is built)

    try:
        phrase = HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


_STATUS_LINES = {status: _status_line(status) for status in range(100, 600)}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_NO_BODY_STATUS = frozenset({204, 304})
_DISCONNECT: dict[str, Any] = {"type": "http.disconnect"}
_CONNECTION_CLOSE = b"connection: close\r\n"
_CHUNKED_HEADER = b"transfer-encoding: chunked\r\n"
_ASGI = {"version": "3.0", "spec_version": "2.3"}
"""The scope's ``asgi``, one for all requests (never changed)."""
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})
_LINE_ENDS_AND_NUL = b"\r\n\x00"
_new_object = object.__new__


class _Cycle:
    """One request on the connection and its response, as far as each has gone."""

    __slots__ = (
        "body",
        "chunked",
        "client_host",
        "connection",
        "continue_expected",
        "delivered",
        "disconnected",
        "gone",
        "head_only",
        "headers",
        "http_version",
        "keep_alive",
        "left",
        "method",
        "more_body",
        "path",
        "pending",
        "response_complete",
        "response_started",
        "scheme",
        "scope",
        "target",
        "waiter",
        "whole",
    )

    def __init__(
        self,
        connection: ProxyHttpProtocol,
        method: str,
        path: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        http_version: str,
        keep_alive: bool,
        continue_expected: bool,
    ) -> None:
        # the head as a DirectRequest (proxy/direct.py) reads it
        self.connection = connection
        self.method = method
        self.path = path
        self.target = target
        self.headers = headers
        self.http_version = http_version
        self.scheme = connection.scheme
        self.client_host = connection.client_host
        self.whole: WholeTo = connection.whole
        self.scope: dict[str, Any] | None = None
        """The ASGI scope, made only for an application served by ASGI."""
        self.keep_alive = keep_alive
        self.continue_expected = continue_expected
        self.head_only = method == "HEAD"
        self.body = bytearray()
        self.more_body = True
        self.delivered = False
        """The request's last body message went to the application."""
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.chunked = False
        self.left: int | None = None
        """Body bytes the response's Content-Length still expects; None: no length."""
        self.pending = b""
        """The response head, held until the first body part goes with it."""
        self.waiter: asyncio.Future[None] | None = None
        # ClientGone(), without the call of its __init__
        self.gone = gone = _new_object(ClientGone)
        gone.then, gone.fired = None, False

    def receive(self) -> Awaitable[dict[str, Any]]:
        return self.connection._receive(self)

    def send(self, message: Mapping[str, Any]) -> Awaitable[None]:
        return self.connection._send(self, message)


class ProxyHttpProtocol(WriteFlow, asyncio.Protocol):
    """An HTTP/1.1 server connection for one ASGI application, with bounded heads,
    trailers and waits."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()

    def __init__(  # noqa: PLR0915 (a connection's whole state, declared in one place)
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.server_state = server_state
        self.app_state = app_state
        self.parser = httptools.HttpRequestParser(self)
        # answer a request that came before the client's close (RFC 9112 9.6)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.server: tuple[str, int] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self.cycle: _Cycle | None = None
        """The request being answered (or whose body is being read)."""
        self.task: asyncio.Task[None] | None = None
        """Answers the connection's requests in turn."""
        self.next_request: asyncio.Future[None] | None = None
        """What the task waits on between two requests."""
        self.reading: _Cycle | None = None
        """The request whose head or body the parser is in."""
        self.pipeline: deque[_Cycle] = deque()
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.continue_expected = False
        self.upgrade = False
        self.read_paused = False
        WriteFlow.__init__(self)
        self.idle_timer: asyncio.TimerHandle | None = None
        """Armed once and re-armed only when it fires early, as the head timer is."""
        self.idle_from: float | None = None
        """Since when nothing has been asked of the connection (loop time); None while a
        request is read or answered."""
        self.closing = False
        self._bounded = True
        """Reading a head, or a chunked body's trailers: what the parser keeps whole."""
        self._in_head = True
        self._bounded_bytes = 0
        """Bytes fed to the parser since the bounded part began."""
        self._entered = False
        """The bounded part began during the current feed (its bytes there are uncounted)."""
        self._head_done = False
        self._head_started: float | None = None
        """When the first byte of the head being read arrived (loop time)."""
        self._head_timer: asyncio.TimerHandle | None = None
        """Armed once and re-armed only while a head is being read: one timer a
        connection, not one a request."""
        self._requests = 0
        self.refusal = b""
        """A refusal held until the responses on their way have gone out."""
        self._body_timer: asyncio.TimerHandle | None = None
        """Armed while a request body is read, re-armed only when it fires early."""
        self._body_from = 0.0
        """When the last byte of the request body being read arrived (loop time)."""
        self._send_whole = {"send": self.send_whole}
        self.direct: ServeDirect | None = getattr(self.app, SERVE_DIRECT, None)
        """The application's own call for a request as parsed (``proxy/direct.py``);
        None: it is served by ASGI."""
        self.client_host: str | None = None
        self.whole: WholeTo = self._whole
        """Bound once: each request's ``DirectRequest.whole``."""
        """The ``coalmine.send_whole`` extension, one for the connection's requests."""

    # -- connection ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server_state.connections.add(self)  # type: ignore[arg-type]
        self.server = _address(transport.get_extra_info("sockname"))
        self.client = _address(transport.get_extra_info("peername"))
        self.client_host = self.client[0] if self.client is not None else None
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        self.closing = True
        self._stop_head_timer()
        self._stop_idle_timer()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        for cycle in (self.cycle, *self.pipeline):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                _wake(cycle)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.gone.fire()
        self.release_writer()
        _release(self.next_request)

    def eof_received(self) -> bool | None:
        return None

    def write_lost(self) -> bool:
        return self.closing

    def shutdown(self) -> None:
        """The server stops: close now when idle, else after the response on its way."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.close()
        else:
            cycle.keep_alive = False
            self.pipeline.clear()

    def data_received(  # noqa: C901, PLR0912 (the common feed in line: a call costs as much)
        self, data: bytes
    ) -> None:
        self.idle_from = None
        if self._in_head and self._head_started is None:
            self._head_started = self.loop.time()
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(
                    self.limits.header_timeout, self._head_too_slow
                )
        limit = self.limits.max_head_bytes
        bounded = self._bounded
        if not bounded or len(data) <= limit - self._bounded_bytes:
            # the whole of ``data`` is fed at once (the loop below in one pass, in line)
            self._entered = False
            transport = self.transport
            if self.closing or self.upgrade or self.refusal or transport.is_closing():
                return
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                self._upgraded()
                return
            except (httptools.HttpParserError, httptools.HttpParserInvalidURLError) as error:
                self._refuse(400, "bad_request", f"invalid HTTP request: {error}")
                return
            if transport.is_closing() or self.refusal:
                return
            if bounded and self._bounded and not self._entered:
                self._bounded_bytes += len(data)
            if self.reading is not None:
                self._watch_body()
            return
        while data:
            piece = data
            if self._bounded:
                room = limit - self._bounded_bytes
                if room <= 0:
                    self._too_large()
                    return
                if len(data) > room:
                    piece = data[:room]
            data = data[len(piece) :]
            counted = self._bounded
            self._entered = False
            if not self._feed(piece):
                return
            if counted and self._bounded and not self._entered:
                self._bounded_bytes += len(piece)
        if self.reading is not None:
            self._watch_body()

    def _feed(self, data: bytes) -> bool:
        """Parse ``data``; False when the connection is done reading."""
        if self.closing or self.upgrade or self.refusal or self.transport.is_closing():
            return False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgraded()
            return False
        except (httptools.HttpParserError, httptools.HttpParserInvalidURLError) as error:
            self._refuse(400, "bad_request", f"invalid HTTP request: {error}")
            return False
        return not self.transport.is_closing() and not self.refusal

    def _upgraded(self) -> None:
        # the rest of the stream would be another protocol's: read no further
        self.upgrade = True
        self._stop_head_timer()

    # -- parser callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._head_done = False
        self.url = b""
        self.headers = []
        self.continue_expected = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            return  # a trailer: read, never forwarded
        name = name.lower()
        # llhttp keeps trailing whitespace, which is no part of the value (RFC 9110 5.5)
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.continue_expected = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_done = True
        self._bounded = self._in_head = False
        self._requests += 1
        self._head_started = None
        parser = self.parser
        version = parser.get_http_version()
        parsed = httptools.parse_url(self.url)
        raw_path: bytes = parsed.path
        query: bytes = parsed.query or b""
        path = target = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path, encoding="latin-1") if not path.isascii() else unquote(path)
        if query:
            target += "?" + query.decode("latin-1")
        method = parser.get_method().decode("ascii")
        # the proxy upgrades nothing: an upgrade asked for ends the connection, and says so
        keep_alive = version != "1.0" and parser.should_keep_alive() and not parser.should_upgrade()
        # an HTTP/1.0 client's expectation is ignored (RFC 9110 10.1.1)
        cycle = _Cycle(
            self,
            method,
            path,
            target,
            self.headers,
            version,
            keep_alive,
            self.continue_expected and version != "1.0",
        )
        if self.direct is None:
            cycle.scope = {
                "type": "http",
                "asgi": _ASGI,
                "http_version": version,
                "server": self.server,
                "client": self.client,
                "scheme": self.scheme,
                "root_path": "",
                "method": method,
                "path": path,
                "raw_path": raw_path,
                "query_string": query,
                "headers": self.headers,
                "state": self.app_state.copy(),
                "extensions": {CLIENT_GONE: {"gone": cycle.gone}, SEND_WHOLE: self._send_whole},
            }
        self.reading = cycle
        current = self.cycle
        if current is None or current.response_complete:
            if self.task is not None:  # _start's common case, in line
                self.cycle = cycle
                _release(self.next_request)
            else:
                self._start(cycle)
        else:
            self.pipeline.append(cycle)
            self._pause_reading()

    def on_chunk_header(self) -> None:
        # the last chunk's header is followed by the trailers, kept whole by the parser
        self._enter_bounded(head=False)

    def on_body(self, body: bytes) -> None:
        self._bounded = False
        cycle = self.reading
        if cycle is None or cycle.response_complete:
            return
        cycle.body += body
        if len(cycle.body) > BODY_BUFFER_BYTES:
            self._pause_reading()
        _wake(cycle)

    def on_chunk_complete(self) -> None:
        self._bounded = False

    def on_message_complete(self) -> None:
        cycle = self.reading
        if cycle is not None:
            cycle.more_body = False
            if cycle.waiter is not None:
                _wake(cycle)
            self.reading = None
        # _enter_bounded(head=True), in line
        self._bounded = self._entered = self._in_head = True
        self._bounded_bytes = 0

    # -- requests and responses --------------------------------------------------------

    def _start(self, cycle: _Cycle) -> None:
        """Answer ``cycle`` next: in the connection's task, made for its first request and
        kept for the next ones (a task per request cost 2% of a request's
        instructions)."""
        self.cycle = cycle
        if self.task is None:
            task = self.task = self.loop.create_task(self._serve())
            tasks = self.server_state.tasks
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        else:
            _release(self.next_request)

    async def _serve(self) -> None:
        """The connection's requests, one after another, until it is lost."""
        cycle = self.cycle
        app, direct = self.app, self.direct
        while cycle is not None and not self.closing:
            # in line, not a coroutine of its own per request
            try:
                if direct is not None:
                    await direct(cycle)
                else:
                    # partials, not closures: the application's await reaches them directly
                    scope = cast(dict[str, Any], cycle.scope)
                    await app(scope, partial(self._receive, cycle), partial(self._send, cycle))
            except BaseException as error:
                if not isinstance(error, asyncio.CancelledError):
                    log.error("the proxy failed on a request", exc_info=error)
                self._unanswered(cycle)
                if not isinstance(error, Exception):
                    raise
            else:
                if not cycle.response_complete:
                    self._unanswered(cycle)
            while self.cycle is cycle and not self.closing:
                waiter = asyncio.get_running_loop().create_future()
                self.next_request = waiter
                try:
                    await waiter
                finally:
                    self.next_request = None
            cycle = self.cycle

    def _unanswered(self, cycle: _Cycle) -> None:
        """The application is done with a request: a response it did not begin is a
        500; one it began and did not end is cut, and so is the connection."""
        if cycle.response_complete or cycle.disconnected:
            return
        if cycle.response_started:
            self.transport.close()
        else:
            self._answer_500(cycle)

    async def _receive(self, cycle: _Cycle) -> dict[str, Any]:
        if cycle.continue_expected:
            cycle.continue_expected = False
            if not cycle.response_started and not self.transport.is_closing():
                self.transport.write(_CONTINUE)
        # once the whole body is delivered, receive() waits for http.disconnect (ASGI)
        while (
            not cycle.disconnected
            and not cycle.response_complete
            and (cycle.delivered or (not cycle.body and cycle.more_body))
        ):
            self._resume_reading()
            waiter = asyncio.get_running_loop().create_future()
            cycle.waiter = waiter
            try:
                await waiter
            finally:
                cycle.waiter = None
        if cycle.disconnected or cycle.response_complete:
            return _DISCONNECT
        body = bytes(cycle.body)
        cycle.body.clear()
        if self.read_paused and cycle is self.reading:
            self._resume_reading()
        cycle.delivered = not cycle.more_body
        return {"type": "http.request", "body": body, "more_body": cycle.more_body}

    async def _send(self, cycle: _Cycle, message: Mapping[str, Any]) -> None:
        if self.write_paused and not cycle.disconnected:
            await self.wait_writable()
        if cycle.disconnected:
            return
        kind = message["type"]
        if not cycle.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {kind!r}")
            cycle.response_started = True
            cycle.continue_expected = False
            cycle.pending = self._response_head(cycle, message["status"], message["headers"])
            return
        if cycle.response_complete or kind != "http.response.body":
            raise RuntimeError(f"unexpected {kind!r} after the response")
        more = message.get("more_body", False)
        body = self._framed(cycle, message.get("body", b""), more)
        if cycle.pending:
            body = cycle.pending + body
            cycle.pending = b""
        if body:
            self.transport.write(body)
        if not more:
            if cycle.left and not cycle.head_only:
                raise RuntimeError("response body shorter than its Content-Length")
            self._complete(cycle)

    def send_whole(
        self, scope: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> bool:
        """The whole response of the request of ``scope``, head and body in one write
        (``proxy.send_whole``): what ``_send`` does for its two messages, but for the
        wait on a paused write, when False sends the application back to them."""
        cycle = self.cycle
        if cycle is None or scope is None or cycle.scope is not scope:
            return False
        return self._whole(cycle, status, headers, body)

    def _whole(
        self, cycle: _Cycle, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> bool:
        """``send_whole`` for the request of ``cycle`` (a ``DirectRequest``'s ``whole``)."""
        if cycle is not self.cycle or cycle.response_started:
            return False
        if cycle.disconnected:
            return True
        if self.write_paused:
            return False
        cycle.response_started = True
        cycle.continue_expected = False
        head = self._response_head(cycle, status, headers)
        left = cycle.left
        if cycle.head_only or cycle.chunked or left is None:
            body = head + self._framed(cycle, body, False)
        else:  # _framed's case of a length, in line
            left -= len(body)
            if left < 0:
                raise RuntimeError("response body longer than its Content-Length")
            cycle.left = left
            body = head + body
        self.transport.write(body)
        if cycle.left and not cycle.head_only:
            raise RuntimeError("response body shorter than its Content-Length")
        self._complete(cycle)
        return True

    @staticmethod
    def _framed(cycle: _Cycle, body: bytes, more: bool) -> bytes:
        """A part of the response body as it goes on the wire."""
        if cycle.head_only:
            body = b""
        elif cycle.chunked:
            if body:
                body = b"%x\r\n%b\r\n" % (len(body), body)
            if not more:
                body += _LAST_CHUNK
        elif cycle.left is not None:
            cycle.left -= len(body)
            if cycle.left < 0:
                raise RuntimeError("response body longer than its Content-Length")
        return body

    def _response_head(  # noqa: C901, PLR0912 (the framing in line: a call costs as much)
        self, cycle: _Cycle, status: int, headers: Any
    ) -> bytes:
        pieces = [_STATUS_LINES[status]]
        ends = 2  # the status line's and the head's
        length: int | None = None
        chunked = close = False
        defaults = self.server_state.default_headers
        for name, value in (*defaults, *headers) if defaults else headers:
            lowered = name.lower()
            if lowered in _FRAMING:
                if lowered == b"content-length":
                    length = int(value)
                elif lowered == b"transfer-encoding":
                    chunked = value.lower() == b"chunked"
                    if cycle.http_version != "1.1":
                        continue  # never sent to an HTTP/1.0 client (RFC 9112 6.1)
                else:
                    close = b"close" in value.lower()
            pieces += (lowered, b": ", value, b"\r\n")
            ends += 1
        if close:
            cycle.keep_alive = False
        # how the body goes on the wire (RFC 9112 6.3), in line
        http11 = cycle.http_version == "1.1"
        if cycle.head_only or status in _NO_BODY_STATUS or status < 200:
            cycle.left = 0  # whatever its fields say
        elif chunked and http11:
            cycle.chunked = True
        elif length is not None:
            cycle.left = length
        elif http11:
            cycle.chunked = True  # a body without a length: the proxy chunks it
            pieces.append(_CHUNKED_HEADER)
            ends += 1
        else:
            cycle.keep_alive = False  # the body ends where the connection does
        if not cycle.keep_alive and not close:
            pieces.append(_CONNECTION_CLOSE)
            ends += 1
        pieces.append(b"\r\n")
        head = b"".join(pieces)
        # one CR and one LF a line, no NUL: more would be lines injected by a header's
        # value (counted in one pass: the bytes that deleting them takes away)
        if len(head) - len(head.translate(None, _LINE_ENDS_AND_NUL)) != 2 * ends:
            raise RuntimeError("a response header contains a line break or NUL")
        return head

    def _complete(self, cycle: _Cycle) -> None:
        cycle.response_complete = True
        if cycle.waiter is not None:
            _wake(cycle)
        self.server_state.total_requests += 1
        if not cycle.keep_alive or self.upgrade:
            self.transport.close()
            return
        if self.transport.is_closing():
            return
        if self.pipeline:
            self._start(self.pipeline.popleft())
            if not self.pipeline:
                self._resume_reading()
        elif self.refusal:
            self.transport.write(self.refusal)
            self.transport.close()
        else:
            if self.read_paused:
                self._resume_reading()
            # _idle, in line
            self.idle_from = self.loop.time()
            if self.idle_timer is None:
                self.idle_timer = self.loop.call_later(
                    self.limits.idle_timeout, self._idle_too_long
                )

    def _answer_500(self, cycle: _Cycle) -> None:
        body = json.dumps(
            {"error": {"code": "internal_error", "message": "the proxy failed"}}
        ).encode()
        self.transport.write(
            b"".join(
                (
                    _STATUS_LINES[500],
                    b"content-type: application/json\r\n",
                    b"content-length: %d\r\n" % len(body),
                    _CONNECTION_CLOSE,
                    b"\r\n",
                    body,
                )
            )
        )
        cycle.response_started = cycle.response_complete = True
        self.transport.close()

    def _pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and not self.pipeline and not self.refusal:
            self.read_paused = False
            self.transport.resume_reading()

    # -- limits ------------------------------------------------------------------------

    def _enter_bounded(self, *, head: bool) -> None:
        self._bounded = self._entered = True
        self._in_head = head
        self._bounded_bytes = 0

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _stop_idle_timer(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    def _answering(self) -> bool:
        """A response is being sent on this connection now (a pipelined request's)."""
        return self.cycle is not None and not self.cycle.response_complete

    def _too_large(self) -> None:
        if not self._in_head:
            self.transport.close()  # trailers over the limit: the request is cut
            return
        self.limits.on_refused("headers_too_large")
        limit = self.limits.max_head_bytes
        self._refuse(431, "headers_too_large", f"the request head is over {limit} bytes")

    def _head_too_slow(self) -> None:
        self._head_timer = None
        started = self._head_started
        if started is None or self.transport.is_closing():
            return
        now = self.loop.time()
        if self._answering():
            # a pipelined head (or a stray line after a body) while a response is still
            # on its way: its time counts from the end of that response
            started = self._head_started = now
        left = started + self.limits.header_timeout - now
        if left > 0:  # armed for an earlier head; this one has time left
            self._head_timer = self.loop.call_later(left, self._head_too_slow)
            return
        self.limits.on_timeout(TimeoutPhase.HEAD)
        self.limits.on_refused("header_timeout")
        seconds = f"{self.limits.header_timeout:g}"
        self._refuse(408, "header_timeout", f"the request head took over {seconds} s")

    def _watch_body(self) -> None:
        """A request body is being read: its time counts from now."""
        self._body_from = self.loop.time()
        if self._body_timer is None:
            self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_too_slow)

    def _body_too_slow(self) -> None:
        self._body_timer = None
        cycle = self.reading
        if cycle is None or self.transport.is_closing():
            return  # no body being read: armed again for the next one
        left = self._body_from + self.limits.body_timeout - self.loop.time()
        if left > 0:
            self._body_timer = self.loop.call_later(left, self._body_too_slow)
            return
        self.limits.on_timeout(TimeoutPhase.BODY)
        self.limits.on_refused("body_timeout")
        answered = cycle.response_started
        cycle.response_started = cycle.disconnected = True
        _wake(cycle)  # the application reads a disconnect
        if answered or cycle is not self.cycle:
            self.transport.close()
            return
        seconds = f"{self.limits.body_timeout:g}"
        message = f"the request body stalled for over {seconds} s"
        self._refuse(408, "body_timeout", message, own=True)

    def _idle(self) -> None:
        self.idle_from = self.loop.time()
        if self.idle_timer is None:
            self.idle_timer = self.loop.call_later(self.limits.idle_timeout, self._idle_too_long)

    def _idle_too_long(self) -> None:
        self.idle_timer = None
        idle_from = self.idle_from
        if idle_from is None or self.transport.is_closing():
            return  # busy: armed again once idle
        left = idle_from + self.limits.idle_timeout - self.loop.time()
        if left > 0:  # armed for an earlier wait; this one has time left
            self.idle_timer = self.loop.call_later(left, self._idle_too_long)
            return
        if self._requests == 0:
            self.limits.on_timeout(TimeoutPhase.IDLE)
        self.transport.close()

    def _refuse(self, status: int, code: str, message: str, *, own: bool = False) -> None:
        """Answer with the proxy's JSON error and close: at once when no response is on
        its way, else once those on their way have gone out (the two would mix).
        ``own``: the response on its way is this request's, not begun: answer all the
        same."""
        self._stop_head_timer()
        cycle, reading = self.cycle, self.reading
        if not own and cycle is not None and cycle is reading:
            if cycle.response_started:
                self.transport.close()  # the request answered is cut: so is its response
                return
            # its answer has not begun: the refusal is its answer, and its application
            # reads a disconnect
            cycle.disconnected = True
            _wake(cycle)
            own = True
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        head = [_STATUS_LINES[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            _CONNECTION_CLOSE,
            b"\r\n",
        ]
        refusal = b"".join(head) + body
        if not own and self._answering():
            # another request's response is on its way: the refusal follows the last one
            if reading is not None and reading in self.pipeline:
                self.pipeline.remove(reading)  # cut in its body: never answered
            self.refusal = refusal
            self._pause_reading()
            return
        self.transport.write(refusal)
        self.transport.close()


def _wake(cycle: _Cycle) -> None:
    waiter = cycle.waiter
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _release(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return None
