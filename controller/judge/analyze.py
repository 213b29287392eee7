"""Per-metric analysis: from evidence to an estimate, bounds, an e-value and a verdict.

Each metric reduces to a *harm*: an estimate that is positive when the canary is worse,
with a margin (the tolerance in the same units) and the effect beyond the margin that the
rollback test is tuned to catch fastest.

- Mean metrics (numeric, boolean and categorical scores; error rates; log cost) use the
  stratified difference of means over (step, block) cells.
- Quantile metrics (latency) use, per step, the share of canary requests slower than the
  tolerated threshold (baseline quantile times 1 + tolerance) minus the share the quantile
  allows; under "within tolerance" that difference is at most zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controller.judge import stats
from controller.judge.evidence import Evidence, MeanSeries, MetricSeries, QuantileSeries
from controller.judge.model import MetricResult, Scale, Verdict
from policies.model import Direction, Metric, MetricSource, ScoreType

MIN_HARMFUL_EVENTS = 5  # a 0/1 metric fails only after this many harmful canary events
VARIANCE_FLOOR = 1e-12
DEFAULT_EFFECT = {
    MetricSource.ERROR_RATE: 0.02,
    MetricSource.TRACE_ERROR_RATE: 0.02,
    MetricSource.COST: 20.0,  # percent
}
DEFAULT_SCORE_EFFECT = 0.05  # of the score's range; for 0/1 scores: five points of rate


@dataclass(frozen=True, slots=True)
class Harm:
    """A metric's evidence on the harm scale (positive = canary worse)."""

    harm: float
    variance: float
    margin: float  # rollback: fail when shown beyond it
    effect: float
    promote_margin: float  # pass when shown within it


@dataclass(frozen=True, slots=True)
class Limits:
    """What a look allows: alphas and sample floors."""

    alpha_metric: float  # rollback test level for this metric (its share of alpha)
    alpha_bounds: float  # each bound is a one-sided 1 - alpha confidence sequence
    min_samples_step: int  # per arm in the current step, before a pass
    min_samples_total: int  # per arm overall, before a fail
    step: int


def margin_and_effect(metric: Metric) -> tuple[float, float]:
    """Tolerance and tuned effect of a mean metric, on the scale it is compared on."""
    if metric.source is MetricSource.COST:
        percent = metric.tolerance_percent or 0.0
        extra = (
            metric.effect_size
            if metric.effect_size is not None
            else DEFAULT_EFFECT[MetricSource.COST]
        )
        margin = math.log1p(percent / 100.0)
        return margin, math.log1p((percent + extra) / 100.0) - margin
    margin = metric.tolerance or 0.0
    if metric.effect_size is not None:
        return margin, metric.effect_size
    if metric.source.is_error_rate:
        return margin, DEFAULT_EFFECT[metric.source]
    if metric.score_type is ScoreType.NUMERIC and metric.range is not None:
        return margin, DEFAULT_SCORE_EFFECT * (metric.range.max - metric.range.min)
    return margin, DEFAULT_SCORE_EFFECT


def promote_margin(metric: Metric) -> float:
    """The margin a metric must be shown within before a step advances."""
    if metric.promote_tolerance_percent is not None:
        return math.log1p(metric.promote_tolerance_percent / 100.0)
    if metric.promote_tolerance is not None:
        return metric.promote_tolerance
    if metric.source is MetricSource.COST:
        return math.log1p((metric.tolerance_percent or 0.0) / 100.0)
    return metric.tolerance or 0.0


def orientation(metric: Metric) -> float:
    """+1 when larger values are worse, -1 when larger values are better."""
    return 1.0 if metric.direction is Direction.LOWER else -1.0


def arm_variances(series: MeanSeries, indicator: bool) -> tuple[float, float]:
    """Per-observation variance of (baseline, canary).

    0/1 metrics: p(1-p) with p shrunk towards 1/2 by half an event, so an arm with no
    events yet is not taken as certain. Others: pooled within-cell variance, which
    drift shared by both arms does not inflate.
    """
    result: list[float] = []
    for stats_ in series.arms:
        n, total, total_sq, within_ss, df = stats_
        if indicator:
            p = (total + 0.5) / (n + 1.0)
            result.append(p * (1.0 - p))
        elif df >= 1:
            result.append(max(within_ss / df, VARIANCE_FLOOR))
        elif n >= 2:
            result.append(max((total_sq - total * total / n) / (n - 1), VARIANCE_FLOOR))
        else:
            result.append(VARIANCE_FLOOR)
    return result[0], result[1]


def mean_harm(series: MetricSeries) -> tuple[Harm, float] | None:
    """(harm, raw difference canary - baseline) of a mean metric, or None without data."""
    means = series.means
    assert means is not None
    w, wd, a, b = means.sums
    if w <= 0.0:
        return None
    var_b, var_c = arm_variances(means, series.indicator)
    variance = max((var_c * a + var_b * b) / (w * w), VARIANCE_FLOOR)
    difference = wd / w
    margin, effect = margin_and_effect(series.metric)
    harm = Harm(
        orientation(series.metric) * difference,
        variance,
        margin,
        effect,
        promote_margin(series.metric),
    )
    return harm, difference


