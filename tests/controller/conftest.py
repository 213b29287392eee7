"""Fixtures shared by the source and label tests: a live emulator, a client with the
project's keys, and a fake clock."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from source_support import FakeClock, LiveEmulator, live_emulator


@pytest.fixture
def emulator() -> Iterator[LiveEmulator]:
    with live_emulator() as live:
        yield live


@pytest.fixture
def http(emulator: LiveEmulator) -> Iterator[httpx.Client]:
    with emulator.client() as client:
        yield client


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
