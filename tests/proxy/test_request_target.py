"""The request-target: for the pooled transport the proxy makes the upstream request's
head itself, its upstream's URL parsed once, and the transport sends exactly that
target; it refuses one that could end the request line early. The head is the one the
whole URL would give through httpx."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest

from proxy.app import upstream_head, upstream_request
from proxy.headers import _RandomHex, new_request_id
from proxy.transport import PooledTransport, request_head
from tests.proxy.raw_upstream import LOOPS, RawServer, Run, answer, answering, read_all, runner


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Run[Any]:
    return runner(request.param)


class _Plan:
    """The parts of a forward plan ``upstream_head`` and ``upstream_request`` read."""

    def __init__(self, upstream: str, target: str) -> None:
        self.method = "POST"
        self.upstream = upstream
        self.target = target
        self.headers = [(b"x-tag", b"a")]
        self.content_length: int | None = None
        self.timeout = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}

    @property
    def url(self) -> str:
        return self.upstream.rstrip("/") + self.target


def _httpx_head(request: httpx.Request) -> bytes:
    """The head httpx's request would be sent with."""
    return request_head(request.method, request.url.raw_path, request.headers.raw)[0]


@pytest.mark.parametrize(
    ("upstream", "target", "sent"),
    [
        ("http://app:8000", "/v1/chat?x=1", b"/v1/chat?x=1"),
        ("http://app:8000/", "/v1/chat", b"/v1/chat"),
        ("http://app:8000/base/", "/v1/chat?x=%20", b"/base/v1/chat?x=%20"),
        ("http://app:8000/base", "/", b"/base/"),
    ],
)
def test_the_target_joins_the_upstreams_path_and_the_requests(
    upstream: str, target: str, sent: bytes
) -> None:
    origin, head, chunked = upstream_head(_Plan(upstream, target), b"{}")  # type: ignore[arg-type]
    whole = upstream_request(_Plan(upstream, target), b"{}")  # type: ignore[arg-type]
    assert head.startswith(b"POST " + sent + b" HTTP/1.1\r\nHost: app:8000\r\n")
    assert whole.url.raw_path == sent  # the same request as with the whole URL
    assert head == _httpx_head(whole)
    assert origin == (b"http", b"app", 8000)
    assert b"\r\nContent-Length: 2\r\n" in head
    assert not chunked


@pytest.mark.parametrize(
    ("method", "body", "headers"),
    [
        ("GET", b"", []),
        ("POST", b"", []),
        ("DELETE", b"", []),
        ("POST", b'{"q": 1}', []),
        ("POST", b'{"q": 1}', [(b"content-length", b"8")]),
        ("PUT", b"", [(b"content-length", b"0"), (b"x-a", b"1")]),
    ],
)
def test_the_framing_headers_are_the_ones_httpx_would_set(
    method: str, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    plan = _Plan("http://app:8000/base", "/v1?x=1")
    plan.method, plan.headers = method, headers
    plan.content_length = next((int(v) for n, v in headers if n == b"content-length"), None)
    _, head, _ = upstream_head(plan, body)  # type: ignore[arg-type]
    assert head == _httpx_head(upstream_request(plan, body))  # type: ignore[arg-type]


def test_a_streamed_body_of_unknown_length_goes_chunked_as_with_httpx() -> None:
    async def chunks() -> Any:
        yield b"a"

    plan = _Plan("http://app:8000", "/v1")
    _, head, chunked = upstream_head(plan, chunks())  # type: ignore[arg-type]
    assert chunked
    assert head == _httpx_head(upstream_request(plan, chunks()))  # type: ignore[arg-type]


def test_the_transport_sends_the_target_as_given(run: Run[None]) -> None:
    async def scenario() -> None:
        async with RawServer(answering(lambda _: answer(b"ok"))) as server:
            transport = PooledTransport()
            try:
                request = httpx.Request(
                    "GET",
                    server.url + "/ignored",
                    extensions={"timeout": {}, "target": b"/v1/chat?x=1&y=%2F"},
                )
                response = await transport.handle_async_request(request)
                assert await read_all(response) == b"ok"
            finally:
                await transport.aclose()
        (received,) = server.requests
        assert received.target == "/v1/chat?x=1&y=%2F"

    run(scenario())


@pytest.mark.parametrize(
    "target",
    [b"/a b", b"/a\r\nX-Injected: 1", b"/a\x00", b"a", b"", b"/\x7f", b"/\xc3\xa9", "/str"],
)
def test_a_target_that_could_break_the_request_line_is_refused(run: Run[None], target: Any) -> None:
    async def scenario() -> None:
        async with RawServer(answering(lambda _: answer(b"ok"))) as server:
            transport = PooledTransport()
            try:
                request = httpx.Request(
                    "GET", server.url, extensions={"timeout": {}, "target": target}
                )
                with pytest.raises(httpx.LocalProtocolError, match="not a request-target"):
                    await transport.handle_async_request(request)
            finally:
                await transport.aclose()
        assert server.requests == []

    run(scenario())


def test_ids_are_distinct_and_a_forked_child_draws_its_own() -> None:
    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000 and all(len(value) == 32 for value in ids)
    source = _RandomHex()
    source.take(32)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what it draws next must not be what the parent draws next
        os.write(write, source.take(32).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 32).decode()
    os.close(read)
    os.close(write)
    assert child != source.take(32)
