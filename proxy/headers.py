"""Request and response headers: what is removed, what is added, trace context.

Headers arrive from the ASGI server as lower-case byte names. Hop-by-hop headers (RFC 9110
section 7.6.1, plus those named by ``Connection``) belong to one connection and are never
forwarded; every ``x-coalmine-*`` header a client sends is removed so that no client can
choose its arm or pose as a shadow copy.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

from coalmine.shared.conventions import HEADER_PREFIX

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_PREFIX = HEADER_PREFIX.encode()
# Expect: the proxy reads or streams the body at once, so 100-continue is answered by
# the server in front and never asked of the upstream.
_DROPPED_FROM_CLIENT = HOP_BY_HOP | {b"host", b"content-length", b"traceparent", b"expect"}
_DROPPED_FROM_UPSTREAM = HOP_BY_HOP

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def connection_tokens(headers: Headers) -> frozenset[bytes]:
    """Header names listed in ``Connection``: hop-by-hop for this message only."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(part.strip().lower() for part in value.split(b",") if part.strip())
    return frozenset(tokens)


def request_headers_for_upstream(headers: Headers) -> Headers:
    """The client's headers minus hop-by-hop, Host, length, trace and ``x-coalmine-*``.

    Content length and trace context are set again by the proxy; Host comes from the
    upstream URL.
    """
    named = connection_tokens(headers)
    return [
        (name, value)
        for name, value in headers
        if name not in _DROPPED_FROM_CLIENT and name not in named and not name.startswith(_PREFIX)
    ]


def response_headers_for_client(raw: list[tuple[bytes, bytes]]) -> Headers:
    """The upstream's response headers minus hop-by-hop ones; names lower-cased."""
    lowered = [(name.lower(), value) for name, value in raw]
    named = connection_tokens(lowered)
    return [
        (name, value)
        for name, value in lowered
        if name not in _DROPPED_FROM_UPSTREAM and name not in named
    ]


@dataclass(frozen=True, slots=True)
class TraceContext:
    """W3C trace context: the trace, the caller's span (if any) and the proxy's span."""

    trace_id: str
    parent_span_id: str | None
    span_id: str
    flags: str

    def traceparent(self) -> str:
        """The ``traceparent`` sent upstream: the proxy's span is the parent."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def new_span_id() -> str:
    span = os.urandom(8).hex()
    return span if span != _ZERO_SPAN else new_span_id()


def new_trace_id() -> str:
    trace = os.urandom(16).hex()
    return trace if trace != _ZERO_TRACE else new_trace_id()


def new_request_id() -> str:
    """32 random hex digits: a request id, or the sticky key of a new user."""
    return os.urandom(16).hex()


def trace_context(
    incoming: str | None,
    *,
    new_trace: Callable[[], str] = new_trace_id,
    new_span: Callable[[], str] = new_span_id,
) -> TraceContext:
    """Continue a valid incoming ``traceparent``, or start a new sampled trace; the new
    ids come from ``new_trace`` and ``new_span``."""
    if incoming is not None:
        match = _TRACEPARENT.match(incoming.strip())
        if match is not None:
            version, trace_id, parent, flags, rest = match.groups()
            valid = (
                version != "ff"
                and trace_id != _ZERO_TRACE
                and parent != _ZERO_SPAN
                and (version != "00" or rest is None)
            )
            if valid:
                return TraceContext(trace_id, parent, new_span(), flags)
    return TraceContext(new_trace(), None, new_span(), "01")


def request_id(incoming: str | None, new: Callable[[], str] = new_request_id) -> str:
    """Keep a well-formed incoming ``x-request-id``; otherwise make one with ``new``."""
    if incoming is not None and _REQUEST_ID.match(incoming):
        return incoming
    return new()


def cookie_value(cookie_header: str, name: str) -> str | None:
    """The value of one cookie from a ``Cookie`` header, None if absent or unparsable."""
    if name not in cookie_header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(cookie_header)
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None and morsel.value else None


def sticky_cookie(name: str, value: str, *, secure: bool) -> bytes:
    """``Set-Cookie`` that keeps a new user in the arm they were given, for a year."""
    attributes = f"{name}={value}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"
    if secure:
        attributes += "; Secure"
    return attributes.encode("latin-1")
