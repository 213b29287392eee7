"""The dataset gate's verdict from the items' sides, without any I/O."""

from __future__ import annotations

import json
from typing import Any

from controller.ladder.verdict import GateOutcome, ItemRecord, Side, decide, evidence
from policies.model import DatasetGate

CONTEXT = {"dataset": "golden-qa", "attempt": 1}


def _gate(**metric: Any) -> DatasetGate:
    return DatasetGate.model_validate(
        {
            "name": "golden-qa",
            "metric": {"score": "correctness", "tolerance": 0.05, **metric},
            "evaluator": {"langfuse": True},
            "minPairs": 10,
        }
    )


def _item(number: int, candidate: float | None, baseline: float | None) -> ItemRecord:
    """A pair; None on a side is a failed call."""

    def side(value: float | None) -> Side:
        if value is None:
            return Side(ran=True, failure="HTTP 503")
        return Side(ran=True, value=value)

    return ItemRecord(f"item-{number}", baseline=side(baseline), candidate=side(candidate))


def test_fewer_pairs_than_min_pairs_is_inconclusive_and_says_how_many() -> None:
    items = [_item(n, 1.0, 1.0) for n in range(8)]
    items.append(ItemRecord("item-8", skipped="no input"))
    result = decide(_gate(), items, 0, CONTEXT)
    assert result.outcome is GateOutcome.INCONCLUSIVE
    assert result.reason == "dataset golden-qa: 8 pairs of 9 items (1 unscored), need 10"
    assert result.summary["unscored"]["reasons"] == {"no input": 1}


def test_a_block_quotes_the_bound_on_the_worse_side() -> None:
    items = [_item(n, 0.0 if n % 2 else 1.0, 1.0) for n in range(40)]
    result = decide(_gate(), items, 0, CONTEXT)
    assert result.outcome is GateOutcome.BLOCKED
    upper = result.summary["upper"]
    assert f"(95% bound {upper:+.3g}): worse by more than tolerance 0.05" in result.reason


def test_a_lower_is_better_score_blocks_above_its_min_score_threshold() -> None:
    gate = _gate(direction="lower", minScore=0.3)
    items = [_item(n, 0.4, 0.4) for n in range(40)]
    result = decide(gate, items, 0, CONTEXT)
    assert result.outcome is GateOutcome.BLOCKED
    assert result.reason == (
        "dataset golden-qa: candidate mean 0.4 over 40 pairs is above minScore 0.3"
    )
    assert decide(_gate(direction="lower"), items, 0, CONTEXT).outcome is GateOutcome.PASSED


def test_a_failed_baseline_call_takes_the_worst_value_too() -> None:
    items = [_item(n, 1.0, None if n < 4 else 1.0) for n in range(40)]
    summary = decide(_gate(), items, 0, CONTEXT).summary
    assert (summary["baselineFailed"], summary["baselineMean"]) == (4, 0.9)
    assert summary["bothFailed"] == 0


def test_sides_without_a_score_make_the_item_unscored_never_a_pair() -> None:
    items = [_item(n, 1.0, 1.0) for n in range(30)]
    items.append(
        ItemRecord(
            "item-x",
            baseline=Side(ran=True, value=1.0),
            candidate=Side(ran=True, unscored="no judge score within scoreTimeout"),
        )
    )
    result = decide(_gate(), items, 0, CONTEXT)
    assert result.summary["pairs"] == 30
    assert result.summary["unscored"]["itemIds"] == ["item-x"]
    assert result.summary["unscored"]["reasons"] == {
        "candidate: no judge score within scoreTimeout": 1
    }


def test_the_evidence_is_plain_json() -> None:
    items = [_item(n, 1.0, 1.0) for n in range(3)]
    for summary in (evidence(_gate(), items, 2, CONTEXT), evidence(_gate(), [], 0, CONTEXT)):
        assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert evidence(_gate(), [], 0, CONTEXT)["estimate"] is None


def test_the_unscored_ids_listed_are_capped() -> None:
    items = [ItemRecord(f"item-{n}", skipped="no input") for n in range(30)]
    unscored = evidence(_gate(), items, 0, CONTEXT)["unscored"]
    assert unscored["count"] == 30
    assert len(unscored["itemIds"]) == 20
