"""Responses without a body, relayed by the proxy on uvicorn to a client that pipelines:
the proxy in front of a raw upstream that sends exact bytes, the client on a raw socket."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import h11
import pytest

from tests.proxy.proxy_support import RunningProxy, make_policy, start_proxy
from tests.proxy.raw_upstream import Handler, RawServer, Received, answer, answering, chunk

pytestmark = pytest.mark.slow

NO_BODY_REPLIES = {
    "/304": b'HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nETag: "v1"\r\n\r\n',
    "/204": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
    "/head": b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
    "/trailers": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunk(b"body")
        + b"0\r\nX-Trailer: injected\r\n\r\n"
    ),
}


def reply(request: Received) -> bytes:
    return NO_BODY_REPLIES.get(request.target) or answer(request.target.encode())


@contextmanager
def raw_upstream(handler: Handler) -> Iterator[str]:
    """A raw server on its own event loop in a thread, for a proxy in another thread."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    url: list[str] = []
    stop = asyncio.Event()

    async def serve() -> None:
        async with RawServer(handler) as server:
            url.append(server.url)
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        assert started.wait(10), "the raw upstream did not start"
        yield url[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        loop.close()


def pipelined(
    proxy_url: str, requests: list[tuple[str, str]]
) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Send every request at once on one connection; each response as status, headers
    and body, read until the last one has come."""
    host, port = proxy_url.removeprefix("http://").split(":")
    wire = b"".join(
        f"{method} {path} HTTP/1.1\r\nHost: proxy\r\n\r\n".encode() for method, path in requests
    )
    # h11 reads the responses in turn, told of each request as its response is due
    reader = h11.Connection(h11.CLIENT)
    responses: list[tuple[int, dict[bytes, bytes], bytes]] = []
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(wire)
        for method, path in requests:
            reader.send(h11.Request(method=method, target=path, headers=[("Host", "proxy")]))
            reader.send(h11.EndOfMessage())
            status, headers, body = 0, {}, b""
            while True:
                event = reader.next_event()
                if event is h11.NEED_DATA:
                    data = sock.recv(65536)
                    assert data, f"the proxy closed the connection before answering {path}"
                    reader.receive_data(data)
                elif isinstance(event, h11.Response):
                    status, headers = event.status_code, dict(event.headers)
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            responses.append((status, headers, body))
            reader.start_next_cycle()
    return responses


def test_responses_without_a_body_keep_the_client_connection(
    running: list[RunningProxy],
) -> None:
    with raw_upstream(answering(reply)) as upstream:
        proxy = start_proxy([make_policy(stable=upstream, canary=upstream)], running)
        requests = [
            ("GET", "/304"),
            ("GET", "/after-304"),
            ("GET", "/204"),
            ("HEAD", "/head"),
            ("GET", "/trailers"),
            ("GET", "/last"),
        ]
        responses = pipelined(proxy.url, requests)
    statuses = [status for status, _, _ in responses]
    bodies = [body for _, _, body in responses]
    assert statuses == [304, 200, 204, 200, 200, 200]
    assert bodies == [b"", b"/after-304", b"", b"", b"body", b"/last"]
    not_modified, _, no_content, head, trailers, _ = (headers for _, headers, _ in responses)
    assert not_modified[b"etag"] == b'"v1"'
    assert b"content-length" not in no_content
    assert head[b"content-length"] == b"1000"
    assert b"x-trailer" not in trailers
