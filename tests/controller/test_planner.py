"""The planner: seeded runs of the replay engine, summarised into a plan with warnings."""

from __future__ import annotations

import math
import random

import pytest

from controller.planner import (
    Plan,
    PlanSettings,
    RegressionPlan,
    Spread,
    baseline_description,
    baseline_model,
    default_regression,
    degraded,
    plan,
)
from policies.loader import load_policy_text
from policies.model import Policy, ScoreType


def small_policy(
    *,
    first_min: str = "5m",
    first_max: str = "1h",
    last_max: str = "1h",
    score_timeout: str = "5m",
    min_samples: int = 30,
    metrics: str = "",
) -> Policy:
    """Two steps at traffic the tests can simulate in a fraction of a second a run."""
    text = f"""\
apiVersion: coalmine/v1
kind: Release
name: plan-test
target: {{prompt: {{name: plan-test}}}}
steps:
  - {{weight: 20, minDuration: {first_min}, maxDuration: {first_max}}}
  - {{weight: 50, minDuration: 5m, maxDuration: {last_max}}}
analysis:
  interval: 1m
  minSamples: {min_samples}
  scoreTimeout: {score_timeout}
  metrics:
    - {{name: helpfulness, source: score, score: helpfulness, tolerance: 0.1, effectSize: 0.1, critical: true}}
    - {{name: errors, source: error_rate, tolerance: 0.05, critical: true}}
{metrics}"""  # noqa: E501
    return load_policy_text(text, "plan-test.yaml")


def run(
    policy: Policy,
    traffic: float = 60.0,
    runs: int = 6,
    *,
    seed: int = 0,
    scores_per_trace: float = 1.0,
    regressions: dict[str, float] | None = None,
) -> Plan:
    settings = PlanSettings(traffic, scores_per_trace, runs, seed, regressions or {})
    return plan(policy, settings)


def regression(result: Plan, metric: str) -> RegressionPlan:
    return next(item for item in result.regressions if item.metric == metric)


def never_is_infinite(value: float | None) -> float:
    return math.inf if value is None else value


def test_an_equal_canary_is_promoted_through_every_step() -> None:
    result = run(small_policy())
    assert result.equal.outcomes["promoted"] == 6
    assert sum(result.equal.outcomes.values()) == 6
    median = result.equal.time_to_promote.median
    assert median is not None
    assert median >= 10 * 60  # both minDurations
    assert [step.index for step in result.steps] == [1, 2]
    for step, weight in zip(result.steps, (20, 50), strict=True):
        assert step.reached == step.passed == 6
        assert step.samples_canary is not None
        assert step.samples_baseline is not None
        share = step.samples_canary / (step.samples_canary + step.samples_baseline)
        assert share == pytest.approx(weight / 100, abs=0.05)


@pytest.mark.slow
def test_a_longer_min_duration_gives_a_longer_time_to_promote() -> None:
    quick = run(small_policy(first_min="5m"))
    slow = run(small_policy(first_min="45m"))
    quick_median = never_is_infinite(quick.equal.time_to_promote.median)
    slow_median = never_is_infinite(slow.equal.time_to_promote.median)
    assert slow_median >= 50 * 60
    assert quick_median < slow_median


@pytest.mark.slow
def test_a_larger_regression_is_detected_faster_and_more_often() -> None:
    policy = small_policy()
    slight = regression(run(policy, regressions={"helpfulness": 0.13}), "helpfulness")
    severe = regression(run(policy, regressions={"helpfulness": 0.3}), "helpfulness")
    assert severe.detected == 6
    assert severe.detected >= slight.detected
    assert severe.outcomes["rolled_back"] == 6
    assert never_is_infinite(severe.time_to_detect.median) < never_is_infinite(
        slight.time_to_detect.median
    )
    assert (slight.delta, severe.delta) == (0.13, 0.3)


def test_every_metric_gets_its_regression_with_the_action_it_calls_for() -> None:
    cost = "    - {name: cost, source: cost, tolerancePercent: 30}\n"
    result = run(small_policy(metrics=cost), traffic=120.0, runs=4)
    assert [item.metric for item in result.regressions] == ["helpfulness", "errors", "cost"]
    by_name = {item.metric: item for item in result.regressions}
    assert by_name["helpfulness"].expected == "rolled_back"
    assert by_name["cost"].expected == "paused"
    assert by_name["cost"].unit == "%"
    assert by_name["cost"].delta == 50.0  # 30 % tolerance plus the judge's default 20 %
    assert by_name["cost"].outcomes["paused"] >= 3
    assert by_name["helpfulness"].outcomes["rolled_back"] == 4


