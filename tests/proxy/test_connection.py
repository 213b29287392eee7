"""Client connections held to their limits: the head's size and time, idle connections,
trailers. The protocol is driven byte by byte through a transport in memory, and its
timers are fired by hand: no test waits on a clock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from proxy.connection import ConnectionLimits, ProxyHttpProtocol, protocol_with

LIMIT = 4096
HEADER_TIMEOUT = 10.0
IDLE_TIMEOUT = 5.0


class Handle:
    def __init__(self, delay: float, due: float, callback: Callable[[], None]) -> None:
        self.delay = delay
        self.due = due
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    """The event loop as the protocol sees it, with a clock of its own and ``call_later``
    kept for the test to fire by hand."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.now = 100.0
        self.handles: list[Handle] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> Handle:
        handle = Handle(delay, self.now + delay, callback)
        self.handles.append(handle)
        return handle

    def create_task(self, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        return self.loop.create_task(coro, **kwargs)

    def armed(self) -> list[float]:
        return [handle.delay for handle in self.handles if not handle.cancelled]

    def fire(self, delay: float) -> None:
        """Move the clock to the first timer armed for ``delay`` seconds and run it."""
        for handle in list(self.handles):
            if handle.delay == delay and not handle.cancelled:
                handle.cancelled = True
                self.now = max(self.now, handle.due)
                handle.callback()
                return


class Transport(asyncio.Transport):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.written = bytearray()
        self.closed = False
        self.protocol: asyncio.BaseProtocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        if not self.closed and self.protocol is not None:
            self.loop.call_soon(self.protocol.connection_lost, None)
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.9", 50000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@dataclass
class Reported:
    refused: list[str] = field(default_factory=list)
    timeouts: list[str] = field(default_factory=list)


@dataclass
class Connection:
    protocol: ProxyHttpProtocol
    transport: Transport
    timers: Timers
    seen: list[dict[str, Any]]
    reported: Reported
    loop: asyncio.AbstractEventLoop
    answer: asyncio.Event

    def send(self, data: bytes) -> None:
        self.protocol.data_received(data)
        self.settle()

    def settle(self) -> None:
        """Let the application's tasks run until they wait."""
        for _ in range(10):
            self.loop.run_until_complete(asyncio.sleep(0))

    def answers(self) -> list[int]:
        lines = bytes(self.transport.written).split(b"\r\n")
        return [int(line.split()[1]) for line in lines if line.startswith(b"HTTP/1.1 ")]

    def error(self) -> dict[str, Any]:
        body = bytes(self.transport.written).partition(b"\r\n\r\n")[2]
        error: dict[str, Any] = json.loads(body)["error"]
        return error


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Records each request's headers (as it starts) and body, and answers 200 (on
    ``/slow``, once the test sets ``answer``)."""
    assert scope["type"] == "http"
    seen = scope["state"]["seen"]
    record: dict[str, Any] = {"headers": list(scope["headers"]), "body": b""}
    seen.append(record)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        record["body"] += message.get("body", b"")
        if not message.get("more_body", False):
            break
    if scope["path"] == "/slow":
        await scope["state"]["answer"].wait()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def connect() -> Iterator[Callable[..., Connection]]:
    loop = asyncio.new_event_loop()

    def make(protocol_class: type[ProxyHttpProtocol] | None = None) -> Connection:
        reported = Reported()
        limits = ConnectionLimits(
            max_head_bytes=LIMIT,
            header_timeout=HEADER_TIMEOUT,
            idle_timeout=IDLE_TIMEOUT,
            on_refused=reported.refused.append,
            on_timeout=reported.timeouts.append,
        )
        config = Config(app, lifespan="off", log_level="error")
        seen: list[dict[str, Any]] = []
        answer = asyncio.Event()
        timers = Timers(loop)
        protocol = (protocol_class or protocol_with(limits))(
            config,
            ServerState(),
            {"seen": seen, "answer": answer},
            cast(asyncio.AbstractEventLoop, timers),
        )
        transport = Transport(loop)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        return Connection(protocol, transport, timers, seen, reported, loop, answer)

    yield make
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()


def head_of(size: int) -> bytes:
    """A GET head of exactly ``size`` bytes."""
    start = b"GET /v1/chat HTTP/1.1\r\nHost: proxy.test\r\nx-pad: "
    return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"


# --------------------------------------------------------------------------- size


def test_a_head_at_the_limit_is_read() -> None:
    assert len(head_of(LIMIT)) == LIMIT


@pytest.mark.parametrize("piece", [1, 100, LIMIT, 1 << 20])
def test_a_head_at_the_limit_is_served(connect: Callable[..., Connection], piece: int) -> None:
    connection = connect()
    data = head_of(LIMIT)
    for start in range(0, len(data), piece):
        connection.send(data[start : start + piece])
    assert connection.answers() == [200]
    assert not connection.transport.closed


@pytest.mark.parametrize("piece", [1, 1000, LIMIT + 1, 1 << 20])
def test_a_head_over_the_limit_is_refused_once_the_limit_is_read(
    connect: Callable[..., Connection], piece: int
) -> None:
    connection = connect()
    data = head_of(LIMIT + 1)
    for start in range(0, len(data), piece):
        connection.send(data[start : start + piece])
    assert connection.answers() == [431]
    assert connection.error() == {
        "code": "headers_too_large",
        "message": f"the request head is over {LIMIT} bytes",
    }
    assert connection.transport.closed
    assert (connection.seen, connection.reported.refused) == ([], ["headers_too_large"])


def test_an_endless_header_line_is_cut_at_the_limit(connect: Callable[..., Connection]) -> None:
    connection = connect()
    connection.send(b"GET / HTTP/1.1\r\nHost: proxy.test\r\nx-pad: ")
    sent = 0
    while not connection.transport.closed and sent < 100 * LIMIT:
        connection.send(b"a" * 1000)
        sent += 1000
    assert connection.transport.closed
    assert sent <= LIMIT + 1000  # refused in the piece that went past the limit
    assert connection.answers() == [431]


def test_each_request_of_a_connection_has_the_whole_limit(
    connect: Callable[..., Connection],
) -> None:
    connection = connect()
    for _ in range(3):
        connection.send(head_of(LIMIT))
    assert connection.answers() == [200, 200, 200]


def test_a_body_is_not_held_to_the_head_limit(connect: Callable[..., Connection]) -> None:
    connection = connect()
    body = b"b" * (10 * LIMIT)
    head = b"POST / HTTP/1.1\r\nHost: proxy.test\r\ncontent-length: %d\r\n\r\n" % len(body)
    connection.send(head + body[:LIMIT])
    connection.send(body[LIMIT:])
    assert connection.answers() == [200]
    assert connection.seen[0]["body"] == body


# --------------------------------------------------------------------------- trailers


CHUNKED = b"POST / HTTP/1.1\r\nHost: proxy.test\r\ntransfer-encoding: chunked\r\n\r\n"


def test_trailers_never_join_the_headers(connect: Callable[..., Connection]) -> None:
    connection = connect()
    connection.send(CHUNKED + b"5\r\nhello\r\n0\r\nx-trailer: sneaky\r\nhost: evil\r\n\r\n")
    assert connection.answers() == [200]
    assert connection.seen[0]["body"] == b"hello"
    assert connection.seen[0]["headers"] == [
        (b"host", b"proxy.test"),
        (b"transfer-encoding", b"chunked"),
    ]


def test_trailers_over_the_limit_cut_the_connection(connect: Callable[..., Connection]) -> None:
    connection = connect()
    connection.send(CHUNKED + b"5\r\nhello\r\n0\r\nx-trailer: ")
    sent = 0
    while not connection.transport.closed and sent < 100 * LIMIT:
        connection.send(b"a" * 1000)
        sent += 1000
    assert connection.transport.closed
    assert sent <= LIMIT + 1000


# --------------------------------------------------------------------------- time


def test_a_head_sent_byte_by_byte_is_cut_after_the_header_timeout(
    connect: Callable[..., Connection],
) -> None:
    connection = connect()
    for byte in b"GET / HTTP/1.1\r\nHost: pro":
        connection.send(bytes([byte]))
    assert HEADER_TIMEOUT in connection.timers.armed()
    connection.timers.fire(HEADER_TIMEOUT)
    assert connection.answers() == [408]
    assert connection.error()["code"] == "header_timeout"
    assert connection.transport.closed
    assert connection.reported.timeouts == ["head"]
    assert connection.reported.refused == ["header_timeout"]


def test_a_head_whole_in_time_is_not_cut(connect: Callable[..., Connection]) -> None:
    connection = connect()
    for byte in head_of(200):
        connection.send(bytes([byte]))
    connection.timers.fire(HEADER_TIMEOUT)
    assert connection.answers() == [200]
    assert not connection.transport.closed
    assert HEADER_TIMEOUT not in connection.timers.armed()


def test_each_head_has_the_whole_header_timeout(connect: Callable[..., Connection]) -> None:
    connection = connect()
    connection.send(head_of(200))
    connection.timers.now += HEADER_TIMEOUT - 1
    connection.send(b"GET / HTTP/1.1\r\n")  # a second head, begun late in the first's time
    connection.timers.fire(HEADER_TIMEOUT)  # the first head's timer: this head has time left
    assert (connection.answers(), connection.transport.closed) == ([200], False)
    head_timers = [delay for delay in connection.timers.armed() if delay != IDLE_TIMEOUT]
    assert head_timers == [HEADER_TIMEOUT - 1]
    connection.timers.fire(HEADER_TIMEOUT - 1)
    assert connection.answers() == [200, 408]
    assert connection.transport.closed


def test_a_stray_line_after_a_body_does_not_cut_the_response_on_its_way(
    connect: Callable[..., Connection],
) -> None:
    connection = connect()
    connection.send(b"POST /slow HTTP/1.1\r\nHost: proxy.test\r\ncontent-length: 2\r\n\r\n{}")
    connection.send(b"\r\n")  # after the body: some clients still send one
    connection.timers.fire(HEADER_TIMEOUT)  # the response is not out yet
    assert (connection.answers(), connection.transport.closed) == ([], False)
    connection.answer.set()
    connection.settle()
    assert connection.answers() == [200]
    connection.timers.fire(HEADER_TIMEOUT)  # and no head followed it
    assert connection.answers() == [200, 408]


def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout(
    connect: Callable[..., Connection],
) -> None:
    connection = connect()
    assert connection.timers.armed() == [IDLE_TIMEOUT]
    connection.timers.fire(IDLE_TIMEOUT)
    assert connection.transport.closed
    assert connection.transport.written == b""
    assert connection.reported.timeouts == ["idle"]


def test_a_connection_idle_between_requests_is_closed_uncounted(
    connect: Callable[..., Connection],
) -> None:
    connection = connect()
    connection.send(head_of(200))
    assert IDLE_TIMEOUT in connection.timers.armed()
    connection.timers.fire(IDLE_TIMEOUT)
    assert connection.transport.closed
    assert connection.reported.timeouts == []


def test_a_connection_busy_when_its_idle_timer_fires_is_kept(
    connect: Callable[..., Connection],
) -> None:
    connection = connect()
    connection.send(b"GET /slow HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
    connection.timers.fire(IDLE_TIMEOUT)  # armed when the connection was made
    assert not connection.transport.closed
    connection.timers.now += 3
    answered = connection.timers.now
    connection.answer.set()
    connection.settle()
    assert connection.answers() == [200]
    connection.timers.fire(IDLE_TIMEOUT)
    assert connection.transport.closed
    assert connection.timers.now == answered + IDLE_TIMEOUT


def test_the_idle_time_counts_from_the_last_response(connect: Callable[..., Connection]) -> None:
    connection = connect()
    connection.timers.now += IDLE_TIMEOUT - 1
    connection.send(head_of(200))
    assert connection.answers() == [200]
    connection.timers.fire(IDLE_TIMEOUT)  # armed at the start: 1 s after the response
    assert not connection.transport.closed
    assert IDLE_TIMEOUT - 1 in connection.timers.armed()
    connection.timers.fire(IDLE_TIMEOUT - 1)
    assert connection.transport.closed


# --------------------------------------------------------------------------- body time

BODY_TIMEOUT = 60.0  # the limits' default


def test_a_stalled_body_is_answered_408(connect: Callable[..., Connection]) -> None:
    connection = connect()
    connection.send(b"POST / HTTP/1.1\r\nHost: proxy.test\r\ncontent-length: 10\r\n\r\nabc")
    assert BODY_TIMEOUT in connection.timers.armed()
    connection.timers.fire(BODY_TIMEOUT)
    connection.settle()
    assert connection.answers() == [408]
    assert connection.error() == {
        "code": "body_timeout",
        "message": "the request body stalled for over 60 s",
    }
    assert connection.transport.closed
    assert connection.reported.timeouts == ["body"]
    assert connection.reported.refused == ["body_timeout"]


def test_a_body_that_keeps_coming_is_not_cut(connect: Callable[..., Connection]) -> None:
    connection = connect()
    connection.send(b"POST / HTTP/1.1\r\nHost: proxy.test\r\ncontent-length: 3\r\n\r\na")
    connection.timers.now += BODY_TIMEOUT - 1
    connection.send(b"b")
    connection.timers.fire(BODY_TIMEOUT)  # armed at the first byte: this one has time left
    assert (connection.answers(), connection.transport.closed) == ([], False)
    connection.send(b"c")
    assert connection.answers() == [200]
    assert connection.seen[0]["body"] == b"abc"
    connection.timers.fire(BODY_TIMEOUT - 1)  # re-armed for the stalled wait, now moot
    assert not connection.transport.closed
    assert connection.reported.timeouts == []
