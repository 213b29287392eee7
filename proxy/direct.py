"""A request handed to the proxy as its server parsed it, beside the ASGI call.

An ASGI application is given each request as a scope dict (with its state copied and its
extensions), two callables bound to the request, and it reads the head back out of the
scope. coalmine's protocol (``proxy/connection.py``) already holds all of it, parsed:
when the application has a ``serve_direct`` (``ProxyApp`` does), the protocol calls it
with the request itself instead. What it answers on the wire is the same either way; the
ASGI call stays for any other application, and for the proxy under any other server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

from proxy.client_gone import ClientGone

SERVE_DIRECT: Final = "serve_direct"
"""The application's attribute the protocol looks for: a ``ServeDirect``."""


WholeTo = Callable[[Any, int, list[tuple[bytes, bytes]], bytes], bool]
"""Sends a request's whole response at once, given the request first."""


class DirectRequest(Protocol):
    """One request on a connection, and its way back: ``receive`` and ``send`` take and
    give the messages of ASGI's; ``whole(request, status, headers, body)`` sends the whole
    response at once as ``coalmine.send_whole`` does (False: it must go as messages)."""

    method: str
    path: str
    """Decoded, as ASGI's ``path``."""
    target: str
    """Path and query as the client sent them, read as latin-1."""
    scheme: str
    client_host: str | None
    headers: list[tuple[bytes, bytes]]
    """Lower-case byte names, in the order sent."""
    http_version: str
    gone: ClientGone
    """Fired when the client goes while the request is answered."""

    whole: WholeTo
    """Called with the request itself first: one call the connection's, not a bound one
    made for each request."""

    def receive(self) -> Awaitable[dict[str, Any]]: ...

    def send(self, message: Mapping[str, Any]) -> Awaitable[None]: ...


class ServeDirect(Protocol):
    """Answers ``request`` (what ``SERVE_DIRECT`` names)."""

    def __call__(self, request: DirectRequest) -> Awaitable[None]: ...
