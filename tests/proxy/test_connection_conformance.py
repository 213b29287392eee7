"""The client connection's server side held to HTTP/1.1 (RFC 9112) and HTTP semantics
(RFC 9110): pipelining, bodiless responses, chunked and close-delimited framing, the
client's ``close``, ``100-continue``, malformed and smuggling heads, upgrades, the
application failing or framing its body wrong, flow control, the client going, and a
seeded fuzz of the parser's input. Each test drives the protocol through a transport in
memory with a small scripted ASGI application: no socket, no clock."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from proxy.client_gone import CLIENT_GONE, ClientGone
from proxy.connection import BODY_BUFFER_BYTES, ConnectionLimits, ProxyHttpProtocol, protocol_with
from proxy.send_whole import SEND_WHOLE, SendWhole
from tests.proxy.test_connection import Timers, Transport

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Message, Receive, Send], Awaitable[None]]

LIMIT = 4096
HEADER_TIMEOUT = 10.0
IDLE_TIMEOUT = 5.0
GET = b"GET / HTTP/1.1\r\nHost: proxy.test\r\n\r\n"
REFUSALS = (400, 408, 431)


class Wire(Transport):
    """The in-memory transport, counting writes and the protocol's flow control."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.writes: list[bytes] = []
        self.pauses = 0
        self.resumes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        super().write(data)

    def pause_reading(self) -> None:
        self.pauses += 1

    def resume_reading(self) -> None:
        self.resumes += 1


class AppError(Exception):
    pass


@dataclass
class Seen:
    """One request as the application saw it."""

    scope: Message
    body: bytes = b""
    received: list[Message] = field(default_factory=list)
    done: bool = False

    @property
    def path(self) -> str:
        return str(self.scope["path"])


@dataclass
class Script:
    """An application that answers every request alike: it reads the body (or not),
    waits for ``gate`` if set, then sends ``status``, ``headers`` and ``parts`` (the last
    with ``more_body`` false unless ``end`` is false), failing where ``fail`` says."""

    status: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    parts: list[bytes] = field(default_factory=lambda: [b"ok"])
    read: bool = True
    end: bool = True
    fail: str | None = None
    """``before`` the response, ``after_start``, ``after_first_part`` or ``after_end``."""
    gate: asyncio.Event | None = None
    seen: list[Seen] = field(default_factory=list)

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        record = Seen(scope)
        self.seen.append(record)
        try:
            if self.read and not await read_body(record, receive):
                return
            if self.gate is not None:
                await self.gate.wait()
            await self.respond(send)
        finally:
            record.done = True

    async def respond(self, send: Send) -> None:
        if self.fail == "before":
            raise AppError
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        if self.fail == "after_start":
            raise AppError
        parts = self.parts or [b""]
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            more = not (last and self.end)
            await send({"type": "http.response.body", "body": part, "more_body": more})
            if self.fail == "after_first_part":
                raise AppError
        if self.fail == "after_end":
            raise AppError

    def paths(self) -> list[str]:
        return [record.path for record in self.seen]


async def read_body(record: Seen, receive: Receive) -> bool:
    """Read the whole request body into ``record``; False when the client went."""
    while True:
        message = await receive()
        record.received.append(message)
        if message["type"] == "http.disconnect":
            return False
        record.body += message.get("body", b"")
        if not message.get("more_body", False):
            return True


# --------------------------------------------------------------------------- responses


