"""Request and response headers: what is removed, what is added, trace context.

Headers arrive from the ASGI server as lower-case byte names. Hop-by-hop headers (RFC 9110
section 7.6.1, plus those named by ``Connection``) belong to one connection and are never
forwarded; every ``x-coalmine-*`` header a client sends is removed so that no client can
choose its arm or pose as a shadow copy; the client's ``x-request-id`` is replaced by the
request's one id (``request_id``), so the upstream sees exactly one.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from collections.abc import Callable
from typing import NamedTuple

from coalmine.shared.conventions import HEADER_PREFIX, REQUEST_ID_HEADER

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
COALMINE_PREFIX = HEADER_PREFIX.encode()
"""Every header a client sends with it is removed before forwarding."""
# Expect: the proxy reads or streams the body at once, so 100-continue is answered by
# the server in front and never asked of the upstream.
DROPPED_FROM_CLIENT = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"traceparent",
    b"expect",
    REQUEST_ID_HEADER.encode(),
}
_DROPPED_FROM_UPSTREAM = HOP_BY_HOP
_KEEP_ALIVE = frozenset({b"keep-alive", b"Keep-Alive"})
"""Connection values that name nothing more to drop (the commonest by far)."""

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
# RFC 3986 reg-name: unreserved, sub-delims and percent-encoded octets; port: digits
_REG_NAME = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
_PORT = re.compile(r"[0-9]*")
_IP_FUTURE = re.compile(r"[vV][0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+")
_COOKIE_SPACE = " \t"
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def connection_tokens(headers: Headers) -> frozenset[bytes]:
    """Header names listed in ``Connection``: hop-by-hop for this message only."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(part.strip().lower() for part in value.split(b",") if part.strip())
    return frozenset(tokens)


def request_headers_for_upstream(
    headers: Headers, replaced: frozenset[bytes] = frozenset()
) -> Headers:
    """The client's headers minus hop-by-hop, Host, length, trace, ``x-coalmine-*`` and
    the ``replaced`` names.

    Content length and trace context are set again by the proxy; Host comes from the
    upstream URL.
    """
    kept: Headers = []
    connection = False
    # one pass: a Connection header is rare, and only then are the names it lists dropped
    for pair in headers:
        name = pair[0]
        if name in DROPPED_FROM_CLIENT:
            connection = connection or name == b"connection"
        elif name not in replaced and not name.startswith(COALMINE_PREFIX):
            kept.append(pair)
    if connection:
        named = connection_tokens(headers)
        kept = [(name, value) for name, value in kept if name not in named]
    return kept


def response_headers_for_client(raw: list[tuple[bytes, bytes]]) -> Headers:
    """The upstream's response headers minus hop-by-hop ones; names lower-cased."""
    kept: Headers = []
    named: set[bytes] | None = None
    for name, value in raw:
        lowered = name.lower()
        if lowered not in _DROPPED_FROM_UPSTREAM:
            kept.append((lowered, value))
        elif lowered == b"connection" and value not in _KEEP_ALIVE:
            # Connection (itself hop-by-hop) may name more headers to drop
            if named is None:
                named = set()
            named.update(part.strip().lower() for part in value.split(b",") if part.strip())
    if named and not named <= _DROPPED_FROM_UPSTREAM:
        kept = [(name, value) for name, value in kept if name not in named]
    return kept


