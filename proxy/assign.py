"""Which arm a request goes to: a stable hash of the stickiness key and the release.

A key maps to a fixed point in [0, 100); the request is canary when that point is below
the canary weight. Raising the weight therefore only adds users to the canary: no canary
user ever moves back to baseline on the way up. The release name is part of the hash so
that the same user is not always in the canary of every release.
"""

from __future__ import annotations

import random
from hashlib import blake2b
from typing import Any

from policies.domain import Arm

_SCALE = 100.0 / float(1 << 64)
# module constants: an enum member read off its class goes through EnumType.__getattr__
_BASELINE, _CANARY = Arm.BASELINE, Arm.CANARY


_from_bytes = int.from_bytes
_PREFIXED: dict[str, Any] = {}
"""Per release: the hash with the release's part fed already (a copy of it costs half as
much as hashing the whole again)."""
_PREFIXED_KEPT = 1024


def key_point(release: str, key: str) -> float:
    """The key's fixed point in [0, 100) for this release."""
    prefixed = _PREFIXED.get(release)
    if prefixed is None:
        prefixed = blake2b(f"{release}\x00".encode(), digest_size=8)
        if len(_PREFIXED) < _PREFIXED_KEPT:
            _PREFIXED[release] = prefixed
    hashed = prefixed.copy()
    hashed.update(key.encode())
    return _from_bytes(hashed.digest(), "big") * _SCALE


def arm_for_key(release: str, key: str, canary_weight: float) -> Arm:
    """The arm of a sticky key at the given canary weight (percent)."""
    if canary_weight <= 0:
        return _BASELINE
    if canary_weight >= 100:
        return _CANARY
    # key_point, in line
    prefixed = _PREFIXED.get(release)
    if prefixed is None:
        return _CANARY if key_point(release, key) < canary_weight else _BASELINE
    hashed = prefixed.copy()
    hashed.update(key.encode())
    point = _from_bytes(hashed.digest(), "big") * _SCALE
    return _CANARY if point < canary_weight else _BASELINE


def arm_at_random(canary_weight: float, draw: float | None = None) -> Arm:
    """The arm of a request without a key: drawn afresh each time."""
    point = random.random() * 100.0 if draw is None else draw
    return _CANARY if point < canary_weight else _BASELINE