@dataclass
class Reply:
    """One response as a client reads it."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    framing: str
    """``length``, ``chunked``, ``close`` (ends with the connection) or ``none``."""
    complete: bool = True

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]

    def header(self, name: bytes) -> bytes | None:
        values = self.values(name)
        assert len(values) <= 1, (name, values)
        return values[0] if values else None


_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9]{2}) [^\r\n\0]*\r\n")
_FIELD_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9a-z-]+): ([^\r\n\0]*)\r\n")
_CHUNK_SIZE = re.compile(rb"([0-9a-f]+)\r\n")


def replies(data: bytes, head_only: Sequence[bool] = (), *, closed: bool = False) -> list[Reply]:
    """Read a server's output strictly as HTTP/1.1 responses; ``head_only[i]``: the
    ``i``-th final response answers a HEAD. The last body may be incomplete (where the
    output stops); one that ends with the connection is complete only once ``closed``."""
    out: list[Reply] = []
    at = 0
    finals = 0
    while at < len(data):
        end = data.find(b"\r\n\r\n", at)
        assert end >= 0, f"a head cut short: {data[at:]!r}"  # heads go out whole
        status_line = _STATUS_LINE.match(data, at)
        assert status_line is not None, f"no status line at {at}: {data[at : at + 60]!r}"
        status = int(status_line[1])
        at = status_line.end()
        headers: list[tuple[bytes, bytes]] = []
        while at < end + 2:
            field_line = _FIELD_LINE.match(data, at)
            assert field_line is not None, f"bad field line: {data[at : end + 2]!r}"
            assert field_line.end() <= end + 2
            headers.append((field_line[1], field_line[2]))
            at = field_line.end()
        at = end + 4
        if status < 200:
            assert headers == [], "an interim response here carries no fields"
            out.append(Reply(status, headers, b"", "none"))
            continue
        reply = Reply(status, headers, b"", "none")
        out.append(reply)
        chunked = reply.values(b"transfer-encoding") == [b"chunked"]
        length = reply.header(b"content-length")
        assert not (chunked and length is not None), "Content-Length with Transfer-Encoding"
        answers_head = finals < len(head_only) and head_only[finals]
        finals += 1
        if answers_head and _refusal_ending(data, at, reply):
            answers_head = False  # the refusal of a HEAD cut in its body keeps its JSON
        if answers_head or status in (204, 304):
            continue
        if chunked:
            reply.framing = "chunked"
            at, reply.complete = _chunks(data, at, reply)
        elif length is not None:
            reply.framing = "length"
            size = int(length)
            reply.body = data[at : at + size]
            reply.complete = len(reply.body) == size
            at += size
        else:
            assert reply.header(b"connection") == b"close", "a close-delimited body unsaid"
            reply.framing = "close"
            reply.body = data[at:]
            reply.complete = closed
            at = len(data)
        if not reply.complete:
            return out
    return out


def _refusal_ending(data: bytes, at: int, reply: Reply) -> bool:
    length = reply.header(b"content-length")
    return (
        reply.status in REFUSALS
        and reply.header(b"connection") == b"close"
        and length is not None
        and len(data) - at == int(length)
    )


def _chunks(data: bytes, at: int, reply: Reply) -> tuple[int, bool]:
    body = bytearray()
    while True:
        size_line = _CHUNK_SIZE.match(data, at)
        if size_line is None:
            assert re.fullmatch(rb"[0-9a-f]*\r?", data[at:]), f"bad chunk: {data[at:]!r}"
            reply.body = bytes(body)
            return len(data), False
        size = int(size_line[1], 16)
        at = size_line.end()
        if size == 0:
            reply.body = bytes(body)
            if data[at : at + 2] != b"\r\n":
                assert b"\r\n".startswith(data[at:]), f"trailers: {data[at:]!r}"
                return len(data), False
            return at + 2, True
        assert not size_line[1].startswith(b"0"), "a chunk size with leading zeros"
        chunk = data[at : at + size]
        body += chunk
        if len(chunk) < size or len(data) < at + size + 2:
            reply.body = bytes(body)
            return len(data), False
        assert data[at + size : at + size + 2] == b"\r\n", "a chunk not ended by CRLF"
        at += size + 2


# --------------------------------------------------------------------------- harness


@dataclass
class Served:
    protocol: ProxyHttpProtocol
    wire: Wire
    timers: Timers
    loop: asyncio.AbstractEventLoop

    def send(self, data: bytes) -> None:
        self.protocol.data_received(data)
        self.settle()

    def settle(self) -> None:
        """Let the application's tasks and the transport's callbacks run until they wait."""
        for _ in range(12):
            self.loop.run_until_complete(asyncio.sleep(0))

    @property
    def closed(self) -> bool:
        return self.wire.closed

    @property
    def output(self) -> bytes:
        return bytes(self.wire.written)

    def replies(self, head_only: Sequence[bool] = ()) -> list[Reply]:
        return replies(self.output, head_only, closed=self.closed)

    def statuses(self) -> list[int]:
        return [reply.status for reply in self.replies()]

    def error(self) -> dict[str, Any]:
        (reply,) = self.replies()
        assert reply.header(b"content-type") == b"application/json"
        assert reply.header(b"connection") == b"close"
        error: dict[str, Any] = json.loads(reply.body)["error"]
        return error

    def lose(self, exc: Exception | None = None) -> None:
        """The client goes: the transport reports the connection lost."""
        self.wire.closed = True
        self.protocol.connection_lost(exc)
        self.settle()


Serve = Callable[..., Served]


@pytest.fixture
def serve() -> Iterator[Serve]:
    loop = asyncio.new_event_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    made: list[Served] = []

    def make(app: App, wire: type[Wire] = Wire) -> Served:
        limits = ConnectionLimits(
            max_head_bytes=LIMIT, header_timeout=HEADER_TIMEOUT, idle_timeout=IDLE_TIMEOUT
        )
        config = Config(
            app, lifespan="off", log_level="error", interface="asgi3", proxy_headers=False
        )
        timers = Timers(loop)
        protocol = protocol_with(limits)(
            config, ServerState(), {}, cast(asyncio.AbstractEventLoop, timers)
        )
        transport = wire(loop)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        served = Served(protocol, transport, timers, loop)
        made.append(served)
        return served

    yield make
    pending: list[asyncio.Task[Any]] = []

    async def cancel_pending() -> None:
        pending.extend(task for task in asyncio.all_tasks() if task is not asyncio.current_task())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    try:
        for served in made:
            if not served.closed:
                served.lose()
            served.settle()
        loop.run_until_complete(cancel_pending())
    finally:
        loop.close()
    assert errors == [], "the event loop reported errors"
    assert pending == [], "application tasks were left waiting after the connection closed"


def post(body: bytes, *, path: str = "/", extra: bytes = b"") -> bytes:
    head = b"POST %b HTTP/1.1\r\nHost: proxy.test\r\ncontent-length: %d\r\n%b\r\n" % (
        path.encode(),
        len(body),
        extra,
    )
    return head + body


# --------------------------------------------------------------------------- pipelining


def test_two_pipelined_gets_are_answered_in_order_one_after_the_other(serve: Serve) -> None:
    gate = asyncio.Event()
    order: list[str] = []

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        order.append(f"start {scope['path']}")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one-", "more_body": True})
        if scope["path"] == "/first":
            await gate.wait()
        await send({"type": "http.response.body", "body": scope["path"].encode()})
        order.append(f"end {scope['path']}")

    served = serve(app)
    served.send(
        b"GET /first HTTP/1.1\r\nHost: proxy.test\r\n\r\n"
        b"GET /second HTTP/1.1\r\nHost: proxy.test\r\n\r\n"
    )
    assert order == ["start /first"]  # the second waits for the first's response
    assert served.wire.pauses == 1  # and the client is read no further meanwhile
    partial = served.replies()
    assert [(reply.body, reply.complete) for reply in partial] == [(b"one-", False)]
    gate.set()
    served.settle()
    assert order == ["start /first", "end /first", "start /second", "end /second"]
    first, second = served.replies()
    assert (first.body, second.body) == (b"one-/first", b"one-/second")
    assert (first.framing, second.framing) == ("chunked", "chunked")
    assert not served.closed
    served.send(GET)  # reading resumed: the connection serves on
    assert served.statuses() == [200, 200, 200]


def test_a_pipelined_post_body_reaches_its_own_request(serve: Serve) -> None:
    app = Script()
    served = serve(app)
    served.send(post(b"one", path="/a") + post(b"two", path="/b") + GET)
    assert [(record.path, record.body) for record in app.seen] == [
        ("/a", b"one"),
        ("/b", b"two"),
        ("/", b""),
    ]
    assert served.statuses() == [200, 200, 200]


def test_many_pipelined_requests_are_answered_in_order(serve: Serve) -> None:
    app = Script(headers=[(b"content-length", b"2")])
    served = serve(app)
    paths = [f"/{index}" for index in range(50)]
    served.send(b"".join(b"GET %b HTTP/1.1\r\nHost: p\r\n\r\n" % p.encode() for p in paths))
    for _ in range(10):  # a request a few rounds of the loop
        served.settle()
    assert app.paths() == paths
    assert served.statuses() == [200] * 50
    assert served.wire.pauses == served.wire.resumes == 1


def test_empty_lines_before_a_request_line_are_ignored(serve: Serve) -> None:
    served = serve(Script())
    served.send(b"\r\n" + GET)
    served.send(b"\r\n\r\n" + GET)  # RFC 9112 2.2: at least one
    assert served.statuses() == [200, 200]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            b"GET /a%20b/%2F?q=%41&r HTTP/1.1\r\nHost: p\r\nX-Pad:  v  \t\r\n\r\n",
            (
                "GET",
                "1.1",
                "/a b//",
                b"/a%20b/%2F",
                b"q=%41&r",
                [(b"host", b"p"), (b"x-pad", b"v")],
            ),
        ),
        (
            b"GET http://p.test:8/abs?x HTTP/1.1\r\nHost: p.test:8\r\n\r\n",
            ("GET", "1.1", "/abs", b"/abs", b"x", [(b"host", b"p.test:8")]),
        ),
        (
            b"OPTIONS * HTTP/1.1\r\nHost: p\r\n\r\n",
            ("OPTIONS", "1.1", "*", b"*", b"", [(b"host", b"p")]),
        ),
        (b"DELETE /d HTTP/1.0\r\n\r\n", ("DELETE", "1.0", "/d", b"/d", b"", [])),
    ],
    ids=["origin-form", "absolute-form", "asterisk-form", "http10"],
)
def test_the_request_reaches_the_application_as_its_scope(
    serve: Serve, data: bytes, expected: tuple[Any, ...]
) -> None:
    app = Script()
    served = serve(app)
    served.send(data)
    scope = app.seen[0].scope
    keys = ("method", "http_version", "path", "raw_path", "query_string", "headers")
    assert tuple(scope[key] for key in keys) == expected
    assert (scope["client"], scope["server"]) == (("127.0.0.9", 50000), ("127.0.0.1", 8080))
    assert served.statuses() == [200]


# --------------------------------------------------------------------------- no body


def test_a_response_to_head_keeps_its_length_and_sends_no_body(serve: Serve) -> None:
    served = serve(Script(headers=[(b"content-length", b"5")], parts=[b"hel", b"lo"]))
    served.send(b"HEAD / HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
    assert served.output.endswith(b"content-length: 5\r\n\r\n")
    (reply,) = served.replies(head_only=[True])
    assert (reply.status, reply.body, reply.header(b"content-length")) == (200, b"", b"5")
    served.send(GET)  # no stray body bytes to be read as the next response
    assert [reply.body for reply in served.replies(head_only=[True, False])] == [b"", b"hello"]


def test_a_response_to_head_without_a_length_is_not_chunked(serve: Serve) -> None:
    served = serve(Script(parts=[b"hello"]))
    served.send(b"HEAD / HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
    assert served.output.endswith(b"\r\n\r\n")
    (reply,) = served.replies(head_only=[True])
    assert reply.header(b"transfer-encoding") is None
    assert not served.closed


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_carry_no_body_and_are_not_chunked(serve: Serve, status: int) -> None:
    served = serve(Script(status=status, parts=[]))
    served.send(GET)
    assert served.output == b"HTTP/1.1 %d %b\r\n\r\n" % (
        status,
        b"No Content" if status == 204 else b"Not Modified",
    )
    served.send(GET)
    assert served.statuses() == [status, status]
    assert not served.closed


def test_a_304_keeps_its_content_length_and_sends_no_body(serve: Serve) -> None:
    served = serve(Script(status=304, headers=[(b"content-length", b"10")], parts=[b""]))
    served.send(GET)
    assert served.output.endswith(b"content-length: 10\r\n\r\n")
    assert not served.closed


@pytest.mark.parametrize("status", [204, 304])
def test_body_bytes_sent_with_a_204_or_304_never_reach_the_client(
    serve: Serve, status: int
) -> None:
    served = serve(Script(status=status, parts=[b"stray"]))
    served.send(GET)
    assert b"stray" not in served.output
    assert served.closed  # the application broke the framing: the connection goes


def test_a_304_with_a_transfer_encoding_header_sends_no_body(serve: Serve) -> None:
    served = serve(Script(status=304, headers=[(b"transfer-encoding", b"chunked")], parts=[]))
    served.send(GET)
    assert served.output.endswith(b"transfer-encoding: chunked\r\n\r\n")


# --------------------------------------------------------------------------- framing


def test_a_body_without_a_length_goes_chunked_to_an_http11_client(serve: Serve) -> None:
    served = serve(Script(parts=[b"hello", b"", b"wonderful world!"]))
    served.send(GET)
    head, _, body = served.output.partition(b"\r\n\r\n")
    assert b"\r\ntransfer-encoding: chunked" in head
    assert b"content-length" not in head
    assert body == b"5\r\nhello\r\n10\r\nwonderful world!\r\n0\r\n\r\n"
    assert not served.closed


def test_a_body_without_a_length_ends_the_connection_to_an_http10_client(
    serve: Serve,
) -> None:
    served = serve(Script(parts=[b"hello ", b"world"]))
    served.send(b"GET / HTTP/1.0\r\nHost: proxy.test\r\nConnection: keep-alive\r\n\r\n")
    (reply,) = served.replies()
    assert reply.header(b"transfer-encoding") is None
    assert reply.header(b"connection") == b"close"
    assert (reply.framing, reply.body) == ("close", b"hello world")
    assert served.closed


def test_an_http10_client_never_gets_a_transfer_encoding(serve: Serve) -> None:
    served = serve(Script(headers=[(b"transfer-encoding", b"chunked")], parts=[b"hello"]))
    served.send(b"GET / HTTP/1.0\r\n\r\n")
    (reply,) = served.replies()
    assert reply.header(b"transfer-encoding") is None
    assert (reply.framing, reply.body) == ("close", b"hello")


def test_a_body_with_a_length_keeps_the_connection(serve: Serve) -> None:
    served = serve(Script(headers=[(b"content-length", b"5")], parts=[b"he", b"llo"]))
    served.send(GET + GET)
    assert [(reply.framing, reply.body) for reply in served.replies()] == [
        ("length", b"hello"),
        ("length", b"hello"),
    ]
    assert not served.closed


# --------------------------------------------------------------------------- close


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET / HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: proxy.test\r\nConnection: keep-alive, Close\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: proxy.test\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: proxy.test\r\nConnection: keep-alive\r\n\r\n",
    ],
    ids=["close", "close-listed", "http10", "http10-keep-alive"],
)
def test_a_request_that_ends_its_connection_is_answered_then_closed(
    serve: Serve, request_head: bytes
) -> None:
    app = Script(headers=[(b"content-length", b"2")])
    served = serve(app)
    served.send(request_head + b"GET /after HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
    (reply,) = served.replies()
    assert (reply.status, reply.body, reply.header(b"connection")) == (200, b"ok", b"close")
    assert served.closed
    assert app.paths() == ["/"]


def test_the_applications_connection_close_ends_the_connection(serve: Serve) -> None:
    served = serve(Script(headers=[(b"content-length", b"2"), (b"connection", b"close")]))
    served.send(GET)
    (reply,) = served.replies()
    assert reply.values(b"connection") == [b"close"]
    assert served.closed


# --------------------------------------------------------------------------- 100-continue

EXPECTING = (
    b"POST / HTTP/1.1\r\nHost: proxy.test\r\ncontent-length: 5\r\nExpect: 100-continue\r\n\r\n"
)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def test_100_continue_goes_out_when_the_application_first_reads(serve: Serve) -> None:
    gate = asyncio.Event()
    app = Script(gate=gate, read=False)

    async def reads_later(scope: Message, receive: Receive, send: Send) -> None:
        await gate.wait()
        app.read = True
        await app(scope, receive, send)

    served = serve(reads_later)
    served.send(EXPECTING)
    assert served.output == b""  # the application has not asked for the body yet
    gate.set()
    served.settle()
    assert served.output == CONTINUE
    served.send(b"hello")
    assert [reply.status for reply in served.replies()] == [100, 200]
    assert app.seen[0].body == b"hello"
    assert served.output.count(b"100 Continue") == 1


def test_no_100_continue_when_the_application_answers_without_reading(serve: Serve) -> None:
    served = serve(Script(read=False, status=417, headers=[(b"content-length", b"0")], parts=[]))
    served.send(EXPECTING)
    assert served.statuses() == [417]
    assert b"100 Continue" not in served.output
    served.send(b"hello" + GET)  # the body the client sent anyway is read and dropped
    assert served.statuses() == [417, 417]
    assert b"100 Continue" not in served.output


def test_an_http10_expectation_is_ignored(serve: Serve) -> None:
    served = serve(Script())
    served.send(EXPECTING.replace(b"HTTP/1.1", b"HTTP/1.0") + b"hello")
    assert b"100 Continue" not in served.output
    assert served.statuses() == [200]


# --------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost proxy\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: proxy.test\r\nx-nul: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: proxy.test\r\nTransfer-Encoding : chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: proxy.test\r\n folded: line\r\n\r\n",
        b"GET / HTTP/1.1\nHost: proxy.test\n\n",
        b"GET / HTTP/1.1 extra\r\nHost: proxy.test\r\n\r\n",
        b"GET / HTTP/4.2\r\nHost: proxy.test\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: proxy.test\r\n\r\n",
        b"G\x01T / HTTP/1.1\r\nHost: proxy.test\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        b"POST / HTTP/1.1\r\nHost: proxy.test\r\ncontent-length: 5x\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: proxy.test\r\ncontent-length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: proxy.test\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: proxy.test\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
    ],
    ids=[
        "no-colon",
        "nul-in-value",
        "space-before-colon",
        "obs-fold",
        "bare-lf",
        "request-line-extra",
        "bad-version",
        "space-in-target",
        "control-in-method",
        "tls",
        "bad-length",
        "negative-length",
        "two-lengths",
        "chunked-not-last",
    ],
)
def test_a_malformed_head_gets_400_and_the_connection_closed(serve: Serve, data: bytes) -> None:
    app = Script()
    served = serve(app)
    served.send(data)
    error = served.error()
    assert error["code"] == "bad_request"
    assert error["message"].startswith("invalid HTTP request: ")
    assert served.statuses() == [400]
    assert served.closed
    assert app.seen == []


def test_a_malformed_head_after_a_good_request_on_its_own_packet(serve: Serve) -> None:
    app = Script()
    served = serve(app)
    served.send(GET)
    served.send(b"GET / HTTP/1.1\r\nHost proxy\r\n\r\n")
    assert served.statuses() == [200, 400]
    assert served.closed


def test_a_malformed_request_pipelined_behind_a_good_one_waits_for_its_response(
    serve: Serve,
) -> None:
    served = serve(Script())
    served.send(GET + b"GET / HTTP/1.1\r\nHost proxy\r\n\r\n")
    assert served.statuses() == [200, 400]
    assert served.closed


CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: proxy.test\r\ntransfer-encoding: chunked\r\n\r\n"
BAD_CHUNK = (
    CHUNKED_HEAD + b"zz\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: proxy.test\r\n\r\n"
)
TE_NOT_CHUNKED = (
    b"POST / HTTP/1.1\r\nHost: proxy.test\r\ntransfer-encoding: gzip\r\n\r\n"
    b"GET /smuggled HTTP/1.1\r\nHost: proxy.test\r\n\r\n"
)


@pytest.mark.parametrize("data", [BAD_CHUNK, TE_NOT_CHUNKED], ids=["bad-chunk", "te-gzip"])
@pytest.mark.parametrize("piece", [1, 7, 1 << 16])
def test_a_body_that_cannot_be_framed_closes_the_connection(
    serve: Serve, data: bytes, piece: int
) -> None:
    app = Script()
    served = serve(app)
    for start in range(0, len(data), piece):
        served.send(data[start : start + piece])
    assert served.closed
    assert app.paths() == ["/"]
    assert app.seen[0].received[-1] == {"type": "http.disconnect"}
    assert b"200" not in served.output  # the request cut is not answered as whole
    assert 200 not in served.statuses()


@pytest.mark.parametrize("data", [BAD_CHUNK, TE_NOT_CHUNKED], ids=["bad-chunk", "te-gzip"])
def test_a_body_that_cannot_be_framed_gets_400(serve: Serve, data: bytes) -> None:
    served = serve(Script())
    served.send(data)
    assert served.error()["code"] == "bad_request"
    assert served.closed


def test_a_body_refused_after_its_response_is_complete_gets_no_second_response(
    serve: Serve,
) -> None:
    served = serve(Script(read=False, headers=[(b"content-length", b"2")]))
    served.send(CHUNKED_HEAD + b"5\r\nhello\r\n")
    assert served.statuses() == [200]
    served.send(b"zz\r\n")
    assert served.closed
    assert served.statuses() == [200]


SMUGGLERS = {
    "cl-te": b"POST / HTTP/1.1\r\nHost: proxy.test\r\ncontent-length: 48\r\n"
    b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-cl": b"POST / HTTP/1.1\r\nHost: proxy.test\r\ntransfer-encoding: chunked\r\n"
    b"content-length: 4\r\n\r\n2c\r\n",
    "te-twice": b"POST / HTTP/1.1\r\nHost: proxy.test\r\ntransfer-encoding: chunked\r\n"
    b"transfer-encoding: identity\r\ncontent-length: 48\r\n\r\n0\r\n\r\n",
    "te-tab": b"POST / HTTP/1.1\r\nHost: proxy.test\r\ncontent-length: 48\r\n"
    b"transfer-encoding:\tchunked\r\n\r\n0\r\n\r\n",
    "te-xchunked": b"POST / HTTP/1.1\r\nHost: proxy.test\r\ncontent-length: 48\r\n"
    b"transfer-encoding: xchunked\r\n\r\n0\r\n\r\n",
}
HIDDEN = b"GET /smuggled HTTP/1.1\r\nHost: proxy.test\r\n\r\n"


@pytest.mark.parametrize("name", sorted(SMUGGLERS))
def test_a_request_hidden_in_a_body_is_never_answered(serve: Serve, name: str) -> None:
    app = Script()
    served = serve(app)
    served.send(SMUGGLERS[name] + HIDDEN)
    assert "/smuggled" not in app.paths()
    if served.statuses() == [400]:  # refused by the parser
        assert app.seen == []
    else:  # or read as one request whose body hides the other
        assert served.statuses() == [200]
        assert HIDDEN in app.seen[0].body
    served.send(GET)
    assert "/smuggled" not in app.paths()


def test_content_length_with_transfer_encoding_is_refused(serve: Serve) -> None:
    served = serve(Script())
    served.send(SMUGGLERS["cl-te"] + HIDDEN)
    assert served.error()["message"] == (
        "invalid HTTP request: Transfer-Encoding can't be present with Content-Length"
    )
    assert served.closed


# --------------------------------------------------------------------------- upgrade

UPGRADE = (
    b"GET /up HTTP/1.1\r\nHost: proxy.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
)
AFTER_UPGRADE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nGET /after HTTP/1.1\r\nHost: proxy.test\r\n\r\n"


@pytest.mark.parametrize("piece", [1, 1 << 16])
def test_an_upgrade_is_answered_as_a_request_and_the_connection_closed(
    serve: Serve, piece: int
) -> None:
    app = Script(headers=[(b"content-length", b"2")])
    served = serve(app)
    data = UPGRADE + AFTER_UPGRADE
    for start in range(0, len(data), piece):
        served.send(data[start : start + piece])
    (reply,) = served.replies()
    assert (reply.status, reply.body) == (200, b"ok")
    assert served.closed
    assert app.paths() == ["/up"]


def test_bytes_after_an_upgrade_while_it_is_answered_are_never_parsed(serve: Serve) -> None:
    gate = asyncio.Event()
    app = Script(gate=gate)
    served = serve(app)
    served.send(UPGRADE)
    served.send(GET + GET)
    gate.set()
    served.settle()
    assert served.statuses() == [200]
    assert served.closed
    assert app.paths() == ["/up"]


def test_the_response_to_an_upgrade_says_the_connection_closes(serve: Serve) -> None:
    served = serve(Script(headers=[(b"content-length", b"2")]))
    served.send(UPGRADE)
    (reply,) = served.replies()
    assert reply.header(b"connection") == b"close"


# --------------------------------------------------------------------------- writes


def test_the_head_goes_out_with_the_first_body_part(serve: Serve) -> None:
    served = serve(Script(headers=[(b"content-length", b"5")], parts=[b"hello"]))
    served.send(GET)
    assert len(served.wire.writes) == 1
    assert served.wire.writes[0].endswith(b"\r\n\r\nhello")


def test_a_chunked_head_goes_out_with_its_first_chunk_then_one_write_a_part(
    serve: Serve,
) -> None:
    served = serve(Script(parts=[b"a", b"b", b"c"]))
    served.send(GET)
    assert len(served.wire.writes) == 3
    assert served.wire.writes[0].endswith(b"\r\n\r\n1\r\na\r\n")
    assert served.wire.writes[1:] == [b"1\r\nb\r\n", b"1\r\nc\r\n0\r\n\r\n"]


def test_a_bodiless_response_goes_out_in_one_write(serve: Serve) -> None:
    served = serve(Script(status=204, parts=[]))
    served.send(GET)
    assert served.wire.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]


# --------------------------------------------------------------------------- failures


def test_an_application_failing_before_its_response_gets_500(serve: Serve) -> None:
    served = serve(Script(fail="before"))
    served.send(GET + GET)
    assert served.statuses() == [500]
    assert served.error() == {"code": "internal_error", "message": "the proxy failed"}
    assert served.closed
    assert len(served.wire.writes) == 1


def test_an_application_returning_without_a_response_gets_500(serve: Serve) -> None:
    async def silent(scope: Message, receive: Receive, send: Send) -> None:
        pass

    served = serve(silent)
    served.send(GET)
    assert served.statuses() == [500]
    assert served.closed


@pytest.mark.parametrize("fail", ["after_start", "after_first_part"])
def test_an_application_failing_in_its_response_cuts_the_connection(
    serve: Serve, fail: str
) -> None:
    served = serve(Script(fail=fail, parts=[b"part", b"never"]))
    served.send(GET + GET)
    assert served.closed
    assert [reply.complete for reply in served.replies()] in ([], [False])
    assert b"never" not in served.output
    assert b"500" not in served.output


def test_an_application_returning_before_its_response_ends_cuts_the_connection(
    serve: Serve,
) -> None:
    served = serve(Script(headers=[(b"content-length", b"9")], parts=[b"part"], end=False))
    served.send(GET)
    assert served.closed
    (reply,) = served.replies()
    assert (reply.body, reply.complete) == (b"part", False)


def test_an_application_failing_after_its_response_keeps_the_connection(
    serve: Serve,
) -> None:
    served = serve(Script(fail="after_end"))
    served.send(GET)
    served.send(GET)
    assert served.statuses() == [200, 200]
    assert not served.closed


def test_a_body_longer_than_its_content_length_is_never_sent(serve: Serve) -> None:
    served = serve(Script(headers=[(b"content-length", b"3")], parts=[b"hello"]))
    served.send(GET)
    assert served.closed
    assert b"hello" not in served.output
    assert all(not reply.complete for reply in served.replies())


def test_a_body_growing_past_its_content_length_is_cut(serve: Serve) -> None:
    served = serve(Script(headers=[(b"content-length", b"3")], parts=[b"ab", b"cd"]))
    served.send(GET + GET)
    assert served.closed
    (reply,) = served.replies()
    assert (reply.body, reply.complete) == (b"ab", False)
    assert b"cd" not in served.output


def test_a_body_ended_short_of_its_content_length_closes_the_connection(
    serve: Serve,
) -> None:
    served = serve(Script(headers=[(b"content-length", b"10")], parts=[b"abc"]))
    served.send(GET + GET)
    assert served.closed
    (reply,) = served.replies()
    assert (reply.body, reply.complete) == (b"abc", False)


@pytest.mark.parametrize(
    "header",
    [
        (b"x-a", b"v\r\nx-injected: 1"),
        (b"x-a", b"v\nx-injected: 1"),
        (b"x-a", b"v\rx-injected: 1"),
        (b"x-a", b"v\x00"),
        (b"x-a\r\nx-injected", b"1"),
        (b"x-a", b"v\r\n\r\nHTTP/1.1 200 OK"),
    ],
)
def test_a_response_header_with_a_line_break_is_never_written(
    serve: Serve, header: tuple[bytes, bytes]
) -> None:
    served = serve(Script(headers=[header]))
    served.send(GET)
    assert b"x-injected" not in served.output
    assert served.output.count(b"HTTP/1.1") <= 1
    assert served.closed


def test_a_full_write_buffer_holds_the_response_until_it_drains(serve: Serve) -> None:
    served = serve(Script(parts=[b"a", b"b"]))
    served.protocol.pause_writing()
    served.send(GET)
    assert served.output == b""
    served.protocol.resume_writing()
    served.settle()
    (reply,) = served.replies()
    assert (reply.body, reply.complete) == (b"ab", True)


def test_a_server_shutting_down_ends_the_response_on_its_way_then_closes(
    serve: Serve,
) -> None:
    gate = asyncio.Event()
    app = Script(gate=gate, headers=[(b"content-length", b"2")])
    served = serve(app)
    served.send(GET + b"GET /next HTTP/1.1\r\nHost: p\r\n\r\n")
    served.protocol.shutdown()
    gate.set()
    served.settle()
    (reply,) = served.replies()
    assert (reply.body, reply.header(b"connection")) == (b"ok", b"close")
    assert served.closed
    assert app.paths() == ["/"]


def test_a_server_shutting_down_closes_an_idle_connection(serve: Serve) -> None:
    served = serve(Script())
    served.send(GET)
    served.protocol.shutdown()
    served.settle()
    assert served.closed
    assert served.statuses() == [200]


# --------------------------------------------------------------------------- bodies


@pytest.mark.parametrize(
    "chunks",
    [
        b"5;ext=1\r\nhello\r\n0\r\n\r\n",
        b"5;a=b;c\r\nhello\r\n0;last\r\n\r\n",
        b'2;name="quoted value"\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n',
        b"00005\r\nhello\r\n0\r\nx-trailer: t\r\n\r\n",
        b"5\r\nhello\r\n0\r\n\r\n",
    ],
)
def test_a_chunked_body_reaches_the_application_whole(serve: Serve, chunks: bytes) -> None:
    app = Script()
    served = serve(app)
    head = b"POST / HTTP/1.1\r\nHost: proxy.test\r\ntransfer-encoding: chunked\r\n\r\n"
    for byte in head + chunks:
        served.protocol.data_received(bytes([byte]))
    served.settle()
    assert app.seen[0].body == b"hello"
    assert served.statuses() == [200]
    assert not served.closed


def test_an_unread_body_over_the_buffer_pauses_reading_until_the_application_reads(
    serve: Serve,
) -> None:
    gate = asyncio.Event()
    app = Script(read=False)
    total = 3 * BODY_BUFFER_BYTES

    async def reads_later(scope: Message, receive: Receive, send: Send) -> None:
        await gate.wait()
        app.read = True
        await app(scope, receive, send)

    served = serve(reads_later)
    body = bytes(random.Random(1).randbytes(total))
    served.send(post(body)[: -total + BODY_BUFFER_BYTES])
    assert (served.wire.pauses, served.protocol.read_paused) == (0, False)
    served.send(body[BODY_BUFFER_BYTES : BODY_BUFFER_BYTES + 10])  # one byte over is enough
    assert (served.wire.pauses, served.protocol.read_paused) == (1, True)
    gate.set()
    served.settle()
    assert (served.wire.resumes, served.protocol.read_paused) == (1, False)
    served.send(body[BODY_BUFFER_BYTES + 10 :])
    assert app.seen[0].body == body
    assert served.statuses() == [200]


def test_a_body_read_as_it_comes_never_pauses_reading(serve: Serve) -> None:
    app = Script()
    served = serve(app)
    body = b"x" * (4 * BODY_BUFFER_BYTES)
    data = post(body)
    for start in range(0, len(data), BODY_BUFFER_BYTES // 2):
        served.send(data[start : start + BODY_BUFFER_BYTES // 2])
    assert served.wire.pauses == 0
    assert app.seen[0].body == body


# --------------------------------------------------------------------------- client gone


def test_a_client_going_mid_response_fires_client_gone_and_disconnects(serve: Serve) -> None:
    events: list[str] = []

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        gone: ClientGone = scope["extensions"][CLIENT_GONE]["gone"]
        went = asyncio.Event()

        def then() -> None:
            events.append("gone")
            went.set()

        gone.then = then
        assert (await receive())["type"] == "http.request"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await went.wait()
        events.append((await receive())["type"])
        await send({"type": "http.response.body", "body": b"dropped"})  # goes nowhere
        events.append("returned")

    served = serve(app)
    served.send(GET)
    assert events == []
    served.lose(ConnectionResetError())
    assert events == ["gone", "http.disconnect", "returned"]
    assert b"dropped" not in served.output


def test_receive_after_the_whole_body_waits_for_the_disconnect(serve: Serve) -> None:
    events: list[str] = []

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        assert (await receive())["more_body"] is False
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        events.append((await receive())["type"])

    served = serve(app)
    served.send(GET)
    assert events == []  # still waiting
    served.lose()
    assert events == ["http.disconnect"]


def test_client_gone_does_not_fire_once_the_response_is_complete(serve: Serve) -> None:
    fired: list[str] = []

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        scope["extensions"][CLIENT_GONE]["gone"].then = lambda: fired.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    served = serve(app)
    served.send(GET)
    served.lose()
    assert fired == []


def test_a_client_going_while_the_body_is_read_disconnects_the_reader(serve: Serve) -> None:
    app = Script()
    served = serve(app)
    served.send(post(b"hello world")[:-5])
    served.lose()
    record = app.seen[0]
    assert record.received[-1] == {"type": "http.disconnect"}
    assert record.done
    assert served.output == b""


# --------------------------------------------------------------------------- fuzz

VALID = [
    GET,
    b"HEAD /h HTTP/1.1\r\nHost: proxy.test\r\n\r\n",
    post(b"hello"),
    post(b"", extra=b"Expect: 100-continue\r\n"),
    b"POST /c HTTP/1.1\r\nHost: p\r\ntransfer-encoding: chunked\r\n\r\n"
    b"5;x=1\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
    b"GET /old HTTP/1.0\r\n\r\n",
    b"GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /close HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
    UPGRADE,
    b"OPTIONS * HTTP/1.1\r\nHost: p\r\n\r\n",
    b"GET http://p/abs?q=%41 HTTP/1.1\r\nHost: p\r\n\r\n",
]
TOKENS = [
    b"\r\n",
    b"\n",
    b"\r",
    b"\x00",
    b" ",
    b":",
    b"\t",
    b"chunked",
    b"content-length: 5\r\n",
    b"transfer-encoding: chunked\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffffffff\r\n",
    b"HTTP/1.1",
    b"\xff",
]


def fuzz_input(rng: random.Random) -> bytes:
    if rng.random() < 0.25:
        return rng.randbytes(rng.randrange(0, 200))
    data = bytearray(b"".join(rng.choice(VALID) for _ in range(rng.randrange(1, 7))))
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        where = rng.randrange(0, len(data) + 1)
        kind = rng.randrange(5)
        if kind == 0 and data:
            data[min(where, len(data) - 1)] = rng.randrange(256)
        elif kind == 1:
            data[where:where] = rng.choice(TOKENS)
        elif kind == 2:
            del data[where : where + rng.randrange(1, 8)]
        elif kind == 3:
            data[where:where] = data[where : where + rng.randrange(1, 40)]
        else:
            del data[where:]
    return bytes(data)


class FuzzApp:
    """Answers with a length, chunked or close-delimited, reading the body or not, by
    the order of the request."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.statuses: list[int] = []

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        index = len(self.seen)
        record = Seen(scope)
        self.seen.append(record)
        if index % 2 == 0 and not await read_body(record, receive):
            return
        status = (200, 201, 204, 404)[index % 4]
        self.statuses.append(status)
        headers = [(b"content-length", b"5")] if index % 3 == 0 else []
        await send({"type": "http.response.start", "status": status, "headers": headers})
        first, rest = (b"he", b"llo") if status != 204 else (b"", b"")
        await send({"type": "http.response.body", "body": first, "more_body": True})
        await send({"type": "http.response.body", "body": rest})