def test_a_max_duration_shorter_than_the_time_to_pass_is_warned_about() -> None:
    # minSamples 30 of scored traces take about 8 minutes at 12 canary traces a minute
    result = run(small_policy(first_min="0s", first_max="3m"))
    assert result.steps[0].passed < result.steps[0].reached
    assert any(
        w.startswith("step 1: maxDuration 3m is shorter than the median time to pass")
        for w in result.warnings
    )
    assert "runs by metric not yet shown within tolerance at their last look: " in next(
        w for w in result.warnings if w.startswith("step 1: maxDuration")
    )
    assert result.equal.outcomes["paused"] >= 4  # onMaxDuration: pause
    relaxed = run(small_policy(first_min="0s", first_max="1h"))
    assert not any("shorter than the median time" in w for w in relaxed.warnings)


def test_score_timeout_holding_the_first_step_past_its_min_duration_is_warned_about() -> None:
    result = run(small_policy(score_timeout="30m", first_max="2h"), runs=2)
    assert any(
        w.startswith("step 1: scoreTimeout 30m and minSamples 30 hold the step for at least")
        and "longer than its minDuration 5m" in w
        for w in result.warnings
    )
    assert not any(w.startswith("step 2: scoreTimeout") for w in result.warnings)


def test_traffic_too_low_for_min_samples_within_max_duration_is_warned_about() -> None:
    # 2.4 and 6 traces a minute in the smaller arm: 83 and 33 minutes for 200 of them
    result = run(small_policy(min_samples=200, first_max="30m", last_max="30m"), 12.0, runs=2)
    low = [w for w in result.warnings if "traffic too low" in w]
    assert [w.split(":")[0] for w in low] == ["step 1", "step 2"]
    assert "minSamples 200 per arm within maxDuration 30m" in low[0]
    enough = run(small_policy(min_samples=200, first_max="30m", last_max="30m"), 600.0, runs=1)
    assert not any("traffic too low" in w for w in enough.warnings)


def test_no_scores_never_promotes_a_score_metric() -> None:
    result = run(small_policy(first_max="20m"), runs=2, scores_per_trace=0.0)
    assert result.equal.outcomes["promoted"] == 0
    assert result.equal.time_to_promote.median is None
    assert any("never" in w for w in result.warnings if "traffic too low" in w)


def test_the_same_seed_gives_the_same_plan_and_another_seed_another() -> None:
    policy = small_policy()
    first = run(policy, runs=2, seed=5)
    again = run(policy, runs=2, seed=5)
    other = run(policy, runs=2, seed=6)
    assert first == again
    assert first.equal != other.equal or first.regressions != other.regressions


def test_regressions_of_unknown_metrics_and_impossible_canaries_are_refused() -> None:
    policy = small_policy()
    with pytest.raises(ValueError, match=r"regression latency: no such metric in plan-test"):
        run(policy, regressions={"latency": 10.0})
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        run(policy, regressions={"errors": 1.5})
    with pytest.raises(ValueError, match=r"canary mean of -0\.15 is outside the score range"):
        run(policy, regressions={"helpfulness": 0.9})
    with pytest.raises(ValueError, match="traffic"):
        run(policy, traffic=0.0)


def test_default_regressions_are_tolerance_plus_effect() -> None:
    extra = """\
    - {name: cost, source: cost, tolerancePercent: 10, effectSize: 5}
    - {name: latency, source: latency, tolerance: 250}
    - {name: p95, source: latency, tolerancePercent: 20}
    - {name: tone, source: score, score: tone, scoreType: categorical, badValues: [rude], tolerance: 0.02}
    - {name: stars, source: score, score: stars, range: {min: 1, max: 5}, tolerance: 0.2}
"""  # noqa: E501
    metrics = {m.name: m for m in small_policy(metrics=extra).analysis.metrics}
    assert default_regression(metrics["helpfulness"]) == pytest.approx(0.2)
    assert default_regression(metrics["errors"]) == pytest.approx(0.07)  # judge default 0.02
    assert default_regression(metrics["cost"]) == pytest.approx(15.0)
    assert default_regression(metrics["latency"]) == pytest.approx(500.0)
    assert default_regression(metrics["p95"]) == pytest.approx(40.0)
    assert default_regression(metrics["tone"]) == pytest.approx(0.07)
    assert default_regression(metrics["stars"]) == pytest.approx(0.4)  # 0.05 of the range


def test_a_degraded_arm_is_worse_on_its_metric_only() -> None:
    extra = """\
    - {name: tone, source: score, score: tone, scoreType: categorical, badValues: [ok-0, rude], tolerance: 0.02}
    - {name: slow, source: latency, tolerance: 250}
"""  # noqa: E501
    policy = small_policy(metrics=extra)
    metrics = {m.name: m for m in policy.analysis.metrics}
    base = baseline_model(policy)
    tone = next(s for s in base.scores if s.name == "tone")
    assert tone.kind is ScoreType.CATEGORICAL
    assert tone.bad == "ok-0"
    assert tone.good not in ("ok-0", "rude")
    worse = degraded(base, metrics["helpfulness"], 0.2)
    assert worse.scores[0].level == pytest.approx(base.scores[0].level - 0.2)
    assert worse.scores[1] == base.scores[1]
    assert worse.error_rate == base.error_rate
    assert degraded(base, metrics["slow"], 250).latency_shift_ms == 250
    rng = random.Random(1)
    draws = [worse.scores[0].draw(rng) for _ in range(4000)]
    assert sum(float(d) for d in draws) / len(draws) == pytest.approx(0.55, abs=0.02)


