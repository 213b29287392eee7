"""Anytime-valid statistics for comparing a canary with a concurrent baseline.

Everything here works on the Gaussian approximation of a difference estimate: an
estimate ``harm`` (positive means the canary is worse) with variance ``variance``.
``information = 1 / variance`` plays the role of time, and ``harm * information`` is,
under the null, a Brownian motion in that time. The e-processes below are test
martingales for that motion, so the chance that one of them *ever* reaches ``1/alpha``
under the null is at most ``alpha`` however often it is looked at (Ville's inequality).
The plug-in variance makes them asymptotic; the judge asks for a sample floor before
acting on them.

References: Robbins (1970); Johari, Pekelis, Walsh, "Always Valid Inference" (2022);
Howard, Ramdas, McAuliffe, Sekhon, Ann. Stat. 49(2) 2021; Waudby-Smith et al.,
"Time-uniform central limit theory" (Ann. Stat. 2024); Lindon & Malek (2022) for the
multinomial sample-ratio test.
"""

from __future__ import annotations

import math

SQRT2 = math.sqrt(2.0)

# Mixing weights over multiples of the effect the test is tuned for: most mass on the
# effect itself, some on half of it (caught eventually) and on two to eight times it (a
# severe regression caught within minutes rather than at the pace of a subtle one).
EFFECT_GRID: tuple[tuple[float, float], ...] = (
    (0.5, 0.1),
    (1.0, 0.6),
    (2.0, 0.15),
    (4.0, 0.1),
    (8.0, 0.05),
)
# Mixing weights for showing a metric *within* a margin: centred on the distance from
# the margin to a release as good as the stable one.
PROMOTE_GRID: tuple[tuple[float, float], ...] = ((0.5, 0.25), (1.0, 0.5), (2.0, 0.25))


def log_sum_exp(values: list[float]) -> float:
    """log(sum(exp(v))) without overflow."""
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def format_evalue(log_e: float) -> str:
    """An e-value for people: 3 significant digits, or a power of ten past floats."""
    if log_e < 690.0:
        return f"{math.exp(log_e):.3g}"
    return f"1e{log_e / math.log(10.0):.0f}"


def normal_cdf(x: float) -> float:
    """Standard normal distribution function."""
    return 0.5 * math.erfc(-x / SQRT2)


def rollback_log_evalue(harm: float, variance: float, margin: float, effect: float) -> float:
    """Log e-value against H0: true harm <= margin.

    A mixture of likelihood ratios exp(d*S - d^2*v/2) over d in EFFECT_GRID * effect,
    with S = (harm - margin) / variance and v = 1 / variance. Each ratio is a
    nonnegative supermartingale under H0 for any d > 0, and so is the mixture.
    """
    if variance <= 0.0 or not math.isfinite(variance) or effect <= 0.0:
        return 0.0
    information = 1.0 / variance
    drift = (harm - margin) * information
    terms = [
        math.log(weight) + scale * effect * drift - (scale * effect) ** 2 * information / 2.0
        for scale, weight in EFFECT_GRID
    ]
    return log_sum_exp(terms)


def mixture_radius(
    variance: float,
    effect: float,
    log_level: float,
    grid: tuple[tuple[float, float], ...] = EFFECT_GRID,
) -> float:
    """Distance from the estimate to a one-sided confidence-sequence bound.

    The bound is the set of true values that the same mixture as
    ``rollback_log_evalue`` has not rejected at level ``exp(-log_level)``: the smallest
    ``c >= 0`` with log sum_k w_k exp(d_k*c*v - d_k^2*v/2) >= log_level. So a metric whose
    rollback test fires at level alpha has a bound beyond its margin at that level, and
    the bounds a judgement reports always agree with its verdicts.
    """
    if variance <= 0.0 or not math.isfinite(variance) or effect <= 0.0:
        return math.inf
    information = 1.0 / variance
    # log e(c) = log sum_k exp(slope_k * c - offset_k): convex and increasing in c, so
    # Newton's method started right of the root walks down onto it monotonically.
    slopes = [scale * effect * information for scale, _ in grid]
    offsets = [
        (scale * effect) ** 2 * information / 2.0 - math.log(weight) for scale, weight in grid
    ]
    c = max((log_level + offset) / slope for slope, offset in zip(slopes, offsets, strict=True))
    for _ in range(100):
        exponents = [slope * c - offset for slope, offset in zip(slopes, offsets, strict=True)]
        top = max(exponents)
        weights = [math.exp(x - top) for x in exponents]
        total = sum(weights)
        excess = top + math.log(total) - log_level
        if excess <= 1e-12:
            break
        gradient = sum(w * slope for w, slope in zip(weights, slopes, strict=True)) / total
        c -= excess / gradient
        if c <= 0.0:
            return 0.0
    return max(c, 0.0)


def binomial_ratio_log_evalue(successes: int, trials: int, expected: float) -> float:
    """Log e-value against H0: each trial succeeds with probability ``expected``.

    A beta-binomial mixture (conjugate prior centred on ``expected``, standard deviation
    a tenth of it, capped for shares near 1/2), two-sided: it grows when the observed
    share drifts either way. Used for the sample-ratio mismatch check.
    """
    if trials <= 0 or not 0.0 < expected < 1.0:
        return 0.0
    relative_sd = 0.1
    concentration = max((1.0 - expected) / (expected * relative_sd**2) - 1.0, 2.0)
    a = expected * concentration
    b = (1.0 - expected) * concentration
    failures = trials - successes
    log_marginal = log_beta(a + successes, b + failures) - log_beta(a, b)
    log_null = successes * math.log(expected) + failures * math.log(1.0 - expected)
    return log_marginal - log_null


def log_beta(a: float, b: float) -> float:
    """log B(a, b)."""
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
