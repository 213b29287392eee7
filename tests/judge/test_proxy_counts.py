"""Evidence whose traffic, errors and latency come from the proxies' per-minute counts:
what is taken in of a minute read again and again, what the sample-ratio check and the
circuit breaker see, trace loss against the traces found, and checkpoints."""

from __future__ import annotations

import math

import pytest

from controller.judge import Decision, Evidence, StepStatus, Trace, judge
from controller.judge.checkpoint import restore, snapshot
from controller.judge.decide import trace_loss
from controller.judge.evidence import sketch_bin
from controller.judge.model import CheckState
from controller.judge.proxy_minutes import TRACE_LAG_SECONDS
from policies import Policy
from policies.domain import Arm
from tests.judge.judge_support import ERRORS, LATENCY, make_policy

T0 = 1_800_000_000.0  # a whole minute
POLICY = make_policy(
    metrics=(ERRORS, LATENCY),
    steps=("{weight: 50, minDuration: 5m, maxDuration: 60m}",),
    scoreTimeout="120s",
)


def _evidence(started_at: float = T0, policy: Policy = POLICY) -> Evidence:
    return Evidence(policy, started_at, traffic_from_proxy=True)


def test_a_minute_read_again_adds_only_what_grew() -> None:
    evidence = _evidence()
    minute = int(T0)
    evidence.add_proxy_minute(Arm.CANARY, minute, (10, 1, 10), {sketch_bin(100.0): 10})
    evidence.add_proxy_minute(Arm.CANARY, minute, (10, 1, 10), {sketch_bin(100.0): 10})
    evidence.add_proxy_minute(Arm.CANARY, minute, (25, 4, 25), {sketch_bin(100.0): 25})
    errors = evidence.series["errors"].means
    assert errors is not None
    assert errors.totals == (0, 25)
    assert errors.arms[1][1] == 4.0  # errors summed
    assert errors.canary_bad == 4
    latency = evidence.series["latency"].quantiles
    assert latency is not None
    assert latency.steps[0][1].n == 25
    assert evidence.traffic_in_step(0) == (0, 25)
    assert evidence.recent_errors(T0, T0 + 59) == (25, 4, 0, 0)


def test_counts_that_shrink_are_not_taken_back() -> None:
    evidence = _evidence()
    minute = int(T0)
    evidence.add_proxy_minute(Arm.BASELINE, minute, (30, 3, 30), {7: 30})
    # a proxy's ConfigMap went away: the sum is smaller now
    evidence.add_proxy_minute(Arm.BASELINE, minute, (20, 2, 20), {7: 20})
    evidence.add_proxy_minute(Arm.BASELINE, minute, (32, 3, 32), {7: 32})
    assert evidence.traffic_in_step(0) == (32, 0)
    errors = evidence.series["errors"].means
    assert errors is not None
    assert errors.totals == (32, 0)
    assert errors.arms[0][1] == 3.0


def test_traces_count_neither_traffic_nor_errors_nor_latency() -> None:
    evidence = _evidence()
    for i in range(40):
        arm = Arm.CANARY if i % 2 else Arm.BASELINE
        evidence.add_trace(Trace(f"t{i}", arm, T0 + i, error=True, latency_ms=5000.0))
    evidence.advance(T0 + 60)
    assert evidence.traffic_in_step(0) == (0, 0)
    errors = evidence.series["errors"].means
    assert errors is not None
    assert errors.totals == (0, 0)
    latency = evidence.series["latency"].quantiles
    assert latency is not None
    assert latency.steps == {}
    assert evidence._found == {int(T0): [20, 20]}


def test_the_minute_a_step_starts_in_is_left_out_of_the_split_only() -> None:
    evidence = _evidence()
    evidence.open_step(1, T0 + 90)  # step 2 starts in the middle of the second minute
    evidence.add_proxy_minute(Arm.CANARY, int(T0), (5, 0, 5), {})
    evidence.add_proxy_minute(Arm.CANARY, int(T0) + 60, (7, 2, 7), {})
    evidence.add_proxy_minute(Arm.CANARY, int(T0) + 120, (11, 0, 11), {})
    assert evidence.traffic_in_step(0) == (0, 5)
    assert evidence.traffic_in_step(1) == (0, 11)
    # its errors still count, in the step of the minute's middle
    assert evidence.recent_errors(T0, T0 + 179) == (23, 2, 0, 0)
    errors = evidence.series["errors"].means
    assert errors is not None
    assert errors.step_count(1) == (0, 18)


