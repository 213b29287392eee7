"""A uvicorn server for the tests' loopback servers that stops as soon as it is told to.

uvicorn looks at ``should_exit`` every 0.1 s, then gives closing connections a fixed
0.1 s and polls them every 0.1 s more. Tests start and stop hundreds of servers, each
stop paid at a test's teardown: this server polls every few milliseconds instead and
waits only as long as a connection is still open. Requests in flight still finish,
within ``timeout_graceful_shutdown`` when the config sets one, as with uvicorn.
"""

from __future__ import annotations

import asyncio
import math
import socket

import uvicorn

POLL = 0.005
"""Seconds between two looks at the exit flag, or at the connections still open."""


class QuickStopServer(uvicorn.Server):
    async def main_loop(self) -> None:
        ticks = 0
        while not await self.on_tick(ticks):
            await asyncio.sleep(POLL)
            ticks += 1

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for listener in self.servers:
            listener.close()
        for given in sockets or []:
            given.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()  # idle ones close now, busy ones after their response
        loop = asyncio.get_running_loop()
        grace = self.config.timeout_graceful_shutdown
        deadline = loop.time() + (math.inf if grace is None else grace)
        while self.server_state.connections or self.server_state.tasks:
            if loop.time() > deadline:
                for task in self.server_state.tasks:
                    task.cancel()
                break
            await asyncio.sleep(POLL)
        for listener in self.servers:
            await listener.wait_closed()
        await self.lifespan.shutdown()
