"""The proxy's own exceptions, and what the client sees for each.

The tree::

    Exception
     └── ProxyError
          ├── ClientGoneError ........ the client went away while its request was read
          ├── BodyTooLargeError ...... a streamed request body went past the release's limit
          ├── UpstreamCutError ....... the upstream failed after the response had begun
          ├── StaleConnectionError ... an upstream connection closed before any byte of
          │                            the response (raised and handled in ``transport``)
          └── WorkerError ............ a worker process of ``--workers N`` could not start

What reaches the client:

==============================  ===========================================================
error                           client sees
==============================  ===========================================================
``ClientGoneError``             nothing (nobody is listening); recorded as 499
``BodyTooLargeError``           413 ``body_too_large``
``UpstreamCutError``            the response already begun, cut short: the connection is
                                closed so that the client sees it incomplete
``StaleConnectionError``        nothing by itself when the request can go once more
                                without being executed twice (none of it was sent, or
                                the connection was reused and the request is idempotent
                                with its body in memory): it is sent again on a new
                                connection. Otherwise, or if that one closes too,
                                ``httpx``'s ``RemoteProtocolError``, so 502
                                ``upstream_failed``
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
    """A connection closed before any byte of the response arrived. ``sent``: whether any
    byte of the request may have reached the upstream (False: certainly none did)."""

    def __init__(self, *, sent: bool) -> None:
        super().__init__(
            "the upstream connection closed before the response"
            + (" after the request was sent" if sent else " before any of the request was sent")
        )
        self.sent = sent


class WorkerError(ProxyError):
    """A proxy worker process failed to start (``coalmine proxy --workers N``)."""
