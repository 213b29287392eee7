"""The latency bins the proxy counts in are the judge's, bit for bit."""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable

from controller.judge import evidence
from policies import latency_bins


def _values() -> list[float]:
    chance = random.Random(20261206)
    values = [0.0, -1.0, 5e-324, 2.2250738585072014e-308, 1e-300, 1e-12, 1.0, 1.01, 1e300]
    values += [1.7976931348623157e308, 0.999999999, 1.0000000001]
    while len(values) < 100_000:
        kind = chance.randrange(4)
        if kind == 0:  # milliseconds as the proxy measures them: nanoseconds / 1e6
            values.append(chance.randrange(0, 600_000_000_000) / 1e6)
        elif kind == 1:  # any magnitude
            values.append(10 ** chance.uniform(-300, 300))
        elif kind == 2:  # on and next to bin edges
            edge = 1.01 ** chance.randrange(-2000, 2000)
            values.append(edge * chance.choice((1.0, 1 - 1e-15, 1 + 1e-15)))
        else:  # random bit patterns of positive finite doubles
            bits = chance.getrandbits(63)
            value = struct.unpack("<d", struct.pack("<Q", bits))[0]
            values.append(value if math.isfinite(value) else 1.0)
    return values


def test_bins_and_their_values_agree_with_the_judges_on_100000_values() -> None:
    values = _values()
    assert len(values) == 100_000
    ours = [latency_bins.sketch_bin(value) for value in values]
    judges = [evidence.sketch_bin(value) for value in values]
    assert ours == judges
    indexes = sorted(set(ours))
    ours_back = [_packed(latency_bins.bin_value, index) for index in indexes]
    judges_back = [_packed(evidence.bin_value, index) for index in indexes]
    assert ours_back == judges_back
    assert ours_back[-1] == b"OverflowError", "the top bin's edge is past the largest float"


def _packed(bin_value: Callable[[int], float], index: int) -> bytes:
    """A bin's value as its bytes, or the error it raises."""
    try:
        return struct.pack("<d", bin_value(index))
    except OverflowError:
        return b"OverflowError"


def test_the_constants_are_the_judges() -> None:
    assert latency_bins.LOG_BIN_BASE == evidence.LOG_BIN_BASE
    assert latency_bins.sketch_bin(0.0) == latency_bins.ZERO_BIN == evidence.sketch_bin(0.0)
    assert latency_bins.bin_value(latency_bins.ZERO_BIN) == 0.0
