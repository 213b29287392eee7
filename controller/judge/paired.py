"""Paired comparisons: the candidate and the baseline answering the same input.

A dataset gate scores both versions on every dataset item; a shadow rung scores the
primary's answer (the baseline) and its mirrored copy's (the candidate) for the same
request. Each pair gives a difference ``D = candidate - baseline`` in which the input's
own difficulty, shared by both answers, cancels. ``PairedSums`` keeps the running sums
of those differences (and of the baseline side, for the control variate below), and
``paired_test`` turns them into a verdict with the same anytime-valid normal-mixture
e-process the judge uses for unpaired means (``stats.rollback_log_evalue``): the chance
that a candidate within tolerance is *ever* blocked is at most ``alpha`` however often
the test is looked at, up to the plug-in variance's asymptotics.

**Failed calls.** A side whose call failed or timed out has no score; it takes the
worst value of the score's range, so a candidate that fails where the baseline answers
is counted as worse, never silently dropped. A failed baseline call takes the worst
value too: dropping those pairs instead would charge the candidate for the failures
both versions share, and a candidate exactly as reliable as the baseline would look
worse.

**Unmirrored baseline (control variate).** When only a share of requests is mirrored,
the baseline also answers the others. Their mean ``u`` estimates the baseline's mean
as well as the mirrored pairs' baseline mean ``b`` does, so
``D_mean + k (b - u)`` estimates the same difference for any ``k``; the ``k`` that
minimises its variance (``-cov(D, b) / (var(b) + var(u))`` of the means, estimated from
the sums) takes from the unmirrored traffic what it knows about the baseline side
(CUPED, Deng et al. 2013, with the unmirrored answers as the covariate's known mean).
With every request mirrored, or no unmirrored answers, ``k = 0`` and the estimate is the
plain paired mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from controller.judge import stats
from controller.judge.model import Verdict
from policies.model import DatasetGate, Direction, ShadowGate

# Pairs below which the plug-in variance is not trusted: never a pass or a block.
DEFAULT_MIN_PAIRS = 30
# The default effect beyond tolerance the block test is tuned for, as a share of the range.
DEFAULT_EFFECT_SHARE = 0.05


@dataclass(frozen=True, slots=True)
class PairedSettings:
    """What a paired metric is: its range, its direction and its tolerances."""

    low: float = 0.0
    high: float = 1.0
    higher_is_better: bool = True
    tolerance: float = 0.0  # block when shown worse than the baseline by more than this
    promote_tolerance: float | None = None  # pass when shown within it (default: tolerance)
    effect: float | None = None  # tuned-for harm beyond tolerance (default: 5% of the range)
    alpha: float = 0.05
    min_pairs: int = DEFAULT_MIN_PAIRS

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"range must be finite with low < high, got {self.low}..{self.high}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.tolerance < 0.0 or (self.promote_tolerance or 0.0) < 0.0:
            raise ValueError("tolerances must be >= 0")
        if self.effect is not None and self.effect <= 0.0:
            raise ValueError(f"effect must be > 0, got {self.effect}")
        if self.min_pairs < 2:
            raise ValueError(f"min_pairs must be >= 2, got {self.min_pairs}")

    @property
    def span(self) -> float:
        return self.high - self.low

    @property
    def worst(self) -> float:
        """The value a failed or timed-out call takes."""
        return self.low if self.higher_is_better else self.high

    @property
    def promote_margin(self) -> float:
        return self.tolerance if self.promote_tolerance is None else self.promote_tolerance

    @property
    def tuned_effect(self) -> float:
        return DEFAULT_EFFECT_SHARE * self.span if self.effect is None else self.effect

    def valid(self, value: float) -> bool:
        return math.isfinite(value) and self.low <= value <= self.high


def paired_settings(gate: DatasetGate | ShadowGate) -> PairedSettings:
    """The paired test's settings for a rung's metric (``dataset`` or ``shadow.gate``)."""
    metric = gate.metric
    return PairedSettings(
        low=metric.range.min,
        high=metric.range.max,
        higher_is_better=metric.direction is Direction.HIGHER,
        tolerance=metric.tolerance,
        promote_tolerance=metric.promote_tolerance,
        effect=metric.effect_size,
        alpha=gate.alpha,
        min_pairs=gate.min_pairs,
    )


@dataclass(frozen=True, slots=True)
class PairedSums:
    """Running sums of one metric's pairs: plain numbers, so a checkpoint keeps them exactly.

    ``d`` is candidate minus baseline, ``b`` the pair's baseline value, ``u`` a baseline
    value of an unmirrored request.
    """

    pairs: int = 0
    sum_d: float = 0.0
    sum_dd: float = 0.0
    sum_b: float = 0.0
    sum_bb: float = 0.0
    sum_db: float = 0.0
    candidate_failed: int = 0  # pairs whose candidate call failed: counted as the worst value
    baseline_failed: int = 0  # pairs whose baseline call failed: counted as the worst value
    unmirrored: int = 0
    sum_u: float = 0.0
    sum_uu: float = 0.0
    invalid: int = 0  # values outside the range or not numbers: refused, counted

    def add(
        self, candidate: float | None, baseline: float | None, settings: PairedSettings
    ) -> PairedSums:
        """Add one pair; ``None`` on a side means its call failed or timed out."""
        c = settings.worst if candidate is None else float(candidate)
        b = settings.worst if baseline is None else float(baseline)
        if not (settings.valid(c) and settings.valid(b)):
            return replace(self, invalid=self.invalid + 1)
        d = c - b
        return replace(
            self,
            pairs=self.pairs + 1,
            sum_d=self.sum_d + d,
            sum_dd=self.sum_dd + d * d,
            sum_b=self.sum_b + b,
            sum_bb=self.sum_bb + b * b,
            sum_db=self.sum_db + d * b,
            candidate_failed=self.candidate_failed + (candidate is None),
            baseline_failed=self.baseline_failed + (baseline is None),
        )

    def add_unmirrored(self, baseline: float | None, settings: PairedSettings) -> PairedSums:
        """Add the baseline's value for a request that was not mirrored."""
        u = settings.worst if baseline is None else float(baseline)
        if not settings.valid(u):
            return replace(self, invalid=self.invalid + 1)
        return replace(
            self, unmirrored=self.unmirrored + 1, sum_u=self.sum_u + u, sum_uu=self.sum_uu + u * u
        )

    def merge(self, other: PairedSums) -> PairedSums:
        """The sums of both sets of pairs."""
        return PairedSums(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    def to_dict(self) -> dict[str, int | float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> PairedSums:
        """Read ``to_dict`` back (after JSON): unknown or missing keys and wrong types refused."""
        names = [f.name for f in fields(cls)]
        if set(data) != set(names):
            raise ValueError(f"paired sums need exactly the keys {names}, got {sorted(data)}")
        values: dict[str, int | float] = {}
        for f in fields(cls):
            value = data[f.name]
            counted = isinstance(f.default, int)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{f.name}: expected a number, got {value!r}")
            if counted and not isinstance(value, int):
                raise ValueError(f"{f.name}: expected an integer, got {value!r}")
            values[f.name] = value if counted else float(value)
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class PairedResult:
    """A paired metric's verdict with its evidence.

    ``estimate`` is candidate minus baseline (with the control variate when there are
    unmirrored baseline answers), ``lower``/``upper`` its anytime-valid ``1 - alpha``
    confidence-sequence bounds: a block needs the bound on the worse side beyond the
    tolerance, a pass the bound on the better side inside the promotion margin.
    """

    verdict: Verdict
    reason: str
    pairs: int
    estimate: float | None
    lower: float | None
    upper: float | None
    paired_mean: float | None  # the plain mean of the differences
    log_evalue: float  # the block test's e-value against "within tolerance"
    log_threshold: float  # log(1 / alpha)
    control_weight: float  # k of the control variate; 0 without unmirrored answers
    candidate_failed: int
    baseline_failed: int
    unmirrored: int
    invalid: int


@dataclass(frozen=True, slots=True)
class _Moments:
    estimate: float
    variance: float
    paired_mean: float
    control_weight: float


def _moments(sums: PairedSums, settings: PairedSettings) -> _Moments:
    """Estimate and variance of the mean difference.

    Each variance has a quarter of the range's square added to its sum of squares (one
    pseudo-observation), so that a run of identical values is not taken as certainty.
    """
    n = sums.pairs
    prior = settings.span**2 / 4.0
    mean_d = sums.sum_d / n
    var_d = (max(sums.sum_dd - n * mean_d * mean_d, 0.0) + prior) / n
    m = sums.unmirrored
    if m < 2:
        return _Moments(mean_d, var_d / n, mean_d, 0.0)
    mean_b = sums.sum_b / n
    var_b = (max(sums.sum_bb - n * mean_b * mean_b, 0.0) + prior) / n
    cov_db = (sums.sum_db - n * mean_d * mean_b) / n
    mean_u = sums.sum_u / m
    var_u = (max(sums.sum_uu - m * mean_u * mean_u, 0.0) + prior) / m
    # Var(mean_d + k (mean_b - mean_u)), minimised over k; k in [0, 1] keeps it between
    # the paired mean (k = 0) and the candidate's mean against the unmirrored baseline.
    k = min(max(-(cov_db / n) / (var_b / n + var_u / m), 0.0), 1.0)
    variance = (var_d + 2.0 * k * cov_db + k * k * var_b) / n + k * k * var_u / m
    return _Moments(mean_d + k * (mean_b - mean_u), variance, mean_d, k)


def paired_test(sums: PairedSums, settings: PairedSettings) -> PairedResult:
    """Verdict of "candidate worse than the baseline by more than tolerance" (fail) and
    "candidate within the promotion margin" (pass) from the pairs so far.

    ``nodata`` below ``settings.min_pairs`` pairs (never a pass); ``fail`` once the
    mixture e-value reaches ``1 / alpha``; ``pass`` once the better-side bound is inside
    the promotion margin; ``inconclusive`` otherwise.
    """
    level = math.log(1.0 / settings.alpha)
    counts = {
        "candidate_failed": sums.candidate_failed,
        "baseline_failed": sums.baseline_failed,
        "unmirrored": sums.unmirrored,
        "invalid": sums.invalid,
    }
    if sums.pairs == 0:
        return PairedResult(
            Verdict.NODATA, "no pairs", 0, None, None, None, None, 0.0, level, 0.0, **counts
        )
    moments = _moments(sums, settings)
    # harm > 0: the candidate is worse
    orientation = -1.0 if settings.higher_is_better else 1.0
    harm = orientation * moments.estimate
    effect = settings.tuned_effect
    margin = settings.promote_margin
    worse = stats.mixture_radius(moments.variance, effect, level)
    better = stats.mixture_radius(
        moments.variance, margin if margin > 0 else effect, level, grid=stats.PROMOTE_GRID
    )
    if settings.higher_is_better:
        lower, upper = moments.estimate - better, moments.estimate + worse
    else:
        lower, upper = moments.estimate - worse, moments.estimate + better
    log_e = stats.rollback_log_evalue(harm, moments.variance, settings.tolerance, effect)
    verdict, reason = _verdict(sums, settings, harm=harm, better=better, log_e=log_e)
    return PairedResult(
        verdict=verdict,
        reason=reason,
        pairs=sums.pairs,
        estimate=moments.estimate,
        lower=lower,
        upper=upper,
        paired_mean=moments.paired_mean,
        log_evalue=log_e,
        log_threshold=level,
        control_weight=moments.control_weight,
        **counts,
    )


def _verdict(
    sums: PairedSums, settings: PairedSettings, *, harm: float, better: float, log_e: float
) -> tuple[Verdict, str]:
    failed = ""
    if sums.candidate_failed:
        failed = f" ({sums.candidate_failed} failed candidate calls counted as the worst value)"
    if sums.pairs < settings.min_pairs:
        return Verdict.NODATA, f"{sums.pairs} pairs, need {settings.min_pairs}{failed}"
    level = math.log(1.0 / settings.alpha)
    if log_e >= level:
        return Verdict.FAIL, (
            f"worse than the baseline beyond tolerance on the same inputs: e-value "
            f"{stats.format_evalue(log_e)} >= {stats.format_evalue(level)}{failed}"
        )
    if harm + better < settings.promote_margin:
        return Verdict.PASS, f"shown within tolerance over {sums.pairs} pairs{failed}"
    return Verdict.INCONCLUSIVE, f"not yet shown within tolerance or beyond it{failed}"
