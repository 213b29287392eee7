"""bench.scale on a tiny world: one release, 1,000 requests a minute, 5 minutes."""

from __future__ import annotations

import random
from pathlib import Path

from bench.scale import GOAL_WINDOW, RunPlan, _largest_window, goals, run, sampled_indices
from coalmine.shared.sampling import is_sampled


def test_sampled_indices_agree_with_the_proxys_test() -> None:
    rng = random.Random(7)
    raw = bytes(rng.getrandbits(8) for _ in range(16 * 4000))
    for rate in (0.0, 0.01, 0.3, 1.0):
        chosen = set(sampled_indices(raw, rate))
        expected = {
            index
            for index in range(4000)
            if is_sampled(raw[16 * index : 16 * index + 16].hex(), rate)
        }
        assert chosen == expected


def test_largest_window_is_half_open() -> None:
    assert _largest_window([0.0, 0.0, 60.0, 60.0, 60.0, 119.0]) == 4
    assert _largest_window([]) == 0


def test_tiny_world_through_the_benchmark(tmp_path: Path) -> None:
    result = run(RunPlan(releases=1, rate=1000, minutes=5, warmup=2), tmp_path)
    assert (result.polls_ok, result.polls) == (5, 5)
    assert result.status_429 == 0
    assert 0 < result.max_in_60s <= GOAL_WINDOW
    assert result.requests_total == 5000
    # one release at 1,000 a minute fits the budget whole: every request sampled
    assert result.end_rates == {"rel-00": 1.0}
    assert result.sampled_traces == 5000
    assert result.judged_share == {"rel-00": (1.0, 1.0)}
    baseline, canary = result.scored_per_minute["rel-00"]
    assert baseline >= 400 and canary >= 400
    assert result.decisions == []
    met = {goal: ok for goal, _, ok in goals([result])}
    assert all(met.values()), met
