"""Closed cells: the evidence of a release judged for hours holds a bounded number of
cells and per-trace records, and dropping closed cells changes no judgement, bit for bit."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from controller.judge import Evidence, Judgement, StepStatus, Trace, judge
from controller.judge.evidence import ERROR_BLOCKS_KEPT
from policies import Policy
from policies.domain import Arm
from tests.judge.judge_support import COST, ERRORS, HELPFULNESS, LATENCY, make_policy

START = 5000.0
INTERVAL = 60.0
TIMEOUT = 300.0
SETTLE = 20.0
PER_MINUTE = 40
HOURS = 6
STEP_1_MINUTE = 90  # the second step opens an hour and a half in


def stream_policy() -> Policy:
    return make_policy(
        metrics=[HELPFULNESS, ERRORS, COST, LATENCY],
        steps=[
            "{weight: 20, minDuration: 10h, maxDuration: 20h}",
            "{weight: 50, minDuration: 10h, maxDuration: 20h}",
        ],
        scoreTimeout=f"{TIMEOUT:g}s",
        scoreSettle=f"{SETTLE:g}s",
        minSamples=30,
    )


@dataclass(frozen=True)
class Minute:
    """What arrives in one minute: traces (some of them late), then late scores."""

    traces: list[Trace]
    scores: list[tuple[str, float, float]]  # trace id, value, arrived at


def seeded_stream(seed: int, minutes: int) -> Iterator[Minute]:
    """A release whose canary is a little worse, with scores arriving up to twice the
    score timeout late or never, and a few traces that arrive long after they started."""
    rng = random.Random(seed)
    waiting: list[tuple[float, str, float]] = []
    counter = 0
    for minute in range(minutes):
        begin = START + minute * INTERVAL
        traces: list[Trace] = []
        for _ in range(PER_MINUTE):
            counter += 1
            canary = rng.random() < (0.2 if minute < STEP_1_MINUTE else 0.5)
            ts = begin + rng.random() * INTERVAL
            if rng.random() < 0.01:  # read again hours later (a source catching up)
                ts -= rng.choice((INTERVAL, 3 * TIMEOUT, 3 * 3600.0))
            error = rng.random() < (0.04 if canary else 0.03)
            trace_id = f"t{counter}"
            traces.append(
                Trace(
                    trace_id,
                    Arm.CANARY if canary else Arm.BASELINE,
                    ts,
                    error=error,
                    latency_ms=rng.lognormvariate(5.0, 0.5),
                    cost_usd=rng.choice((0.0, rng.lognormvariate(-7.0, 0.4))),
                )
            )
            if not error and rng.random() < 0.9:
                value = min(1.0, max(0.0, rng.gauss(0.78 if canary else 0.8, 0.15)))
                waiting.append(
                    (ts + rng.expovariate(1 / 90.0) * rng.choice((1, 1, 8)), trace_id, value)
                )
        end = begin + INTERVAL
        due = [item for item in waiting if item[0] <= end]
        waiting = [item for item in waiting if item[0] > end]
        yield Minute(traces, [(trace_id, value, at) for at, trace_id, value in sorted(due)])


def judged(keep_closed_cells: bool, minutes: int) -> tuple[list[Judgement], Evidence]:
    policy = stream_policy()
    evidence = Evidence(policy, START, keep_closed_cells=keep_closed_cells)
    step = StepStatus(0, START)
    looks: list[Judgement] = []
    for minute, arrived in enumerate(seeded_stream(7, minutes)):
        now = START + (minute + 1) * INTERVAL
        if minute == STEP_1_MINUTE:
            evidence.open_step(1, now - INTERVAL)
            step = StepStatus(1, now - INTERVAL)
        for trace in arrived.traces:
            evidence.add_trace(trace)
        for trace_id, value, at in arrived.scores:
            evidence.add_scores(trace_id, {"helpfulness": value}, at)
        # scores read up to a little before now, as a poll leaves them
        evidence.advance(now, scores_read_until=now - 30.0)
        looks.append(judge(policy, evidence, step, now))
    return looks, evidence


@pytest.fixture(scope="module")
def both() -> tuple[tuple[list[Judgement], Evidence], tuple[list[Judgement], Evidence]]:
    minutes = HOURS * 60
    return judged(False, minutes), judged(True, minutes)


def test_dropping_closed_cells_changes_no_judgement_bit_for_bit(
    both: tuple[tuple[list[Judgement], Evidence], tuple[list[Judgement], Evidence]],
) -> None:
    (dropped, _), (kept, _) = both
    assert len(dropped) == len(kept) == HOURS * 60
    for at_drop, at_keep in zip(dropped, kept, strict=True):
        # dataclass equality compares every float with ==: e-values, estimates, bounds
        assert at_drop == at_keep
        assert [m.log_evalue for m in at_drop.metrics] == [m.log_evalue for m in at_keep.metrics]
        assert [c.log_evalue for c in at_drop.checks] == [c.log_evalue for c in at_keep.checks]


def test_the_stream_reaches_real_evidence_and_late_traces(
    both: tuple[tuple[list[Judgement], Evidence], tuple[list[Judgement], Evidence]],
) -> None:
    (looks, dropped), (_, kept) = both
    last = looks[-1]
    assert all(m.n_canary > 1000 for m in last.metrics)
    assert any(c.log_evalue != 0.0 for c in last.checks if c.name.startswith("coverage:"))
    assert len({m.log_evalue for look in looks for m in look.metrics}) > 100
    # traces read after their block closed are refused alike, dropped cells or not
    assert dropped.late_traces == kept.late_traces > 0
    means = kept.series["helpfulness"].means
    assert means is not None and len(means.cells) > HOURS * 60 - 10


def test_cells_records_and_error_blocks_stay_bounded(
    both: tuple[tuple[list[Judgement], Evidence], tuple[list[Judgement], Evidence]],
) -> None:
    (_, evidence), _ = both
    # open: blocks younger than 2 x scoreTimeout + scoreSettle, plus the ones a trace with
    # a score still due holds; two steps at most per block
    window_blocks = (2 * TIMEOUT + SETTLE) / INTERVAL + 2
    for series in evidence.series.values():
        for means in (series.means, series.coverage):
            if means is not None:
                assert len(means.cells) <= 2 * (window_blocks + 8), series.metric.name
    assert len(evidence._traces) <= PER_MINUTE * (window_blocks + 8)
    assert len(evidence.block_errors) <= ERROR_BLOCKS_KEPT + 2
    assert evidence.forgotten_traces > PER_MINUTE * 60 * (HOURS - 1)


def test_a_batch_for_a_closed_cell_is_refused() -> None:
    evidence = Evidence(make_policy(metrics=[HELPFULNESS], scoreTimeout="60s"), 0.0)
    evidence.add_batch("helpfulness", (0, 0), Arm.CANARY, (1, 0.5, 0.25))
    evidence.advance(600.0)
    assert evidence.closed_blocks == 8  # blocks that ended 120 s or more before 600 s
    with pytest.raises(ValueError, match="closed"):
        evidence.add_batch("helpfulness", (0, 3), Arm.CANARY, (1, 0.5, 0.25))
    with pytest.raises(ValueError, match="closed"):
        evidence.add_coverage("helpfulness", (0, 3), Arm.CANARY, 1, 0)
    evidence.add_batch("helpfulness", (0, 8), Arm.CANARY, (1, 0.5, 0.25))


def test_a_block_holding_a_trace_with_a_score_due_stays_open() -> None:
    evidence = Evidence(make_policy(metrics=[HELPFULNESS], scoreTimeout="60s"), 0.0)
    evidence.add_trace(Trace("c", Arm.CANARY, 10.0))
    evidence.add_scores("c", {"helpfulness": 0.7}, 900.0)
    evidence.advance(800.0)
    assert evidence.closed_blocks == 0
    evidence.advance(900.0)
    means = evidence.series["helpfulness"].means
    assert means is not None and means.totals == (0, 1)
    assert evidence.closed_blocks == 13
    assert not means.cells
