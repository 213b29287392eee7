"""The judge: a pure function of (policy, samples, now). No I/O, no clock reads.

Use ``Evidence`` to gather traces and late scores as they come, ``judge`` to look at
them, or ``judge_samples`` to do both at once from a list.
"""

from __future__ import annotations

from collections.abc import Iterable

from controller.judge.decide import judge
from controller.judge.evidence import Evidence
from controller.judge.model import (
    CheckResult,
    CheckState,
    Decision,
    Judgement,
    MetricResult,
    Scale,
    ScoreValue,
    StepStatus,
    Trace,
    Verdict,
)
from controller.judge.paired import PairedResult, PairedSettings, PairedSums, paired_test
from controller.judge.shadow_pairs import (
    RungJudgement,
    RungOutcome,
    ShadowPairs,
    judge_shadow,
    paired_settings,
)
from policies.model import Policy

__all__ = [
    "CheckResult",
    "CheckState",
    "Decision",
    "Evidence",
    "Judgement",
    "MetricResult",
    "PairedResult",
    "PairedSettings",
    "PairedSums",
    "RungJudgement",
    "RungOutcome",
    "Scale",
    "ScoreValue",
    "ShadowPairs",
    "StepStatus",
    "Trace",
    "Verdict",
    "judge",
    "judge_samples",
    "judge_shadow",
    "paired_settings",
    "paired_test",
]


def judge_samples(
    policy: Policy,
    traces: Iterable[Trace],
    now: float,
    *,
    started_at: float,
    step_starts: Iterable[float] = (),
    late_scores: Iterable[tuple[str, dict[str, ScoreValue], float]] = (),
) -> Judgement:
    """Judge a release from plain samples: traces (with the scores they arrived with),
    late scores as ``(trace_id, scores, arrived_at)``, and when each later step began.

    Samples later than ``now`` are not visible, exactly as they would not be to a
    controller looking at ``now``.
    """
    evidence = Evidence(policy, started_at)
    starts = list(step_starts)
    for index, at in enumerate(starts, start=1):
        evidence.open_step(index, at)
    for trace in sorted(traces, key=lambda t: t.ts):
        if trace.ts <= now:
            evidence.add_trace(trace)
    for trace_id, scores, arrived in sorted(late_scores, key=lambda s: s[2]):
        if arrived <= now:
            evidence.add_scores(trace_id, scores, arrived)
    evidence.advance(now)
    step = StepStatus(index=len(starts), started_at=starts[-1] if starts else started_at)
    return judge(policy, evidence, step, now)
