"""The proxy's own exceptions, and what the client sees for each.

The tree::

    Exception
     └── ProxyError
          ├── ClientGoneError ........ the client went away while its request was read
          ├── BodyTooLargeError ...... a streamed request body went past the release's limit
          ├── UpstreamCutError ....... the upstream failed after the response had begun
          └── StaleConnectionError ... a pooled upstream connection closed before any byte
                                       of the response (raised and handled in ``transport``)

What reaches the client:

==============================  ===========================================================
error                           client sees
==============================  ===========================================================
``ClientGoneError``             nothing (nobody is listening); recorded as 499
``BodyTooLargeError``           413 ``body_too_large``
``UpstreamCutError``            the response already begun, cut short: the connection is
                                closed so that the client sees it incomplete
``StaleConnectionError``        nothing by itself: the request is sent once more on a new
                                connection; if that one closes too, ``httpx``'s
                                ``RemoteProtocolError``, so 502 ``upstream_failed``
==============================  ===========================================================

Errors of the upstream call before its response begins are ``httpx``'s own and map to
answers of the proxy: ``ConnectTimeout`` 504 ``upstream_timeout``, ``ConnectError`` 502
``upstream_unavailable``, any other ``TimeoutException`` 504 ``upstream_timeout``, any other
``HTTPError`` 502 ``upstream_failed``. Once the response has begun, a ``TimeoutException``
or ``HTTPError`` becomes an ``UpstreamCutError``.
"""

from __future__ import annotations


class ProxyError(Exception):
    """Something the proxy itself detected while carrying a request."""


class ClientGoneError(ProxyError):
    """The client disconnected while the proxy was still reading its request."""


class BodyTooLargeError(ProxyError):
    """A streamed request body went past the release's limit."""


class UpstreamCutError(ProxyError):
    """The upstream failed after the response had begun: the only honest thing left is to
    close the client's connection so it sees an incomplete response."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"upstream response cut short (request {request_id})")


class StaleConnectionError(ProxyError):
    """A connection closed before any byte of the response arrived."""
