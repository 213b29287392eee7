"""The proxy served by coalmine's protocol two ways: called directly with each request as
parsed (``serve_direct``), and by ASGI (the same application behind a plain ASGI
callable). The same requests must put the same bytes on the wire either way: whole and
streamed responses, HEAD, 204 and 304, chunked bodies both ways, 100-continue, pipelined
requests, refusals, upstream failures, a paused write and a client that goes. The
upstream is in memory: no socket, no clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from proxy.app import ProxyApp
from proxy.server import build_app
from proxy.settings import ProxySettings
from proxy.transport import RawResponse
from tests.proxy.proxy_support import make_policy
from tests.proxy.test_connection_conformance import Served, serve

__all__ = ["serve"]  # the fixture, used by the tests below

Serve = Callable[..., Served]
Run = Callable[[Serve, list[bytes]], tuple[bytes, bool]]

SMALL = b'{"id":"x","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}'
HEAD_LINES = b"Host: proxy.test\r\nx-user-id: user-1\r\nx-request-id: req-0001\r\n"


class _Stream(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            await asyncio.sleep(0)
            yield chunk

    async def aclose(self) -> None:
        pass


@dataclass
class Upstream:
    """Answers by the request's path, at once; ``/hang`` waits until cancelled."""

    heads: list[bytes] = field(default_factory=list)
    cancelled: int = 0

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
        self.heads.append(head)
        content = body if isinstance(body, bytes) else b"".join([part async for part in body])
        target = head.split(b" ")[1]
        path = target.split(b"?")[0]
        if path.endswith(b"/hang"):
            try:
                await asyncio.Event().wait()
            finally:
                self.cancelled += 1
        if path.endswith(b"/fail"):
            raise httpx.ConnectError("refused")
        if path.endswith(b"/stream"):
            chunks = [b"data: 1\n\n", b"data: 2\n\n"]
            headers = [(b"Content-Type", b"text/event-stream")]
            return RawResponse(200, headers, _Stream(chunks))
        if b"/status/" in path:
            status = int(path.rsplit(b"/", 1)[1])
            headers = [(b"Content-Length", b"5"), (b"ETag", b'"e"')]
            return RawResponse(status, headers, _Stream([]), body=b"")
        reply = b"%b %b %b" % (method.encode(), target, content) if content else SMALL
        headers = [
            (b"Content-Type", b"application/json"),
            (b"Content-Length", str(len(reply)).encode()),
        ]
        return RawResponse(200, headers, _Stream([]), body=reply)

    async def aclose(self) -> None:
        pass


