"""A checkpoint gives back the evidence exactly: judged on from a checkpoint written to
JSON and read again, a release gets the same judgements, bit for bit."""

from __future__ import annotations

import json

from controller.judge import Evidence, StepStatus, judge
from controller.judge.checkpoint import restore, snapshot
from tests.judge.judge_support import HELPFULNESS, make_policy
from tests.judge.test_closed_cells import (
    INTERVAL,
    START,
    STEP_1_MINUTE,
    seeded_stream,
    stream_policy,
)

MINUTES = 150
CHECKPOINTS = (3, 40, STEP_1_MINUTE, 120)


def through_json(evidence: Evidence) -> Evidence:
    restored = restore(evidence.policy, json.loads(json.dumps(snapshot(evidence))))
    assert restored is not None
    return restored


def test_a_release_judged_on_from_checkpoints_is_judged_the_same() -> None:
    policy = stream_policy()
    straight = Evidence(policy, START)
    resumed = Evidence(policy, START)
    step = StepStatus(0, START)
    looks = 0
    for minute, arrived in enumerate(seeded_stream(11, MINUTES)):
        now = START + (minute + 1) * INTERVAL
        if minute in CHECKPOINTS:
            resumed = through_json(resumed)
            assert snapshot(resumed) == snapshot(straight)
        if minute == STEP_1_MINUTE:
            for evidence in (straight, resumed):
                evidence.open_step(1, now - INTERVAL)
            step = StepStatus(1, now - INTERVAL)
        for evidence in (straight, resumed):
            for trace in arrived.traces:
                evidence.add_trace(trace)
            for trace_id, value, at in arrived.scores:
                evidence.add_scores(trace_id, {"helpfulness": value}, at)
            evidence.advance(now, scores_read_until=now - 30.0)
        assert judge(policy, resumed, step, now) == judge(policy, straight, step, now)
        looks += 1
    assert looks == MINUTES
    assert resumed.late_traces == straight.late_traces > 0
    assert resumed.closed_blocks == straight.closed_blocks > 0


def test_a_checkpoint_of_other_metrics_is_not_restored() -> None:
    evidence = Evidence(stream_policy(), START)
    assert restore(make_policy(metrics=[HELPFULNESS]), snapshot(evidence)) is None
    assert restore(stream_policy(), {**snapshot(evidence), "format": 0}) is None
