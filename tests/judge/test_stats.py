"""The judge's statistics, checked against formulas written out here and against scipy.

The rollback e-value is a mixture, over multiples of the tuned effect, of the Gaussian
likelihood ratios exp(d*S - d^2*v/2) with S = (harm - margin)/variance and v = 1/variance.
The grid below is a literal copy of the one the judge documents; every expected value in
this file is computed from it with scipy, or pinned as a number worked out by hand.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import special
from scipy import stats as scipy_stats

from controller.judge import stats

GRID = ((0.5, 0.1), (1.0, 0.6), (2.0, 0.15), (4.0, 0.1), (8.0, 0.05))  # (scale, weight)
LOG_20 = math.log(20.0)


def expected_log_evalue(harm: float, variance: float, margin: float, effect: float) -> float:
    """log sum_k w_k exp(d_k S - d_k^2 v / 2), evaluated with scipy's logsumexp."""
    information = 1.0 / variance
    score = (harm - margin) * information
    exponents = [
        scale * effect * score - (scale * effect) ** 2 * information / 2.0 for scale, _ in GRID
    ]
    return float(special.logsumexp(exponents, b=[weight for _, weight in GRID]))


def expected_binomial(successes: int, trials: int, expected: float) -> float:
    """Beta-binomial marginal over the binomial likelihood at ``expected``, via scipy."""
    concentration = max((1.0 - expected) / (expected * 0.01) - 1.0, 2.0)
    a, b = expected * concentration, (1.0 - expected) * concentration
    failures = trials - successes
    log_marginal = special.betaln(a + successes, b + failures) - special.betaln(a, b)
    log_null = successes * math.log(expected) + failures * math.log1p(-expected)
    return float(log_marginal - log_null)


def test_the_mixture_grid_is_the_documented_one() -> None:
    assert stats.EFFECT_GRID == GRID
    assert sum(weight for _, weight in GRID) == pytest.approx(1.0)


# -- rollback_log_evalue -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("harm", "variance", "margin", "effect"),
    [
        pytest.param(0.05, 0.0004, 0.0, 0.05, id="at-tuned-effect"),
        pytest.param(0.0, 0.0004, 0.0, 0.05, id="at-margin"),
        pytest.param(-0.05, 0.0004, 0.0, 0.05, id="better-than-baseline"),
        pytest.param(0.1, 0.001, 0.02, 0.05, id="beyond-margin"),
        pytest.param(0.3, 0.01, 0.05, 0.2, id="large-effect"),
        pytest.param(0.001, 1e-6, 0.0, 0.005, id="tiny-variance"),
        pytest.param(0.02, 0.25, 0.01, 0.1, id="little-information"),
        pytest.param(2.0, 1e-4, 0.0, 0.01, id="severe-regression"),
    ],
)
def test_rollback_log_evalue_matches_the_mixture_formula(
    harm: float, variance: float, margin: float, effect: float
) -> None:
    got = stats.rollback_log_evalue(harm, variance, margin, effect)
    assert got == pytest.approx(expected_log_evalue(harm, variance, margin, effect), rel=1e-12)


@pytest.mark.parametrize(
    ("args", "literal"),
    [
        # exponents 2.34375, 3.125, 0, -25, -150 with weights .1, .6, .15, .1, .05
        pytest.param((0.05, 0.0004, 0.0, 0.05), 2.697862548382882, id="tuned"),
        pytest.param((0.0, 0.0004, 0.0, 0.05), -2.6290626681718905, id="margin"),
        pytest.param((0.1, 0.001, 0.02, 0.05), 2.5603879025489404, id="shifted-margin"),
    ],
)
def test_rollback_log_evalue_literals(
    args: tuple[float, float, float, float], literal: float
) -> None:
    assert stats.rollback_log_evalue(*args) == pytest.approx(literal, rel=1e-12)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param((0.3, math.inf, 0.0, 0.05), id="infinite-variance"),
        pytest.param((0.3, 0.0, 0.0, 0.05), id="zero-variance"),
        pytest.param((0.3, -1.0, 0.0, 0.05), id="negative-variance"),
        pytest.param((0.3, math.nan, 0.0, 0.05), id="nan-variance"),
        pytest.param((0.3, 0.01, 0.0, 0.0), id="zero-effect"),
    ],
)
def test_no_information_is_no_evidence(args: tuple[float, float, float, float]) -> None:
    assert stats.rollback_log_evalue(*args) == 0.0


def test_the_evalue_starts_at_one() -> None:
    # As information goes to zero every likelihood ratio goes to 1, and the weights sum to 1.
    for harm in (-1.0, 0.0, 0.3):
        assert stats.rollback_log_evalue(harm, 1e12, 0.0, 0.05) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("variance", [1e-4, 4e-4, 1e-2])
def test_the_evalue_increases_in_harm_and_decreases_in_margin(variance: float) -> None:
    harms = np.linspace(-0.2, 0.3, 51)
    by_harm = [stats.rollback_log_evalue(float(h), variance, 0.02, 0.05) for h in harms]
    assert all(later > earlier for earlier, later in itertools.pairwise(by_harm))
    margins = np.linspace(0.0, 0.2, 41)
    by_margin = [stats.rollback_log_evalue(0.1, variance, float(m), 0.05) for m in margins]
    assert all(later < earlier for earlier, later in itertools.pairwise(by_margin))