class AsgiOnly:
    """The proxy as any ASGI application: no ``serve_direct`` to find."""

    def __init__(self, app: ProxyApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def proxy_app(upstream: Upstream) -> ProxyApp:
    policy = make_policy(stable="http://stable.test", canary="http://canary.test")
    app = build_app(
        ProxySettings(spans=False, metrics_listen=None),
        [policy],
        {"support": 50.0},
        transport=httpx.MockTransport(lambda _request: httpx.Response(599)),
    )
    app.pooled = upstream  # type: ignore[assignment]
    return app


def both(serve: Serve, requests: list[bytes], *, lose: bool = False) -> list[Served]:
    """The requests, each fed as one read, served directly and by ASGI."""
    served: list[Served] = []
    for direct in (True, False):
        app = proxy_app(Upstream())
        connection = serve(app if direct else AsgiOnly(app))
        assert (connection.protocol.direct is not None) is direct
        for data in requests:
            connection.send(data)
        if lose:
            connection.lose()
        served.append(connection)
    return served


def same_wire(serve: Serve, requests: list[bytes]) -> bytes:
    direct, asgi = both(serve, requests)
    assert direct.output == asgi.output
    assert direct.closed == asgi.closed
    return direct.output


def get(path: str, *, method: str = "GET", version: str = "1.1", extra: bytes = b"") -> bytes:
    return b"%b %b HTTP/%b\r\n%b%b\r\n" % (
        method.encode(),
        path.encode(),
        version.encode(),
        HEAD_LINES,
        extra,
    )


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    length = b"content-length: %d\r\n" % len(body)
    return get(path, method="POST", extra=length + extra) + body


@pytest.mark.parametrize(
    "requests",
    [
        pytest.param([get("/v1/chat/completions")], id="whole"),
        pytest.param([get("/v1/chat/completions?x=%41&y")], id="query"),
        pytest.param([get("/v1/a%20b/../chat")], id="dot-segments"),
        pytest.param([get("/v1/chat", method="HEAD")], id="head"),
        pytest.param([get("/v1/status/204")], id="204"),
        pytest.param([get("/v1/status/304")], id="304"),
        pytest.param([get("/v1/stream")], id="streamed-chunked"),
        pytest.param([get("/v1/stream", version="1.0")], id="streamed-http10"),
        pytest.param([get("/v1/chat", version="1.0")], id="http10"),
        pytest.param([post("/v1/chat", b'{"a":1}')], id="post"),
        pytest.param(
            [
                get("/v1/chat", method="POST", extra=b"transfer-encoding: chunked\r\n")
                + b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
            ],
            id="chunked-request",
        ),
        pytest.param(
            [
                get(
                    "/v1/chat",
                    method="POST",
                    extra=b"content-length: 2\r\nexpect: 100-continue\r\n",
                ),
                b"ok",
            ],
            id="100-continue",
        ),
        pytest.param(
            [get("/v1/chat") + get("/v1/chat", method="HEAD") + get("/v1/status/204")],
            id="pipelined",
        ),
        pytest.param([get("/v1/chat", extra=b"connection: close\r\n")], id="close"),
        pytest.param([get("/v1/fail")], id="upstream-failed"),
        pytest.param([get("/v1/chat", extra=b"content-length: x\r\n")], id="bad-length"),
        pytest.param(
            [b"GET /v1/chat HTTP/1.1\r\nx-user-id: u\r\nx-request-id: req-0002\r\n\r\n"],
            id="no-host",
        ),
        pytest.param(
            [get("/v1/chat", extra=b"x-coalmine-force-arm: canary\r\n")], id="force-refused"
        ),
        pytest.param([post("/v1/chat", b"x" * 20_000_000)], id="body-too-large"),
        pytest.param([b"GET /v1/chat HTTP/1.1\r\nHost: a\r\nbad header\r\n\r\n"], id="malformed"),
        pytest.param(
            [get("/v1/chat", extra=b"upgrade: websocket\r\nconnection: upgrade\r\n")], id="upgrade"
        ),
    ],
)
def test_the_same_bytes_either_way(serve: Serve, requests: list[bytes]) -> None:
    output = same_wire(serve, requests)
    assert output.startswith(b"HTTP/1.1 ")


def test_a_whole_response_goes_in_one_write_either_way(serve: Serve) -> None:
    direct, asgi = both(serve, [get("/v1/chat")])
    assert direct.wire.writes == asgi.wire.writes
    assert len(direct.wire.writes) == 1
    assert SMALL in direct.output


def test_a_paused_write_sends_the_same_messages(serve: Serve) -> None:
    outputs = []
    for direct in (True, False):
        app = proxy_app(Upstream())
        connection = serve(app if direct else AsgiOnly(app))
        connection.protocol.pause_writing()
        connection.send(get("/v1/chat") + get("/v1/stream"))
        assert connection.output == b""
        connection.protocol.resume_writing()
        connection.settle()
        outputs.append(connection.output)
    assert outputs[0] == outputs[1]
    assert outputs[0].count(b"HTTP/1.1 200 OK") == 2


def test_a_client_gone_cancels_the_upstream_call_either_way(serve: Serve) -> None:
    upstreams = []
    for direct in (True, False):
        upstream = Upstream()
        app = proxy_app(upstream)
        connection = serve(app if direct else AsgiOnly(app))
        connection.send(get("/v1/hang"))
        assert upstream.heads and upstream.cancelled == 0
        connection.lose()
        assert connection.output == b""
        upstreams.append(upstream)
    assert [upstream.cancelled for upstream in upstreams] == [1, 1]


def test_the_upstream_gets_the_same_request_either_way(serve: Serve) -> None:
    heads = []
    for direct in (True, False):
        upstream = Upstream()
        app = proxy_app(upstream)
        connection = serve(app if direct else AsgiOnly(app))
        connection.send(get("/v1/chat/completions?a=1%2F"))
        heads.append(upstream.heads)
    # the trace and span ids are fresh for each request: compare the rest
    lines = [
        [line for line in head[0].split(b"\r\n") if b"traceparent" not in line] for head in heads
    ]
    assert lines[0] == lines[1]
    assert lines[0][0] == b"GET /v1/chat/completions?a=1%2F HTTP/1.1"
