"""The shadow rung's pairs and verdict on known data: each case a table of literal
numbers (the primary's score, the copy's score, or what went wrong on a side) and the
outcome, pair count, estimate and counts it must give.

The estimates are plain arithmetic on the table (the mean of copy minus primary, a
failed side taking the range's worst value); the verdicts come from the paired test
(``tests/judge/test_paired.py`` pins its bounds).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from controller.judge import (
    PairedSums,
    RungOutcome,
    ScoreValue,
    ShadowPairs,
    judge_shadow,
    paired_settings,
)
from policies.domain import Arm
from policies.model import ShadowGate

SCORE = "helpfulness"
START = 1_000.0
TIMEOUT = 300.0
HOUR = 3_600.0
GATE = ShadowGate.model_validate(
    {"metric": {"score": SCORE, "tolerance": 0.05}, "minPairs": 30, "maxDuration": "1h"}
)
QUARTET = (0.9, 0.8, 0.7, 0.6)  # baseline answers, mean 0.75


class Fails:
    """What went wrong on one side."""

    ERROR = "error"  # the trace has error=True (its score, if any, does not count)
    NEVER = "never"  # no score ever comes


Side = ScoreValue | None  # a score; None: the side's trace is absent (no copy: unmirrored)


def gate(**metric: Any) -> ShadowGate:
    spec: dict[str, Any] = {"score": SCORE, "tolerance": 0.05, **metric}
    return ShadowGate.model_validate({"metric": spec, "minPairs": 30, "maxDuration": "1h"})


def fresh(shadow_gate: ShadowGate = GATE) -> ShadowPairs:
    return ShadowPairs(shadow_gate, started_at=START, score_timeout=TIMEOUT)


def primary_id(index: int) -> str:
    return f"{index:032x}"


def copy_id(index: int) -> str:
    return f"{index + 1_000_000:032x}"


def feed(pairs: ShadowPairs, rows: Sequence[tuple[Side, Side]], *, first: int = 0) -> None:
    """One request per row, a second apart from ``START + 10``: the primary's score and
    the copy's (``None`` copy: not mirrored), each scored 30 s after its trace."""
    for offset, (baseline, candidate) in enumerate(rows):
        index = first + offset
        ts = START + 10.0 + index
        _side(pairs, primary_id(index), Arm.BASELINE, ts, baseline, None)
        if candidate is not None:
            _side(pairs, copy_id(index), Arm.SHADOW, ts, candidate, primary_id(index))


def _side(
    pairs: ShadowPairs, trace: str, arm: Arm, ts: float, value: Side, shadow_of: str | None
) -> None:
    pairs.add_trace(trace, arm, ts, value == Fails.ERROR, shadow_of)
    if value is not None and value not in (Fails.ERROR, Fails.NEVER):
        pairs.add_score(trace, SCORE, value, ts + 30.0)


def minus(rows: Sequence[float], delta: float) -> list[tuple[Side, Side]]:
    return [(value, round(value - delta, 10)) for value in rows]


@dataclass(frozen=True)
class Case:
    rows: Sequence[tuple[Side, Side]]
    outcome: RungOutcome
    pairs: int
    estimate: float | None
    counts: dict[str, int]
    shadow_gate: ShadowGate = GATE
    looked_at: float = START + HOUR / 2  # every deadline of the rows has passed


