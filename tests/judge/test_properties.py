"""Properties of the judge over generated releases (hypothesis).

A release is drawn as a handful of parameters and a seed; the traces follow from them, so
examples shrink to small, readable releases.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from controller.judge import (
    Decision,
    Evidence,
    Judgement,
    ScoreValue,
    StepStatus,
    Trace,
    Verdict,
    judge,
    judge_samples,
)
from policies import Policy
from policies.domain import Arm
from tests.judge.judge_support import make_policy, metric

HELPFULNESS_CRITICAL = (
    "{name: helpfulness, source: score, score: helpfulness, tolerance: 0.05, critical: true}"
)
HELPFULNESS_SOFT = "{name: helpfulness, source: score, score: helpfulness, tolerance: 0.05}"
ERRORS = "{name: errors, source: error_rate, tolerance: 0.05, critical: true}"
COST = "{name: cost, source: cost, tolerancePercent: 10}"
LATENCY = "{name: latency, source: latency, quantile: 0.9, tolerancePercent: 20}"

ONE_STEP = "{weight: 50, minDuration: 2m, maxDuration: 8m}"
TWO_STEPS = ("{weight: 30, minDuration: 2m, maxDuration: 4m}", "{weight: 50, maxDuration: 8m}")


def _policies() -> dict[str, Policy]:
    common = {"minSamples": 5, "scoreTimeout": "90s"}
    out = {}
    for action in ("pause", "rollback", "promote"):
        out[f"critical-{action}"] = make_policy(
            metrics=[HELPFULNESS_CRITICAL, ERRORS, COST, LATENCY],
            steps=[ONE_STEP],
            onMaxDuration=action,
            **common,
        )
        out[f"soft-{action}"] = make_policy(
            metrics=[HELPFULNESS_SOFT, ERRORS],
            steps=[ONE_STEP],
            onMaxDuration=action,
            **common,
        )
        out[f"steps-{action}"] = make_policy(
            metrics=[HELPFULNESS_CRITICAL, LATENCY],
            steps=list(TWO_STEPS),
            onMaxDuration=action,
            scoreSettle="30s",
            **common,
        )
    return out


POLICIES = _policies()


@dataclass(frozen=True)
class Release:
    """Parameters of a generated release; ``traces()`` turns them into samples."""

    seed: int
    minutes: int
    baseline_rate: int  # traces per minute
    canary_rate: int
    canary_shift: float  # added to the canary's score mean
    floor: float  # canary scores are raised to at least this (so they can be lowered by it)
    unscored: float  # share of traces never scored
    late: float  # share of scores that arrive up to three minutes late
    canary_errors: float
    slower: float  # canary latency factor
    canary_scores: bool = True
    baseline_scores: bool = True
    canary_latency: bool = True  # False: the canary's traces carry no latency

    def traces(self, lower_canary_by: float = 0.0) -> tuple[list[Trace], list[LateScore]]:
        rng = random.Random(self.seed)
        traces: list[Trace] = []
        late: list[LateScore] = []
        for minute in range(self.minutes):
            for arm, rate in ((Arm.BASELINE, self.baseline_rate), (Arm.CANARY, self.canary_rate)):
                is_canary = arm is Arm.CANARY
                for i in range(rate):
                    ts = 60.0 * minute + 60.0 * (i + rng.random()) / rate
                    error = rng.random() < (self.canary_errors if is_canary else 0.02)
                    latency: float | None = rng.lognormvariate(6.0, 0.4) * (
                        self.slower if is_canary else 1.0
                    )
                    cost = rng.lognormvariate(-6.0, 0.8)
                    mean = 0.7 + (self.canary_shift if is_canary else 0.0)
                    value = min(max(rng.gauss(mean, 0.15), 0.0), 1.0)
                    if is_canary:
                        value = max(value, self.floor) - lower_canary_by
                    scored = (self.canary_scores if is_canary else self.baseline_scores) and (
                        rng.random() >= self.unscored
                    )
                    delay = rng.uniform(0.0, 180.0) if rng.random() < self.late else 0.0
                    trace_id = f"{arm.value}-{minute}-{i}"
                    scores: dict[str, ScoreValue] = {}
                    if scored and not error:
                        if delay:
                            late.append((trace_id, {"helpfulness": value}, ts + delay))
                        else:
                            scores["helpfulness"] = value
                    if is_canary and not self.canary_latency:
                        latency = None
                    traces.append(Trace(trace_id, arm, ts, error, latency, cost, scores))
        return traces, late


LateScore = tuple[str, dict[str, ScoreValue], float]


releases = st.builds(
    Release,
    seed=st.integers(0, 2**16),
    minutes=st.integers(1, 10),
    baseline_rate=st.integers(0, 12),
    canary_rate=st.integers(0, 12),
    canary_shift=st.sampled_from([-0.4, -0.15, -0.05, 0.0, 0.05]),
    floor=st.sampled_from([0.0, 0.1, 0.3]),
    unscored=st.sampled_from([0.0, 0.05, 0.5]),
    late=st.sampled_from([0.0, 0.3]),
    canary_errors=st.sampled_from([0.0, 0.02, 0.3, 0.8]),
    slower=st.sampled_from([1.0, 1.5, 3.0]),
    canary_scores=st.sampled_from([True, True, True, False]),
    baseline_scores=st.sampled_from([True, True, True, False]),
)
policy_names = st.sampled_from(sorted(POLICIES))


def look(policy: Policy, release: Release, now: float, lower_canary_by: float = 0.0) -> Judgement:
    traces, late = release.traces(lower_canary_by)
    starts = (240.0,) if len(policy.steps) > 1 and now > 240.0 else ()
    return judge_samples(policy, traces, now, started_at=0.0, step_starts=starts, late_scores=late)


def _now(release: Release, extra: int) -> float:
    return 60.0 * (release.minutes + extra)


FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(release=releases, name=policy_names, extra=st.integers(0, 3))
def test_the_same_inputs_give_the_same_judgement(release: Release, name: str, extra: int) -> None:
    policy = POLICIES[name]
    now = _now(release, extra)
    first = look(policy, release, now)
    assert look(policy, release, now) == first
    # and fed in another order, through an Evidence, looked at twice
    traces, late = release.traces()
    evidence = Evidence(policy, 0.0)
    step = StepStatus(0, 0.0)
    if len(policy.steps) > 1 and now > 240.0:
        evidence.open_step(1, 240.0)
        step = StepStatus(1, 240.0)
    for trace in sorted(traces, key=lambda t: (t.ts, t.trace_id)):
        if trace.ts <= now:
            evidence.add_trace(trace)
    for trace_id, scores, at in sorted(late, key=lambda s: s[2]):
        if at <= now:
            evidence.add_scores(trace_id, scores, at)
    evidence.advance(now)
    again = judge(policy, evidence, step, now)
    assert again == judge(policy, evidence, step, now)
    assert again.decision is first.decision
    assert [m.verdict for m in again.metrics] == [m.verdict for m in first.metrics]


@FAST
@given(
    release=releases,
    name=policy_names,
    extra=st.integers(0, 6),
    missing=st.sampled_from(
        ["canary-traces", "baseline-traces", "canary-scores", "both-scores", "canary-latency"]
    ),
)
def test_no_promotion_without_observations_in_both_arms(
    release: Release, name: str, extra: int, missing: str
) -> None:
    release, absent = {
        "canary-traces": (replace(release, canary_rate=0), "helpfulness"),
        "baseline-traces": (replace(release, baseline_rate=0), "helpfulness"),
        "canary-scores": (replace(release, canary_scores=False), "helpfulness"),
        "both-scores": (
            replace(release, canary_scores=False, baseline_scores=False),
            "helpfulness",
        ),
        "canary-latency": (replace(release, canary_latency=False), "latency"),
    }[missing]
    policy = POLICIES[name]
    assume(any(m.name == absent for m in policy.analysis.metrics))
    judgement = look(policy, release, _now(release, extra))
    assert metric(judgement, absent).verdict is Verdict.NODATA
    assert judgement.decision not in (Decision.PROMOTE, Decision.ADVANCE)


@FAST
@given(
    release=releases,
    name=policy_names,
    extra=st.integers(0, 3),
    worse_by=st.sampled_from([0.01, 0.05, 0.1]),
)
def test_a_worse_canary_never_looks_better(
    release: Release, name: str, extra: int, worse_by: float
) -> None:
    assume(release.floor >= worse_by)  # every canary score stays within [0, 1]
    policy = POLICIES[name]
    now = _now(release, extra)
    before = look(policy, release, now)
    after = look(policy, release, now, lower_canary_by=worse_by)
    h_before, h_after = metric(before, "helpfulness"), metric(after, "helpfulness")
    assert h_after.log_evalue >= h_before.log_evalue - 1e-9
    if h_before.verdict is Verdict.FAIL:
        assert h_after.verdict is Verdict.FAIL
    if before.decision is Decision.ROLLBACK:
        assert after.decision is Decision.ROLLBACK, after.reason


@FAST
@given(
    release=releases,
    name=policy_names,
    later=st.sampled_from([1, 60, 600, 3600, 86400]),
)
def test_waiting_without_new_data_never_promotes_missing_data(
    release: Release, name: str, later: int
) -> None:
    policy = POLICIES[name]
    traces, late = release.traces()
    now = _now(release, 0)
    evidence = Evidence(policy, 0.0)
    for trace in traces:
        evidence.add_trace(trace)
    for trace_id, scores, at in sorted(late, key=lambda s: s[2]):
        if at <= now:
            evidence.add_scores(trace_id, scores, at)
    evidence.advance(now)
    step = StepStatus(0, 0.0)
    first = judge(policy, evidence, step, now)
    assume(any(m.verdict is Verdict.NODATA for m in first.metrics))
    # the same evidence, looked at later: stale, or advanced to the later time
    assert judge(policy, evidence, step, now + later).decision is not Decision.PROMOTE
    if policy.analysis.score_settle > 0:
        return  # advancing would show settled scores: new data
    evidence.advance(now + later)
    assert judge(policy, evidence, step, now + later).decision is not Decision.PROMOTE
