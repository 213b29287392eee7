"""The upstream transport against real loopback servers, on both event loops: raw
asyncio servers where the exact bytes matter, uvicorn for many concurrent requests. The
framing rules of RFC 9112, byte by byte, are in ``test_transport_conformance.py``."""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from proxy.transport import PooledTransport, _Connection
from tests.proxy.raw_upstream import (
    LOOPS,
    Handler,
    Peer,
    RawServer,
    Received,
    Run,
    answer,
    answering,
    chunk,
    chunks_of,
    fetch,
    make_request,
    parts,
    read_all,
    runner,
    wait_for,
    within,
)


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Run[Any]:
    """Runs a coroutine to completion on a fresh loop of each kind."""
    return runner(request.param)


# --------------------------------------------------------------------------- responses


def test_content_length_body_status_headers_and_extensions(run: Run[None]) -> None:
    reply = answer(b"hello", status=b"201 Created", headers=b"X-Tag: a\r\nx-tag: b\r\n")

    async def scenario() -> None:
        async with RawServer(answering(lambda _: reply)) as server:
            transport = PooledTransport()
            try:
                response, body = await fetch(transport, server.url + "/v1/chat?x=1")
            finally:
                await transport.aclose()
        assert (response.status_code, body) == (201, b"hello")
        assert response.headers.raw == [
            (b"Content-Length", b"5"),
            (b"X-Tag", b"a"),
            (b"x-tag", b"b"),
        ]
        assert response.extensions == {"http_version": b"HTTP/1.1", "reason_phrase": b"Created"}
        (request,) = server.requests
        assert (request.method, request.target) == ("GET", "/v1/chat?x=1")
        assert request.headers["host"] == server.url.removeprefix("http://")

    run(scenario())


