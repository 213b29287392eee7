"""The server's word that a client went while its request was being answered.

uvicorn tells an ASGI application so only through ``receive()``, which a proxy would have
to wait on in a task of its own for every request. coalmine's protocol
(``proxy/connection.py``) puts a ``ClientGone`` in each request's scope instead, under
the ``coalmine.client_gone`` extension, and fires it from ``connection_lost``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

CLIENT_GONE: Final = "coalmine.client_gone"
"""The scope extension (ASGI extensions are dicts) whose ``gone`` is the request's
``ClientGone``."""


class ClientGone:
    """Calls ``then`` once if the client's connection is lost before the response ends."""

    __slots__ = ("fired", "then")

    def __init__(self) -> None:
        self.then: Callable[[], None] | None = None
        self.fired = False
        """The client went: an application that reads no body learns it here."""

    def fire(self) -> None:
        self.fired = True
        then, self.then = self.then, None
        if then is not None:
            then()
