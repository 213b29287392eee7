"""Fixtures: an emulator on a real loopback port, every response checked against the spec."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from coalmine.emulator.settings import EmulatorSettings
from tests.emulator.emulator_support import LiveEmulator, start_emulator


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
