"""Fixtures: an emulator on a real loopback port, every response checked against the spec."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from spec_check import Checked, SpecCheckingApp

from coalmine.emulator.app import create_app
from coalmine.emulator.settings import EmulatorSettings


@dataclass
class LiveEmulator:
    """An emulator serving on 127.0.0.1."""

    base_url: str
    settings: EmulatorSettings
    checked: Checked
    server: uvicorn.Server
    thread: threading.Thread

    def client(self, **kwargs: object) -> httpx.Client:
        """An HTTP client with the project's keys."""
        return httpx.Client(
            base_url=self.base_url,
            auth=(self.settings.public_key, self.settings.secret_key),
            timeout=10.0,
            **kwargs,  # type: ignore[arg-type]
        )

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_emulator(settings: EmulatorSettings) -> LiveEmulator:
    """Serve a new emulator app on a free loopback port and wait until it listens."""
    checked = Checked()
    app = SpecCheckingApp(create_app(settings), checked)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("emulator did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return LiveEmulator(f"http://127.0.0.1:{port}", settings, checked, server, thread)


@pytest.fixture
def emulator_settings() -> EmulatorSettings:
    return EmulatorSettings()


@pytest.fixture
def emulator(emulator_settings: EmulatorSettings) -> Iterator[LiveEmulator]:
    """A fresh emulator per test; the test fails if any response broke the spec."""
    live = start_emulator(emulator_settings)
    try:
        yield live
    finally:
        live.stop()
    assert not live.checked.violations, "\n".join(live.checked.violations)


@pytest.fixture
def client(emulator: LiveEmulator) -> Iterator[httpx.Client]:
    with emulator.client() as http:
        yield http