def test_chunked_body_reaches_the_client_chunk_by_chunk(run: Run[None]) -> None:
    first_received = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        peer.send(chunk(b"data: first\n\n"))
        await first_received.wait()  # the second event exists only after the first arrived
        peer.send(chunk(b"data: second\n\n") + chunk(b""))
        await peer.sees_eof()

    async def scenario() -> None:
        async with RawServer(handler) as server:
            transport = PooledTransport()
            try:
                response = await transport.handle_async_request(make_request(server.url))
                chunks = chunks_of(response)
                assert await within(anext(chunks)) == b"data: first\n\n"
                first_received.set()
                assert [chunk async for chunk in chunks] == [b"data: second\n\n"]
                await response.aclose()
            finally:
                await transport.aclose()

    run(scenario())


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\n"],
    ids=["connection-close", "http-1.0"],
)
def test_close_delimited_body_ends_with_the_connection(run: Run[None], head: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.send(head + b"until ")
        await peer.writer.drain()
        peer.send(b"the end")

    async def scenario() -> None:
        async with RawServer(handler) as server:
            transport = PooledTransport()
            try:
                first, body = await fetch(transport, server.url)
                assert body == b"until the end"
                assert first.extensions["http_version"] == head[:8]
                _, again = await fetch(transport, server.url)
                assert again == b"until the end"
            finally:
                await transport.aclose()
        assert server.accepted == 2

    run(scenario())


def test_head_204_and_304_have_no_body_and_keep_the_connection(run: Run[None]) -> None:
    def reply(request: Received) -> bytes:
        if request.method == "HEAD":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        if request.target == "/204":
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        if request.target == "/304":
            return b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"
        return answer(b"after")

    async def scenario() -> None:
        async with RawServer(answering(reply)) as server:
            transport = PooledTransport()
            try:
                head, head_body = await fetch(transport, server.url, "HEAD")
                assert (head.status_code, head_body) == (200, b"")
                assert head.headers["content-length"] == "1000"
                assert (await fetch(transport, server.url + "/after-head"))[1] == b"after"
                no_content, body = await fetch(transport, server.url + "/204")
                assert (no_content.status_code, body) == (204, b"")
                not_modified, body = await fetch(transport, server.url + "/304")
                assert (not_modified.status_code, body) == (304, b"")
                assert (await fetch(transport, server.url + "/last"))[1] == b"after"
            finally:
                await transport.aclose()
        assert server.accepted == 1

    run(scenario())


def test_interim_responses_are_skipped(run: Run[None]) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        peer.send(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n")
        peer.send(answer(b"final", headers=b"X-Final: yes\r\n"))
        await peer.sees_eof()

    async def scenario() -> None:
        async with RawServer(handler) as server:
            transport = PooledTransport()
            try:
                response, body = await fetch(transport, server.url)
            finally:
                await transport.aclose()
        assert (response.status_code, body) == (200, b"final")
        assert response.headers.raw == [(b"Content-Length", b"5"), (b"X-Final", b"yes")]
        assert response.extensions["reason_phrase"] == b"OK"

    run(scenario())


# --------------------------------------------------------------------------- reuse


def test_sequential_requests_reuse_one_connection(run: Run[None]) -> None:
    async def scenario() -> None:
        async with RawServer(answering(lambda r: answer(r.target.encode()))) as server:
            transport = PooledTransport()
            try:
                for n in range(5):
                    _, body = await fetch(transport, f"{server.url}/{n}")
                    assert body == f"/{n}".encode()
                assert server.finished == 0
            finally:
                await transport.aclose()
            # closing the transport closes its idle connection
            await within(wait_for(lambda: server.finished == 1))
        assert server.accepted == 1
        assert [request.connection for request in server.requests] == [1] * 5

    run(scenario())


def test_connection_close_response_is_not_reused(run: Run[None]) -> None:
    eofs: list[bool] = []

    async def handler(peer: Peer) -> None:
        await peer.request()
        # says close but leaves it to the client, which must close it and not reuse it
        peer.send(answer(headers=b"Connection: close\r\n"))
        eofs.append(await peer.sees_eof())

    async def scenario() -> None:
        async with RawServer(handler) as server:
            transport = PooledTransport()
            try:
                await fetch(transport, server.url)
                await fetch(transport, server.url)
                await within(wait_for(lambda: len(eofs) == 2))
            finally:
                await transport.aclose()
        assert server.accepted == 2

    run(scenario())


def test_connection_idle_past_its_timeout_is_not_reused(run: Run[None]) -> None:
    async def scenario() -> None:
        async with RawServer(answering()) as server:
            transport = PooledTransport(idle_timeout=0.0)
            try:
                await fetch(transport, server.url)
                await fetch(transport, server.url)
            finally:
                await transport.aclose()
        assert server.accepted == 2

    run(scenario())


def test_idle_connections_over_the_limit_are_closed(run: Run[None]) -> None:
    async def scenario() -> None:
        async with RawServer(answering()) as server:
            transport = PooledTransport(max_idle_per_host=1)
            try:
                await asyncio.gather(*(fetch(transport, server.url) for _ in range(3)))
                for _ in range(3):
                    await fetch(transport, server.url)
            finally:
                await transport.aclose()
        # three at once need three connections; one stays idle and serves the rest
        assert server.accepted == 3
        assert len({request.connection for request in server.requests[3:]}) == 1

    run(scenario())


def test_idle_connection_the_server_closed_is_replaced(run: Run[None]) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.send(answer())  # keep-alive, but the server closes it after the answer

    async def scenario() -> None:
        async with RawServer(handler) as server:
            transport = PooledTransport()
            try:
                for _ in range(3):
                    assert (await fetch(transport, server.url))[1] == b"ok"
            finally:
                await transport.aclose()
        assert server.accepted == 3

    run(scenario())


def stale_on_second_request(peer: Peer) -> Awaitable[None]:
    """Answers the first request on the first connection, then closes it without an
    answer when the second arrives: the server's keep-alive timeout racing the client.
    Later connections answer normally."""

    def reply(request: Received) -> bytes:
        if request.method == "HEAD":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        return answer(request.body or b"again")

    async def handler() -> None:
        if peer.index == 1:
            await peer.request()
            peer.send(answer(b"first"))
            await peer.request()
            return
        await answering(reply)(peer)

    return handler()


@pytest.mark.parametrize(
    ("method", "content"),
    [
        ("GET", None),
        ("HEAD", None),
        ("OPTIONS", None),
        ("TRACE", None),
        ("PUT", b"payload"),
        ("DELETE", b"payload"),
    ],
)
def test_stale_connection_is_retried_once_for_an_idempotent_request(
    run: Run[None], method: str, content: bytes | None
) -> None:
    async def scenario() -> None:
        async with RawServer(stale_on_second_request) as server:
            transport = PooledTransport()
            try:
                assert (await fetch(transport, server.url))[1] == b"first"
                response, body = await fetch(transport, server.url, method, content=content)
                assert response.status_code == 200
                assert body == (b"" if method == "HEAD" else content or b"again")
            finally:
                await transport.aclose()
        assert server.accepted == 2
        assert [(r.method, r.connection, r.body) for r in server.requests[1:]] == [
            (method, 1, content or b""),
            (method, 2, content or b""),
        ]

    run(scenario())


@pytest.mark.parametrize("method", ["POST", "PATCH", "LOCK"])
def test_stale_connection_is_not_retried_for_a_request_that_is_not_idempotent(
    run: Run[None], method: str
) -> None:
    async def scenario() -> None:
        async with RawServer(stale_on_second_request) as server:
            transport = PooledTransport()
            try:
                await fetch(transport, server.url)
                with pytest.raises(httpx.RemoteProtocolError) as raised:
                    await fetch(transport, server.url, method, content=b"charge the card")
                assert raised.value.request.method == method
            finally:
                await transport.aclose()
        # the upstream may have acted on it: it is sent once, never again
        assert server.accepted == 1
        assert [(r.method, r.body) for r in server.requests[1:]] == [(method, b"charge the card")]

    run(scenario())


def test_stale_connection_is_not_retried_for_a_streamed_body(run: Run[None]) -> None:
    async def scenario() -> None:
        async with RawServer(stale_on_second_request) as server:
            transport = PooledTransport()
            try:
                await fetch(transport, server.url)
                with pytest.raises(httpx.RemoteProtocolError) as raised:
                    await fetch(transport, server.url, "PUT", content=parts(b"once"))
                assert raised.value.request.method == "PUT"
            finally:
                await transport.aclose()
        assert server.accepted == 1
        assert [(r.method, r.body) for r in server.requests[1:]] == [("PUT", b"once")]

    run(scenario())


def reset_after_first_answer(closed: asyncio.Event) -> Handler:
    """Answers the first connection's request, then resets it (RST, no FIN) and sets
    ``closed``; later connections answer each request with its body."""

    async def handler(peer: Peer) -> None:
        if peer.index > 1:
            await answering(lambda request: answer(request.body))(peer)
            return
        await peer.request()
        peer.send(answer(b"first"))
        await peer.writer.drain()
        sock = peer.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.writer.transport.abort()
        closed.set()

    return handler


@pytest.mark.parametrize("content", [b"charge the card", "streamed"])
def test_request_nothing_of_which_was_sent_goes_on_a_new_connection(
    run: Run[None], monkeypatch: pytest.MonkeyPatch, content: bytes | str
) -> None:
    # the reset lands after the pool's look at the socket: the first write fails
    monkeypatch.setattr(_Connection, "readable", lambda _: False, raising=False)
    closed = asyncio.Event()

    async def scenario() -> None:
        async with RawServer(reset_after_first_answer(closed)) as server:
            transport = PooledTransport()
            try:
                assert (await fetch(transport, server.url))[1] == b"first"
                await within(closed.wait())
                upload = parts(b"charge ", b"the card") if content == "streamed" else content
                _, body = await fetch(transport, server.url, "POST", content=upload)
                assert body == b"charge the card"
            finally:
                await transport.aclose()
        assert [(r.method, r.connection) for r in server.requests] == [("GET", 1), ("POST", 2)]

    run(scenario())


def test_idle_connection_with_unread_bytes_is_not_reused(run: Run[None]) -> None:
    first_read, late_sent = asyncio.Event(), asyncio.Event()

    async def handler(peer: Peer) -> None:
        if peer.index > 1:
            await answering(lambda _: answer(b"fresh"))(peer)
            return
        await peer.request()
        peer.send(answer(b"first"))
        await first_read.wait()
        # a late second response, there before the loop has told the pool
        peer.send(answer(b"stale answer"))
        await peer.writer.drain()
        late_sent.set()
        await peer.sees_eof()

    async def scenario() -> None:
        async with RawServer(handler) as server:
            transport = PooledTransport()
            try:
                assert (await fetch(transport, server.url))[1] == b"first"
                first_read.set()
                await within(late_sent.wait())
                assert (await fetch(transport, server.url + "/next"))[1] == b"fresh"
            finally:
                await transport.aclose()
        assert [(r.target, r.connection) for r in server.requests] == [("/", 1), ("/next", 2)]

    run(scenario())


def test_new_connection_closed_without_answer_is_not_retried(run: Run[None]) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()

    async def scenario() -> None:
        async with RawServer(handler) as server:
            transport = PooledTransport()
            try:
                with pytest.raises(httpx.RemoteProtocolError):
                    await fetch(transport, server.url, "POST", content=b"x")
            finally:
                await transport.aclose()
        assert server.accepted == 1

    run(scenario())


# --------------------------------------------------------------------------- request bodies


def test_streamed_request_body_goes_in_chunked_framing(run: Run[None]) -> None:
    pieces = (b"alpha", b"", b"beta" * 5000, b"gamma")

    async def scenario() -> None:
        async with RawServer(answering(lambda r: answer(r.body))) as server:
            transport = PooledTransport()
            try:
                _, body = await fetch(transport, server.url, "POST", content=parts(*pieces))
            finally:
                await transport.aclose()
        assert body == b"".join(pieces)
        (request,) = server.requests
        assert request.headers["transfer-encoding"] == "chunked"
        assert request.raw_body == b"5\r\nalpha\r\n4e20\r\n%b\r\n5\r\ngamma\r\n0\r\n\r\n" % (
            b"beta" * 5000
        )

    run(scenario())


def test_large_request_bodies_arrive_intact(run: Run[None]) -> None:
    payload = random.Random(7).randbytes(3 * 1024 * 1024)

    async def slow_reader(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            peer.send(answer(hashlib.sha256(request.body).hexdigest().encode()))

    async def halves() -> AsyncIterator[bytes]:
        yield payload[: len(payload) // 2]
        yield payload[len(payload) // 2 :]

    async def scenario() -> None:
        async with RawServer(slow_reader) as server:
            transport = PooledTransport()
            try:
                _, as_bytes = await fetch(transport, server.url, "PUT", content=payload)
                _, streamed = await fetch(transport, server.url, "PUT", content=halves())
            finally:
                await transport.aclose()
        digest = hashlib.sha256(payload).hexdigest().encode()
        assert as_bytes == streamed == digest

    run(scenario())


def test_header_with_a_line_break_is_refused(run: Run[None]) -> None:
    async def scenario() -> None:
        transport = PooledTransport()
        request = httpx.Request(
            "GET", "http://127.0.0.1:9/", headers={"X-Evil": "a\r\nHost: elsewhere"}
        )
        with pytest.raises(httpx.LocalProtocolError) as raised:
            await transport.handle_async_request(request)
        assert raised.value.request is request
        await transport.aclose()

    run(scenario())


# --------------------------------------------------------------------------- flow control


def test_large_response_to_a_slow_consumer_pauses_reading(run: Run[None]) -> None:
    size = 50 * 1024 * 1024
    block = random.Random(3).randbytes(64 * 1024)
    limit = 256 * 1024

    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // len(block)):
            peer.send(block)
            await peer.writer.drain()
        await peer.sees_eof()

    async def scenario() -> None:
        async with RawServer(handler) as server:
            transport = PooledTransport(read_buffer_limit=limit)
            try:
                response = await transport.handle_async_request(make_request(server.url))
                chunks = chunks_of(response)
                digest = hashlib.sha256(await anext(chunks))
                # consume nothing until the body has piled up past the limit
                await within(wait_for(lambda: transport.peak_buffered_bytes > limit))
                async for chunk in chunks:
                    digest.update(chunk)
                    await asyncio.sleep(0)
                await response.aclose()
            finally:
                await transport.aclose()
            expected = hashlib.sha256()
            for _ in range(size // len(block)):
                expected.update(block)
            assert digest.digest() == expected.digest()
            # one read of the socket may land past the limit; nothing more does
            assert limit < transport.peak_buffered_bytes < 3 * limit

    run(scenario())


def test_write_timeout_when_the_server_does_not_read(run: Run[None]) -> None:
    async def never_reads(peer: Peer) -> None:
        await peer.reader.readuntil(b"\r\n\r\n")
        await asyncio.Event().wait()

    async def scenario() -> None:
        async with RawServer(never_reads) as server:
            transport = PooledTransport()
            try:
                with pytest.raises(httpx.WriteTimeout):
                    await fetch(transport, server.url, "PUT", content=b"x" * (32 << 20), write=0.2)
            finally:
                await transport.aclose()

    run(scenario())


# --------------------------------------------------------------------------- failures


def test_refused_connection_is_a_connect_error(run: Run[None]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario() -> None:
        transport = PooledTransport()
        request = make_request(f"http://127.0.0.1:{port}/")
        with pytest.raises(httpx.ConnectError) as raised:
            await transport.handle_async_request(request)
        assert raised.value.request is request
        await transport.aclose()

    run(scenario())


def test_unanswered_connect_is_a_connect_timeout(run: Run[None]) -> None:
    # a listener whose backlog is full drops further handshakes: connects hang
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        port = listener.getsockname()[1]

        async def scenario() -> None:
            transport = PooledTransport()
            with pytest.raises(httpx.ConnectTimeout):
                await fetch(transport, f"http://127.0.0.1:{port}/", connect=0.2)
            await transport.aclose()

        run(scenario())


def test_server_that_stalls_is_a_read_timeout(run: Run[None]) -> None:
    release = asyncio.Event()
    eofs: list[bool] = []

    async def handler(peer: Peer) -> None:
        request = await peer.request()
        assert request is not None
        if request.target == "/mid-body":
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await release.wait()
        eofs.append(await peer.sees_eof())

    async def scenario() -> None:
        async with RawServer(handler) as server:
            transport = PooledTransport()
            try:
                with pytest.raises(httpx.ReadTimeout) as raised:
                    await fetch(transport, server.url + "/headers", read=0.1)
                assert raised.value.request.url.path == "/headers"
                response = await transport.handle_async_request(
                    make_request(server.url + "/mid-body", read=0.1)
                )
                chunks = chunks_of(response)
                assert await anext(chunks) == b"half"
                with pytest.raises(httpx.ReadTimeout):
                    await anext(chunks)
                await response.aclose()
                release.set()
                # both connections were closed on the timeout
                await within(wait_for(lambda: len(eofs) == 2))
            finally:
                await transport.aclose()

    run(scenario())


def test_each_wait_on_a_connection_has_its_own_read_limit(run: Run[None]) -> None:
    """The read timer stays armed between waits on a connection: a wait after a short
    one runs to its own limit (or none), and a later short one still times out."""
    release = asyncio.Event()

    async def handler(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            if request.target == "/late":
                await asyncio.sleep(0.4)  # past the first wait's limit, within this one's
            elif request.target == "/stall":
                await release.wait()
            peer.send(answer(request.target.encode()))

    async def scenario() -> None:
        async with RawServer(handler) as server:
            transport = PooledTransport()
            try:
                assert (await fetch(transport, server.url + "/a", read=0.2))[1] == b"/a"
                assert (await fetch(transport, server.url + "/late", read=5.0))[1] == b"/late"
                assert (await fetch(transport, server.url + "/b", read=0.2))[1] == b"/b"
                request = make_request(server.url + "/late")
                request.extensions["timeout"]["read"] = None  # no limit at all
                _, body = await within(fetch_request(transport, request))
                assert body == b"/late"
                with pytest.raises(httpx.ReadTimeout):
                    await within(fetch(transport, server.url + "/stall", read=0.2))
                release.set()
            finally:
                await transport.aclose()
        # one connection for all: no wait before the last timed out (which closes it)
        assert server.accepted == 1

    run(scenario())


async def fetch_request(
    transport: PooledTransport, request: httpx.Request
) -> tuple[httpx.Response, bytes]:
    response = await transport.handle_async_request(request)
    return response, await read_all(response)


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    ],
    ids=["content-length", "chunked", "bad-chunk"],
)
def test_server_cutting_the_body_short_is_a_protocol_error(run: Run[None], reply: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.send(reply)

    async def scenario() -> None:
        async with RawServer(handler) as server:
            transport = PooledTransport()
            try:
                response = await transport.handle_async_request(make_request(server.url))
                received = []
                with pytest.raises(httpx.RemoteProtocolError) as raised:
                    async for chunk in chunks_of(response):
                        received.append(chunk)
                assert raised.value.request.url == server.url
                assert b"".join(received) in (b"only ten b", b"hello")
                await response.aclose()
            finally:
                await transport.aclose()

    run(scenario())


@pytest.mark.parametrize(
    "reply",
    [
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ],
    ids=["not-http", "bad-length", "upgrade"],
)
def test_malformed_response_is_a_protocol_error(run: Run[None], reply: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.send(reply)
        await peer.sees_eof()

    async def scenario() -> None:
        async with RawServer(handler) as server:
            transport = PooledTransport()
            try:
                with pytest.raises(httpx.RemoteProtocolError):
                    await fetch(transport, server.url)
            finally:
                await transport.aclose()

    run(scenario())


# --------------------------------------------------------------------------- cancellation


def test_closing_the_stream_mid_body_closes_the_upstream_connection(run: Run[None]) -> None:
    eofs: list[bool] = []

    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nfirst part")
        eofs.append(await peer.sees_eof())

    async def scenario() -> None:
        async with RawServer(handler) as server:
            transport = PooledTransport()
            try:
                response = await transport.handle_async_request(make_request(server.url))
                assert await anext(chunks_of(response)) == b"first part"
                await response.aclose()
                await within(wait_for(lambda: eofs == [True]))
            finally:
                await transport.aclose()

    run(scenario())


@pytest.mark.parametrize("during", ["headers", "body"])
def test_cancelled_request_closes_its_connection_and_frees_its_slot(
    run: Run[None], during: str
) -> None:
    eofs: list[bool] = []
    request_received, headers_received = asyncio.Event(), asyncio.Event()

    async def handler(peer: Peer) -> None:
        request = await peer.request()
        assert request is not None
        if request.target == "/slow":
            request_received.set()
            if during == "body":
                peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome")
            eofs.append(await peer.sees_eof())
            return
        peer.send(answer())
        await peer.sees_eof()

    async def scenario() -> None:
        async with RawServer(handler) as server:
            transport = PooledTransport(max_connections_per_host=1)
            try:

                async def slow() -> None:
                    response = await transport.handle_async_request(
                        make_request(server.url + "/slow")
                    )
                    headers_received.set()
                    await read_all(response)

                task = asyncio.create_task(slow())
                phase = headers_received if during == "body" else request_received
                await within(phase.wait())
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                await within(wait_for(lambda: eofs == [True]))
                assert (await fetch(transport, server.url + "/next"))[1] == b"ok"
            finally:
                await transport.aclose()
        assert server.accepted == 2

    run(scenario())


# --------------------------------------------------------------------------- the pool limit


def test_requests_over_the_limit_wait_in_line_or_time_out(run: Run[None]) -> None:
    release = asyncio.Event()

    async def handler(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            if request.target == "/hold":
                peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nho")
                await release.wait()
                peer.send(b"ld")
            else:
                peer.send(answer(request.target.encode()))

    async def scenario() -> None:
        async with RawServer(handler) as server:
            transport = PooledTransport(max_connections_per_host=1)
            try:
                holding = await transport.handle_async_request(make_request(server.url + "/hold"))
                with pytest.raises(httpx.PoolTimeout) as raised:
                    await fetch(transport, server.url + "/late", pool=0.05)
                assert raised.value.request.url.path == "/late"
                queued = [
                    asyncio.create_task(fetch(transport, f"{server.url}/{n}")) for n in range(3)
                ]
                await asyncio.sleep(0)
                release.set()
                assert await read_all(holding) == b"hold"
                bodies = [body for _, body in await within(asyncio.gather(*queued))]
                assert bodies == [b"/0", b"/1", b"/2"]
            finally:
                await transport.aclose()
        assert server.accepted == 1
        assert server.paths() == ["/hold", "/0", "/1", "/2"]

    run(scenario())


def test_connections_closed_after_use_pass_their_slot_to_waiters(run: Run[None]) -> None:
    async def scenario() -> None:
        async with RawServer(
            answering(lambda _: answer(headers=b"Connection: close\r\n"))
        ) as server:
            transport = PooledTransport(max_connections_per_host=1)
            try:
                results = await within(
                    asyncio.gather(*(fetch(transport, server.url) for _ in range(4)))
                )
            finally:
                await transport.aclose()
        assert [body for _, body in results] == [b"ok"] * 4
        assert server.accepted == 4

    run(scenario())


def test_cancelled_waiter_leaves_the_line(run: Run[None]) -> None:
    release = asyncio.Event()

    async def handler(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            if request.target == "/hold":
                await release.wait()
            peer.send(answer(request.target.encode()))

    async def scenario() -> None:
        async with RawServer(handler) as server:
            transport = PooledTransport(max_connections_per_host=1)
            try:
                holding = asyncio.create_task(fetch(transport, server.url + "/hold"))
                await within(wait_for(lambda: server.paths() == ["/hold"]))
                cancelled = asyncio.create_task(fetch(transport, server.url + "/cancelled"))
                waiting = asyncio.create_task(fetch(transport, server.url + "/waiting"))
                await asyncio.sleep(0)
                cancelled.cancel()
                release.set()
                assert (await within(holding))[1] == b"/hold"
                assert (await within(waiting))[1] == b"/waiting"
                with pytest.raises(asyncio.CancelledError):
                    await cancelled
            finally:
                await transport.aclose()
        assert server.accepted == 1
        assert server.paths() == ["/hold", "/waiting"]

    run(scenario())


# --------------------------------------------------------------------------- https


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_https_verifies_the_server_and_reuses_the_connection(
    run: Run[None], certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))

    async def scenario() -> None:
        async with RawServer(answering(lambda r: answer(r.body)), server_context) as server:
            transport = PooledTransport(ssl_context=trusting)
            try:
                for n in range(3):
                    _, body = await fetch(transport, server.url, "POST", content=b"%d" % n)
                    assert body == b"%d" % n
            finally:
                await transport.aclose()
            untrusting = PooledTransport()
            with pytest.raises(httpx.ConnectError):
                await fetch(untrusting, server.url)
            await untrusting.aclose()
        # the server counts a connection once its handshake succeeded
        assert server.accepted == 1

    run(scenario())


# --------------------------------------------------------------------------- many at once


@dataclass
class Uvicorn:
    url: str = ""
    server: uvicorn.Server | None = None
    peak_connections: int = 0

    def connections(self) -> int:
        assert self.server is not None
        return len(self.server.server_state.connections)


def expected_body(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture(scope="module")
def uvicorn_upstream() -> Iterator[Uvicorn]:
    """An ASGI app on uvicorn in a thread: ``/{seed}/{size}/{length|chunked}`` answers
    ``size`` deterministic bytes; a POST answers its body with the seed's bytes added."""
    live = Uvicorn()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        live.peak_connections = max(live.peak_connections, live.connections())
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        _, seed, size, framing = scope["path"].split("/")
        payload = body + expected_body(int(seed), int(size))
        headers = [(b"content-type", b"application/octet-stream")]
        if framing == "length":
            headers.append((b"content-length", b"%d" % len(payload)))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for start in range(0, len(payload), 7000):
            piece = payload[start : start + 7000]
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, loop="asyncio", http="httptools", lifespan="off",
        log_level="warning", access_log=False,
    )  # fmt: skip
    server = live.server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    live.url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    try:
        yield live
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_two_hundred_concurrent_requests_over_ten_connections(
    run: Run[None], uvicorn_upstream: Uvicorn
) -> None:
    rng = random.Random(11)
    cases = [
        (
            seed,
            rng.choice([0, 1, 100, 5000, 70_000, 300_000]),
            rng.choice(["length", "chunked"]),
            rng.choice([None, b"", rng.randbytes(rng.randrange(1, 100_000)), "streamed"]),
        )
        for seed in range(200)
    ]

    async def one(
        transport: PooledTransport, seed: int, size: int, framing: str, upload: object
    ) -> None:
        url = f"{uvicorn_upstream.url}/{seed}/{size}/{framing}"
        if upload is None:
            _, body = await fetch(transport, url)
            sent = b""
        elif upload == "streamed":
            sent = expected_body(-seed, 20_000)
            _, body = await fetch(transport, url, "POST", content=parts(sent[:5], sent[5:]))
        else:
            assert isinstance(upload, bytes)
            sent = upload
            _, body = await fetch(transport, url, "POST", content=upload)
        assert body == sent + expected_body(seed, size), (seed, size, framing)

    # the previous run's connections are gone before this one counts its own
    deadline = time.monotonic() + 10
    while uvicorn_upstream.connections() and time.monotonic() < deadline:
        time.sleep(0.01)
    uvicorn_upstream.peak_connections = 0

    async def scenario() -> None:
        transport = PooledTransport(max_connections_per_host=10)
        try:
            await within(asyncio.gather(*(one(transport, *case) for case in cases)))
        finally:
            await transport.aclose()

    run(scenario())
    assert 0 < uvicorn_upstream.peak_connections <= 10


# --------------------------------------------------------------------------- head size


def test_a_response_head_over_the_limit_fails_and_closes(run: Run[None]) -> None:
    limit = 4096

    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.send(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        for _ in range(200):  # 200 KiB of one header line, never ended
            peer.send(b"a" * 1024)
        await peer.sees_eof()

    async def scenario() -> None:
        async with RawServer(handler) as server:
            transport = PooledTransport(max_head_bytes=limit)
            try:
                with pytest.raises(httpx.RemoteProtocolError, match="head is over 4096 bytes"):
                    await within(transport.handle_async_request(make_request(server.url)))
            finally:
                await transport.aclose()

    run(scenario())


def test_a_response_head_at_the_limit_with_interim_heads_is_read(run: Run[None]) -> None:
    limit = 4096
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
    final = answer(b"body" * 5000, headers=b"X-Pad: " + b"p" * 3000 + b"\r\n")

    async def handler(peer: Peer) -> None:
        await peer.request()
        peer.send(interim + final)  # the head and a long body in one write
        await peer.sees_eof()

    async def scenario() -> None:
        async with RawServer(handler) as server:
            transport = PooledTransport(max_head_bytes=limit)
            try:
                response, body = await fetch(transport, server.url)
            finally:
                await transport.aclose()
        assert (response.status_code, body) == (200, b"body" * 5000)

    run(scenario())
