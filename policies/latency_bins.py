"""Log-spaced bins of latency (and any nonnegative quantity): values within 1% of each
other share a bin.

Both planes count latency in these bins: the proxy per release, arm and minute, the
judge in its quantile sketches. The formulas and constants are the judge's own, so a
count made by the proxy adds to one made by the judge bin for bin.
"""

from __future__ import annotations

import math

LOG_BIN_BASE = math.log(1.01)
"""Natural log of a bin's growth factor: relative accuracy 1%."""

ZERO_BIN = -(10**9)
"""The bin of zero (and of anything below it): below every bin of a positive value."""


def sketch_bin(value: float) -> int:
    """Bin of a nonnegative value: the smallest ``i`` with ``value <= 1.01**i``."""
    if value <= 0.0:
        return ZERO_BIN
    return math.ceil(math.log(value) / LOG_BIN_BASE)


def bin_value(index: int) -> float:
    """A representative value of a bin (its upper edge); 0.0 for the zero bin."""
    if index <= ZERO_BIN:
        return 0.0
    return math.exp(index * LOG_BIN_BASE)