class TraceContext(NamedTuple):
    """W3C trace context: the trace, the caller's span (if any) and the proxy's span
    (a named tuple: one is made for every request, where a frozen dataclass would set
    each field through object.__setattr__)."""

    trace_id: str
    parent_span_id: str | None
    span_id: str
    flags: str

    def traceparent(self) -> str:
        """The ``traceparent`` sent upstream: the proxy's span is the parent."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


class _RandomHex:
    """Hex digits of the operating system's random bytes, read 4 KiB at a time: one
    system call for a few hundred ids instead of one each (the proxy makes three per
    request), and one conversion to hex for all of them. Ids of 32 and of 16 digits are
    cut ahead, a batch at a time, so that taking one is a list's ``pop``. A forked worker
    starts with buffers of its own, never its parent's."""

    SIZE = 4096
    """Bytes read at a time."""

    def __init__(self) -> None:
        self._buffer = ""
        self._at = 0
        self._ids32: list[str] = []
        self._ids16: list[str] = []
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._buffer, self._at = "", 0
        self._ids32, self._ids16 = [], []

    def take(self, digits: int) -> str:
        at = self._at
        if at + digits > len(self._buffer):
            self._buffer, at = os.urandom(self.SIZE).hex(), 0
        self._at = at + digits
        return self._buffer[at : at + digits]

    def id32(self) -> str:
        """32 digits, never all zero (a W3C trace id must not be)."""
        ids = self._ids32
        if not ids:
            ids = self._ids32 = _cut(16, _ZERO_TRACE)
        return ids.pop()

    def id16(self) -> str:
        """16 digits, never all zero (a W3C span id must not be)."""
        ids = self._ids16
        if not ids:
            ids = self._ids16 = _cut(8, _ZERO_SPAN)
        return ids.pop()


def _cut(size: int, zero: str) -> list[str]:
    """Ids of ``size`` random bytes in hex, cut by ``hex`` and ``split`` (no Python
    loop), without the all-zero one."""
    ids = os.urandom(_RandomHex.SIZE).hex(" ", size).split()
    return [cut for cut in ids if cut != zero] if zero in ids else ids


_random_hex = _RandomHex()

new_span_id: Callable[[], str] = _random_hex.id16
"""A fresh W3C span id: 16 random hex digits, not all zero."""

new_trace_id: Callable[[], str] = _random_hex.id32
"""A fresh W3C trace id: 32 random hex digits, not all zero."""

new_request_id: Callable[[], str] = _random_hex.id32
"""32 random hex digits: a request id, or the sticky key of a new user."""


def trace_context(
    incoming: str | None,
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
    if incoming is not None and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return new()


def cookie_value(cookie_header: str, name: str) -> str | None:
    """The value of the first cookie called ``name`` in a ``Cookie`` header, None if it is
    absent or empty.

    Read as user agents send it (RFC 6265 section 5.4): ``name=value`` pairs split on
    ``;``, the first of a name winning. A pair that is not ``name=value`` is skipped and
    never spoils the others; a value in double quotes is read without them.
    """
    if name not in cookie_header:
        return None
    for pair in cookie_header.split(";"):
        key, separator, value = pair.partition("=")
        if not separator or key.strip(_COOKIE_SPACE) != name:
            continue
        value = value.strip(_COOKIE_SPACE)
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        return value or None
    return None


@functools.lru_cache(maxsize=1024)
def host_is_valid(value: bytes) -> bool:
    """Whether a ``Host`` field value is ``uri-host [ ":" port ]`` (RFC 9110 section 7.2,
    RFC 3986 section 3.2.2): an IP literal in brackets, or a reg-name (IPv4 addresses are
    reg-names by their characters), then digits for the port. The empty value is valid:
    it is what a client sends for a target without an authority."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return False
    if text.startswith("["):
        literal, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and _PORT.fullmatch(rest[1:]))):
            return False
        if _IP_FUTURE.fullmatch(literal):
            return True
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return False
        return "%" not in literal  # a zone id has no place in a Host
    host, _, port = text.partition(":")
    return bool(_REG_NAME.fullmatch(host)) and bool(_PORT.fullmatch(port))


def sticky_cookie(name: str, value: str, *, secure: bool) -> bytes:
    """``Set-Cookie`` that keeps a new user in the arm they were given, for a year."""
    attributes = f"{name}={value}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"
    if secure:
        attributes += "; Secure"
    return attributes.encode("latin-1")