def fuzz_one(serve: Serve, rng: random.Random) -> None:
    data = fuzz_input(rng)
    app = FuzzApp()
    served = serve(app)
    at = 0
    while at < len(data) and not served.closed:
        if served.protocol.read_paused:
            served.settle()
            if served.closed:
                break
            assert not served.protocol.read_paused, f"reading stalled: {data!r}"
        size = rng.choice((1, 2, 3, rng.randrange(1, 64), len(data)))
        served.protocol.data_received(data[at : at + size])
        at += size
        if rng.random() < 0.5:
            served.settle()
    served.settle()
    if not served.closed:
        # a request waiting for the rest of its head, or the next: a timer ends it
        for delay in (HEADER_TIMEOUT, IDLE_TIMEOUT):
            served.timers.fire(delay)
            served.settle()
    if not served.closed:  # a body waiting for more bytes: the client goes
        served.lose()
    assert served.closed
    methods = [record.scope["method"] == "HEAD" for record in app.seen]
    got = [reply.status for reply in served.replies(methods) if reply.status >= 200]
    assert all(reply.complete for reply in served.replies(methods)[:-1]), data
    for index, status in enumerate(got):
        if index < len(app.statuses) and status == app.statuses[index]:
            continue  # the application's answers, in order
        # else the protocol's refusal (which may stand for an answer the application was
        # about to give), and the last
        assert status in REFUSALS, data
        assert index == len(got) - 1, data


