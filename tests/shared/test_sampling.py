"""The score sample's hash: uniform at every rate, blind to the arm, monotone in the rate,
and the same function the controller recomputes (seeded ids throughout)."""

from __future__ import annotations

import math
import random
from hashlib import blake2b

import pytest

from coalmine.shared.sampling import SAMPLE_KEY, is_sampled, sample_point
from policies.domain import Arm
from proxy.assign import arm_for_key

IDS = 200_000


def trace_ids(count: int, seed: int) -> list[str]:
    draw = random.Random(seed)
    return [f"{draw.getrandbits(128):032x}" for _ in range(count)]


@pytest.fixture(scope="module")
def ids() -> list[str]:
    return trace_ids(IDS, seed=15)


def test_the_point_is_the_keyed_blake2b_of_the_ids_bytes() -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    digest = blake2b(bytes.fromhex(trace), digest_size=8, key=SAMPLE_KEY).digest()
    assert sample_point(trace) == int.from_bytes(digest, "big") == 5969596209321678122
    # the controller reads ids back as Langfuse stores them: the case does not matter
    assert sample_point(trace.upper()) == sample_point(trace)


@pytest.mark.parametrize("rate", [0.001, 0.01, 0.1, 0.5])
def test_the_share_sampled_is_the_rate_within_three_standard_deviations(
    ids: list[str], rate: float
) -> None:
    sampled = sum(is_sampled(trace, rate) for trace in ids)
    sd = math.sqrt(IDS * rate * (1 - rate))
    assert abs(sampled - IDS * rate) <= 3 * sd, (sampled, IDS * rate, sd)


def test_points_are_uniform_over_sixteen_buckets(ids: list[str]) -> None:
    buckets = [0] * 16
    for trace in ids:
        buckets[sample_point(trace) >> 60] += 1
    expected = IDS / 16
    chi_square = sum((count - expected) ** 2 / expected for count in buckets)
    assert chi_square < 37.7  # the 0.999 quantile of chi-square with 15 degrees of freedom


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5])
def test_each_arm_is_sampled_at_the_rate_whatever_its_weight(ids: list[str], rate: float) -> None:
    """Arms come from the users' keys, sampling from the trace ids: the two never meet, so
    both arms are sampled at the rate, at any canary weight."""
    users = random.Random(16)
    for weight in (5.0, 50.0):
        counts = {Arm.BASELINE: [0, 0], Arm.CANARY: [0, 0]}
        for trace in ids:
            arm = arm_for_key("support", f"user-{users.getrandbits(40)}", weight)
            counts[arm][0] += 1
            counts[arm][1] += is_sampled(trace, rate)
        for arm, (requests, sampled) in counts.items():
            sd = math.sqrt(requests * rate * (1 - rate))
            assert abs(sampled - requests * rate) <= 3 * sd, (weight, arm, requests, sampled)
        (nb, sb), (nc, sc) = counts[Arm.BASELINE], counts[Arm.CANARY]
        pooled = (sb + sc) / (nb + nc)
        sd_difference = math.sqrt(pooled * (1 - pooled) * (1 / nb + 1 / nc))
        assert abs(sb / nb - sc / nc) <= 3 * sd_difference, (weight, counts)


def test_a_trace_sampled_at_a_rate_is_sampled_at_every_higher_rate() -> None:
    rates = [0.0, 0.0001, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.99, 1.0]
    previous: set[str] = set()
    for rate in rates:
        sampled = {trace for trace in trace_ids(20_000, seed=17) if is_sampled(trace, rate)}
        assert previous <= sampled, rate
        previous = sampled
    assert len(previous) == 20_000


def test_rate_one_samples_everything_without_hashing_and_zero_nothing() -> None:
    assert is_sampled("not even hex", 1.0)
    assert all(is_sampled(trace, 1.0) for trace in trace_ids(1000, seed=18))
    assert not any(is_sampled(trace, 0.0) for trace in trace_ids(1000, seed=18))
    with pytest.raises(ValueError):
        is_sampled("not even hex", 0.5)


def test_the_answer_is_the_same_on_every_call() -> None:
    traces = trace_ids(1000, seed=19)
    first = [is_sampled(trace, 0.3) for trace in traces]
    assert [is_sampled(trace, 0.3) for trace in traces] == first
