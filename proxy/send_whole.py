"""A whole response in one call, beside ASGI's two messages.

A response whose body came whole with its head (most of the proxy's) costs an ASGI
application two ``send`` calls, each a coroutine, a message dict and a dispatch on its
type. coalmine's protocol (``proxy/connection.py``) offers, under the
``coalmine.send_whole`` scope extension, a plain call that writes the response head and
body at once; it says False when it cannot (writing is paused, or the response already
began), and the application then sends the two messages as ASGI has it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

SEND_WHOLE: Final = "coalmine.send_whole"
"""The scope extension (ASGI extensions are dicts) whose ``send`` is a ``SendWhole``."""


class SendWhole(Protocol):
    """Answers the request of ``scope`` with the whole response: True once it is written
    (or dropped for a client gone), False when it must go as ASGI messages instead."""

    def __call__(
        self,
        scope: Mapping[str, Any],
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> bool: ...
