"""Write flow control shared by the proxy's Protocols, client side and upstream side.

The transport calls ``pause_writing`` when its buffer passes the high-water mark and
``resume_writing`` once it has drained; a writer that finds writing paused waits in
``wait_writable`` rather than piling more bytes into the buffer.
"""

from __future__ import annotations

import asyncio


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class WriteFlow:
    """The write side of a Protocol's flow control (a mixin: Protocols keep their own
    ``__slots__``)."""

    __slots__ = ("drain_waiter", "write_paused")

    def __init__(self) -> None:
        self.write_paused = False
        self.drain_waiter: asyncio.Future[bool] | None = None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.release_writer()

    def release_writer(self) -> None:
        """Let a waiting writer go (writing resumed, or the connection is lost)."""
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    async def wait_writable(self, timeout: float | None = None) -> bool:
        """Wait until writing resumes or the connection is lost: False when ``timeout``
        seconds ran out first."""
        while self.write_paused and not self.write_lost():
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[bool] = loop.create_future()
            self.drain_waiter = waiter
            timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
            try:
                if not await waiter:
                    return False
            finally:
                self.drain_waiter = None
                if timer is not None:
                    timer.cancel()
        return True

    def write_lost(self) -> bool:
        """Whether the connection is gone: nobody will resume writing."""
        raise NotImplementedError
