"""Arm assignment: the split follows the weight, a key keeps its arm, raising the weight
never sends a canary user back."""

from __future__ import annotations

import math
import random

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


def test_a_key_keeps_its_arm() -> None:
    arms = {arm_for_key("support", "user-42", 25.0) for _ in range(1000)}
    assert len(arms) == 1


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
