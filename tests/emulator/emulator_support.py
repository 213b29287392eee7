"""An emulator on a real loopback port, every response checked against the spec."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from langfuse import Langfuse

from coalmine.emulator.app import create_app
from coalmine.emulator.ratelimit import Clock
from coalmine.emulator.settings import EmulatorSettings
from tests.emulator.spec_check import Checked, SpecCheckingApp
from tests.quick_stop_server import QuickStopServer


@dataclass
class LiveEmulator:
    """An emulator serving on 127.0.0.1."""

    base_url: str
    settings: EmulatorSettings
    checked: Checked
    server: uvicorn.Server
    thread: threading.Thread
    app: Any = None
    """The emulator's FastAPI app (its state: store, rate limiter, faults)."""

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


def start_emulator(settings: EmulatorSettings, *, clock: Clock | None = None) -> LiveEmulator:
    """Serve a new emulator app on a free loopback port and wait until it listens.

    ``clock`` replaces the monotonic clock of the rate limit windows."""
    checked = Checked()
    emulator_app = create_app(settings, clock=clock)
    app = SpecCheckingApp(emulator_app, checked)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = QuickStopServer(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("emulator did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return LiveEmulator(f"http://127.0.0.1:{port}", settings, checked, server, thread, emulator_app)


@contextmanager
def emulator_with_prompt(
    name: str, labels: dict[int, list[str]], versions: int
) -> Iterator[tuple[LiveEmulator, EmulatorSettings]]:
    """An emulator with keys of its own and ``versions`` versions of prompt ``name``,
    version N holding ``labels[N]``; stopped on exit."""
    keys = uuid.uuid4().hex[:8]
    settings = EmulatorSettings(public_key=f"pk-lf-{keys}", secret_key=f"sk-lf-{keys}")
    live = start_emulator(settings)
    with live.client() as http:
        for version in range(1, versions + 1):
            created = http.post(
                "/api/public/v2/prompts",
                json={"name": name, "prompt": f"v{version}", "labels": labels.get(version, [])},
            )
            assert created.status_code in (200, 201), created.text
    try:
        yield live, settings
    finally:
        live.stop()


def sdk_emulator_settings() -> EmulatorSettings:
    """Keys of their own for a test that uses the SDK.

    The SDK keeps one set of resources (exporters, score queue, HTTP client) per public
    key for the whole process; a client made after ``shutdown()`` with the same key gets
    the closed ones, still pointing at the previous test's emulator.
    """
    tag = uuid.uuid4().hex[:12]
    return EmulatorSettings(public_key=f"pk-lf-{tag}", secret_key=f"sk-lf-{tag}")


@contextmanager
def langfuse_client(emulator: LiveEmulator, **options: Any) -> Iterator[Langfuse]:
    """The official SDK pointed at an emulator; flushed and shut down afterwards."""
    client = Langfuse(
        public_key=emulator.settings.public_key,
        secret_key=emulator.settings.secret_key,
        base_url=emulator.base_url,
        **options,
    )
    try:
        yield client
    finally:
        client.flush()
        client.shutdown()