CASES: dict[str, Case] = {
    "40 pairs, every copy 0.3 worse: blocked": Case(
        rows=minus(QUARTET * 10, 0.3),
        outcome=RungOutcome.BLOCKED,
        pairs=40,
        estimate=-0.3,
        counts={"copies_failed": 0, "unmirrored": 0},
    ),
    "40 equal pairs: passed": Case(
        rows=[(value, value) for value in QUARTET * 10],
        outcome=RungOutcome.PASSED,
        pairs=40,
        estimate=0.0,
        counts={"copies_failed": 0, "primaries_failed": 0},
    ),
    "40 pairs, 0.01 worse, within tolerance 0.05: passed": Case(
        rows=minus(QUARTET * 10, 0.01),
        outcome=RungOutcome.PASSED,
        pairs=40,
        estimate=-0.01,
        counts={},
    ),
    "every copy errors, its score not counted: worst value, blocked": Case(
        rows=[(value, Fails.ERROR) for value in QUARTET * 10],
        outcome=RungOutcome.BLOCKED,
        pairs=40,
        estimate=-0.75,
        counts={"copies_failed": 40, "primaries_failed": 0},
    ),
    "copies' scores never come: failed at the timeout, blocked": Case(
        rows=[(value, Fails.NEVER) for value in QUARTET * 10],
        outcome=RungOutcome.BLOCKED,
        pairs=40,
        estimate=-0.75,
        counts={"copies_failed": 40},
    ),
    "failures on both sides alike cancel: passed": Case(
        rows=[(0.8, 0.8)] * 30 + [(Fails.ERROR, Fails.ERROR)] * 5 + [(Fails.NEVER, 0.0)] * 5,
        outcome=RungOutcome.PASSED,
        pairs=40,
        estimate=0.0,
        counts={"copies_failed": 5, "primaries_failed": 10},
    ),
    "boolean scores, true counts 1: 40 pairs, 20 flipped to false: blocked": Case(
        rows=[(True, True)] * 20 + [(True, False)] * 20,
        outcome=RungOutcome.BLOCKED,
        pairs=40,
        estimate=-0.5,
        counts={"invalid": 0},
    ),
    "29 equal pairs, one short of minPairs: never passed": Case(
        rows=[(value, value) for value in QUARTET * 7] + [(0.5, 0.5)],
        outcome=RungOutcome.CONTINUE,
        pairs=29,
        estimate=0.0,
        counts={},
    ),
    "29 pairs far worse, one short of minPairs: not blocked either": Case(
        rows=[(1.0, 0.0)] * 29,
        outcome=RungOutcome.CONTINUE,
        pairs=29,
        estimate=-1.0,
        counts={},
    ),
    "10 pairs at maxDuration: inconclusive": Case(
        rows=[(value, value) for value in QUARTET * 2] + [(0.5, 0.5)] * 2,
        outcome=RungOutcome.INCONCLUSIVE,
        pairs=10,
        estimate=0.0,
        counts={},
        looked_at=START + HOUR,
    ),
    "40 equal pairs at maxDuration: passed, not inconclusive": Case(
        rows=[(value, value) for value in QUARTET * 10],
        outcome=RungOutcome.PASSED,
        pairs=40,
        estimate=0.0,
        counts={},
        looked_at=START + HOUR,
    ),
    "unmirrored answers are counted apart from the pairs": Case(
        rows=[(value, value) for value in QUARTET * 10] + [(0.7, None)] * 20,
        outcome=RungOutcome.PASSED,
        pairs=40,
        estimate=0.0,
        counts={"unmirrored": 20},
    ),
    "lower is better: copies 0.3 higher: blocked": Case(
        rows=[(value, round(value + 0.3, 10)) for value in (0.1, 0.2, 0.3, 0.4) * 10],
        outcome=RungOutcome.BLOCKED,
        pairs=40,
        estimate=0.3,
        counts={},
        shadow_gate=gate(direction="lower"),
    ),
    "lower is better: copies erroring take the range's top: blocked": Case(
        rows=[(value, Fails.ERROR) for value in (0.1, 0.2, 0.3, 0.4) * 10],
        outcome=RungOutcome.BLOCKED,
        pairs=40,
        estimate=0.75,
        counts={"copies_failed": 40},
        shadow_gate=gate(direction="lower"),
    ),
    "a 0..10 range: copies 3 worse: blocked": Case(
        rows=[(value, value - 3) for value in (9, 8, 7, 6) * 10],
        outcome=RungOutcome.BLOCKED,
        pairs=40,
        estimate=-3.0,
        counts={},
        shadow_gate=gate(range={"min": 0, "max": 10}, tolerance=0.5),
    ),
    "equal pairs below minScore: blocked": Case(
        rows=[(0.5, 0.5)] * 30,
        outcome=RungOutcome.BLOCKED,
        pairs=30,
        estimate=0.0,
        counts={},
        shadow_gate=gate(min_score=0.6),
    ),
    "equal pairs below minScore, short of minPairs: no block yet": Case(
        rows=[(0.5, 0.5)] * 29,
        outcome=RungOutcome.CONTINUE,
        pairs=29,
        estimate=0.0,
        counts={},
        shadow_gate=gate(min_score=0.6),
    ),
    "equal pairs above minScore: passed": Case(
        rows=[(0.7, 0.7)] * 40,
        outcome=RungOutcome.PASSED,
        pairs=40,
        estimate=0.0,
        counts={},
        shadow_gate=gate(min_score=0.6),
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_known_rows_give_known_outcomes(case: Case) -> None:
    pairs = fresh(case.shadow_gate)
    feed(pairs, case.rows)
    pairs.advance(case.looked_at)
    judged = judge_shadow(case.shadow_gate, pairs, since=START, now=case.looked_at)
    assert judged.outcome is case.outcome, judged.reason
    assert pairs.sums.pairs == case.pairs
    assert judged.summary["pairs"] == case.pairs
    if case.estimate is None:
        assert judged.summary["estimate"] is None
    else:
        assert judged.summary["estimate"] == pytest.approx(case.estimate, abs=1e-12)
    counts = pairs.counts()
    for name, expected in case.counts.items():
        assert counts[name] == expected, name
    assert counts["waiting"] == 0
    assert judged.summary["ready"] is (case.pairs >= case.shadow_gate.min_pairs)
    assert "\n" not in judged.reason
    assert f"{case.pairs} pairs" in judged.reason
    assert f"tolerance {case.shadow_gate.metric.tolerance:.4g}" in judged.reason
    json.dumps(judged.summary, allow_nan=False)


def test_the_reason_and_summary_carry_the_numbers() -> None:
    pairs = fresh()
    feed(pairs, minus(QUARTET * 10, 0.3))
    pairs.advance(START + HOUR / 2)
    judged = judge_shadow(GATE, pairs, since=START, now=START + HOUR / 2)
    summary = judged.summary
    assert judged.reason.startswith("candidate worse than the baseline beyond tolerance: ")
    assert "helpfulness: 40 pairs (need 30), difference -0.3 (candidate - baseline) bounds [" in (
        judged.reason
    )
    assert summary["candidateMean"] == pytest.approx(0.45)
    assert summary["baselineMean"] == pytest.approx(0.75)
    assert summary["lower"] < -0.3 < summary["upper"] < -0.05
    assert summary["verdict"] == "fail"
    assert summary["elapsed"] == HOUR / 2
    assert {"copiesFailed", "primariesFailed", "unmirrored", "orphanCopies", "invalid"} <= set(
        summary
    )
    assert summary["duplicates"] == 0 and summary["waiting"] == 0


# --------------------------------------------------------------------------- timing


def test_scores_not_come_yet_wait_then_fail_at_the_timeout() -> None:
    pairs = fresh()
    feed(pairs, [(value, Fails.NEVER) for value in QUARTET * 10])
    last_deadline = START + 10.0 + 39 + TIMEOUT
    pairs.advance(last_deadline - 1.0)
    assert pairs.sums.pairs == 39  # the last pair's copy still has a second
    assert pairs.counts()["waiting"] == 2
    verdict = judge_shadow(GATE, pairs, since=START, now=last_deadline - 1.0)
    assert verdict.outcome is RungOutcome.BLOCKED  # 39 pairs of worst copies already
    pairs.advance(last_deadline)
    assert (pairs.sums.pairs, pairs.sums.candidate_failed) == (40, 40)
    assert pairs.counts()["waiting"] == 0


def test_a_side_is_not_failed_while_its_scores_are_unread() -> None:
    pairs = fresh()
    feed(pairs, [(0.8, Fails.NEVER)])
    deadline = START + 10.0 + TIMEOUT
    pairs.advance(deadline + 600.0, scores_read_until=deadline - 1.0)
    assert pairs.sums.pairs == 0 and pairs.counts()["waiting"] == 2
    pairs.add_score(copy_id(0), SCORE, 0.8, deadline - 5.0)  # read late, made in time
    pairs.advance(deadline + 700.0, scores_read_until=deadline + 700.0)
    assert (pairs.sums.pairs, pairs.sums.sum_d, pairs.sums.candidate_failed) == (1, 0.0, 0)


def test_a_primary_is_unmirrored_only_once_traces_are_read_past_its_deadline() -> None:
    pairs = fresh()
    feed(pairs, [(0.8, None)])
    deadline = START + 10.0 + TIMEOUT
    pairs.advance(deadline + 600.0, traces_read_until=deadline - 1.0)
    assert pairs.sums.unmirrored == 0
    # the copy comes in the read that catches up: a pair, not an unmirrored answer
    pairs.add_trace(copy_id(0), Arm.SHADOW, START + 10.0, False, primary_id(0))
    pairs.add_score(copy_id(0), SCORE, 0.6, START + 40.0)
    pairs.advance(deadline + 700.0)
    assert (pairs.sums.pairs, pairs.sums.unmirrored) == (1, 0)
    assert pairs.sums.sum_d == pytest.approx(-0.2)


def test_a_score_made_after_the_timeout_does_not_count() -> None:
    pairs = fresh()
    pairs.add_trace(primary_id(0), Arm.BASELINE, START + 10.0, False, None)
    pairs.add_trace(copy_id(0), Arm.SHADOW, START + 10.0, False, primary_id(0))
    pairs.add_score(primary_id(0), SCORE, 0.9, START + 20.0)
    pairs.add_score(copy_id(0), SCORE, 0.9, START + 10.0 + TIMEOUT + 1.0)
    pairs.advance(START + 10.0 + TIMEOUT + 60.0)
    assert (pairs.sums.pairs, pairs.sums.candidate_failed) == (1, 1)
    assert pairs.counts()["late_scores"] == 1


def test_a_complete_pair_counts_before_its_deadline() -> None:
    pairs = fresh()
    feed(pairs, [(0.9, 0.7)])
    pairs.advance(START + 41.0)  # both scored at +30 s
    assert pairs.sums.pairs == 1 and pairs.sums.sum_d == pytest.approx(-0.2)
    feed(pairs, [(0.9, None)], first=1)
    pairs.advance(START + 60.0)  # a primary alone waits for its copy until its deadline
    assert pairs.sums.unmirrored == 0 and pairs.counts()["waiting"] == 1


# --------------------------------------------------------------------------- arrival order


def test_a_copy_read_before_its_primary_waits_for_it() -> None:
    pairs = fresh()
    pairs.add_trace(copy_id(0), Arm.SHADOW, START + 10.0, False, primary_id(0))
    pairs.add_score(copy_id(0), SCORE, 0.6, START + 40.0)
    pairs.advance(START + 100.0)
    assert pairs.counts()["waiting"] == 1
    pairs.add_trace(primary_id(0), Arm.BASELINE, START + 10.0, False, None)
    pairs.add_score(primary_id(0), SCORE, 0.8, START + 40.0)
    pairs.advance(START + 101.0)
    assert pairs.sums.pairs == 1 and pairs.sums.sum_d == pytest.approx(-0.2)
    assert pairs.counts()["orphan_copies"] == 0


def test_a_score_read_before_its_trace_is_kept_for_it() -> None:
    pairs = fresh()
    pairs.add_score(primary_id(0), SCORE, 0.9, START + 40.0)
    pairs.add_score(copy_id(0), SCORE, 0.4, START + 40.0)
    pairs.advance(START + 100.0)
    pairs.add_trace(copy_id(0), Arm.SHADOW, START + 10.0, False, primary_id(0))
    pairs.add_trace(primary_id(0), Arm.BASELINE, START + 10.0, False, None)
    pairs.advance(START + 101.0)
    assert pairs.sums.pairs == 1 and pairs.sums.sum_d == pytest.approx(-0.5)


def test_a_score_whose_trace_never_comes_is_an_orphan() -> None:
    pairs = fresh()
    pairs.add_score("f" * 32, SCORE, 0.9, START + 40.0)
    pairs.advance(START + 40.0 + TIMEOUT)
    assert pairs.counts()["orphan_scores"] == 1
    assert pairs.to_document()["early"] == []


def test_copies_without_a_primary_are_orphans() -> None:
    pairs = fresh()
    pairs.add_trace(copy_id(0), Arm.SHADOW, START + 10.0, False, primary_id(0))  # never comes
    pairs.add_trace(copy_id(1), Arm.SHADOW, START + 10.0, False, None)  # names none
    feed(pairs, [(0.8, 0.8)], first=2)
    pairs.add_trace(copy_id(3), Arm.SHADOW, START + 12.0, False, primary_id(2))  # a second
    pairs.advance(START + 10.0 + TIMEOUT - 1.0)
    assert pairs.counts()["orphan_copies"] == 2
    pairs.advance(START + 10.0 + TIMEOUT)
    counts = pairs.counts()
    assert (counts["orphan_copies"], counts["pairs"], counts["waiting"]) == (3, 1, 0)
    # a copy of a primary already counted as unmirrored comes too late to pair
    feed(pairs, [(0.8, None)], first=4)
    pairs.advance(START + 14.0 + TIMEOUT)
    pairs.add_trace(copy_id(4), Arm.SHADOW, START + 14.0, False, primary_id(4))
    counts = pairs.counts()
    assert (counts["orphan_copies"], counts["unmirrored"], counts["waiting"]) == (4, 1, 0)


def test_duplicates_are_counted_not_added_twice() -> None:
    pairs = fresh()
    feed(pairs, [(0.9, 0.5)])
    feed(pairs, [(0.1, 0.1)])  # the same traces and scores again, other values
    pairs.advance(START + 50.0)
    feed(pairs, [(0.9, 0.5)])  # again after the pair was added
    pairs.advance(START + 60.0)
    assert pairs.sums.pairs == 1 and pairs.sums.sum_d == pytest.approx(-0.4)
    assert pairs.counts()["duplicates"] == 6  # 2 traces, 2 scores, then 2 traces
    assert pairs.counts()["late_scores"] == 2  # scores of a decided pair


def test_the_sums_do_not_depend_on_arrival_order() -> None:
    rows: list[tuple[Side, Side]] = [(0.1 * (i % 10), 0.07 * (i % 13)) for i in range(60)]
    forward, backward = fresh(), fresh()
    feed(forward, rows)
    for index in reversed(range(len(rows))):
        feed(backward, [rows[index]], first=index)
    forward.advance(START + HOUR)
    backward.advance(START + HOUR)
    assert forward.sums == backward.sums


def test_traces_before_the_rung_and_canary_traces_are_left_out() -> None:
    pairs = fresh()
    pairs.add_trace(primary_id(0), Arm.BASELINE, START - 0.5, False, None)
    pairs.add_trace(copy_id(0), Arm.SHADOW, START - 0.5, False, primary_id(0))
    pairs.add_trace(primary_id(1), Arm.CANARY, START + 1.0, False, None)
    pairs.advance(START + HOUR)
    counts = pairs.counts()
    assert (counts["pairs"], counts["unmirrored"], counts["waiting"]) == (0, 0, 0)
    assert counts["orphan_copies"] == 0


# --------------------------------------------------------------------------- values

INVALID: list[ScoreValue] = [1.5, -0.1, math.nan, math.inf, "good", "0.5"]


@pytest.mark.parametrize("value", INVALID, ids=[repr(value) for value in INVALID])
def test_a_value_outside_the_range_is_invalid_and_the_side_waits(value: ScoreValue) -> None:
    pairs = fresh()
    pairs.add_trace(primary_id(0), Arm.BASELINE, START + 10.0, False, None)
    pairs.add_trace(copy_id(0), Arm.SHADOW, START + 10.0, False, primary_id(0))
    pairs.add_score(primary_id(0), SCORE, 0.8, START + 20.0)
    pairs.add_score(copy_id(0), SCORE, value, START + 20.0)
    pairs.advance(START + 100.0)
    assert pairs.counts()["invalid"] == 1 and pairs.sums.pairs == 0
    pairs.advance(START + 10.0 + TIMEOUT)  # nothing valid came: the copy failed
    assert (pairs.sums.pairs, pairs.sums.candidate_failed, pairs.sums.invalid) == (1, 1, 0)


def test_a_valid_score_after_an_invalid_one_counts() -> None:
    pairs = fresh()
    feed(pairs, [(0.8, 7.0)])
    pairs.add_score(copy_id(0), SCORE, 0.8, START + 60.0)
    pairs.advance(START + 61.0)
    assert (pairs.sums.pairs, pairs.sums.sum_d, pairs.counts()["invalid"]) == (1, 0.0, 1)


BOOLEANS: list[tuple[ScoreValue, float]] = [
    (True, 1.0),
    (False, 0.0),
    (1, 1.0),
    (0.0, 0.0),
    ("true", 1.0),
    ("False", 0.0),
]


@pytest.mark.parametrize(("value", "counted"), BOOLEANS, ids=[repr(v) for v, _ in BOOLEANS])
def test_boolean_scores_count_one_for_true(value: ScoreValue, counted: float) -> None:
    pairs = fresh()
    feed(pairs, [(0.5, value)])
    pairs.advance(START + 50.0)
    assert pairs.sums.sum_d == pytest.approx(counted - 0.5)


def test_other_score_names_are_ignored() -> None:
    pairs = fresh()
    feed(pairs, [(0.5, Fails.NEVER)])
    pairs.add_score(copy_id(0), "toxicity", 0.9, START + 30.0)
    pairs.add_score(copy_id(0), "toxicity", "bad", START + 30.0)
    pairs.advance(START + 100.0)
    assert pairs.sums.pairs == 0 and pairs.counts()["invalid"] == 0


# --------------------------------------------------------------------------- documents


def busy_pairs() -> ShadowPairs:
    """Pairs with something in every part: decided pairs, unmirrored answers, waiting
    primaries and copies, early scores, failures, counters."""
    pairs = fresh()
    feed(pairs, [(0.1 * (i % 10), 0.07 * (i % 13)) for i in range(20)])
    feed(pairs, [(0.3, None), (Fails.ERROR, 0.2), (0.4, Fails.NEVER)], first=20)
    pairs.advance(START + 10.0 + TIMEOUT + 21.0)
    feed(pairs, [(0.9, 0.1), (0.5, None)], first=40)
    pairs.add_trace(copy_id(50), Arm.SHADOW, START + 60.0, False, primary_id(50))
    pairs.add_score("e" * 32, SCORE, 0.25, START + 70.0)
    pairs.add_score(copy_id(40), SCORE, 2.0, START + 70.0)
    feed(pairs, [(0.9, 0.1)], first=40)
    return pairs


def test_the_document_round_trip_is_exact() -> None:
    pairs = busy_pairs()
    document = pairs.to_document()
    assert document["primaries"] and document["copies"] and document["early"]
    assert document["done"] and document["sums"]["pairs"] and document["sums"]["unmirrored"]
    text = json.dumps(document, allow_nan=False)
    again = ShadowPairs.from_document(GATE, json.loads(text))
    assert again.to_document() == document
    assert json.dumps(again.to_document(), allow_nan=False) == text
    assert again.counts() == pairs.counts()
    # and they go on alike
    for held in (pairs, again):
        held.add_trace(primary_id(50), Arm.BASELINE, START + 60.0, False, None)
        held.add_score(primary_id(50), SCORE, 0.5, START + 80.0)
        held.advance(START + HOUR)
    assert again.to_document() == pairs.to_document()
    assert again.sums == pairs.sums


BROKEN: dict[str, Any] = {
    "wrong version": {"version": 2},
    "sums missing a key": {"sums": {"pairs": 1}},
    "counters missing": {"counters": {}},
    "a non-number time": {"startedAt": "soon"},
    "a copy filed under no primary": {
        "copies": [["c" * 32, START, False, None, None]],
    },
    "a row too short": {"primaries": [["a" * 32, START]]},
}


@pytest.mark.parametrize("change", BROKEN.values(), ids=list(BROKEN))
def test_a_broken_document_is_refused(change: dict[str, Any]) -> None:
    document = {**fresh().to_document(), **change}
    with pytest.raises(ValueError, match=r"^not a shadow pairs document: "):
        ShadowPairs.from_document(GATE, document)


def test_the_gate_gives_the_paired_settings() -> None:
    settings = paired_settings(
        gate(
            range={"min": 1, "max": 5},
            direction="lower",
            tolerance=0.2,
            promote_tolerance=0.1,
            effect_size=0.3,
        )
    )
    assert (settings.low, settings.high, settings.higher_is_better) == (1.0, 5.0, False)
    assert (settings.tolerance, settings.promote_tolerance, settings.effect) == (0.2, 0.1, 0.3)
    assert (settings.alpha, settings.min_pairs, settings.worst) == (0.05, 30, 5.0)


# --------------------------------------------------------------------------- error rates

NEUTRAL_RUNS = 500
PAIRS_PER_RUN = 200
LOOK_EVERY = 10


def neutral_run(rng: random.Random, shift: float = 0.0) -> bool:
    """One rung on requests of random difficulty; each side scores its request's
    difficulty plus noise (the candidate ``shift`` more), clipped to 0..1, and one in 20
    calls fails on either side. True when any look blocked."""
    pairs = fresh()
    for index in range(PAIRS_PER_RUN):
        difficulty = rng.random()
        ts = START + index
        sides = (
            (primary_id(index), Arm.BASELINE, None, 0.0),
            (copy_id(index), Arm.SHADOW, primary_id(index), shift),
        )
        for trace, arm, shadow_of, delta in sides:
            error = rng.random() < 0.05
            pairs.add_trace(trace, arm, ts, error, shadow_of)
            value = min(1.0, max(0.0, difficulty + delta + rng.gauss(0.0, 0.15)))
            pairs.add_score(trace, SCORE, value, ts + 5.0)
        if (index + 1) % LOOK_EVERY == 0:
            now = ts + 6.0
            pairs.advance(now)
            if judge_shadow(GATE, pairs, since=START, now=now).outcome is RungOutcome.BLOCKED:
                return True
    return False


ERROR_RATE_RUNS = {  # (shift of the candidate, runs, seed)
    "no difference": (0.0, NEUTRAL_RUNS, 20260101),
    "worse by exactly the tolerance": (-GATE.metric.tolerance, 300, 20260103),
}


@pytest.mark.parametrize(
    ("shift", "runs", "seed"), ERROR_RATE_RUNS.values(), ids=list(ERROR_RATE_RUNS)
)
def test_a_candidate_within_tolerance_is_blocked_at_most_alpha_of_the_time(
    shift: float, runs: int, seed: int
) -> None:
    """However often it is looked at (every 10 pairs here), with failures on both sides."""
    rng = random.Random(seed)
    blocked = sum(neutral_run(rng, shift) for _ in range(runs))
    assert blocked / runs <= GATE.alpha


def test_a_candidate_0_2_worse_is_blocked_in_nearly_every_run() -> None:
    rng = random.Random(20260102)
    blocked = sum(neutral_run(rng, shift=-0.2) for _ in range(50))
    assert blocked >= 48


def test_the_sums_are_paired_sums() -> None:
    assert isinstance(fresh().sums, PairedSums)
