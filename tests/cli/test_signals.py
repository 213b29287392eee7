"""SIGTERM and SIGINT between a command's start and its event loop, and after the loop."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from coalmine.cli.controller import _serve
from coalmine.cli.signals import HeldSignals


class StoppableServer:
    """Serves until asked to stop, or gives up after ``limit`` seconds."""

    def __init__(self, limit: float = 10.0) -> None:
        self.should_exit = False
        self.force_exit = False
        self.limit = limit
        self.asked_to_stop = False

    async def serve(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self.should_exit and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.asked_to_stop = self.should_exit


def test_a_sigterm_before_the_loop_runs_is_held_then_served() -> None:
    server = StoppableServer()
    with HeldSignals() as held:
        os.kill(os.getpid(), signal.SIGTERM)  # while the state is read, workers start...
        assert held.received == [signal.SIGTERM]
        assert _serve([server], held) is False
    assert server.asked_to_stop
    assert held.received == []


def test_a_sigterm_while_serving_stops_the_servers() -> None:
    server = StoppableServer()

    async def later() -> None:
        await asyncio.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    class SignallingServer(StoppableServer):
        async def serve(self) -> None:
            sender = asyncio.create_task(later())
            await super().serve()
            await sender

    signalling = SignallingServer()
    with HeldSignals() as held:
        _serve([signalling, server], held)
    assert signalling.asked_to_stop
    assert server.asked_to_stop


def test_a_sigterm_after_the_loop_closed_is_held_while_the_controller_stops() -> None:
    with HeldSignals() as held:
        _serve([StoppableServer(limit=0.05)], held)
        # the loop gave SIGTERM back to its default action (the end of the process)
        os.kill(os.getpid(), signal.SIGTERM)
        assert held.take() == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_the_handlers_in_force_before_are_restored() -> None:
    def mine(_signum: int, _frame: object) -> None:
        return None

    previous = signal.signal(signal.SIGINT, mine)
    try:
        with HeldSignals():
            assert signal.getsignal(signal.SIGINT) is not mine
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, previous)