def test_only_the_distance_beyond_the_margin_counts() -> None:
    for shift in (0.0, 0.1, 0.37):
        assert stats.rollback_log_evalue(0.08 + shift, 4e-4, 0.02 + shift, 0.05) == pytest.approx(
            stats.rollback_log_evalue(0.08, 4e-4, 0.02, 0.05), rel=1e-9
        )


def test_more_information_makes_a_real_harm_more_convincing() -> None:
    values = [stats.rollback_log_evalue(0.1, v, 0.0, 0.05) for v in (1e-2, 1e-3, 1e-4, 1e-5)]
    assert values == sorted(values)
    assert values[-1] > LOG_20


def test_huge_evidence_does_not_overflow() -> None:
    got = stats.rollback_log_evalue(0.7, 1e-6, 0.05, 0.05)
    assert math.isfinite(got)
    assert got == pytest.approx(expected_log_evalue(0.7, 1e-6, 0.05, 0.05), rel=1e-12)


# -- mixture_radius ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variance", "effect", "log_level"),
    [
        pytest.param(0.0004, 0.05, LOG_20, id="alpha-0.05"),
        pytest.param(0.01, 0.05, LOG_20, id="wide"),
        pytest.param(1e-6, 0.05, LOG_20, id="narrow"),
        pytest.param(0.0004, 0.05, math.log(1000.0), id="alpha-0.001"),
        pytest.param(0.0004, 0.5, LOG_20, id="large-effect"),
        pytest.param(0.0004, 0.001, LOG_20, id="small-effect"),
        pytest.param(2.5, 1.0, math.log(40.0), id="unit-scale"),
        pytest.param(0.0004, 0.05, 0.0, id="level-one"),
    ],
)
def test_mixture_radius_solves_the_evalue_equation(
    variance: float, effect: float, log_level: float
) -> None:
    radius = stats.mixture_radius(variance, effect, log_level)
    assert radius > 0.0
    assert stats.rollback_log_evalue(radius, variance, 0.0, effect) == pytest.approx(
        log_level, abs=1e-9
    )
    # and it is the smallest such distance: the e-value is increasing in the estimate
    assert stats.rollback_log_evalue(radius * 0.999, variance, 0.0, effect) < log_level


@pytest.mark.parametrize(
    ("args", "literal"),
    [
        pytest.param((0.0004, 0.05, LOG_20), 0.05243360069766092, id="se-0.02"),
        pytest.param((0.01, 0.05, LOG_20), 0.32156714563644795, id="se-0.1"),
    ],
)
def test_mixture_radius_literals(args: tuple[float, float, float], literal: float) -> None:
    assert stats.mixture_radius(*args) == pytest.approx(literal, rel=1e-9)


def test_the_radius_is_wider_than_a_fixed_sample_interval_but_not_absurdly() -> None:
    # A confidence sequence pays for looking at every time: wider than 1.645 SE.
    for variance in (1e-5, 1e-4, 1e-3):
        se = math.sqrt(variance)
        radius = stats.mixture_radius(variance, 0.05, LOG_20)
        assert 1.645 * se < radius < 6.0 * se


def test_the_radius_shrinks_with_the_variance() -> None:
    variances = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
    radii = [stats.mixture_radius(v, 0.05, LOG_20) for v in variances]
    assert all(later < earlier for earlier, later in itertools.pairwise(radii))


def test_the_radius_grows_with_the_level() -> None:
    radii = [stats.mixture_radius(4e-4, 0.05, math.log(1 / a)) for a in (0.2, 0.05, 0.01, 0.001)]
    assert radii == sorted(radii)


def test_the_radius_agrees_with_the_rollback_test() -> None:
    # An estimate beyond margin + radius is exactly one the rollback test rejects.
    variance, margin, effect = 4e-4, 0.02, 0.05
    radius = stats.mixture_radius(variance, effect, LOG_20)
    assert stats.rollback_log_evalue(margin + radius * 1.001, variance, margin, effect) > LOG_20
    assert stats.rollback_log_evalue(margin + radius * 0.999, variance, margin, effect) < LOG_20


@pytest.mark.parametrize(
    "args",
    [
        pytest.param((0.0, 0.05, LOG_20), id="zero-variance"),
        pytest.param((math.inf, 0.05, LOG_20), id="infinite-variance"),
        pytest.param((0.01, 0.0, LOG_20), id="zero-effect"),
    ],
)
def test_mixture_radius_without_information_is_unbounded(args: tuple[float, float, float]) -> None:
    assert stats.mixture_radius(*args) == math.inf


# -- binomial_ratio_log_evalue -------------------------------------------------------------


