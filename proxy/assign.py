"""Which arm a request goes to: a stable hash of the stickiness key and the release.

A key maps to a fixed point in [0, 100); the request is canary when that point is below
the canary weight. Raising the weight therefore only adds users to the canary: no canary
user ever moves back to baseline on the way up. The release name is part of the hash so
that the same user is not always in the canary of every release.
"""

from __future__ import annotations

import random
from hashlib import blake2b

from policies.domain import Arm

_SCALE = 100.0 / float(1 << 64)


def key_point(release: str, key: str) -> float:
    """The key's fixed point in [0, 100) for this release."""
    digest = blake2b(f"{release}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") * _SCALE


def arm_for_key(release: str, key: str, canary_weight: float) -> Arm:
    """The arm of a sticky key at the given canary weight (percent)."""
    if canary_weight <= 0:
        return Arm.BASELINE
    if canary_weight >= 100:
        return Arm.CANARY
    return Arm.CANARY if key_point(release, key) < canary_weight else Arm.BASELINE


def arm_at_random(canary_weight: float, draw: float | None = None) -> Arm:
    """The arm of a request without a key: drawn afresh each time."""
    point = random.random() * 100.0 if draw is None else draw
    return Arm.CANARY if point < canary_weight else Arm.BASELINE
