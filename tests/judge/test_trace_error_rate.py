"""``trace_error_rate``: the share of traces with an ERROR observation, read from the
traces whatever carries the traffic. With traffic from the proxies an ``error_rate``
metric reads the proxies' counts and misses what only the traces say failed; on traces
both metrics read the same thing."""

from __future__ import annotations

from dataclasses import dataclass, fields

import pytest

from controller.judge import Decision, Evidence, StepStatus, Trace, Verdict, judge
from controller.judge.analyze import margin_and_effect
from controller.judge.checkpoint import restore, snapshot
from controller.judge.evidence import is_indicator
from controller.judge.model import CheckState, Judgement
from policies import Policy
from policies.domain import Arm
from tests.judge.judge_support import (
    ERRORS,
    ArmScript,
    judge_release,
    make_policy,
    metric,
    scripted_traces,
)

T0 = 1_800_000_000.0  # a whole minute
TRACE_ERRORS = "{name: errors, source: trace_error_rate, tolerance: 0.05, critical: true}"
STEP = "{weight: 50, minDuration: 5m, maxDuration: 60m}"
PER_MINUTE = 40
MINUTES = 20


def _policy(*metrics: str) -> Policy:
    return make_policy(metrics=metrics, steps=(STEP,), scoreTimeout="120s")


@dataclass(frozen=True)
class Case:
    metric: str
    canary_5xx: int
    """Of every ten canary requests, how many the proxies counted as failed."""
    canary_trace_errors: int
    """Of every ten canary traces, how many hold an ERROR observation."""
    verdict: Verdict
    decision: Decision


# The baseline fails nowhere. Thirty percent is far past the tolerance of 0.05.
CASES: dict[str, Case] = {
    "error_rate misses the trace errors": Case(ERRORS, 0, 3, Verdict.PASS, Decision.PROMOTE),
    "trace_error_rate sees the trace errors": Case(
        TRACE_ERRORS, 0, 3, Verdict.FAIL, Decision.ROLLBACK
    ),
    "error_rate sees the 5xx": Case(ERRORS, 3, 0, Verdict.FAIL, Decision.ROLLBACK),
    "trace_error_rate misses the 5xx": Case(TRACE_ERRORS, 3, 0, Verdict.PASS, Decision.PROMOTE),
}


def _proxy_run(policy: Policy, canary_5xx: int, canary_trace_errors: int) -> Evidence:
    """Both arms answer ``PER_MINUTE`` requests a minute, each found as a trace."""
    evidence = Evidence(policy, T0, traffic_from_proxy=True)
    for m in range(MINUTES):
        minute = int(T0) + 60 * m
        for arm in (Arm.BASELINE, Arm.CANARY):
            canary = arm is Arm.CANARY
            failed = PER_MINUTE * canary_5xx // 10 if canary else 0
            evidence.add_proxy_minute(arm, minute, (PER_MINUTE, failed, PER_MINUTE), {})
            for i in range(PER_MINUTE):
                error = canary and i % 10 < canary_trace_errors
                evidence.add_trace(Trace(f"{m}-{arm.value}-{i}", arm, minute + i, error=error))
        now = minute + 60.0
        evidence.advance(now, traces_read_until=now)
    return evidence


def _judge(policy: Policy, evidence: Evidence) -> Judgement:
    return judge(policy, evidence, StepStatus(0, T0), T0 + 60 * MINUTES)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_with_traffic_from_the_proxies_only_trace_error_rate_reads_the_traces(
    case: Case,
) -> None:
    policy = _policy(case.metric)
    judgement = _judge(policy, _proxy_run(policy, case.canary_5xx, case.canary_trace_errors))
    result = metric(judgement, "errors")
    assert result.verdict is case.verdict, result.reason
    assert judgement.decision is case.decision, judgement.reason
    assert (result.n_baseline, result.n_canary) == (PER_MINUTE * MINUTES,) * 2
    assert result.estimate == pytest.approx(0.3 if case.verdict is Verdict.FAIL else 0.0)


def test_both_error_sources_in_one_policy_judged_on_the_proxies() -> None:
    both = (ERRORS, TRACE_ERRORS.replace("name: errors", "name: app-errors"))
    policy = _policy(*both)
    judgement = _judge(policy, _proxy_run(policy, canary_5xx=0, canary_trace_errors=6))
    assert metric(judgement, "errors").verdict is Verdict.PASS
    assert metric(judgement, "app-errors").verdict is Verdict.FAIL
    assert judgement.decision is Decision.ROLLBACK
    assert "app-errors" in judgement.reason
    # the circuit breaker reads the counts: 60 % of failing traces do not trip it
    checks = {check.name: check for check in judgement.checks}
    assert checks["circuit_breaker"].state is CheckState.OK, checks["circuit_breaker"]


def test_a_checkpoint_keeps_trace_error_rate_on_the_traces() -> None:
    policy = _policy(ERRORS, TRACE_ERRORS.replace("name: errors", "name: app-errors"))
    evidence = _proxy_run(policy, canary_5xx=0, canary_trace_errors=3)
    copy = restore(policy, snapshot(evidence))
    assert copy is not None
    assert _judge(policy, copy) == _judge(policy, evidence)


def test_on_traces_error_rate_and_trace_error_rate_read_the_same() -> None:
    policy = _policy(ERRORS, TRACE_ERRORS.replace("name: errors", "name: app-errors"))
    traces = scripted_traces(
        MINUTES,
        ArmScript(per_minute=PER_MINUTE, error_every=50),
        ArmScript(per_minute=PER_MINUTE, error_every=4),
        start=T0,
    )
    judgement = judge_release(policy, traces, T0 + 60 * MINUTES, started_at=T0)
    errors, app_errors = metric(judgement, "errors"), metric(judgement, "app-errors")
    assert errors.verdict is Verdict.FAIL
    different = {
        field.name: (getattr(errors, field.name), getattr(app_errors, field.name))
        for field in fields(errors)
        if getattr(errors, field.name) != getattr(app_errors, field.name)
    }
    assert different == {
        "name": ("errors", "app-errors"),
        "source": ("error_rate", "trace_error_rate"),
    }


SETTINGS: dict[str, tuple[float, float]] = {
    # metric: (margin, effect)
    "{name: e, source: trace_error_rate, tolerance: 0.05}": (0.05, 0.02),
    "{name: e, source: error_rate, tolerance: 0.05}": (0.05, 0.02),
    "{name: e, source: trace_error_rate, tolerance: 0, effectSize: 0.1}": (0.0, 0.1),
}


@pytest.mark.parametrize(("text", "margin", "effect"), [(k, *v) for k, v in SETTINGS.items()])
def test_trace_error_rate_is_an_indicator_with_the_error_rate_effect(
    text: str, margin: float, effect: float
) -> None:
    (one,) = _policy(text).analysis.metrics
    assert is_indicator(one)
    assert margin_and_effect(one) == (margin, effect)
