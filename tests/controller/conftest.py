"""Fixtures shared by the source and label tests: a live emulator, a client with the
project's keys, and a fake clock."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.controller.source_support import FakeClock, LiveEmulator, live_emulator


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
