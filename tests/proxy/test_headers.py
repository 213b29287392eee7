"""What the proxy removes from and adds to headers, and W3C trace context."""

from __future__ import annotations

import pytest

from proxy.headers import (
    cookie_value,
    request_headers_for_upstream,
    request_id,
    response_headers_for_client,
    sticky_cookie,
    trace_context,
)

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


def test_client_headers_lose_hop_by_hop_and_every_coalmine_header() -> None:
    headers = [
        (b"host", b"app.example"),
        (b"connection", b"keep-alive, x-secret-hop"),
        (b"keep-alive", b"timeout=5"),
        (b"x-secret-hop", b"1"),
        (b"transfer-encoding", b"chunked"),
        (b"te", b"trailers"),
        (b"upgrade", b"h2c"),
        (b"proxy-authorization", b"Basic abc"),
        (b"content-length", b"12"),
        (b"traceparent", f"00-{TRACE}-{SPAN}-01".encode()),
        (b"expect", b"100-continue"),
        (b"x-coalmine-arm", b"canary"),
        (b"x-coalmine-shadow", b"1"),
        (b"x-coalmine-force-arm", b"canary"),
        (b"x-coalmine-anything", b"x"),
        (b"authorization", b"Bearer user-token"),
        (b"content-type", b"application/json"),
        (b"x-user-id", b"u1"),
    ]
    assert request_headers_for_upstream(headers) == [
        (b"authorization", b"Bearer user-token"),
        (b"content-type", b"application/json"),
        (b"x-user-id", b"u1"),
    ]


def test_response_headers_lose_hop_by_hop_but_keep_length_and_cookies() -> None:
    raw = [
        (b"Content-Type", b"text/event-stream"),
        (b"Connection", b"close, X-Hop"),
        (b"X-Hop", b"1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Content-Length", b"5"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
    ]
    assert response_headers_for_client(raw) == [
        (b"content-type", b"text/event-stream"),
        (b"content-length", b"5"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]


def test_a_valid_traceparent_is_continued_with_a_new_span() -> None:
    context = trace_context(f"00-{TRACE}-{SPAN}-01")
    assert context.trace_id == TRACE
    assert context.parent_span_id == SPAN
    assert context.span_id != SPAN and len(context.span_id) == 16
    assert context.traceparent() == f"00-{TRACE}-{context.span_id}-01"


@pytest.mark.parametrize(
    "incoming",
    [
        None,
        "",
        "garbage",
        f"00-{'0' * 32}-{SPAN}-01",  # zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # zero parent
        f"ff-{TRACE}-{SPAN}-01",  # forbidden version
        f"00-{TRACE.upper()}-{SPAN}-01",  # upper-case hex
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has no more fields
        f"00-{TRACE[:-1]}-{SPAN}-01",
    ],
)
def test_an_invalid_traceparent_starts_a_new_trace(incoming: str | None) -> None:
    context = trace_context(incoming)
    assert context.parent_span_id is None
    assert context.trace_id != TRACE and len(context.trace_id) == 32
    assert context.flags == "01"


def test_a_future_version_with_more_fields_is_continued() -> None:
    assert trace_context(f"01-{TRACE}-{SPAN}-00-future").trace_id == TRACE


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [("req-123", True), ("a" * 128, True), ("a" * 129, False), ("bad id", False), (None, False)],
)
def test_request_id_kept_only_when_well_formed(incoming: str | None, kept: bool) -> None:
    result = request_id(incoming)
    assert (result == incoming) is kept
    assert 1 <= len(result) <= 128


def test_cookie_value_reads_one_cookie() -> None:
    assert cookie_value("a=1; sid=abc; b=2", "sid") == "abc"
    assert cookie_value("a=1", "sid") is None
    assert cookie_value("sid=", "sid") is None
    assert cookie_value('sid="unterminated', "sid") is None


def test_sticky_cookie_is_http_only_and_secure_behind_https() -> None:
    assert sticky_cookie("sid", "v", secure=False) == (
        b"sid=v; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"
    )
    assert sticky_cookie("sid", "v", secure=True).endswith(b"; Secure")