def test_spread_is_the_nearest_rank_and_none_past_the_runs_that_got_there() -> None:
    assert Spread.of([3.0, 1.0, 2.0, 4.0]) == Spread(median=2.0, p90=4.0)
    assert Spread.of([1.0, 2.0, math.inf, math.inf]) == Spread(median=2.0, p90=None)
    assert Spread.of([1.0, math.inf, math.inf]) == Spread(median=None, p90=None)
    assert Spread.of([]) == Spread(median=None, p90=None)


def test_a_trace_error_rate_metric_is_planned_as_the_errors_the_traces_carry() -> None:
    extra = "    - {name: app-errors, source: trace_error_rate, tolerance: 0.02, critical: true}\n"
    policy = small_policy(metrics=extra)
    metrics = {m.name: m for m in policy.analysis.metrics}
    assert default_regression(metrics["app-errors"]) == pytest.approx(0.04)  # judge default
    assert baseline_description(metrics["app-errors"]) == "1% of requests fail"
    base = baseline_model(policy)
    assert degraded(base, metrics["app-errors"], 0.1).error_rate == pytest.approx(
        base.error_rate + 0.1
    )
    planned = regression(
        run(policy, traffic=120.0, runs=4, regressions={"app-errors": 0.15}), "app-errors"
    )
    assert planned.expected == "rolled_back"
    assert planned.outcomes["rolled_back"] == 4


def test_the_rungs_before_the_steps_are_said_not_simulated_with_the_least_shadow_time() -> None:
    ladder = small_policy().model_copy(
        update={
            "dataset": load_policy_text(
                """\
apiVersion: coalmine/v1
kind: Release
name: plan-test
target: {prompt: {name: plan-test}}
steps: [{weight: 20}]
dataset:
  name: golden
  metric: {score: helpfulness}
  evaluator: {langfuse: true}
shadow:
  upstream: http://staging:8080
  percent: 10
  gate: {metric: {score: helpfulness}, minPairs: 60, maxDuration: 20m}
analysis:
  metrics: [{name: errors, source: error_rate, tolerance: 0.05}]
""",
                "ladder.yaml",
            ).dataset
        }
    )
    notes = [w for w in run(ladder, runs=1).warnings if "rung" in w]
    assert notes == [
        "dataset rung: not simulated; before the steps, dataset 'golden' runs through both "
        "arms and waits up to scoreTimeout 15m for its scores (at least 30 items scored on "
        "both arms to pass)"
    ]
    shadowed = load_policy_text(
        """\
apiVersion: coalmine/v1
kind: Release
name: plan-test
target: {prompt: {name: plan-test}}
steps: [{weight: 20, minDuration: 5m, maxDuration: 1h}]
shadow:
  upstream: http://staging:8080
  percent: 10
  gate: {metric: {score: helpfulness}, minPairs: 60, maxDuration: 20m}
analysis:
  metrics: [{name: errors, source: error_rate, tolerance: 0.05}]
""",
        "ladder.yaml",
    )
    # 60 requests a minute, 10% mirrored, 99% scored: 60 pairs in about 10.1 minutes
    (note,) = [w for w in run(shadowed, runs=1).warnings if "rung" in w]
    assert note == (
        "shadow rung: not simulated; at 10% mirrored, 60 scored pairs take at least 10m "
        "before the steps"
    )
    (slow,) = [w for w in run(shadowed, 12.0, runs=1).warnings if "rung" in w]
    assert slow.endswith(
        "take at least 51m before the steps; more than its maxDuration 20m: it ends inconclusive"
    )


def test_a_ladder_is_planned_from_its_canary_steps_as_without_its_rungs() -> None:
    plain = small_policy()
    dataset = load_policy_text(
        """\
apiVersion: coalmine/v1
kind: Release
name: plan-test
target: {prompt: {name: plan-test}}
steps: [{weight: 20}]
dataset: {name: golden, metric: {score: helpfulness}, evaluator: {langfuse: true}}
analysis:
  metrics: [{name: errors, source: error_rate, tolerance: 0.05}]
""",
        "ladder.yaml",
    ).dataset
    ladder = plain.model_copy(update={"dataset": dataset})
    with_rungs, without = run(ladder, runs=4), run(plain, runs=4)
    assert with_rungs.equal == without.equal
    assert without.equal.outcomes.get("promoted", 0) > 0
    assert with_rungs.steps == without.steps
