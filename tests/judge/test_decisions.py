"""Decisions on small scripted releases: each row is a release, a look and what it must say.

Scripted arms send their traces evenly over each minute and cycle through a few literal
values, so every number in a judgement follows from the row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from controller.judge import (
    CheckState,
    Decision,
    Evidence,
    Judgement,
    MetricResult,
    Scale,
    StepStatus,
    Trace,
    Verdict,
    judge,
)
from policies import Policy
from policies.domain import Arm
from tests.judge.judge_support import (
    BAD_SCORES,
    COST,
    ERRORS,
    GOOD_SCORES,
    HELPFULNESS,
    ArmScript,
    judge_release,
    make_policy,
    metric,
    scripted_traces,
)

HELPFULNESS_SOFT = "{name: helpfulness, source: score, score: helpfulness, tolerance: 0.05}"
LATENCY_CRITICAL = (
    "{name: latency, source: latency, quantile: 0.95, tolerancePercent: 20, critical: true}"
)
RESOLVED = (
    "{name: resolved, source: score, score: resolved, scoreType: boolean, tolerance: 0.05, "
    "critical: true}"
)
BAD_TONE = (
    "{name: bad-tone, source: score, score: tone, scoreType: categorical, badValues: [rude], "
    "tolerance: 0.05, critical: true}"
)
ONE_STEP = "{weight: 50, minDuration: 5m, maxDuration: 60m}"
SHORT_STEP = "{weight: 50, minDuration: 5m, maxDuration: 10m}"
SLIGHTLY_WORSE = tuple(round(x - 0.04, 2) for x in GOOD_SCORES)  # within 0.05, not shown so
CLEARLY_WORSE = tuple(round(x - 0.1, 2) for x in GOOD_SCORES)  # shown beyond 0.05
SLOW_MS = tuple(100.0 + 7.0 * i for i in range(20))
COSTS = (0.001, 0.002, 0.003, 0.004, 0.005, 0.0015, 0.0025)


@dataclass(frozen=True)
class Case:
    """A scripted release, one look at it, and what that look must decide."""

    decision: Decision
    verdicts: dict[str, Verdict]
    minutes: int = 10
    now: float | None = None  # default: the end of the last minute
    policy: dict[str, Any] = field(default_factory=dict)
    baseline: ArmScript = field(default_factory=ArmScript)
    canary: ArmScript = field(default_factory=ArmScript)
    step_starts: tuple[float, ...] = ()
    reason: str = ""  # a fragment of the judgement's reason

    def make_policy(self) -> Policy:
        return make_policy(**self.policy)

    def traces(self) -> list[Trace]:
        return scripted_traces(self.minutes, self.baseline, self.canary)

    def look(self) -> Judgement:
        now = self.now if self.now is not None else 60.0 * self.minutes
        return judge_release(self.make_policy(), self.traces(), now, step_starts=self.step_starts)


def unscored() -> ArmScript:
    return ArmScript(scores=None)


def scored(values: tuple[float | None, ...], **kw: Any) -> ArmScript:
    return ArmScript(scores=values, **kw)


CASES = [
    # -- no data --------------------------------------------------------------------------
    pytest.param(
        Case(Decision.CONTINUE, {"helpfulness": Verdict.NODATA}, minutes=0, now=600.0),
        id="no-data",
    ),
    pytest.param(
        Case(
            Decision.PAUSE,
            {"helpfulness": Verdict.NODATA},
            minutes=0,
            now=600.0,
            policy={"steps": [SHORT_STEP], "onMaxDuration": "promote"},
            reason="not promoting on missing or unchecked data",
        ),
        id="no-data-at-max-duration-promote",
    ),
    pytest.param(
        Case(
            Decision.PAUSE,
            dict.fromkeys(("helpfulness", "errors", "cost", "latency"), Verdict.NODATA),
            minutes=0,
            now=3600.0,
            policy={
                "metrics": [HELPFULNESS, ERRORS, COST, LATENCY_CRITICAL],
                "steps": ["{weight: 20, minDuration: 5m, maxDuration: 30m}", "{weight: 60}"],
                "onMaxDuration": "promote",
            },
        ),
        id="no-data-any-metric-non-last-step-at-max-duration-promote",
    ),
    pytest.param(
        Case(
            Decision.CONTINUE,
            {"helpfulness": Verdict.NODATA},
            minutes=1,
            canary=unscored(),
        ),
        id="canary-unscored-before-score-timeout",
    ),
    pytest.param(
        Case(
            Decision.PAUSE,
            {"helpfulness": Verdict.NODATA},
            minutes=10,
            canary=unscored(),
            policy={"steps": [SHORT_STEP], "onMaxDuration": "promote"},
        ),
        id="canary-unscored-at-max-duration-promote",
    ),
    pytest.param(
        Case(
            Decision.PAUSE,
            {"helpfulness": Verdict.NODATA, "errors": Verdict.PASS},
            minutes=10,
            canary=unscored(),
            policy={
                "metrics": [HELPFULNESS, ERRORS.replace("0.05", "0.2")],
                "steps": [SHORT_STEP],
                "onMaxDuration": "promote",
                "scoreTimeout": "30m",  # coverage cannot be checked yet either
            },
            reason="not promoting",
        ),
        id="canary-unscored-other-metric-passing-at-max-duration-promote",
    ),
    # -- worse ----------------------------------------------------------------------------
    pytest.param(
        Case(
            Decision.ROLLBACK,
            {"helpfulness": Verdict.FAIL},
            minutes=5,
            canary=scored(BAD_SCORES),
            reason="critical metric shown worse",
        ),
        id="worse-critical-score",
    ),
    pytest.param(
        Case(
            Decision.PAUSE,
            {"helpfulness": Verdict.FAIL},
            minutes=5,
            canary=scored(BAD_SCORES),
            policy={"metrics": [HELPFULNESS_SOFT]},
            reason="non-critical metric shown worse",
        ),
        id="worse-non-critical-score",
    ),
    pytest.param(
        Case(
            Decision.CONTINUE,
            {"helpfulness": Verdict.INCONCLUSIVE},
            minutes=1,
            canary=scored(BAD_SCORES),
        ),
        id="worse-below-sample-floor",
    ),
    pytest.param(
        Case(
            Decision.CONTINUE,
            {"helpfulness": Verdict.INCONCLUSIVE},
            minutes=4,
            canary=scored(BAD_SCORES),
            policy={"minSamples": 100},
        ),
        id="worse-below-a-raised-sample-floor",
    ),
    pytest.param(
        Case(
            Decision.ROLLBACK,
            {"errors": Verdict.FAIL},
            minutes=5,
            baseline=scored(GOOD_SCORES, error_every=50),
            canary=scored(GOOD_SCORES, error_every=4),
            policy={"metrics": [HELPFULNESS, ERRORS]},
            reason="errors",
        ),
        id="worse-error-rate",
    ),
    pytest.param(
        Case(
            Decision.ROLLBACK,
            {"bad-tone": Verdict.FAIL},
            minutes=5,
            baseline=ArmScript(scores=None, extra={"tone": ("polite",) * 9 + ("rude",)}),
            canary=ArmScript(scores=None, extra={"tone": ("polite", "rude")}),
            policy={"metrics": [BAD_TONE]},
        ),
        id="worse-categorical-rate",
    ),
    pytest.param(
        Case(
            Decision.ROLLBACK,
            {"latency": Verdict.FAIL},
            minutes=3,
            baseline=ArmScript(latency_ms=SLOW_MS),
            canary=ArmScript(latency_ms=tuple(2 * x for x in SLOW_MS)),
            policy={"metrics": [HELPFULNESS, LATENCY_CRITICAL]},
        ),
        id="latency-twice-as-slow",
    ),
    pytest.param(
        Case(
            Decision.PAUSE,
            {"cost": Verdict.FAIL},
            minutes=10,
            baseline=ArmScript(cost_usd=COSTS),
            canary=ArmScript(cost_usd=tuple(1.5 * c for c in COSTS)),
            policy={"metrics": [HELPFULNESS, COST]},
        ),
        id="cost-half-as-much-again",
    ),
    # -- equal ----------------------------------------------------------------------------
    pytest.param(
        Case(Decision.PROMOTE, {"helpfulness": Verdict.PASS}, reason="last step"),
        id="equal-last-step",
    ),
    pytest.param(
        Case(
            Decision.ADVANCE,
            {"helpfulness": Verdict.PASS},
            policy={"steps": ["{weight: 50, minDuration: 5m}", "{weight: 60}"]},
        ),
        id="equal-first-of-two-steps",
    ),
    pytest.param(
        Case(
            Decision.PROMOTE,
            {"helpfulness": Verdict.PASS},
            minutes=20,
            step_starts=(600.0,),
            policy={"steps": ["{weight: 50, minDuration: 5m}", "{weight: 50.5, minDuration: 5m}"]},
        ),
        id="equal-second-of-two-steps",
    ),
    pytest.param(
        Case(
            Decision.CONTINUE,
            {"helpfulness": Verdict.PASS},
            policy={"steps": ["{weight: 50, minDuration: 30m}"]},
            reason="minDuration",
        ),
        id="equal-before-min-duration",
    ),
    pytest.param(
        Case(
            Decision.CONTINUE,
            {"helpfulness": Verdict.INCONCLUSIVE},
            policy={"steps": ["{weight: 50, minDuration: 5m, minSamples: 300}"]},
        ),
        id="equal-below-the-step-sample-floor",
    ),
    pytest.param(
        Case(
            Decision.PROMOTE,
            {"helpfulness": Verdict.PASS, "errors": Verdict.PASS},
            minutes=10,
            baseline=scored(GOOD_SCORES, error_every=40),
            canary=scored(GOOD_SCORES, error_every=40),
            policy={"metrics": [HELPFULNESS, ERRORS.replace("0.05", "0.08")]},
        ),
        id="equal-two-metrics",
    ),
    # -- maxDuration ----------------------------------------------------------------------
    pytest.param(
        Case(
            Decision.CONTINUE,
            {"helpfulness": Verdict.INCONCLUSIVE},
            now=599.0,
            canary=scored(SLIGHTLY_WORSE),
            policy={"steps": [SHORT_STEP], "onMaxDuration": "rollback"},
        ),
        id="inconclusive-before-max-duration",
    ),
    *(
        pytest.param(
            Case(
                decision,
                {"helpfulness": Verdict.INCONCLUSIVE},
                canary=scored(SLIGHTLY_WORSE),
                policy={"steps": [SHORT_STEP], "onMaxDuration": action},
                reason="maxDuration reached",
            ),
            id=f"inconclusive-at-max-duration-{action}",
        )
        for action, decision in (
            ("pause", Decision.PAUSE),
            ("rollback", Decision.ROLLBACK),
            ("promote", Decision.PROMOTE),
        )
    ),
    pytest.param(
        Case(
            Decision.ADVANCE,
            {"helpfulness": Verdict.INCONCLUSIVE},
            canary=scored(SLIGHTLY_WORSE),
            policy={"steps": [SHORT_STEP, "{weight: 60}"], "onMaxDuration": "promote"},
        ),
        id="inconclusive-at-max-duration-promote-non-last-step",
    ),
    # -- guards ---------------------------------------------------------------------------
    pytest.param(
        Case(
            Decision.ROLLBACK,
            {},
            minutes=3,
            canary=scored(GOOD_SCORES, error_every=2),
            reason="circuit breaker",
        ),
        id="circuit-breaker",
    ),
    pytest.param(
        Case(
            Decision.ROLLBACK,
            {},
            minutes=1,
            baseline=ArmScript(per_minute=20),
            canary=ArmScript(per_minute=20, error_every=1),
            policy={"minSamples": 1000},
            reason="circuit breaker",
        ),
        id="circuit-breaker-before-any-sample-floor",
    ),
    pytest.param(
        Case(
            Decision.CONTINUE,
            {},
            minutes=1,
            baseline=ArmScript(per_minute=10),
            canary=ArmScript(per_minute=10, error_every=1),
        ),
        id="circuit-breaker-below-min-requests",
    ),
    pytest.param(
        Case(
            Decision.CONTINUE,
            {},
            minutes=3,
            canary=scored(GOOD_SCORES, error_every=3),
        ),
        id="circuit-breaker-below-error-rate",
    ),
    pytest.param(
        Case(
            Decision.PAUSE,
            {"helpfulness": Verdict.PASS},
            minutes=5,
            baseline=ArmScript(per_minute=80),
            canary=ArmScript(per_minute=20),
            reason="sample-ratio mismatch",
        ),
        id="sample-ratio-mismatch",
    ),
    pytest.param(
        Case(
            Decision.PAUSE,
            {"helpfulness": Verdict.PASS},
            minutes=10,
            baseline=ArmScript(per_minute=40),
            canary=ArmScript(per_minute=10),
            policy={"steps": [SHORT_STEP], "onMaxDuration": "promote"},
            reason="sample-ratio mismatch",
        ),
        id="sample-ratio-mismatch-at-max-duration-promote",
    ),
    pytest.param(
        Case(
            Decision.PAUSE,
            {"helpfulness": Verdict.NODATA},
            canary=unscored(),
            reason="score coverage mismatch",
        ),
        id="score-coverage-mismatch",
    ),
    pytest.param(
        Case(
            Decision.PAUSE,
            {},
            canary=ArmScript(scores=(0.6, None, 0.8, None, 1.0, 0.7, None, 0.9, 0.6, 1.0)),
            policy={"steps": [SHORT_STEP], "onMaxDuration": "promote"},
            reason="score coverage mismatch",
        ),
        id="score-coverage-mismatch-partial",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_decision(case: Case) -> None:
    judgement = case.look()
    assert judgement.decision is case.decision, judgement.reason
    assert {name: metric(judgement, name).verdict for name in case.verdicts} == case.verdicts
    assert case.reason in judgement.reason


@pytest.mark.parametrize("case", CASES)
def test_every_result_carries_its_evidence(case: Case) -> None:
    judgement = case.look()
    canary_ids = {t.trace_id for t in case.traces() if t.arm is Arm.CANARY}
    policy = case.make_policy()
    for result in judgement.metrics:
        check_evidence(result, canary_ids, policy)


def check_evidence(result: MetricResult, canary_ids: set[str], policy: Policy) -> None:
    """What any MetricResult must carry, whatever the release."""
    assert result.n_baseline >= result.n_baseline_step >= 0
    assert result.n_canary >= result.n_canary_step >= 0
    assert set(result.worst_traces) <= canary_ids
    assert len(set(result.worst_traces)) == len(result.worst_traces)
    assert math.isfinite(result.log_evalue)
    if result.verdict is Verdict.NODATA:
        assert (result.estimate, result.lower, result.upper) == (None, None, None)
        return
    assert result.estimate is not None and result.lower is not None and result.upper is not None
    assert result.lower <= result.estimate <= result.upper
    assert result.n_baseline > 0 and result.n_canary > 0
    spec = next(m for m in policy.analysis.metrics if m.name == result.name)
    if result.source == "latency":
        return  # quantile bounds are for display; the verdict uses the exceedance test
    if result.scale is Scale.RATIO:
        tolerated = 1.0 + (spec.tolerance_percent or 0.0) / 100.0
        if result.verdict is Verdict.FAIL:
            assert result.lower > tolerated
        if result.verdict is Verdict.PASS:
            assert result.upper < tolerated
        return
    tolerance = spec.tolerance or 0.0
    worse_up = spec.direction == "lower"
    if result.verdict is Verdict.FAIL:
        assert result.lower > tolerance if worse_up else result.upper < -tolerance
        assert result.log_evalue >= result.log_threshold
    if result.verdict is Verdict.PASS:
        assert result.upper < tolerance if worse_up else result.lower > -tolerance
        assert result.log_evalue < result.log_threshold


# -- the numbers in a judgement --------------------------------------------------------------


def test_a_worse_score_is_estimated_and_bounded() -> None:
    judgement = judge_release(
        make_policy(), scripted_traces(5, ArmScript(), ArmScript(scores=BAD_SCORES)), 300.0
    )
    result = metric(judgement, "helpfulness")
    assert result.verdict is Verdict.FAIL
    assert result.scale is Scale.DIFFERENCE
    assert (result.n_baseline, result.n_canary) == (100, 100)
    assert result.estimate == pytest.approx(-0.6)
    assert result.lower is not None and result.upper is not None
    assert result.lower < -0.6 < result.upper < -0.05
    # The worst canary traces are those scored 0.0, most recent first.
    assert result.worst_traces == ("c-95", "c-90", "c-85", "c-80", "c-75")
    assert result.log_threshold == pytest.approx(math.log(20.0))
    assert not result.below_floor


def test_latency_twice_as_slow_has_a_ratio_near_two() -> None:
    policy = make_policy(metrics=[HELPFULNESS, LATENCY_CRITICAL])
    traces = scripted_traces(
        3, ArmScript(latency_ms=SLOW_MS), ArmScript(latency_ms=tuple(2 * x for x in SLOW_MS))
    )
    result = metric(judge_release(policy, traces, 180.0), "latency")
    assert result.verdict is Verdict.FAIL
    assert result.scale is Scale.RATIO
    assert result.estimate == pytest.approx(2.0, rel=0.02)  # the sketch is accurate to 1%
    assert result.lower is not None and result.upper is not None
    assert result.lower > 1.2
    # The slowest canary traces: latency index 19 of 20 (k % 20 == 19), most recent first.
    assert result.worst_traces[0] == "c-59"
    assert set(result.worst_traces[:3]) == {"c-59", "c-39", "c-19"}


def test_equal_latency_is_not_worse() -> None:
    policy = make_policy(metrics=[HELPFULNESS, LATENCY_CRITICAL])
    traces = scripted_traces(10, ArmScript(latency_ms=SLOW_MS), ArmScript(latency_ms=SLOW_MS))
    result = metric(judge_release(policy, traces, 600.0), "latency")
    assert result.verdict in (Verdict.PASS, Verdict.INCONCLUSIVE)
    assert result.estimate == pytest.approx(1.0)
    assert result.log_evalue < 0.0


@pytest.mark.parametrize("factor", [0.5, 1.0, 1.5, 3.0])
def test_cost_ratio_estimates_the_true_ratio(factor: float) -> None:
    policy = make_policy(metrics=[HELPFULNESS, COST])
    traces = scripted_traces(
        10, ArmScript(cost_usd=COSTS), ArmScript(cost_usd=tuple(factor * c for c in COSTS))
    )
    result = metric(judge_release(policy, traces, 600.0), "cost")
    assert result.scale is Scale.RATIO
    assert result.estimate == pytest.approx(factor, rel=2e-3)  # the 1e-6 USD floor
    assert result.lower is not None and result.upper is not None
    assert result.lower < factor < result.upper
    expected = Verdict.FAIL if factor > 1.1 else Verdict.INCONCLUSIVE
    if factor < 1.0:
        expected = Verdict.PASS
    assert result.verdict is expected


def test_error_rate_difference_is_the_difference_of_rates() -> None:
    policy = make_policy(metrics=[HELPFULNESS, ERRORS])
    traces = scripted_traces(
        5,
        ArmScript(error_every=50),  # 2 of 100
        ArmScript(error_every=4),  # 25 of 100
    )
    result = metric(judge_release(policy, traces, 300.0), "errors")
    assert result.estimate == pytest.approx(0.23)
    assert (result.n_baseline, result.n_canary) == (100, 100)
    # the most recent canary errors
    assert result.worst_traces == ("c-96", "c-92", "c-88", "c-84", "c-80")


# -- the circuit breaker looks at recent traffic only ----------------------------------------


def _errors_then_clean(error_minutes: int, minutes: int) -> list[Trace]:
    traces = []
    for minute in range(minutes):
        for i in range(20):
            ts = minute * 60.0 + 1.5 * i + 0.5
            traces.append(Trace(f"b-{minute}-{i}", Arm.BASELINE, ts, error=False))
            bad = minute < error_minutes
            traces.append(Trace(f"c-{minute}-{i}", Arm.CANARY, ts, error=bad))
    return traces


def test_the_circuit_breaker_fires_on_recent_errors() -> None:
    policy = make_policy(metrics=[ERRORS])
    judgement = judge_release(policy, _errors_then_clean(2, 2), 120.0)
    assert judgement.decision is Decision.ROLLBACK
    assert "circuit breaker" in judgement.reason


def test_the_circuit_breaker_forgets_errors_older_than_five_intervals() -> None:
    # 40 canary errors in the first two minutes, then ten clean minutes: the recent error
    # rate is 0, and the errors metric itself (tolerance 0.5) is not failing either.
    policy = make_policy(metrics=[ERRORS.replace("0.05", "0.5")])
    judgement = judge_release(policy, _errors_then_clean(2, 12), 720.0)
    breaker = next(c for c in judgement.checks if c.name == "circuit_breaker")
    assert breaker.state is CheckState.OK
    assert judgement.decision is not Decision.ROLLBACK


def test_the_circuit_breaker_honours_its_settings() -> None:
    policy = make_policy(circuitBreaker="{errorRate: 0.3, minRequests: 50}")
    few = judge_release(policy, _errors_then_clean(2, 2), 120.0)
    assert few.decision is not Decision.ROLLBACK  # 40 canary requests < 50
    more = judge_release(policy, _errors_then_clean(3, 3), 180.0)
    assert more.decision is Decision.ROLLBACK


# -- stale evidence --------------------------------------------------------------------------


def _evidence_until(policy: Policy, minutes: int) -> Evidence:
    evidence = Evidence(policy, 0.0)
    for trace in scripted_traces(minutes, ArmScript(), ArmScript()):
        evidence.add_trace(trace)
    evidence.advance(60.0 * minutes)
    return evidence


def test_stale_evidence_blocks_an_advance() -> None:
    policy = make_policy()
    evidence = _evidence_until(policy, 10)
    step = StepStatus(0, 0.0)
    fresh = judge(policy, evidence, step, 600.0 + 120.0)  # two intervals old: still fresh
    assert fresh.decision is Decision.PROMOTE
    stale = judge(policy, evidence, step, 600.0 + 121.0)
    assert stale.decision is Decision.CONTINUE
    assert "stale" in stale.reason
    check = next(c for c in stale.checks if c.name == "fresh")
    assert check.state is CheckState.PENDING


@pytest.mark.parametrize(
    ("traced_minutes", "now", "state"),
    [
        # (minutes of traces in the step, seconds since the step began, the check's state)
        (0, 119.0, CheckState.OK),  # too early to call
        (0, 180.0, CheckState.PENDING),  # three intervals of nothing at all
        (0, 3600.0, CheckState.PENDING),
        (1, 3600.0, CheckState.OK),  # any trace at all: the other guards take over
    ],
)
def test_a_step_without_any_trace_says_where_to_look(
    traced_minutes: int, now: float, state: CheckState
) -> None:
    policy = make_policy()
    evidence = Evidence(policy, 0.0)
    for trace in scripted_traces(traced_minutes, ArmScript(), ArmScript()):
        evidence.add_trace(trace)
    evidence.advance(now)
    judgement = judge(policy, evidence, StepStatus(0, 0.0), now)
    check = next(c for c in judgement.checks if c.name == "traffic")
    assert check.state is state
    if state is CheckState.PENDING:
        # never a pass: it waits, and at maxDuration pauses saying why
        assert judgement.decision is (Decision.CONTINUE if now < 3600 else Decision.PAUSE)
        assert check.reason.startswith(f"no traces of this release in {now:.0f}s of step 1")
        assert "path prefix '/'" in check.reason
        assert check.reason in judgement.reason


def test_stale_evidence_at_max_duration_promote_pauses() -> None:
    policy = make_policy(
        steps=["{weight: 50, minDuration: 5m, maxDuration: 15m}"], onMaxDuration="promote"
    )
    evidence = _evidence_until(policy, 10)
    judgement = judge(policy, evidence, StepStatus(0, 0.0), 900.0)
    assert judgement.decision is Decision.PAUSE


def test_stale_evidence_still_rolls_back() -> None:
    policy = make_policy()
    evidence = Evidence(policy, 0.0)
    for trace in scripted_traces(5, ArmScript(), ArmScript(scores=BAD_SCORES)):
        evidence.add_trace(trace)
    evidence.advance(300.0)
    judgement = judge(policy, evidence, StepStatus(0, 0.0), 3000.0)
    assert judgement.decision is Decision.ROLLBACK


# -- judging is pure -------------------------------------------------------------------------


def test_judging_does_not_change_the_evidence() -> None:
    policy = make_policy(metrics=[HELPFULNESS, ERRORS, COST, LATENCY_CRITICAL])
    evidence = _evidence_until(policy, 6)
    step = StepStatus(0, 0.0)
    first = judge(policy, evidence, step, 360.0)
    second = judge(policy, evidence, step, 360.0)
    assert first == second
    evidence.advance(360.0)
    assert judge(policy, evidence, step, 360.0) == first


# -- known defects ---------------------------------------------------------------------------


def test_an_overwhelmingly_worse_canary_rolls_back() -> None:
    # canary all 0.2 against baseline all 0.9, 100 traces each: the most obvious rollback.
    policy = make_policy()
    traces = scripted_traces(5, ArmScript(scores=(0.9,)), ArmScript(scores=(0.2,)))
    judgement = judge_release(policy, traces, 300.0)
    assert judgement.decision is Decision.ROLLBACK
    assert metric(judgement, "helpfulness").verdict is Verdict.FAIL


def test_a_boolean_score_resolved_half_as_often_rolls_back() -> None:
    policy = make_policy(metrics=[RESOLVED])
    baseline = ArmScript(scores=None, extra={"resolved": (True,) * 9 + (False,)})
    canary = ArmScript(scores=None, extra={"resolved": (True, False)})
    judgement = judge_release(policy, scripted_traces(5, baseline, canary), 300.0)
    assert metric(judgement, "resolved").verdict is Verdict.FAIL
    assert judgement.decision is Decision.ROLLBACK


def test_a_worse_canary_is_not_treated_more_gently_at_max_duration() -> None:
    policy = make_policy(metrics=[HELPFULNESS_SOFT], steps=[SHORT_STEP], onMaxDuration="rollback")
    slightly = scripted_traces(10, ArmScript(), ArmScript(scores=SLIGHTLY_WORSE))
    clearly = scripted_traces(10, ArmScript(), ArmScript(scores=CLEARLY_WORSE))
    first = judge_release(policy, slightly, 600.0)
    assert metric(first, "helpfulness").verdict is Verdict.INCONCLUSIVE
    assert first.decision is Decision.ROLLBACK
    second = judge_release(policy, clearly, 600.0)
    assert metric(second, "helpfulness").verdict is Verdict.FAIL
    assert second.decision is Decision.ROLLBACK


@pytest.mark.parametrize("direction", ["higher", "lower"])
def test_the_bounds_of_a_passing_metric_lie_within_its_tolerance(direction: str) -> None:
    # Both arms cycle through the same scores; the rollback test is tuned to a large
    # effect (0.5), the tolerance is 0.05. With "lower is better" the same scores read
    # as, say, a hallucination score.
    spec = (
        "{name: helpfulness, source: score, score: helpfulness, tolerance: 0.05, "
        f"effectSize: 0.5, direction: {direction}, critical: true}}"
    )
    judgement = judge_release(
        make_policy(metrics=[spec]), scripted_traces(10, ArmScript(), ArmScript()), 600.0
    )
    result = metric(judgement, "helpfulness")
    assert result.verdict is Verdict.PASS
    assert judgement.decision is Decision.PROMOTE
    assert result.lower is not None and result.upper is not None
    # the promotion rests on the canary being shown at most 0.05 worse
    if direction == "higher":
        assert result.lower > -0.05  # is -0.1295
    else:
        assert result.upper < 0.05  # is 0.1295


# -- waiting for approval --------------------------------------------------------------------


def _awaiting(policy: Policy, evidence: Evidence, now: float) -> Judgement:
    return judge(policy, evidence, StepStatus(0, 0.0, awaiting_approval=True), now)


def test_a_rollout_waiting_for_approval_is_never_moved_forward() -> None:
    policy = make_policy()
    evidence = _evidence_until(policy, 10)
    assert judge(policy, evidence, StepStatus(0, 0.0), 600.0).decision is Decision.PROMOTE
    waiting = _awaiting(policy, evidence, 600.0)
    assert waiting.decision is Decision.CONTINUE
    assert waiting.reason == "waiting for approval; no metric shown worse"


def test_a_regression_while_waiting_for_approval_still_rolls_back() -> None:
    policy = make_policy()
    traces = scripted_traces(5, ArmScript(scores=(0.9,)), ArmScript(scores=(0.2,)))
    evidence = Evidence(policy, 0.0)
    for trace in traces:
        evidence.add_trace(trace)
    evidence.advance(300.0)
    judgement = _awaiting(policy, evidence, 300.0)
    assert judgement.decision is Decision.ROLLBACK
    assert "critical metric shown worse" in judgement.reason


@pytest.mark.parametrize("on_max", ["pause", "rollback", "promote"])
def test_max_duration_does_not_apply_while_waiting_for_approval(on_max: str) -> None:
    policy = make_policy(steps=[SHORT_STEP], onMaxDuration=on_max)
    evidence = _evidence_until(policy, 10)
    # far past the step's maxDuration, and the evidence stale: nothing to act on
    judgement = _awaiting(policy, evidence, 7200.0)
    assert judgement.decision is Decision.CONTINUE, judgement.reason
    assert judge(policy, evidence, StepStatus(0, 0.0), 7200.0).decision is not Decision.CONTINUE
