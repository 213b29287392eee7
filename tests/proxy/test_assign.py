"""Arm assignment: the split follows the weight, a key keeps its arm, raising the weight
never sends a canary user back."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from policies.domain import Arm
from proxy.assign import arm_at_random, arm_for_key, key_point


def _binomial_bounds(n: int, p: float, sigmas: float = 4.5) -> tuple[float, float]:
    spread = sigmas * math.sqrt(n * p * (1 - p))
    return n * p - spread, n * p + spread


@pytest.mark.parametrize("weight", [5.0, 25.0, 50.0])
def test_share_of_keys_in_canary_is_within_binomial_bounds(weight: float) -> None:
    n = 10_000
    canary = sum(
        arm_for_key("support", f"user-{index}", weight) is Arm.CANARY for index in range(n)
    )
    low, high = _binomial_bounds(n, weight / 100)
    assert low <= canary <= high, (weight, canary)


# a key's point is part of what users are promised: it must not change between processes,
# machines or versions, or users would change arms on a restart or an upgrade
@pytest.mark.parametrize(
    ("release", "key", "weight", "arm"),
    [
        ("support", "user-42", 56.6, Arm.CANARY),
        ("support", "user-42", 56.5, Arm.BASELINE),
        ("support", "alice", 1.0, Arm.CANARY),
        ("support", "alice", 0.9, Arm.BASELINE),
        ("billing", "alice", 44.4, Arm.CANARY),
        ("billing", "alice", 44.3, Arm.BASELINE),
        ("summarizer-v2", "user-7", 86.1, Arm.CANARY),
        ("summarizer-v2", "user-7", 25.0, Arm.BASELINE),
        ("support", "8f14e45fceea167a5a36dedd4bea2543", 34.0, Arm.CANARY),
        ("support", "8f14e45fceea167a5a36dedd4bea2543", 33.9, Arm.BASELINE),
    ],
)
def test_a_key_keeps_its_arm(release: str, key: str, weight: float, arm: Arm) -> None:
    assert arm_for_key(release, key, weight) is arm


@pytest.mark.parametrize(
    ("release", "key", "point"),
    [
        ("support", "user-42", 56.51607504098482),
        ("support", "alice", 0.9436420518877507),
        ("billing", "alice", 44.31590604644537),
        ("support", "", 50.421876095465734),
    ],
)
def test_a_key_has_a_fixed_point(release: str, key: str, point: float) -> None:
    assert key_point(release, key) == pytest.approx(point, abs=1e-12)


_ARMS_OF_KEYS = """
import json, sys
from proxy.assign import arm_for_key
keys = json.loads(sys.stdin.read())
print(json.dumps([arm_for_key("support", key, 50.0).value for key in keys]))
"""


def test_a_key_keeps_its_arm_in_another_process() -> None:
    keys = [f"user-{index}" for index in range(2000)]
    here = [arm_for_key("support", key, 50.0).value for key in keys]
    root = Path(__file__).resolve().parents[2]
    for seed in ("1", "2"):  # two string-hash seeds: at least one differs from this process's
        child = subprocess.run(
            [sys.executable, "-c", _ARMS_OF_KEYS],
            input=json.dumps(keys),
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(root)},
            timeout=60,
        )
        assert json.loads(child.stdout) == here, f"PYTHONHASHSEED={seed}"


def test_raising_the_weight_never_moves_a_canary_user_back() -> None:
    keys = [f"user-{index}" for index in range(5000)]
    previous: set[str] = set()
    for weight in (1.0, 5.0, 10.0, 25.0, 50.0, 99.0):
        canary = {key for key in keys if arm_for_key("support", key, weight) is Arm.CANARY}
        assert previous <= canary, weight
        assert len(canary) > len(previous)
        previous = canary


def test_the_release_name_reshuffles_users() -> None:
    keys = [f"user-{index}" for index in range(4000)]
    first = {key for key in keys if arm_for_key("support", key, 50.0) is Arm.CANARY}
    second = {key for key in keys if arm_for_key("billing", key, 50.0) is Arm.CANARY}
    overlap = len(first & second) / len(first)
    assert 0.4 < overlap < 0.6  # independent halves overlap by about a half


@pytest.mark.parametrize(("weight", "expected"), [(0.0, Arm.BASELINE), (100.0, Arm.CANARY)])
def test_weights_zero_and_hundred_are_absolute(weight: float, expected: Arm) -> None:
    assert {arm_for_key("support", f"k{index}", weight) for index in range(500)} == {expected}


def test_key_point_is_uniform_enough() -> None:
    points = [key_point("support", f"user-{index}") for index in range(10_000)]
    assert all(0 <= point < 100 for point in points)
    deciles = [0] * 10
    for point in points:
        deciles[int(point // 10)] += 1
    low, high = _binomial_bounds(10_000, 0.1)
    assert all(low <= count <= high for count in deciles), deciles


def test_requests_without_a_key_are_drawn_afresh() -> None:
    random.seed(7)
    arms = [arm_at_random(25.0) for _ in range(10_000)]
    low, high = _binomial_bounds(10_000, 0.25)
    assert low <= arms.count(Arm.CANARY) <= high
    assert arm_at_random(25.0, draw=24.9) is Arm.CANARY
    assert arm_at_random(25.0, draw=25.0) is Arm.BASELINE