def test_the_minute_a_rollout_starts_in_is_left_out_of_the_split() -> None:
    evidence = _evidence(started_at=T0 + 20)
    evidence.add_proxy_minute(Arm.BASELINE, int(T0) - 60, (50, 0, 50), {})  # before: ignored
    evidence.add_proxy_minute(Arm.BASELINE, int(T0), (50, 0, 50), {})
    evidence.add_proxy_minute(Arm.BASELINE, int(T0) + 60, (40, 0, 40), {})
    assert evidence.traffic_in_step(0) == (40, 0)
    errors = evidence.series["errors"].means
    assert errors is not None
    assert errors.totals == (40, 0)
    assert evidence.loss_checked_until == int(T0) + 60


def test_counts_are_read_from_the_first_whole_minute_of_the_rollout() -> None:
    """The minute a rollout starts in also counts what ran before it: the last rollout's
    candidate, whose errors must not be this one's."""
    evidence = _evidence(started_at=T0 + 48)
    assert evidence.counts_from() == int(T0) + 60
    evidence.add_proxy_minute(Arm.CANARY, int(T0), (5, 1, 5), {})
    errors = evidence.series["errors"].means
    assert errors is not None
    assert errors.totals == (0, 0)
    evidence.add_proxy_minute(Arm.CANARY, int(T0) + 60, (7, 1, 7), {})
    assert errors.totals == (0, 7)


def test_counts_of_a_closed_cell_come_too_late() -> None:
    evidence = _evidence()
    evidence.add_proxy_minute(Arm.CANARY, int(T0), (5, 0, 5), {})
    evidence.advance(T0 + 3600)
    assert evidence.closed_blocks > 0
    assert evidence.counts_from() > int(T0)
    evidence.add_proxy_minute(Arm.CANARY, int(T0), (9, 0, 9), {})
    assert evidence.late_requests == 4
    assert evidence.traffic_in_step(0) == (0, 5)


def test_minutes_closed_and_compared_are_forgotten() -> None:
    evidence = _loss_run(canary_found=1.0, minutes=240)
    # the minutes of open cells (two scoreTimeouts) or not yet compared (the read
    # timeout and the trace lag), per arm: not four hours of minutes
    kept = max(2 * 120, POLICY.routing.read_timeout + TRACE_LAG_SECONDS) // 60 + 2
    assert len(evidence._minutes) <= 2 * kept
    oldest = min(evidence.counts_from(), evidence.loss_checked_until) - 60
    assert all(minute >= oldest for _, minute in evidence._minutes)
    assert len(evidence._found) <= (POLICY.routing.read_timeout + TRACE_LAG_SECONDS) // 60 + 2


def _loss_run(
    canary_found: float, minutes: int = 60, per_minute: int = 40, policy: Policy = POLICY
) -> Evidence:
    """Each arm answers ``per_minute`` requests a minute; all baseline traces are found,
    ``canary_found`` of the canary's (every k-th lost, deterministically)."""
    evidence = _evidence(policy=policy)
    lost_every = 0 if canary_found >= 1.0 else round(1 / (1 - canary_found))
    n = 0
    for m in range(minutes):
        minute = int(T0) + 60 * m
        for arm in (Arm.BASELINE, Arm.CANARY):
            evidence.add_proxy_minute(arm, minute, (per_minute, 0, per_minute), {})
            for i in range(per_minute):
                n += 1
                if arm is Arm.CANARY and lost_every and n % lost_every == 0:
                    continue
                evidence.add_trace(Trace(f"{m}-{arm.value}-{i}", arm, minute + i))
        now = minute + 60.0
        evidence.advance(now, traces_read_until=now)
    return evidence


def test_a_canary_that_loses_a_tenth_of_its_traces_is_paused() -> None:
    evidence = _loss_run(canary_found=0.9)
    (check,) = trace_loss(POLICY, evidence)
    assert check.state is CheckState.FAILED, check
    assert "10.0% of canary and 0.0% of baseline" in check.reason
    judgement = judge(POLICY, evidence, StepStatus(0, T0), T0 + 3600)
    assert judgement.decision is Decision.PAUSE
    assert "trace loss" in judgement.reason


def test_no_loss_is_shown_equal() -> None:
    evidence = _loss_run(canary_found=1.0)
    (check,) = trace_loss(POLICY, evidence)
    assert check.state is CheckState.OK, check
    # the minutes compared so far: those whose traces have all been read
    lag = POLICY.routing.read_timeout + TRACE_LAG_SECONDS
    assert evidence.loss_checked_until == math.floor((T0 + 3600 - lag) / 60) * 60
    assert evidence.loss.totals[1] == 40 * (evidence.loss_checked_until - int(T0)) // 60


def test_trace_loss_is_not_checked_when_traffic_comes_from_traces() -> None:
    assert trace_loss(POLICY, Evidence(POLICY, T0)) == ()


