"""Client connections held to limits while their requests are read.

uvicorn's httptools protocol buffers a request head without bound until it is whole (the
parser keeps each header line in memory however long it grows), waits for a head as
long as a client cares to trickle it, keeps a new connection open for good when nothing
is sent on it, and adds a chunked body's trailers to the request's headers.
``BoundedHttpToolsProtocol`` is that protocol with limits, keeping httptools' parser:

- **size**: a request head (request line and header lines) is fed to the parser no
  further than ``max_head_bytes``; past it the client gets 431 and the connection is
  closed. Trailers are held to the same size (past it the connection is closed).
- **time**: a head must be whole within ``header_timeout`` seconds of its first byte
  (else 408 and close); a connection on which nothing arrives for ``idle_timeout``
  seconds, new or between two requests, is closed.
- **trailers** are read and dropped: they never join the request's headers.

It also tells the application when a client goes while its request is answered: each
request's scope carries a ``ClientGone`` under the ``coalmine.client_gone`` extension,
fired by ``connection_lost``, which spares the application a task per request that
waits on ``receive()`` for ``http.disconnect``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from proxy.client_gone import CLIENT_GONE, ClientGone


class TimeoutPhase:
    """The ``phase`` label of the client-timeouts metric."""

    HEAD = "head"
    """A request head not whole in time: 408."""
    IDLE = "idle"
    """A new connection on which no request began in time."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What a client connection may take, and where to report what it overstepped."""

    max_head_bytes: int = 65536
    header_timeout: float = 10.0
    idle_timeout: float = 5.0
    on_refused: Callable[[str], None] = lambda _reason: None
    """Called with the refused-requests reason (``headers_too_large``, ``header_timeout``)."""
    on_timeout: Callable[[str], None] = lambda _phase: None
    """Called with a ``TimeoutPhase`` when a connection is cut for time."""


def protocol_with(limits: ConnectionLimits) -> type[BoundedHttpToolsProtocol]:
    """The protocol class to give uvicorn (``Config(http=...)``), bound to ``limits``."""

    class Bounded(BoundedHttpToolsProtocol):
        pass

    Bounded.limits = limits
    return Bounded


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded heads, trailers and waits."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.timeout_keep_alive = self.limits.idle_timeout  # type: ignore[assignment]
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
        self._client_gone: ClientGone | None = None

    # connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.limits.idle_timeout, self._idle_too_long
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        cycle = self.cycle
        answering = cycle is not None and not cycle.response_complete
        super().connection_lost(exc)
        if answering and self._client_gone is not None:
            self._client_gone.fire()

    def data_received(self, data: bytes) -> None:
        if self._in_head and self._head_started is None:
            self._head_started = self.loop.time()
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(
                    self.limits.header_timeout, self._head_too_slow
                )
        limit = self.limits.max_head_bytes
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
            super().data_received(piece)
            if self.parser is None or self.transport.is_closing():
                return
            if self.transport.get_protocol() is not self:
                return  # upgraded: the new protocol reads the rest
            if counted and self._bounded and not self._entered:
                self._bounded_bytes += len(piece)

    # parser callbacks

    def on_message_begin(self) -> None:
        self._head_done = False
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            return  # a trailer: read, never forwarded
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_done = True
        self._bounded = self._in_head = False
        self._requests += 1
        self._head_started = None
        self._client_gone = ClientGone()
        self.scope.setdefault("extensions", {})[CLIENT_GONE] = {"gone": self._client_gone}
        super().on_headers_complete()

    def on_chunk_header(self) -> None:
        # the last chunk's header is followed by the trailers, kept whole by the parser
        self._enter_bounded(head=False)

    def on_body(self, body: bytes) -> None:
        self._bounded = False
        super().on_body(body)

    def on_chunk_complete(self) -> None:
        self._bounded = False

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._enter_bounded(head=True)

    # limits

    def _enter_bounded(self, *, head: bool) -> None:
        self._bounded = self._entered = True
        self._in_head = head
        self._bounded_bytes = 0

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

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

    def _idle_too_long(self) -> None:
        self.timeout_keep_alive_task = None
        if self.transport.is_closing():
            return
        if self._requests == 0:
            self.limits.on_timeout(TimeoutPhase.IDLE)
        self.transport.close()

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer with the proxy's JSON error and close; only close when another
        request's response is on its way (the two would mix)."""
        self._stop_head_timer()
        if not self._answering():
            body = json.dumps({"error": {"code": code, "message": message}}).encode()
            head = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head += [
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n\r\n",
            ]
            self.transport.write(b"".join(head) + body)
        self.transport.close()
