"""HTTP/1.1 conformance of the upstream transport (RFC 9112 message framing, RFC 9110
status codes), against raw upstreams that send exact bytes, on both event loops.

Each case answers the first request of the first connection with a script of bytes, and
any later request, on any connection, with ``next``. A second request then tells whether
the transport reused the connection: it must, exactly when the first response was
complete and nothing followed it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from proxy.transport import PooledTransport
from tests.proxy.raw_upstream import (
    LOOPS,
    Handler,
    Peer,
    RawServer,
    Run,
    answer,
    answering,
    chunk,
    chunks_of,
    fetch,
    make_request,
    runner,
    wait_for,
    within,
)


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Run[Any]:
    return runner(request.param)


CLOSE = None
"""In a script: the upstream closes the connection there."""

Script = Sequence[bytes | None]

OK_HEAD = b"HTTP/1.1 200 OK\r\n"
CHUNKED_HEAD = OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
NEXT = answer(b"next")


def scripted(script: Script) -> Handler:
    """The first request of the first connection gets ``script``, each piece written
    (and drained) on its own; every other request gets ``next``."""

    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            if peer.index > 1 or len(peer.server.requests) > 1:
                peer.send(NEXT)
                continue
            for piece in script:
                if piece is CLOSE:
                    return
                peer.send(piece)
                await peer.writer.drain()

    return handler


@dataclass
class Outcome:
    """What the transport made of a script, and what it did with the connection."""

    status: int | None
    headers: list[tuple[bytes, bytes]]
    body: bytes
    error: str | None
    """The class of the error the first exchange ended in, if it did."""
    reused: bool
    """Whether the next request went on the same connection."""


async def converse(script: Script, method: str = "GET") -> Outcome:
    status, headers, received, error = None, [], bytearray(), None
    async with RawServer(scripted(script)) as server:
        transport = PooledTransport()
        try:
            try:
                response = await within(
                    transport.handle_async_request(make_request(server.url, method))
                )
                status, headers = response.status_code, response.headers.raw
                try:
                    async for piece in chunks_of(response):
                        received += piece
                finally:
                    await response.aclose()
            except httpx.HTTPError as failed:
                error = type(failed).__name__
            _, following = await within(fetch(transport, server.url + "/next"))
            assert following == b"next"
        finally:
            await transport.aclose()
    # whatever happened, the request reached the upstream once and was not sent again
    assert [(r.method, r.target) for r in server.requests] == [(method, "/"), ("GET", "/next")]
    reused = server.requests[1].connection == 1
    return Outcome(status, headers, bytes(received), error, reused)


def complete(
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    reused: bool,
) -> Outcome:
    return Outcome(status, headers, body, None, reused)


CL2 = [(b"Content-Length", b"2")]
TE = [(b"Transfer-Encoding", b"chunked")]

# ---------------------------------------------------------------- complete responses


FRAMED: list[tuple[str, Script, str, Outcome]] = [
    (
        "content-length",
        [answer(b"hello")],
        "GET",
        complete(200, b"hello", [(b"Content-Length", b"5")], reused=True),
    ),
    (
        "content-length-zero",
        [OK_HEAD + b"Content-Length: 0\r\n\r\n"],
        "GET",
        complete(200, b"", [(b"Content-Length", b"0")], reused=True),
    ),
    (
        "chunked",
        [CHUNKED_HEAD + chunk(b"hel") + chunk(b"lo") + chunk(b"")],
        "GET",
        complete(200, b"hello", TE, reused=True),
    ),
    (
        "chunk-extensions",
        [CHUNKED_HEAD + b'5;ext=1\r\nhello\r\n3;a=b;c="x;y"\r\n!!!\r\n0;last\r\n\r\n'],
        "GET",
        complete(200, b"hello!!!", TE, reused=True),
    ),
    (
        "chunk-size-upper-case-leading-zeros",
        [CHUNKED_HEAD + b"000A\r\n0123456789\r\n0\r\n\r\n"],
        "GET",
        complete(200, b"0123456789", TE, reused=True),
    ),
    (
        "trailers-are-dropped",
        [CHUNKED_HEAD + chunk(b"ok") + b"0\r\nX-Trailer: injected\r\nSet-Cookie: a=b\r\n\r\n"],
        "GET",
        complete(200, b"ok", TE, reused=True),
    ),
    (
        "trailers-in-pieces",
        [CHUNKED_HEAD, chunk(b"ok"), b"0\r\nX-Trai", b"ler: injected\r\n", b"\r\n"],
        "GET",
        complete(200, b"ok", TE, reused=True),
    ),
    (
        "one-byte-at-a-time",
        [bytes([byte]) for byte in answer(b"slow", headers=b"X-A: 1\r\n")],
        "GET",
        complete(200, b"slow", [(b"Content-Length", b"4"), (b"X-A", b"1")], reused=True),
    ),
    (
        "http-1.0-keep-alive",
        [b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"],
        "GET",
        complete(200, b"ok", [(b"Connection", b"keep-alive"), *CL2], reused=True),
    ),
    (
        "interim-responses-are-skipped",
        [
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
            answer(b"ok"),
        ],
        "GET",
        complete(200, b"ok", CL2, reused=True),
    ),
    (
        "interim-and-final-in-one-segment",
        [b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + answer(b"ok")],
        "GET",
        complete(200, b"ok", CL2, reused=True),
    ),
    (
        "204",
        [b"HTTP/1.1 204 No Content\r\n\r\n"],
        "GET",
        complete(204, b"", [], reused=True),
    ),
    (
        "304-with-content-length",
        [b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"],
        "GET",
        complete(304, b"", [(b"Content-Length", b"10")], reused=True),
    ),
    (
        "head-with-content-length",
        [OK_HEAD + b"Content-Length: 1000\r\n\r\n"],
        "HEAD",
        complete(200, b"", [(b"Content-Length", b"1000")], reused=True),
    ),
    (
        "head-with-chunked",
        [CHUNKED_HEAD],
        "HEAD",
        complete(200, b"", TE, reused=True),
    ),
    (
        # a client skips blank lines between messages (llhttp does): nothing is framed
        # by them, so the connection stays usable
        "blank-lines-after",
        [answer(b"ok") + b"\r\n\r\n"],
        "GET",
        complete(200, b"ok", CL2, reused=True),
    ),
    # ------------------------------------------------ complete, but never reused
    (
        "connection-close",
        [answer(b"ok", headers=b"Connection: close\r\n")],
        "GET",
        complete(200, b"ok", [*CL2, (b"Connection", b"close")], reused=False),
    ),
    (
        "http-1.0",
        [b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"],
        "GET",
        complete(200, b"ok", CL2, reused=False),
    ),
    (
        "close-delimited",
        [OK_HEAD + b"\r\nuntil ", b"the end", CLOSE],
        "GET",
        complete(200, b"until the end", [], reused=False),
    ),
    (
        # chunked is not the final coding: the body ends with the connection (RFC 9112 6.3)
        "chunked-not-final-coding",
        [OK_HEAD + b"Transfer-Encoding: chunked, gzip\r\n\r\n2\r\nok", CLOSE],
        "GET",
        complete(200, b"2\r\nok", [(b"Transfer-Encoding", b"chunked, gzip")], reused=False),
    ),
    (
        "bytes-past-content-length",
        [answer(b"ok") + b"junk"],
        "GET",
        complete(200, b"ok", CL2, reused=False),
    ),
    (
        "second-response",
        [answer(b"ok") + answer(b"evil", headers=b"X-Injected: 1\r\n")],
        "GET",
        complete(200, b"ok", CL2, reused=False),
    ),
    (
        "second-response-next-segment",
        [answer(b"ok"), answer(b"evil", headers=b"X-Injected: 1\r\n")],
        "GET",
        complete(200, b"ok", CL2, reused=False),
    ),
    (
        "body-on-204",
        [b"HTTP/1.1 204 No Content\r\n\r\n" + answer(b"", headers=b"X-Injected: 1\r\n")],
        "GET",
        complete(204, b"", [], reused=False),
    ),
    (
        "body-on-304",
        [b"HTTP/1.1 304 Not Modified\r\nContent-Length: 4\r\n\r\nbody"],
        "GET",
        complete(304, b"", [(b"Content-Length", b"4")], reused=False),
    ),
    (
        "body-on-head",
        [OK_HEAD + b"Content-Length: 4\r\n\r\nbody"],
        "HEAD",
        complete(200, b"", [(b"Content-Length", b"4")], reused=False),
    ),
    (
        "response-after-trailers",
        [CHUNKED_HEAD + chunk(b"ok") + b"0\r\nX-T: 1\r\n\r\n" + answer(b"evil")],
        "GET",
        complete(200, b"ok", TE, reused=False),
    ),
]


@pytest.mark.parametrize(
    ("script", "method", "expected"),
    [case[1:] for case in FRAMED],
    ids=[case[0] for case in FRAMED],
)
def test_complete_response(
    run: Run[Outcome], script: Script, method: str, expected: Outcome
) -> None:
    assert run(converse(script, method)) == expected


# ---------------------------------------------------------------- broken responses


BROKEN: list[tuple[str, Script, int | None]] = [
    # framing the head refuses: no response at all
    (
        "content-length-and-chunked",
        [OK_HEAD + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
        None,
    ),
    (
        "chunked-and-content-length",
        [OK_HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
        None,
    ),
    (
        "duplicate-content-length",
        [OK_HEAD + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nok"],
        None,
    ),
    (
        "conflicting-content-length",
        [OK_HEAD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nok!"],
        None,
    ),
    ("content-length-list", [OK_HEAD + b"Content-Length: 2, 2\r\n\r\nok"], None),
    ("negative-content-length", [OK_HEAD + b"Content-Length: -1\r\n\r\nok"], None),
    ("signed-content-length", [OK_HEAD + b"Content-Length: +2\r\n\r\nok"], None),
    ("obs-fold", [OK_HEAD + b"X-Folded: a\r\n  b\r\nContent-Length: 2\r\n\r\nok"], None),
    ("lf-line-ends", [b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"], None),
    ("bare-cr-in-value", [OK_HEAD + b"X-A: a\rb\r\nContent-Length: 2\r\n\r\nok"], None),
    ("nul-in-value", [OK_HEAD + b"X-A: a\x00b\r\nContent-Length: 2\r\n\r\nok"], None),
    ("space-before-colon", [OK_HEAD + b"Content-Length : 2\r\n\r\nok"], None),
    ("not-http", [b"SMTP ready\r\n\r\n"], None),
    ("switching-protocols", [b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + answer(b"ok")], None),
    (
        "upgrade",
        [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"],
        None,
    ),
    # early close
    ("close-before-response", [CLOSE], None),
    ("close-mid-head", [OK_HEAD + b"Content-Le", CLOSE], None),
    ("close-after-interim", [b"HTTP/1.1 100 Continue\r\n\r\n", CLOSE], None),
    ("close-mid-body", [OK_HEAD + b"Content-Length: 10\r\n\r\nshort", CLOSE], 200),
    ("close-mid-chunked", [CHUNKED_HEAD + chunk(b"part"), CLOSE], 200),
    ("close-in-trailers", [CHUNKED_HEAD + chunk(b"ok") + b"0\r\nX-T: 1\r\n", CLOSE], 200),
    # invalid chunked framing once the response has begun
    ("chunk-size-not-hex", [CHUNKED_HEAD + b"zz\r\nok\r\n0\r\n\r\n"], 200),
    ("chunk-size-negative", [CHUNKED_HEAD + b"-1\r\nok\r\n0\r\n\r\n"], 200),
    ("chunk-size-overflow", [CHUNKED_HEAD + b"ffffffffffffffffff\r\nok\r\n0\r\n\r\n"], 200),
    ("chunk-size-space", [CHUNKED_HEAD + b"2 \r\nok\r\n0\r\n\r\n"], 200),
    ("chunk-data-longer-than-size", [CHUNKED_HEAD + b"2\r\nokXX\r\n0\r\n\r\n"], 200),
    (
        "content-length-trailer",
        [CHUNKED_HEAD + chunk(b"ok") + b"0\r\nContent-Length: 9\r\n\r\n"],
        200,
    ),
]


@pytest.mark.parametrize(
    ("script", "status"), [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN]
)
def test_broken_response_is_a_protocol_error(
    run: Run[Outcome], script: Script, status: int | None
) -> None:
    outcome = run(converse(script))
    # the response began (status) or not (None); either way the exchange failed, the
    # connection was dropped and the request was not sent again
    assert (outcome.status, outcome.error, outcome.reused) == (
        status,
        "RemoteProtocolError",
        False,
    )
    assert not any(name.lower() == b"x-injected" for name, _ in outcome.headers)


# ---------------------------------------------------------------- keep-alive reuse


def test_mixed_framing_in_turn_on_one_connection(run: Run[None]) -> None:
    replies = {
        "/length": answer(b"length"),
        "/chunked": CHUNKED_HEAD + chunk(b"chun") + chunk(b"ked") + b"0\r\nX-T: 1\r\n\r\n",
        "/interim": b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"interim"),
        "/304": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
        "/head": OK_HEAD + b"Content-Length: 7\r\n\r\n",
        "/204": b"HTTP/1.1 204 No Content\r\n\r\n",
        "/empty": OK_HEAD + b"Content-Length: 0\r\n\r\n",
    }
    order = ["/length", "/head", "/chunked", "/304", "/interim", "/204", "/head", "/empty"]
    order += ["/length"]

    async def scenario() -> None:
        async with RawServer(answering(lambda request: replies[request.target])) as server:
            transport = PooledTransport()
            try:
                bodies = []
                for path in order:
                    method = "HEAD" if path == "/head" else "GET"
                    response, body = await within(fetch(transport, server.url + path, method))
                    assert b"x-t" not in {name.lower() for name, _ in response.headers.raw}
                    bodies.append(body)
            finally:
                await transport.aclose()
        assert bodies == [b"length", b"", b"chunked", b"", b"interim", b"", b"", b"", b"length"]
        assert server.accepted == 1

    run(scenario())


def test_bytes_on_an_idle_connection_close_it(run: Run[None]) -> None:
    first_read, late_sent = asyncio.Event(), asyncio.Event()
    eofs: list[bool] = []

    async def handler(peer: Peer) -> None:
        if peer.index > 1:
            await answering(lambda _: NEXT)(peer)
            return
        await peer.request()
        peer.send(answer(b"first"))
        await first_read.wait()
        peer.send(answer(b"late", headers=b"X-Injected: 1\r\n"))
        late_sent.set()
        eofs.append(await peer.sees_eof())

    async def scenario() -> None:
        async with RawServer(handler) as server:
            transport = PooledTransport()
            try:
                assert (await fetch(transport, server.url))[1] == b"first"
                first_read.set()
                await within(late_sent.wait())
                # the transport closes the idle connection as soon as the bytes arrive
                await within(wait_for(lambda: eofs == [True]))
                response, body = await fetch(transport, server.url + "/next")
                assert (body, response.headers.get("x-injected")) == (b"next", None)
            finally:
                await transport.aclose()
        assert server.accepted == 2

    run(scenario())
