"""The decision: one look at a release's evidence gives one decision with its reasons.

``judge(policy, evidence, step, now)`` is pure: the same inputs give the same
judgement, it reads no clock and does no I/O. The order of the rules:

1. circuit breaker: a catastrophic canary error rate rolls back at once;
2. a critical metric shown worse than tolerated rolls back;
3. guards pause for a human: sample-ratio mismatch, score-coverage mismatch, a
   non-critical metric shown worse;
4. every metric shown within tolerance, the step's minimum duration and samples met,
   coverage shown and the data fresh: advance (or promote after the last step);
5. at the step's maximum duration: what ``analysis.onMaxDuration`` says, except that a
   promotion is never made on missing data (it pauses instead);
6. otherwise continue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controller.judge import stats
from controller.judge.analyze import Limits, analyze, arm_variances
from controller.judge.evidence import Evidence, MeanSeries, MetricSeries
from controller.judge.model import (
    CheckResult,
    CheckState,
    Decision,
    Judgement,
    MetricResult,
    StepStatus,
    Verdict,
)
from policies.model import Metric, OnMaxDuration, Policy

COVERAGE_EFFECT = 0.02  # coverage test tuned for two more points of unscored traces
BREAKER_WINDOW_INTERVALS = 5  # the circuit breaker looks at the last five intervals
STALE_AFTER_INTERVALS = 2  # data older than two intervals cannot support an advance
NO_TRAFFIC_AFTER = 120.0
"""Seconds into a step (and at least three intervals) after which a step without a single
trace in either arm is called out: the release's traffic is not reaching coalmine, or its
traces are not tagged."""


CAN_ONLY_PAUSE = frozenset({"trace_loss"})
"""Checks that pause a release when they fail but do not hold it while pending."""


def judge(policy: Policy, evidence: Evidence, step: StepStatus, now: float) -> Judgement:
    """Judge a release at ``now``: verdicts per metric, guards, and one decision."""
    analysis = policy.analysis
    steps = policy.steps
    current = steps[step.index]
    need = current.min_samples if current.min_samples is not None else analysis.min_samples
    results = tuple(
        analyze(
            evidence,
            metric.name,
            Limits(
                alpha_metric=metric_alpha(policy, metric),
                alpha_bounds=analysis.alpha,
                min_samples_step=need,
                min_samples_total=analysis.min_samples,
                step=step.index,
            ),
        )
        for metric in analysis.metrics
    )
    breaker = circuit_breaker(policy, evidence, now)
    combined = combined_critical(policy, results)
    ratio = sample_ratio(policy, evidence, step.index)
    coverage = score_coverage(policy, evidence)
    loss = trace_loss(policy, evidence)
    freshness = fresh(policy, evidence, now)
    seen = traffic(policy, evidence, step, now)
    checks = (breaker, combined, ratio, *coverage, *loss, freshness, seen)
    decision, reason = decide(policy, step, now, results, checks)
    return Judgement(
        at=now,
        step=step.index,
        decision=decision,
        reason=reason,
        metrics=results,
        checks=checks,
    )


def metric_alpha(policy: Policy, metric: Metric) -> float:
    """A metric's share of alpha for its test "worse than tolerated".

    Critical metrics roll back, so they split ``alpha`` between them (Bonferroni, by
    ``alphaWeight``): the chance that a release within tolerance on every metric is ever
    rolled back stays at or below ``alpha``. Non-critical metrics only pause; they split
    their own ``alpha`` the same way, which bounds the chance of a needless pause.
    """
    group = [m for m in policy.analysis.metrics if m.critical == metric.critical]
    return policy.analysis.alpha * metric.alpha_weight / sum(m.alpha_weight for m in group)


def decide(
    policy: Policy,
    step: StepStatus,
    now: float,
    results: tuple[MetricResult, ...],
    checks: tuple[CheckResult, ...],
) -> tuple[Decision, str]:
    """Apply the rules, in order, to the metric verdicts and guard checks."""
    current = policy.steps[step.index]
    last = step.index == len(policy.steps) - 1
    at_max = (
        not step.awaiting_approval
        and current.max_duration is not None
        and now - step.started_at >= current.max_duration
    )
    harm = _harm(policy, results, checks, at_max=at_max)
    if harm is not None:
        return harm
    if step.awaiting_approval:
        return Decision.CONTINUE, "waiting for approval; no metric shown worse"
    waiting = _waiting(policy, step, now, results, checks)
    if not waiting:
        return (
            (Decision.PROMOTE, "last step: every metric shown within tolerance")
            if last
            else (Decision.ADVANCE, "every metric shown within tolerance")
        )
    if at_max:
        return _at_max_duration(policy.analysis.on_max_duration, results, checks, waiting, last)
    return Decision.CONTINUE, "waiting: " + "; ".join(waiting)


def _harm(
    policy: Policy,
    results: tuple[MetricResult, ...],
    checks: tuple[CheckResult, ...],
    *,
    at_max: bool,
) -> tuple[Decision, str] | None:
    """A rollback or pause for what the metrics and checks show (None: nothing shown)."""
    by_name = {check.name: check for check in checks}
    if by_name["circuit_breaker"].state is CheckState.FAILED:
        return Decision.ROLLBACK, by_name["circuit_breaker"].reason
    failed = [r for r in results if r.verdict is Verdict.FAIL]
    critical = [r for r in failed if r.critical]
    if critical:
        return Decision.ROLLBACK, _listing("critical metric shown worse", critical)
    if by_name["critical_combined"].state is CheckState.FAILED:
        return Decision.ROLLBACK, by_name["critical_combined"].reason
    if by_name["sample_ratio"].state is CheckState.FAILED:
        return Decision.PAUSE, by_name["sample_ratio"].reason
    broken = [
        c
        for c in checks
        if (c.name.startswith("coverage:") or c.name == "trace_loss")
        and c.state is CheckState.FAILED
    ]
    if broken:
        return Decision.PAUSE, broken[0].reason
    if failed:
        why = _listing("non-critical metric shown worse", failed)
        if at_max and policy.analysis.on_max_duration is OnMaxDuration.ROLLBACK:
            # a release shown worse is not treated more gently than an undecided one
            return Decision.ROLLBACK, f"maxDuration reached, {why}"
        return Decision.PAUSE, why
    return None


def _waiting(
    policy: Policy,
    step: StepStatus,
    now: float,
    results: tuple[MetricResult, ...],
    checks: tuple[CheckResult, ...],
) -> list[str]:
    """What still stands between this look and an advance."""
    current = policy.steps[step.index]
    waiting: list[str] = []
    left = current.min_duration - (now - step.started_at)
    if left > 0:
        waiting.append(f"minDuration: {left:.0f}s left")
    for result in results:
        if result.verdict is not Verdict.PASS:
            waiting.append(f"{result.name} {result.verdict}: {result.reason}")
    for check in checks:
        if check.state is CheckState.PENDING and check.name not in CAN_ONLY_PAUSE:
            waiting.append(check.reason)
    return waiting


def _at_max_duration(
    action: OnMaxDuration,
    results: tuple[MetricResult, ...],
    checks: tuple[CheckResult, ...],
    waiting: list[str],
    last: bool,
) -> tuple[Decision, str]:
    why = "maxDuration reached without a decision (" + "; ".join(waiting) + ")"
    if action is OnMaxDuration.ROLLBACK:
        return Decision.ROLLBACK, why
    if action is OnMaxDuration.PROMOTE:
        missing = [
            r.name
            for r in results
            if r.verdict is Verdict.NODATA or r.log_evalue != r.log_evalue  # NaN guard
        ]
        unsafe = [c.reason for c in checks if c.state is not CheckState.OK]
        if missing or unsafe:
            return Decision.PAUSE, why + ": not promoting on missing or unchecked data"
        return (Decision.PROMOTE if last else Decision.ADVANCE), why
    return Decision.PAUSE, why


def _listing(prefix: str, results: list[MetricResult]) -> str:
    parts = [f"{r.name} ({r.reason})" for r in results]
    return f"{prefix}: " + ", ".join(parts)


def combined_critical(policy: Policy, results: tuple[MetricResult, ...]) -> CheckResult:
    """The critical metrics' evidence taken together.

    The alpha-weighted mean of their e-values is itself an e-value for "every critical
    metric within tolerance", so rolling back when it reaches 1/alpha keeps the same
    guarantee as the per-metric tests (it fires whenever one of them does) and catches a
    release that is somewhat worse on several metrics sooner. A metric still under its
    sample floor contributes 1, its starting value.
    """
    threshold = math.log(1.0 / policy.analysis.alpha)
    critical = {m.name: m for m in policy.analysis.metrics if m.critical}
    total_weight = sum(m.alpha_weight for m in critical.values())
    terms: list[float] = []
    parts: list[str] = []
    for result in results:
        metric = critical.get(result.name)
        if metric is None:
            continue
        log_e = 0.0 if result.below_floor else result.log_evalue
        terms.append(math.log(metric.alpha_weight / total_weight) + log_e)
        parts.append(f"{result.name} {stats.format_evalue(log_e)}")
    if not terms:
        return CheckResult("critical_combined", CheckState.OK, "no critical metrics")
    log_mean = stats.log_sum_exp(terms)
    if log_mean >= threshold:
        return CheckResult(
            "critical_combined",
            CheckState.FAILED,
            "critical metrics worse taken together: weighted e-value "
            f"{stats.format_evalue(log_mean)} >= {1 / policy.analysis.alpha:.3g} "
            f"({', '.join(parts)})",
            log_mean,
            threshold,
        )
    return CheckResult(
        "critical_combined",
        CheckState.OK,
        "critical metrics within the rollback bound",
        log_mean,
        threshold,
    )


def circuit_breaker(policy: Policy, evidence: Evidence, now: float) -> CheckResult:
    """Roll back at once when the canary's recent error rate is catastrophic.

    Catastrophic means at or above ``circuitBreaker.errorRate`` over at least
    ``minRequests`` canary requests in the last five intervals, and at least twice the
    baseline's rate in the same window: an outage both arms share is not the canary's
    doing, and rolling back would page the wrong people.
    """
    breaker = policy.analysis.circuit_breaker
    window = BREAKER_WINDOW_INTERVALS * policy.analysis.interval
    requests, errors, baseline, baseline_errors = evidence.recent_errors(now - window, now)
    rate = errors / requests if requests else 0.0
    baseline_rate = baseline_errors / baseline if baseline else 0.0
    if requests >= breaker.min_requests and rate >= breaker.error_rate:
        if rate < 2.0 * baseline_rate:
            return CheckResult(
                "circuit_breaker",
                CheckState.OK,
                f"canary error rate {rate:.0%} is high, but so is the baseline's "
                f"({baseline_rate:.0%}): a shared outage, not the canary",
            )
        return CheckResult(
            "circuit_breaker",
            CheckState.FAILED,
            f"circuit breaker: canary error rate {rate:.0%} over the last {requests} "
            f"requests >= {breaker.error_rate:.0%} (baseline {baseline_rate:.0%})",
        )
    return CheckResult("circuit_breaker", CheckState.OK, "canary error rate below the breaker")


def sample_ratio(policy: Policy, evidence: Evidence, current: int) -> CheckResult:
    """Is the observed split of traces consistent with the configured weights?

    A product over steps of beta-binomial mixture e-values (each step is its own
    experiment with its own weight). Assignment is per user, so very heavy users make
    counts overdispersed; the guard's small alpha leaves room for that.
    """
    alpha = policy.analysis.sample_ratio.alpha
    threshold = math.log(1.0 / alpha)
    total = 0.0
    worst = ""
    for index in range(current + 1):
        weight = policy.steps[index].weight / 100.0
        baseline, canary = evidence.traffic_in_step(index)
        if not 0.0 < weight < 1.0 or baseline + canary == 0:
            continue
        log_e = stats.binomial_ratio_log_evalue(canary, baseline + canary, weight)
        total += log_e
        if log_e > 0:
            worst = (
                f"step {index + 1}: canary {canary} of {baseline + canary} traces "
                f"({canary / (baseline + canary):.1%}) against a weight of {weight:.0%}"
            )
    if total >= threshold:
        return CheckResult(
            "sample_ratio",
            CheckState.FAILED,
            f"sample-ratio mismatch: {worst} (e-value {stats.format_evalue(total)})",
            total,
            threshold,
        )
    return CheckResult(
        "sample_ratio", CheckState.OK, "split consistent with weights", total, threshold
    )


def score_coverage(policy: Policy, evidence: Evidence) -> tuple[CheckResult, ...]:
    """Per score metric: do canary traces lose their scores more often than baseline?

    Counted on traces older than ``analysis.scoreTimeout`` that did not error. Shown
    within ``analysis.coverageTolerance`` is needed before a promotion; shown beyond it
    pauses the release (scores missing mostly for bad answers would flatter the canary).
    """
    analysis = policy.analysis
    threshold = math.log(1.0 / analysis.sample_ratio.alpha)
    checks: list[CheckResult] = []
    for series in evidence.series.values():
        if series.coverage is None:
            continue
        checks.append(_coverage_check(series, analysis.coverage_tolerance, threshold, policy))
    return tuple(checks)


def trace_loss(policy: Policy, evidence: Evidence) -> tuple[CheckResult, ...]:
    """Do canary requests lose their traces more often than baseline ones?

    Only when traffic comes from the proxies' counts: per minute whose traces have all
    been read, the requests the proxies counted (the sampled ones) against the traces
    found in Langfuse, per arm. A canary whose traces go missing (a crash before the
    trace is sent, an exporter it lost) would otherwise be judged on the traces that
    made it. The same test as score coverage, with the same tolerance: shown beyond it
    pauses the release. Unlike coverage it does not hold an advance while it is not yet
    shown within tolerance: a minute is compared only once every trace of it can have
    been read (``routing.readTimeout`` and the ingestion lag after the minute ends), later
    than every other piece of evidence, and a short step would wait on it alone.
    """
    if not evidence.traffic_from_proxy:
        return ()
    analysis = policy.analysis
    threshold = math.log(1.0 / analysis.sample_ratio.alpha)
    return (
        _missing_check(
            "trace_loss",
            evidence.loss,
            analysis.coverage_tolerance,
            threshold,
            policy,
            _LOSS_WORDING,
        ),
    )


@dataclass(frozen=True, slots=True)
class _Wording:
    not_checked: str
    mismatch: str
    equal: str
    not_equal: str


_LOSS_WORDING = _Wording(
    not_checked="trace loss not yet checked: {n} canary requests compared (need {need})",
    mismatch="trace loss: {c:.1%} of canary and {b:.1%} of baseline requests counted by "
    "the proxies have no trace in Langfuse",
    equal="traces found for both arms' requests alike",
    not_equal="trace loss not yet shown equal across arms",
)


def _coverage_check(
    series: MetricSeries, tolerance: float, threshold: float, policy: Policy
) -> CheckResult:
    coverage = series.coverage
    assert coverage is not None
    metric = series.metric.name
    wording = _Wording(
        not_checked=f"{metric} score coverage not yet checked: {{n}} canary traces past "
        "scoreTimeout (need {need})",
        mismatch=f"score coverage mismatch on {metric}: {{c:.1%}} of canary and {{b:.1%}} "
        "of baseline traces never scored",
        equal="score coverage shown equal",
        not_equal=f"{metric} score coverage not yet shown equal across arms",
    )
    return _missing_check(f"coverage:{metric}", coverage, tolerance, threshold, policy, wording)


def _missing_check(
    name: str,
    coverage: MeanSeries,
    tolerance: float,
    threshold: float,
    policy: Policy,
    wording: _Wording,
) -> CheckResult:
    """Is the canary's rate of something missing (1 = missing) beyond the baseline's by
    more than ``tolerance``?"""
    n_b, n_c = coverage.totals
    w, wd, a, b = coverage.sums
    need = policy.analysis.min_samples
    if w <= 0.0 or n_c < need or n_b < need:
        return CheckResult(name, CheckState.PENDING, wording.not_checked.format(n=n_c, need=need))
    var_b, var_c = arm_variances(coverage, indicator=True)
    variance = max((var_c * a + var_b * b) / (w * w), 1e-12)
    missing = wd / w
    effect = tolerance if tolerance > 0 else COVERAGE_EFFECT
    log_e = stats.rollback_log_evalue(missing, variance, tolerance, effect)
    canary_missing = coverage.arms[1][1]
    if log_e >= threshold and canary_missing >= 5:
        rate_c = coverage.arms[1][1] / n_c
        rate_b = coverage.arms[0][1] / n_b
        return CheckResult(
            name, CheckState.FAILED, wording.mismatch.format(c=rate_c, b=rate_b), log_e, threshold
        )
    halfwidth = stats.mixture_radius(variance, effect, math.log(1.0 / policy.analysis.alpha))
    if missing + halfwidth < tolerance:
        return CheckResult(name, CheckState.OK, wording.equal, log_e, threshold)
    return CheckResult(name, CheckState.PENDING, wording.not_equal, log_e, threshold)


def fresh(policy: Policy, evidence: Evidence, now: float) -> CheckResult:
    """Evidence older than a couple of intervals cannot support an advance."""
    age = now - evidence.observed_until
    limit = STALE_AFTER_INTERVALS * policy.analysis.interval
    if age > limit:
        return CheckResult(
            "fresh", CheckState.PENDING, f"analysis data is stale: last complete {age:.0f}s ago"
        )
    return CheckResult("fresh", CheckState.OK, "analysis data is current")


def traffic(policy: Policy, evidence: Evidence, step: StepStatus, now: float) -> CheckResult:
    """A step that has run a while without one trace in either arm: nothing can be judged,
    and the likely cause is outside the judge (requests not routed through coalmine, or
    traces that do not carry the release's tags). Pending, never a pass."""
    baseline, canary = evidence.traffic_in_step(step.index)
    elapsed = now - step.started_at
    after = max(NO_TRAFFIC_AFTER, 3 * policy.analysis.interval)
    counted = evidence.traffic_from_proxy
    if baseline + canary == 0 and elapsed >= after and counted:
        weight = policy.steps[step.index].weight
        return CheckResult(
            "traffic",
            CheckState.PENDING,
            f"no requests of this release counted by any coalmine proxy in {elapsed:.0f}s "
            f"of step {step.index + 1} (canary weight {weight:g}%): is its traffic sent "
            f"through the coalmine proxy (path prefix '{policy.routing.path_prefix}'), and "
            "do the proxies count (COALMINE_AGGREGATES) into this controller's state?",
        )
    if counted:
        return CheckResult(
            "traffic",
            CheckState.OK,
            f"{baseline} baseline, {canary} canary requests counted by the proxies",
        )
    if baseline + canary == 0 and elapsed >= after:
        weight = policy.steps[step.index].weight
        return CheckResult(
            "traffic",
            CheckState.PENDING,
            f"no traces of this release in {elapsed:.0f}s of step {step.index + 1} (canary "
            f"weight {weight:g}%): is its traffic sent through the coalmine proxy (path "
            f"prefix '{policy.routing.path_prefix}'), and does the app trace it with the "
            "release's tags?",
        )
    return CheckResult("traffic", CheckState.OK, f"{baseline} baseline, {canary} canary traces")