def quantile_harm(series: MetricSeries) -> tuple[Harm, int] | None:
    """(harm, canary exceedances) of a latency metric, combined over steps.

    The harm is measured at the rollback threshold (margin 0); ``promote_margin`` carries
    how far below zero the share must be shown at the promotion threshold, expressed on
    the same scale: the share slower than the promotion threshold, minus 1 - q.
    """
    quantiles = series.quantiles
    assert quantiles is not None
    metric = series.metric
    q = metric.quantile if metric.quantile is not None else 0.95
    information = weighted = weighted_promote = 0.0
    exceedances = 0
    for baseline, canary in quantiles.steps.values():
        if baseline.n == 0 or canary.n == 0:
            continue
        base = baseline.quantile(q)
        above = canary.count_above(tolerated_threshold(metric, base))
        above_promote = canary.count_above(tolerated_threshold(metric, base, promote=True))
        exceedances += above
        variance = q * (1.0 - q) * (1.0 / canary.n + 1.0 / baseline.n)
        information += 1.0 / variance
        weighted += (above / canary.n - (1.0 - q)) / variance
        weighted_promote += (above_promote / canary.n - (1.0 - q)) / variance
    if information <= 0.0:
        return None
    harm = weighted / information
    # pass when harm_promote + c < 0, i.e. harm + c < harm - harm_promote
    margin_promote = harm - weighted_promote / information
    return Harm(harm, 1.0 / information, 0.0, 1.0 - q, margin_promote), exceedances


def tolerated_threshold(
    metric: Metric, baseline_quantile: float, *, promote: bool = False
) -> float:
    """The slowest canary quantile still within tolerance of the baseline's."""
    percent = metric.tolerance_percent
    absolute = metric.tolerance
    if promote:
        if metric.promote_tolerance_percent is not None:
            percent = metric.promote_tolerance_percent
        if metric.promote_tolerance is not None:
            absolute = metric.promote_tolerance
    if percent is not None:
        return baseline_quantile * (1.0 + percent / 100.0)
    return baseline_quantile + (absolute or 0.0)


@dataclass(frozen=True, slots=True)
class Radii:
    """Distances from the harm estimate to its confidence-sequence bounds.

    ``worse`` comes from the rollback mixture (tuned to the effect), ``better`` from a
    mixture tuned to the promotion margin, so a failing metric's lower harm bound always
    lies beyond its tolerance and a passing metric's upper bound inside its promotion
    margin: the bounds a judgement shows agree with its verdicts.
    """

    worse: float
    better: float

    @classmethod
    def of(cls, harm: Harm, alpha: float) -> Radii:
        level = math.log(1.0 / alpha)
        distance = harm.promote_margin if harm.promote_margin > 0 else harm.effect
        return cls(
            worse=stats.mixture_radius(harm.variance, harm.effect, level),
            better=stats.mixture_radius(harm.variance, distance, level, grid=stats.PROMOTE_GRID),
        )


def analyze(evidence: Evidence, name: str, limits: Limits) -> MetricResult:
    """Estimate, bounds, rollback e-value and verdict of one metric."""
    series = evidence.series[name]
    metric = series.metric
    quantile = series.quantiles is not None
    if series.quantiles is not None:
        n_b, n_c = series.quantiles.totals
        step_b, step_c = series.quantiles.step_count(limits.step)
        scale = Scale.RATIO if metric.tolerance_percent is not None else Scale.DIFFERENCE
    else:
        assert series.means is not None
        n_b, n_c = series.means.totals
        step_b, step_c = series.means.step_count(limits.step)
        scale = Scale.RATIO if metric.source is MetricSource.COST else Scale.DIFFERENCE
    common = {
        "name": metric.name,
        "source": str(metric.source),
        "critical": metric.critical,
        "scale": scale,
        "n_baseline": n_b,
        "n_canary": n_c,
        "n_baseline_step": step_b,
        "n_canary_step": step_c,
        "log_threshold": math.log(1.0 / limits.alpha_metric),
        "worst_traces": evidence.worst_traces(name),
        "invalid": series.invalid,
    }
    if quantile:
        found_q = quantile_harm(series)
        found = None if found_q is None else (found_q[0], float("nan"), found_q[1])
    else:
        found_m = mean_harm(series)
        harmful = series.means.canary_bad if series.means and series.indicator else n_c
        found = None if found_m is None else (found_m[0], found_m[1], harmful)
    if found is None:
        return MetricResult(
            verdict=Verdict.NODATA,
            reason=_nodata_reason(n_b, n_c),
            estimate=None,
            lower=None,
            upper=None,
            log_evalue=0.0,
            below_floor=True,
            **common,  # type: ignore[arg-type]
        )
    harm, difference, harmful = found
    radii = Radii.of(harm, limits.alpha_bounds)
    if quantile:
        assert series.quantiles is not None
        estimate, lower, upper = _quantile_bounds(
            series.quantiles, metric, radii, scale is Scale.RATIO
        )
    else:
        estimate, lower, upper = _mean_bounds(metric, difference, radii)
    log_e = stats.rollback_log_evalue(harm.harm, harm.variance, harm.margin, harm.effect)
    counts = Counts(n_b, n_c, step_b, step_c, harmful)
    verdict, reason = _verdict(harm, radii=radii, log_e=log_e, limits=limits, counts=counts)
    return MetricResult(
        verdict=verdict,
        reason=reason,
        estimate=estimate,
        lower=lower,
        upper=upper,
        log_evalue=log_e,
        below_floor=counts.below_floor(limits),
        **common,  # type: ignore[arg-type]
    )


