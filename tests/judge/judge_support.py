"""Small builders shared by the judge tests: policies from YAML, traces, scripted releases."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from controller.judge import Judgement, MetricResult, ScoreValue, Trace, judge_samples
from policies import Policy, load_policy_text
from policies.domain import Arm

HELPFULNESS = (
    "{name: helpfulness, source: score, score: helpfulness, tolerance: 0.05, critical: true}"
)
ERRORS = "{name: errors, source: error_rate, tolerance: 0.05, critical: true}"
COST = "{name: cost, source: cost, tolerancePercent: 10}"
LATENCY = "{name: latency, source: latency, quantile: 0.95, tolerancePercent: 20}"

# Spread-out score values (means 0.8 and 0.2): a scripted arm cycles through one of them.
GOOD_SCORES = (0.6, 0.7, 0.8, 0.9, 1.0)
BAD_SCORES = (0.0, 0.1, 0.2, 0.3, 0.4)


def make_policy(
    metrics: Sequence[str] = (HELPFULNESS,),
    steps: Sequence[str] = ("{weight: 50, minDuration: 5m, maxDuration: 60m}",),
    **analysis: object,
) -> Policy:
    """A policy from metric and step flow mappings plus camelCase analysis settings."""
    settings = {"interval": "60s", "alpha": 0.05, "minSamples": 30, "scoreTimeout": "120s"}
    settings.update(analysis)
    lines = [
        "apiVersion: coalmine/v1",
        "kind: Release",
        "name: t",
        "target: {prompt: {name: t}}",
        "steps:",
        *(f"  - {step}" for step in steps),
        "analysis:",
        *(f"  {key}: {value}" for key, value in settings.items()),
        "  metrics:",
        *(f"    - {metric}" for metric in metrics),
    ]
    return load_policy_text("\n".join(lines) + "\n", "t.yaml")


@dataclass
class ArmScript:
    """How one arm of a scripted release behaves: its traces per minute and their data."""

    per_minute: int = 20
    scores: Sequence[float | None] | None = GOOD_SCORES  # None: never scored
    latency_ms: Sequence[float] = (100.0, 120.0, 140.0, 160.0, 180.0)
    cost_usd: Sequence[float] = (0.001, 0.002, 0.003, 0.004)
    error_every: int = 0  # every k-th trace errors; 0: none
    extra: dict[str, Sequence[ScoreValue]] = field(default_factory=dict)


def scripted_traces(
    minutes: int,
    baseline: ArmScript,
    canary: ArmScript,
    *,
    start: float = 0.0,
    score_name: str = "helpfulness",
) -> list[Trace]:
    """Traces spread evenly over each minute, scores attached at the trace's start."""
    traces: list[Trace] = []
    for minute in range(minutes):
        for arm, script in ((Arm.BASELINE, baseline), (Arm.CANARY, canary)):
            for i in range(script.per_minute):
                k = minute * script.per_minute + i
                ts = start + minute * 60.0 + (i + 0.5) * 60.0 / script.per_minute
                error = script.error_every > 0 and k % script.error_every == 0
                scores: dict[str, ScoreValue] = {}
                if script.scores is not None and not error:
                    value = script.scores[k % len(script.scores)]
                    if value is not None:
                        scores[score_name] = value
                for name, values in script.extra.items():
                    scores[name] = values[k % len(values)]
                traces.append(
                    Trace(
                        trace_id=f"{arm.value[0]}-{k}",
                        arm=arm,
                        ts=ts,
                        error=error,
                        latency_ms=script.latency_ms[k % len(script.latency_ms)],
                        cost_usd=script.cost_usd[k % len(script.cost_usd)],
                        scores=scores,
                    )
                )
    return traces


def judge_release(
    policy: Policy,
    traces: Iterable[Trace],
    now: float,
    *,
    started_at: float = 0.0,
    step_starts: Iterable[float] = (),
    late_scores: Iterable[tuple[str, dict[str, ScoreValue], float]] = (),
) -> Judgement:
    return judge_samples(
        policy,
        traces,
        now,
        started_at=started_at,
        step_starts=step_starts,
        late_scores=late_scores,
    )


def metric(judgement: Judgement, name: str) -> MetricResult:
    """The result of one metric in a judgement."""
    for result in judgement.metrics:
        if result.name == name:
            return result
    raise KeyError(name)
