"""The judgements kept for the dashboard: a ring of bounded length and size that gives
back every figure the charts draw."""

from __future__ import annotations

import dataclasses
import math
import tracemalloc

import pytest

from controller.evidence_log import JudgementRing
from controller.judge import Judgement, judge_samples
from controller.loop import JUDGEMENTS_KEPT
from tests.judge.judge_support import (
    BAD_SCORES,
    COST,
    ERRORS,
    HELPFULNESS,
    LATENCY,
    ArmScript,
    make_policy,
    scripted_traces,
)


def a_judgement(at: float) -> Judgement:
    policy = make_policy(metrics=[HELPFULNESS, ERRORS, COST, LATENCY])
    traces = scripted_traces(5, ArmScript(), ArmScript(scores=BAD_SCORES))
    return dataclasses.replace(judge_samples(policy, traces, 300.0, started_at=0.0), at=at)


def test_the_ring_keeps_the_latest_and_the_newest_whole() -> None:
    ring = JudgementRing(3)
    looks = [a_judgement(300.0 + i) for i in range(5)]
    for look in looks:
        ring.append(look)
    kept = ring.judgements()
    assert len(ring) == len(kept) == 3
    assert [look.at for look in kept] == [302.0, 303.0, 304.0]
    assert kept[-1] is looks[-1]
    for packed, whole in zip(kept[:-1], looks[2:4], strict=True):
        assert (packed.step, packed.decision) == (whole.step, whole.decision)
        for p, w in zip(packed.metrics, whole.metrics, strict=True):
            assert (p.name, p.source, p.critical, p.scale, p.verdict) == (
                w.name,
                w.source,
                w.critical,
                w.scale,
                w.verdict,
            )
            assert (p.estimate, p.lower, p.upper) == (w.estimate, w.lower, w.upper)
            assert (p.log_evalue, p.log_threshold) == (w.log_evalue, w.log_threshold)
            assert (p.n_baseline, p.n_canary) == (w.n_baseline, w.n_canary)


def test_a_missing_figure_comes_back_missing() -> None:
    ring = JudgementRing(2)
    look = a_judgement(1.0)
    empty = dataclasses.replace(
        look,
        metrics=tuple(dataclasses.replace(m, estimate=None, upper=math.inf) for m in look.metrics),
    )
    ring.append(empty)
    ring.append(a_judgement(2.0))
    packed = ring.judgements()[0]
    assert all(m.estimate is None and m.upper == math.inf for m in packed.metrics)


def test_a_ring_refuses_to_hold_nothing() -> None:
    with pytest.raises(ValueError, match="at least one"):
        JudgementRing(0)


def test_a_full_ring_holds_a_few_hundred_bytes_a_judgement() -> None:
    looks = [a_judgement(float(i)) for i in range(50)]
    tracemalloc.start()
    try:
        ring = JudgementRing(JUDGEMENTS_KEPT)
        before = tracemalloc.get_traced_memory()[0]
        for i in range(JUDGEMENTS_KEPT + 500):
            ring.append(dataclasses.replace(looks[i % 50], at=float(i)))
        size = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(ring) == JUDGEMENTS_KEPT
    # four metrics: the looks themselves, without the newest whole one (shared here)
    assert size < JUDGEMENTS_KEPT * 600
