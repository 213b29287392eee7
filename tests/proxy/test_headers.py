"""What the proxy removes from and adds to headers, and W3C trace context."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.headers import (
    cookie_value,
    host_is_valid,
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
        (b"x-request-id", b"client-id"),  # the proxy sends the request's one id
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
    [
        ("req-123", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("bad id", False),
        ("req-123\n", False),
        (None, False),
    ],
)
def test_request_id_kept_only_when_well_formed(incoming: str | None, kept: bool) -> None:
    result = request_id(incoming)
    assert (result == incoming) is kept
    assert 1 <= len(result) <= 128


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("a=1; sid=abc; b=2", "abc"),
        ("a=1", None),
        ("sid=", None),
        ("sid", None),  # a pair without "=" is no cookie called sid
        ("xsid=1; sidx=2", None),
        ('sid="unterminated', '"unterminated'),
        ('sid="quoted"', "quoted"),
        ("sid=a=b", "a=b"),
        (" sid = abc ;", "abc"),
        ("sid=first; sid=second", "first"),  # the first of a name wins, as browsers send
        ("SID=upper; sid=lower", "lower"),  # names are case-sensitive
        # cookies SimpleCookie cannot parse spoil nothing after them
        ('prefs={"theme":"dark"}; sid=abc', "abc"),
        ("a=\\x; sid=abc", "abc"),
        ("=nameless; sid=abc", "abc"),
        ("bad name=1; sid=abc", "abc"),
        ("a=1;;; ;sid=abc", "abc"),
        ("a=\u00e9t\u00e9; sid=abc", "abc"),
    ],
)
def test_cookie_value_reads_the_header_as_browsers_send_it(header: str, value: str | None) -> None:
    assert cookie_value(header, "sid") == value


_COOKIE_OCTETS = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='";,\\'),
    min_size=1,
    max_size=20,
)
_TOKEN = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='()<>@,;:\\"/[]?={}'),
    min_size=1,
    max_size=12,
)
_JUNK = st.text(st.characters(exclude_characters=";"), max_size=30)


@settings(derandomize=True, max_examples=300)
@given(
    before=st.lists(st.tuples(_TOKEN, _COOKIE_OCTETS) | _JUNK, max_size=5),
    name=_TOKEN,
    value=_COOKIE_OCTETS,
    after=st.lists(st.tuples(_TOKEN, _COOKIE_OCTETS) | _JUNK, max_size=5),
)
def test_cookie_value_finds_the_first_cookie_of_its_name_whatever_surrounds_it(
    before: list[tuple[str, str] | str],
    name: str,
    value: str,
    after: list[tuple[str, str] | str],
) -> None:
    def pair(part: tuple[str, str] | str) -> str:
        return part if isinstance(part, str) else f"{part[0]}={part[1]}"

    header = "; ".join([*map(pair, before), f"{name}={value}", *map(pair, after)])
    earlier = [
        part.partition("=")[2].strip(" \t")
        for part in header.split(";")[: len(before)]
        if "=" in part and part.partition("=")[0].strip(" \t") == name
    ]
    expected = earlier[0] if earlier else value
    if len(expected) >= 2 and expected[0] == expected[-1] == '"':
        expected = expected[1:-1]
    assert cookie_value(header, name) == (expected or None)


@settings(derandomize=True, max_examples=300)
@given(header=st.text(), name=_TOKEN)
def test_cookie_value_never_fails(header: str, name: str) -> None:
    found = cookie_value(header, name)
    assert found is None or (found and ";" not in found)


# --------------------------------------------------------------------------- Host


@pytest.mark.parametrize(
    "value",
    [
        b"proxy.test",
        b"proxy.test:8080",
        b"proxy.test:",  # an empty port is allowed by RFC 3986
        b"127.0.0.1",
        b"[::1]",
        b"[::1]:443",
        b"[2001:db8::7]:80",
        b"[v1.fe80::a+en1]",
        b"xn--caf-dma.test",
        b"a%20b.test",
        b"",
    ],
)
def test_a_valid_host(value: bytes) -> None:
    assert host_is_valid(value)


@pytest.mark.parametrize(
    "value",
    [
        b"a b",
        b"a\tb",
        b"proxy.test:80:80",
        b"proxy.test:http",
        b"user@proxy.test",
        b"proxy.test/path",
        b"proxy.test?q",
        b"proxy.test#f",
        b"[::1",
        b"::1",
        b"[::1]x",
        b"[::1]:x",
        b"[127.0.0.1]",
        b"[fe80::1%25en0]",
        b"caf\xc3\xa9.test",
        b"a%2.test",
        b"proxy.test\r\nx: y",
        b"proxy.test\n",
        b"proxy.test:80\n",
        b"[v1.x]\n",
    ],
)
def test_an_invalid_host(value: bytes) -> None:
    assert not host_is_valid(value)


_REG_NAME = st.text(
    st.sampled_from(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;="
    ),
    max_size=30,
)
_PORT = st.none() | st.integers(0, 99999).map(str)


@settings(derandomize=True, max_examples=300)
@given(host=_REG_NAME | st.ip_addresses(v=4).map(str), port=_PORT)
def test_every_reg_name_with_a_port_is_a_valid_host(host: str, port: str | None) -> None:
    value = host if port is None else f"{host}:{port}"
    assert host_is_valid(value.encode())


@settings(derandomize=True, max_examples=300)
@given(address=st.ip_addresses(v=6), port=_PORT)
def test_every_ipv6_literal_is_a_valid_host(address: object, port: str | None) -> None:
    value = f"[{address}]" if port is None else f"[{address}]:{port}"
    assert host_is_valid(value.encode())


@settings(derandomize=True, max_examples=300)
@given(
    head=_REG_NAME,
    bad=st.sampled_from([" ", "\t", "/", "?", "#", "@", "[", "]", "\\", '"', "<", "\x00", "\xe9"]),
    tail=_REG_NAME,
)
def test_a_host_with_a_character_a_host_cannot_hold_is_invalid(
    head: str, bad: str, tail: str
) -> None:
    assert not host_is_valid((head + bad + tail).encode("utf-8"))


@settings(derandomize=True, max_examples=300)
@given(value=st.binary(max_size=40))
def test_host_is_valid_never_fails(value: bytes) -> None:
    assert host_is_valid(value) in (True, False)


def test_sticky_cookie_is_http_only_and_secure_behind_https() -> None:
    assert sticky_cookie("sid", "v", secure=False) == (
        b"sid=v; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"
    )
    assert sticky_cookie("sid", "v", secure=True).endswith(b"; Secure")