@pytest.mark.parametrize(
    ("successes", "trials", "expected"),
    [
        pytest.param(100, 500, 0.5, id="20pc-of-50"),
        pytest.param(250, 500, 0.5, id="on-share"),
        pytest.param(10, 100, 0.1, id="on-share-small"),
        pytest.param(20, 100, 0.1, id="double-small"),
        pytest.param(0, 50, 0.05, id="none"),
        pytest.param(999, 1000, 0.99, id="near-one"),
        pytest.param(3, 3, 0.5, id="few"),
    ],
)
def test_binomial_evalue_matches_the_beta_binomial_formula(
    successes: int, trials: int, expected: float
) -> None:
    got = stats.binomial_ratio_log_evalue(successes, trials, expected)
    assert got == pytest.approx(expected_binomial(successes, trials, expected), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(
    ("args", "literal"),
    [
        pytest.param((100, 500, 0.5), 77.87374683952316, id="srm"),
        pytest.param((250, 500, 0.5), -0.9021787215022528, id="on-share"),
        pytest.param((10, 100, 0.1), -0.052829690408245256, id="on-share-small"),
        pytest.param((20, 100, 0.1), 0.44539484631434334, id="double-small"),
    ],
)
def test_binomial_evalue_literals(args: tuple[int, int, float], literal: float) -> None:
    assert stats.binomial_ratio_log_evalue(*args) == pytest.approx(literal, rel=1e-9)


@pytest.mark.parametrize(("trials", "expected"), [(1000, 0.5), (1000, 0.1), (4000, 0.05)])
def test_binomial_evalue_is_small_at_the_share_and_grows_both_ways(
    trials: int, expected: float
) -> None:
    centre = round(trials * expected)
    at_share = stats.binomial_ratio_log_evalue(centre, trials, expected)
    assert at_share < 0.5
    step = max(trials // 100, 1)
    above = [
        stats.binomial_ratio_log_evalue(centre + k * step, trials, expected) for k in range(1, 8)
    ]
    below = [
        stats.binomial_ratio_log_evalue(centre - k * step, trials, expected) for k in range(1, 8)
    ]
    assert [at_share, *above] == sorted([at_share, *above])
    assert [at_share, *below] == sorted([at_share, *below])
    assert min(above[-1], below[-1]) > math.log(1000.0)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param((0, 0, 0.5), id="no-trials"),
        pytest.param((5, 10, 0.0), id="share-zero"),
        pytest.param((5, 10, 1.0), id="share-one"),
    ],
)
def test_binomial_evalue_without_a_test_is_one(args: tuple[int, int, float]) -> None:
    assert stats.binomial_ratio_log_evalue(*args) == 0.0


def test_binomial_evalue_is_a_fair_bet_under_the_null() -> None:
    # E[e-value] = 1 at the expected share, summing exactly over the binomial law.
    trials, expected = 60, 0.2
    pmf = scipy_stats.binom.pmf(np.arange(trials + 1), trials, expected)
    evalues = [math.exp(stats.binomial_ratio_log_evalue(k, trials, expected)) for k in range(61)]
    assert float(np.dot(pmf, evalues)) == pytest.approx(1.0, rel=1e-9)


# -- normal_cdf and log_sum_exp ------------------------------------------------------------


@pytest.mark.parametrize("x", [-38.0, -10.0, -3.0, -1.6448536269514722, -0.5, 0.0, 0.7, 1.96, 8.0])
def test_normal_cdf_matches_scipy(x: float) -> None:
    assert stats.normal_cdf(x) == pytest.approx(float(scipy_stats.norm.cdf(x)), rel=1e-12)


@pytest.mark.parametrize(
    ("x", "literal"),
    [
        (0.0, 0.5),
        (1.959963984540054, 0.975),
        (-1.6448536269514722, 0.05),
        (-10.0, 7.619853024160527e-24),
        (math.inf, 1.0),
        (-math.inf, 0.0),
    ],
)
def test_normal_cdf_literals(x: float, literal: float) -> None:
    assert stats.normal_cdf(x) == pytest.approx(literal, rel=1e-12)


@pytest.mark.parametrize(
    "values",
    [
        pytest.param([0.0], id="one"),
        pytest.param([0.0, 0.0], id="two-zeros"),
        pytest.param([1000.0, 1000.0], id="large"),
        pytest.param([-1000.0, 0.0], id="tiny-term"),
        pytest.param([-745.0, -745.0, -746.0], id="all-tiny"),
        pytest.param([1.5, -2.0, 3.25, 0.0], id="mixed"),
        pytest.param([-math.inf, 0.0], id="minus-infinity-term"),
    ],
)
def test_log_sum_exp_matches_scipy(values: list[float]) -> None:
    assert stats.log_sum_exp(values) == pytest.approx(float(special.logsumexp(values)), rel=1e-12)


def test_log_sum_exp_literals() -> None:
    assert stats.log_sum_exp([0.0, 0.0]) == pytest.approx(math.log(2.0))
    assert stats.log_sum_exp([1000.0, 1000.0]) == pytest.approx(1000.0 + math.log(2.0))
    assert stats.log_sum_exp([math.log(0.25), math.log(0.75)]) == pytest.approx(0.0, abs=1e-15)
    assert stats.log_sum_exp([-math.inf, -math.inf]) == -math.inf