def _mean_bounds(metric: Metric, difference: float, radii: Radii) -> tuple[float, float, float]:
    """Estimate and bounds of canary minus baseline (cost: canary over baseline).

    On the harm scale the bounds are [harm - worse, harm + better]: the lower one is what
    a rollback must push beyond the tolerance, the upper one what a promotion must pull
    inside its margin.
    """
    if orientation(metric) > 0:  # harm = difference
        lower, upper = difference - radii.worse, difference + radii.better
    else:  # harm = -difference
        lower, upper = difference - radii.better, difference + radii.worse
    if metric.source is MetricSource.COST:
        return math.exp(difference), math.exp(lower), math.exp(upper)
    return difference, lower, upper


def _quantile_bounds(
    quantiles: QuantileSeries, metric: Metric, radii: Radii, ratio: bool
) -> tuple[float | None, float | None, float | None]:
    """Canary quantile against baseline's in the latest step with both arms.

    The bounds read the canary's quantile at q -/+ the confidence radii on the exceedance
    scale: approximate, for display; the verdict uses the exceedance test.
    """
    q = metric.quantile if metric.quantile is not None else 0.95
    for step in sorted(quantiles.steps, reverse=True):
        baseline, canary = quantiles.steps[step]
        if baseline.n == 0 or canary.n == 0:
            continue
        base = baseline.quantile(q)
        low_level, high_level = q - radii.worse, q + radii.better
        points = (
            canary.quantile(q),
            canary.quantile(low_level) if low_level > 0 else 0.0,
            canary.quantile(high_level) if high_level < 1 else math.inf,
        )
        if ratio:
            if base <= 0:
                return None, None, None
            return points[0] / base, points[1] / base, points[2] / base
        return points[0] - base, points[1] - base, points[2] - base
    return None, None, None


@dataclass(frozen=True, slots=True)
class Counts:
    """Observations per arm, overall and in the current step, and harmful canary events."""

    baseline: int
    canary: int
    baseline_step: int
    canary_step: int
    harmful: int

    def below_floor(self, limits: Limits) -> bool:
        """Too few observations to act on a rollback test's plug-in variance."""
        floor = limits.min_samples_total
        return self.baseline < floor or self.canary < floor or self.harmful < MIN_HARMFUL_EVENTS


def _verdict(
    harm: Harm, *, radii: Radii, log_e: float, limits: Limits, counts: Counts
) -> tuple[Verdict, str]:
    threshold = math.log(1.0 / limits.alpha_metric)
    floor = limits.min_samples_total
    if log_e >= threshold:
        if counts.baseline < floor or counts.canary < floor:
            return Verdict.INCONCLUSIVE, (
                f"worse than tolerated, but only {counts.canary} canary and "
                f"{counts.baseline} baseline observations (floor {floor})"
            )
        if counts.harmful < MIN_HARMFUL_EVENTS:
            return Verdict.INCONCLUSIVE, (
                f"worse than tolerated, but only {counts.harmful} harmful canary events "
                f"(floor {MIN_HARMFUL_EVENTS})"
            )
        return Verdict.FAIL, (
            f"worse than the baseline beyond tolerance: e-value {stats.format_evalue(log_e)} "
            f">= {stats.format_evalue(threshold)}"
        )
    if harm.harm + radii.better < harm.promote_margin:
        need = limits.min_samples_step
        if counts.baseline_step < need or counts.canary_step < need:
            return Verdict.INCONCLUSIVE, (
                f"within tolerance so far, {counts.canary_step} canary and "
                f"{counts.baseline_step} baseline observations in this step (need {need} each)"
            )
        return Verdict.PASS, "shown within tolerance"
    return Verdict.INCONCLUSIVE, "not yet shown within tolerance or beyond it"


def _nodata_reason(n_b: int, n_c: int) -> str:
    if n_c == 0 and n_b == 0:
        return "no observations in either arm"
    if n_c == 0:
        return "no canary observations"
    if n_b == 0:
        return "no baseline observations"
    return "no time block holds both arms yet"