def test_a_trace_read_after_its_minute_was_compared_is_counted_late() -> None:
    policy = make_policy(metrics=(ERRORS, LATENCY), scoreTimeout="30m")
    evidence = _loss_run(canary_found=1.0, minutes=10, policy=policy)
    assert evidence.loss_checked_until > int(T0)
    assert evidence.closed_blocks == 0
    evidence.add_trace(Trace("very-late", Arm.CANARY, T0 + 1))
    assert evidence.late_found == 1
    assert int(T0) not in evidence._found


def test_traces_found_counted_at_once_are_counted_as_one_by_one() -> None:
    one_by_one, at_once = _evidence(), _evidence()
    for m, (baseline, canary) in enumerate(((40, 36), (40, 40), (38, 30))):
        minute = int(T0) + 60 * m
        for evidence in (one_by_one, at_once):
            for arm in (Arm.BASELINE, Arm.CANARY):
                evidence.add_proxy_minute(arm, minute, (40, 0, 40), {})
        for i in range(baseline):
            one_by_one.add_trace(Trace(f"{m}-b-{i}", Arm.BASELINE, minute + i % 60))
        for i in range(canary):
            one_by_one.add_trace(Trace(f"{m}-c-{i}", Arm.CANARY, minute + i % 60))
        at_once.add_found(minute, baseline, canary)
    now = T0 + 3600
    for evidence in (one_by_one, at_once):
        evidence.advance(now, traces_read_until=now)
    assert at_once.loss.totals == one_by_one.loss.totals
    assert at_once.loss_checked_until == one_by_one.loss_checked_until
    assert trace_loss(POLICY, at_once) == trace_loss(POLICY, one_by_one)
    at_once.add_found(int(T0), 2, 1)
    assert at_once.late_found == 3


def test_the_counts_are_refused_by_evidence_judged_on_traces() -> None:
    with pytest.raises(ValueError, match="traces"):
        Evidence(POLICY, T0).add_proxy_minute(Arm.CANARY, int(T0), (1, 0, 1), {})


def test_a_checkpoint_keeps_the_counts_exactly() -> None:
    evidence = _loss_run(canary_found=0.95, minutes=20)
    evidence.add_proxy_minute(Arm.CANARY, int(T0) + 1140, (60, 3, 60), {sketch_bin(250.0): 60})
    copy = restore(POLICY, snapshot(evidence))
    assert copy is not None
    assert copy.traffic_from_proxy
    for one in (evidence, copy):
        one.add_proxy_minute(Arm.CANARY, int(T0) + 1140, (70, 5, 70), {sketch_bin(250.0): 70})
        one.advance(T0 + 1500, traces_read_until=T0 + 1500)
    first = judge(POLICY, evidence, StepStatus(0, T0), T0 + 1500)
    second = judge(POLICY, copy, StepStatus(0, T0), T0 + 1500)
    assert first == second
    assert snapshot(evidence) == snapshot(copy)


def test_trace_loss_not_yet_checked_does_not_hold_an_advance() -> None:
    policy = make_policy(metrics=(ERRORS,), steps=("{weight: 50, minDuration: 1m}",))
    evidence = Evidence(policy, T0, traffic_from_proxy=True)
    for m in range(3):
        for arm in (Arm.BASELINE, Arm.CANARY):
            evidence.add_proxy_minute(arm, int(T0) + 60 * m, (400, 0, 400), {})
    evidence.advance(T0 + 180, traces_read_until=T0 + 180)
    judgement = judge(policy, evidence, StepStatus(0, T0), T0 + 180)
    checks = {check.name: check for check in judgement.checks}
    assert checks["trace_loss"].state is CheckState.PENDING
    assert judgement.decision is Decision.PROMOTE, judgement.reason


def test_the_traffic_check_names_the_proxies_counts() -> None:
    evidence = _evidence()
    judgement = judge(POLICY, evidence, StepStatus(0, T0), T0 + 600)
    checks = {check.name: check for check in judgement.checks}
    assert checks["traffic"].state is CheckState.PENDING
    assert "no requests of this release counted by any coalmine proxy" in checks["traffic"].reason
    evidence.add_proxy_minute(Arm.CANARY, int(T0) + 60, (12, 0, 12), {})
    evidence.add_proxy_minute(Arm.BASELINE, int(T0) + 60, (30, 0, 30), {})
    judgement = judge(POLICY, evidence, StepStatus(0, T0), T0 + 600)
    checks = {check.name: check for check in judgement.checks}
    assert checks["traffic"].reason == "30 baseline, 12 canary requests counted by the proxies"
