"""The proxy as ``coalmine proxy`` serves it (``server_config``: httptools held to the
connection limits, uvloop) on a loopback port, spoken to over raw sockets: heads too
large or too slow, idle connections, trailers, Host, transfer codings, dot segments and
guesses at the admin token."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from proxy.server import build_app, server_config
from proxy.settings import ProxySettings
from tests.proxy.proxy_support import (
    RunningProxy,
    Served,
    UpstreamServed,
    make_policy,
    wait_until,
)
from tests.quick_stop_server import QuickStopServer

pytestmark = pytest.mark.slow

LIMIT = 4096
TOKEN = "a-long-admin-token-for-tests-0123456789"


def start(stable: Served, canary: Served, running: list[RunningProxy]) -> RunningProxy:
    settings = ProxySettings(
        listen="127.0.0.1:0",
        spans=False,
        metrics_listen=None,
        max_header_bytes=LIMIT,
        header_timeout_seconds=0.3,
        idle_timeout_seconds=0.3,
        force_arm_tries=2,
        admin_token=TOKEN,
        graceful_shutdown_seconds=2,
    )
    policy = make_policy(stable=stable.base_url, canary=canary.base_url)
    app = build_app(settings, [policy], {"support": 0.0})
    server = QuickStopServer(server_config(app, settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), what="the proxy to start")
    assert server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    proxy = RunningProxy(app, Served(f"http://127.0.0.1:{port}", server, thread))
    running.append(proxy)
    return proxy


@pytest.fixture
def proxy(
    stable: UpstreamServed, canary: UpstreamServed, running: list[RunningProxy]
) -> Iterator[RunningProxy]:
    yield start(stable[1], canary[1], running)


def exchange(proxy: RunningProxy, data: bytes) -> bytes:
    """Send ``data`` on a new connection; all the proxy answers until it closes."""
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(data)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


def status_and_error(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(body)["error"] if body.startswith(b"{") else {}


GET = b"GET /v1/chat HTTP/1.1\r\nHost: proxy.test\r\nx-user-id: u\r\nconnection: close\r\n"


def test_a_head_over_the_limit_is_answered_431(proxy: RunningProxy) -> None:
    answer = exchange(proxy, GET + b"x-pad: " + b"a" * LIMIT + b"\r\n\r\n")
    assert status_and_error(answer)[0] == 431
    assert proxy.metric("coalmine_proxy_refused_requests_total", reason="headers_too_large") == 1


def test_a_head_sent_too_slowly_is_answered_408(proxy: RunningProxy) -> None:
    answer = exchange(proxy, b"GET /v1/chat HTTP/1.1\r\nHo")  # and nothing more
    status, error = status_and_error(answer)
    assert (status, error["code"]) == (408, "header_timeout")
    proxy.wait_for(1, "coalmine_proxy_client_timeouts_total", phase="head")


def test_a_connection_that_sends_nothing_is_closed(proxy: RunningProxy) -> None:
    assert exchange(proxy, b"") == b""
    proxy.wait_for(1, "coalmine_proxy_client_timeouts_total", phase="idle")


def test_trailers_do_not_reach_the_upstream(proxy: RunningProxy, stable: UpstreamServed) -> None:
    request = (
        b"POST /v1/chat HTTP/1.1\r\nHost: proxy.test\r\nx-user-id: u\r\n"
        b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        b"2\r\n{}\r\n0\r\nx-trailer: sneaky\r\n\r\n"
    )
    assert status_and_error(exchange(proxy, request))[0] == 200
    assert "x-trailer" not in stable[0].seen[-1].headers


@pytest.mark.parametrize(
    ("request_head", "status", "code"),
    [
        (b"GET /v1/chat HTTP/1.1\r\nconnection: close\r\n\r\n", 400, "bad_host"),
        (GET + b"Host: other.test\r\n\r\n", 400, "bad_host"),
        (b"GET /v1/chat HTTP/1.1\r\nHost: a b\r\nconnection: close\r\n\r\n", 400, None),
        (GET + b"transfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, None),
        (b"GET /v1/../../etc HTTP/1.1\r\nHost: proxy.test\r\n\r\n", 400, "bad_path"),
    ],
)
def test_a_head_against_the_rules_is_refused(
    proxy: RunningProxy, request_head: bytes, status: int, code: str | None
) -> None:
    """A code of None: the server's parser may refuse it before the proxy sees it."""
    answered, error = status_and_error(exchange(proxy, request_head))
    assert answered == status
    if code is not None:
        assert error["code"] == code


def test_the_upstream_gets_the_path_without_dot_segments(
    proxy: RunningProxy, stable: UpstreamServed
) -> None:
    request = b"GET /v1/%2e%2e/admin/./x HTTP/1.1\r\nHost: proxy.test\r\nconnection: close\r\n\r\n"
    assert status_and_error(exchange(proxy, request))[0] == 200
    assert stable[0].seen[-1].path == "/admin/x"


def test_guesses_at_the_admin_token_are_limited(
    proxy: RunningProxy, canary: UpstreamServed
) -> None:
    with httpx.Client(base_url=proxy.url) as client:

        def force(token: str) -> httpx.Response:
            headers = {"x-coalmine-force-arm": "canary", "x-coalmine-admin-token": token}
            return client.get("/x", headers=headers)

        assert [force("guess").status_code for _ in range(2)] == [403, 403]
        limited = force(TOKEN)
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "force_arm_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert canary[0].seen == []
    assert proxy.metric("coalmine_proxy_refused_requests_total", reason="force_arm_limited") == 1


def test_a_request_whole_in_time_is_served_and_its_connection_kept(
    proxy: RunningProxy,
) -> None:
    with httpx.Client(base_url=proxy.url) as client:
        for _ in range(3):
            assert client.get("/v1/chat", headers={"x-user-id": "u"}).status_code == 200


def test_a_client_going_away_cancels_the_upstream_call_without_a_watcher_task(
    proxy: RunningProxy, stable: UpstreamServed
) -> None:
    # the production protocol says when the client goes (``proxy/client_gone.py``)
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(b"GET /hang HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
        wait_until(lambda: proxy.metric("coalmine_proxy_in_flight_requests") == 1.0)
    wait_until(stable[0].cancelled.is_set, what="the upstream to see the disconnect")
    wait_until(
        lambda: (
            proxy.metric(
                "coalmine_proxy_client_disconnects_total", release="support", arm="baseline"
            )
            == 1.0
        ),
        what="the disconnect to be counted",
    )
    assert proxy.metric("coalmine_proxy_in_flight_requests") == 0.0
