"""A checkpoint gives back the evidence exactly: judged on from a checkpoint written to
JSON and read again, a release gets the same judgements, bit for bit."""

from __future__ import annotations

import json

import pytest

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


def _evidence_midway(minutes: int = 40) -> Evidence:
    evidence = Evidence(stream_policy(), START)
    for minute, arrived in enumerate(seeded_stream(5, minutes)):
        now = START + (minute + 1) * INTERVAL
        for trace in arrived.traces:
            evidence.add_trace(trace)
        for trace_id, value, at in arrived.scores:
            evidence.add_scores(trace_id, {"helpfulness": value}, at)
        evidence.advance(now, scores_read_until=now - 30.0)
    return evidence


def test_a_checkpoint_of_the_first_format_is_restored_the_same() -> None:
    """Format 1 wrote a JSON list a trace record and a pending entry; a checkpoint
    written before the packed columns is still read, to the same evidence."""
    evidence = _evidence_midway()
    infos = evidence._traces.values()
    assert {info.scored is None for info in infos} == {True, False}
    assert {item[4] is None for item in evidence._pending} == {True, False}
    # a record kept past its horizon for a score still pending: rare in a stream
    next(iter(infos)).expired = True
    first = {
        **snapshot(evidence),
        "format": 1,
        "traces": [
            [
                trace_id,
                info.arm.value,
                info.ts,
                info.cell[0],
                info.cell[1],
                info.error,
                info.scored,
                info.pending,
                info.expired,
            ]
            for trace_id, info in evidence._traces.items()
        ],
        "pending": [list(item) for item in evidence._pending],
    }
    restored = restore(evidence.policy, json.loads(json.dumps(first)))
    assert restored is not None
    assert snapshot(restored) == snapshot(evidence)
    assert restored._traces == evidence._traces
    assert restored._pending == evidence._pending


def test_a_checkpoint_with_columns_of_unequal_length_is_refused() -> None:
    document = json.loads(json.dumps(snapshot(_evidence_midway())))
    document["traces"]["ids"].pop()
    with pytest.raises(ValueError, match="trace columns"):
        restore(stream_policy(), document)
    document = json.loads(json.dumps(snapshot(_evidence_midway())))
    document["pending"]["checks"] += "v"
    with pytest.raises(ValueError, match="pending columns"):
        restore(stream_policy(), document)
