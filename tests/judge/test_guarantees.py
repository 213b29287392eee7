"""The judge's error guarantees, by seeded simulation.

- On releases no worse than the baseline (neutral, with shared drift, a noisy judge, or
  scores that arrive later for the canary) the false-rollback rate stays at or below
  alpha = 0.05, looking every minute for an hour; the bound allows three standard errors
  of the Monte Carlo estimate.
- A very bad release is rolled back; a release whose canary is never scored, or loses its
  scores selectively, is never promoted.
- Without the generator: the rollback e-process itself is anytime-valid (Ville), where a
  fixed z-test looked at as often is not.

Everything is seeded, so the outcome of each check is fixed; the margins are what make
the seeds unremarkable.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from bench.coalmine_method import CoalmineJudge
from bench.scenarios import SCENARIOS, TRAFFIC
from controller.judge import stats

pytestmark = pytest.mark.statistical

ALPHA = 0.05
MINUTES = 60
TRAFFIC_SPLIT = "10/90"


def three_se_bound(alpha: float, runs: int) -> float:
    return alpha + 3.0 * math.sqrt(alpha * (1.0 - alpha) / runs)


def decisions(name: str, runs: int, first_seed: int, minutes: int = MINUTES) -> Counter[str]:
    """How the coalmine judge ended ``runs`` seeded runs of a benchmark scenario."""
    judge = CoalmineJudge()
    scenario = SCENARIOS[name]
    counts: Counter[str] = Counter()
    for seed in range(first_seed, first_seed + runs):
        run = scenario.make_run(np.random.default_rng(seed), TRAFFIC[TRAFFIC_SPLIT], minutes)
        counts[judge.decide(run).decision] += 1
    return counts


@pytest.mark.parametrize(
    ("name", "first_seed"),
    [
        ("neutral", 10_000),
        ("neutral-drift", 20_000),
        ("neutral-noisy-judge", 30_000),
        ("late-scores", 40_000),
    ],
)
def test_good_releases_are_rarely_rolled_back(name: str, first_seed: int) -> None:
    assert SCENARIOS[name].truth == "neutral"
    runs = 400
    counts = decisions(name, runs, first_seed)
    rate = counts["rollback"] / runs
    assert rate <= three_se_bound(ALPHA, runs), counts


def test_a_very_bad_release_is_rolled_back() -> None:
    runs = 200
    counts = decisions("very-bad", runs, 50_000)
    assert counts["rollback"] >= 0.95 * runs, counts
    assert counts["promote"] == 0, counts


@pytest.mark.parametrize(("name", "first_seed"), [("no-scores", 60_000), ("srm-coverage", 70_000)])
def test_a_broken_release_is_never_promoted(name: str, first_seed: int) -> None:
    assert SCENARIOS[name].truth == "broken"
    counts = decisions(name, 200, first_seed)
    assert counts["promote"] == 0, counts


def test_a_release_whose_canary_is_never_scored_is_stopped() -> None:
    # Not just "not promoted": once scoreTimeout has passed the coverage guard pauses it.
    counts = decisions("no-scores", 40, 61_000)
    assert counts == Counter(pause=40)


# -- the e-process alone -------------------------------------------------------------------


def _ever_crosses(sums: np.ndarray, effect: float, margin: float, log_level: float) -> np.ndarray:
    """Per path, whether the rollback e-value reached the level at any look.

    Look n sees the mean of n unit-variance observations: harm = S_n / n, variance 1 / n.
    """
    paths, looks = sums.shape
    crossed = np.zeros(paths, dtype=bool)
    for p in range(paths):
        row = sums[p]
        for n in range(1, looks + 1):
            harm = margin + float(row[n - 1]) / n
            if stats.rollback_log_evalue(harm, 1.0 / n, margin, effect) >= log_level:
                crossed[p] = True
                break
    return crossed


@pytest.mark.parametrize(
    ("effect", "paths", "seed"),
    [(0.2, 4000, 1), (0.05, 1500, 2), (1.0, 1500, 3)],
)
def test_the_rollback_evalue_is_anytime_valid(effect: float, paths: int, seed: int) -> None:
    looks = 200
    rng = np.random.default_rng(seed)
    sums = np.cumsum(rng.standard_normal((paths, looks)), axis=1)  # the null: no harm
    crossed = _ever_crosses(sums, effect, margin=0.02, log_level=math.log(1 / ALPHA))
    assert crossed.mean() <= three_se_bound(ALPHA, paths)


def test_peeking_at_a_fixed_test_is_not() -> None:
    paths, looks = 4000, 200
    rng = np.random.default_rng(1)
    sums = np.cumsum(rng.standard_normal((paths, looks)), axis=1)
    z = sums / np.sqrt(np.arange(1, looks + 1))
    once = (z[:, -1] > 1.645).mean()
    assert abs(once - ALPHA) <= 3.0 * math.sqrt(ALPHA * (1 - ALPHA) / paths)  # valid once
    assert (z > 1.645).any(axis=1).mean() > 0.2  # looked at 200 times: far beyond alpha


def test_the_rollback_evalue_has_power() -> None:
    paths, looks, harm = 500, 200, 0.3
    rng = np.random.default_rng(4)
    sums = np.cumsum(rng.standard_normal((paths, looks)) + harm, axis=1)
    # a true harm beyond the margin of 4.2 standard errors at the last look is caught
    crossed = _ever_crosses(sums, 0.2, margin=0.02, log_level=math.log(1 / ALPHA))
    assert crossed.mean() > 0.9


def test_the_sample_ratio_evalue_is_anytime_valid() -> None:
    paths, looks, per_look, share = 2000, 50, 10, 0.1
    rng = np.random.default_rng(5)
    canary = np.cumsum(rng.binomial(per_look, share, size=(paths, looks)), axis=1)
    level = math.log(1 / ALPHA)
    crossed = 0
    for p in range(paths):
        for k in range(looks):
            trials = per_look * (k + 1)
            if stats.binomial_ratio_log_evalue(int(canary[p, k]), trials, share) >= level:
                crossed += 1
                break
    assert crossed / paths <= three_se_bound(ALPHA, paths)
