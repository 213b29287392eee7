"""Fixtures: a Langfuse emulator per test, with keys of its own for the SDK."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.emulator.emulator_support import LiveEmulator, sdk_emulator_settings, start_emulator

emulator_settings = pytest.fixture(name="emulator_settings")(sdk_emulator_settings)


@pytest.fixture
def emulator(emulator_settings: Any) -> Iterator[LiveEmulator]:
    """A fresh emulator per test; the test fails if any response broke the spec."""
    live = start_emulator(emulator_settings)
    try:
        yield live
    finally:
        live.stop()
    assert not live.checked.violations, "\n".join(live.checked.violations)