@pytest.mark.parametrize("seed", range(6))
def test_fuzzed_input_never_breaks_the_connection(serve: Serve, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(500):
        fuzz_one(serve, rng)


def test_client_gone_says_it_fired_to_an_application_that_reads_no_body(serve: Serve) -> None:
    seen: list[bool] = []
    release = asyncio.Event()

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        gone: ClientGone = scope["extensions"][CLIENT_GONE]["gone"]
        seen.append(gone.fired)
        await release.wait()
        seen.append(gone.fired)

    served = serve(app)
    served.send(GET)
    served.lose()
    release.set()
    served.settle()
    assert seen == [False, True]


# --------------------------------------------------------------------------- whole responses


def _whole_app(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes, sent: list[bool]
) -> App:
    async def app(scope: Message, receive: Receive, send: Send) -> None:
        send_whole: SendWhole = scope["extensions"][SEND_WHOLE]["send"]
        sent.append(send_whole(scope, status, headers, body))
        if not sent[-1]:  # as ASGI has it, then
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    return app


def _messages_app(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> App:
    async def app(scope: Message, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


@pytest.mark.parametrize(
    ("request_bytes", "status", "headers", "body"),
    [
        (GET, 200, [(b"content-type", b"text/plain"), (b"content-length", b"2")], b"ok"),
        (GET, 200, [(b"content-type", b"text/plain")], b"chunked"),
        (GET, 204, [], b""),
        (GET, 200, [(b"connection", b"close"), (b"content-length", b"2")], b"ok"),
        (b"HEAD / HTTP/1.1\r\nHost: proxy.test\r\n\r\n", 200, [(b"content-length", b"9")], b""),
        (b"GET / HTTP/1.0\r\nHost: proxy.test\r\n\r\n", 200, [], b"to the close"),
    ],
)
def test_a_whole_response_goes_on_the_wire_as_its_two_messages_would(
    serve: Serve,
    request_bytes: bytes,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    sent: list[bool] = []
    whole = serve(_whole_app(status, headers, body, sent))
    whole.send(request_bytes + GET)
    by_messages = serve(_messages_app(status, headers, body))
    by_messages.send(request_bytes + GET)
    assert sent[0] is True
    assert whole.output == by_messages.output
    assert whole.closed == by_messages.closed


def test_a_whole_response_with_a_wrong_length_is_refused_as_its_messages_are(
    serve: Serve,
) -> None:
    sent: list[bool] = []
    served = serve(_whole_app(200, [(b"content-length", b"5")], b"too long", sent))
    served.send(GET)
    assert sent == []  # the call raised: the response is cut, and so is the connection
    assert served.closed
    assert served.output == b""


def test_a_whole_response_waits_for_a_paused_write_as_messages(serve: Serve) -> None:
    sent: list[bool] = []
    served = serve(_whole_app(200, [(b"content-length", b"2")], b"ok", sent))
    served.protocol.pause_writing()
    served.send(GET)
    assert sent == [False]  # the application sends its two messages instead, which wait
    assert served.output == b""
    served.protocol.resume_writing()
    served.settle()
    assert served.statuses() == [200]


def test_a_whole_response_for_another_request_or_a_second_time_is_refused(
    serve: Serve,
) -> None:
    results: list[bool] = []

    async def app(scope: Message, receive: Receive, send: Send) -> None:
        send_whole: SendWhole = scope["extensions"][SEND_WHOLE]["send"]
        results.append(send_whole({**scope}, 200, [(b"content-length", b"1")], b"x"))
        results.append(send_whole(scope, 200, [(b"content-length", b"2")], b"ok"))
        results.append(send_whole(scope, 200, [(b"content-length", b"2")], b"ok"))

    served = serve(app)
    served.send(GET)
    assert results == [False, True, False]
    assert served.statuses() == [200]
