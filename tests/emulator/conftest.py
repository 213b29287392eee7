"""Fixtures: an emulator on a real loopback port, every response checked against the spec."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from emulator_support import LiveEmulator, start_emulator

from coalmine.emulator.settings import EmulatorSettings


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
