"""The dataset gate's verdict from what each arm did with each item.

Each item has a side per arm: the call failed (the side takes the worst value of the
score's range in the paired test), it has a score, or it ended without one (the
evaluator failed, the judge never answered or answered out of range). An item whose two
sides both count (scored or failed) is a pair; any other item is *unscored* and
reported by id, never dropped silently.

- **blocked**: the paired test shows the candidate worse than the baseline by more
  than the tolerance, or the candidate's mean over the pairs misses the metric's
  ``minScore`` (below it, or above it for a lower-is-better score);
- **passed**: the test shows the candidate within the promotion margin, and the items
  without information (unscored, or failed on both arms: two worst values say nothing
  about the candidate) are at most ``maxUnscored`` of the dataset;
- **inconclusive** otherwise: fewer than ``minPairs`` pairs, too many items without
  information, or the test undecided. Never a pass on missing data.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from controller.judge.model import Verdict
from controller.judge.paired import (
    PairedResult,
    PairedSettings,
    PairedSums,
    paired_settings,
    paired_test,
)
from policies.model import DatasetGate

__all__ = [
    "GateOutcome",
    "GateResult",
    "ItemRecord",
    "Side",
    "decide",
    "evidence",
    "paired_settings",
]

LISTED_IDS: Final = 20
"""Unscored item ids listed in the evidence at most."""


class GateOutcome(StrEnum):
    PASSED = "passed"
    BLOCKED = "blocked"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class GateResult:
    """A dataset run's state: its outcome (None while it runs), one line of reason for
    status and the decision log, and the evidence as JSON-able values."""

    outcome: GateOutcome | None
    reason: str
    summary: dict[str, Any]


@dataclass(slots=True)
class Side:
    """One arm's answer to one item."""

    ran: bool = False
    failure: str | None = None
    """Why the call failed: the side counts as the worst value."""
    value: float | None = None
    """The score."""
    unscored: str | None = None
    """Why the answer has no score, in a few words (counted by reason)."""
    detail: str | None = None
    """The longer story of a missing score (an evaluator's exception)."""

    def take(self, value: object, settings: PairedSettings, label: str) -> bool:
        """Take a score; False, and the side unscored, for one that is not a number in
        the score's range (a bool counts 1 for true)."""
        if isinstance(value, bool | int | float) and settings.valid(float(value)):
            self.value, self.unscored = float(value), None
            return True
        self.unscored = "score outside the range"
        if isinstance(value, bool | int | float):
            self.detail = f"{label}: score {value!r} outside {settings.low:g}..{settings.high:g}"
        else:
            self.detail = f"{label}: score {value!r} is not a number"
        return False

    @property
    def counts(self) -> bool:
        """Whether the side has its place in a pair: scored, or its call failed."""
        return self.failure is not None or self.value is not None


@dataclass(slots=True)
class ItemRecord:
    """One dataset item's run on both arms."""

    item_id: str
    baseline: Side = field(default_factory=Side)
    candidate: Side = field(default_factory=Side)
    skipped: str | None = None
    """Why the item was not sent at all (it has no input)."""

    def reasons(self) -> list[str]:
        """Why the item is not a pair (empty when it is one)."""
        if self.skipped is not None:
            return [self.skipped]
        return [
            f"{arm}: {side.unscored or 'not run'}"
            for arm, side in (("baseline", self.baseline), ("candidate", self.candidate))
            if not side.counts
        ]


@dataclass(frozen=True, slots=True)
class _Tally:
    sums: PairedSums
    candidate_total: float
    baseline_total: float
    both_failed: int
    unscored: tuple[ItemRecord, ...]


def _tally(items: Sequence[ItemRecord], settings: PairedSettings) -> _Tally:
    sums = PairedSums()
    candidate_total = baseline_total = 0.0
    both_failed = 0
    unscored: list[ItemRecord] = []
    for item in items:
        if item.reasons():
            unscored.append(item)
            continue
        c, b = item.candidate, item.baseline
        sums = sums.add(c.value, b.value, settings)
        candidate_total += settings.worst if c.value is None else c.value
        baseline_total += settings.worst if b.value is None else b.value
        both_failed += c.failure is not None and b.failure is not None
    return _Tally(sums, candidate_total, baseline_total, both_failed, tuple(unscored))


def evidence(
    gate: DatasetGate, items: Sequence[ItemRecord], refused: int, context: Mapping[str, Any]
) -> dict[str, Any]:
    """The run's evidence so far (see ``GateResult.summary``)."""
    settings = paired_settings(gate)
    tally = _tally(items, settings)
    result = paired_test(tally.sums, settings)
    return _summary(items, refused, context, tally, result)


def _summary(
    items: Sequence[ItemRecord],
    refused: int,
    context: Mapping[str, Any],
    tally: _Tally,
    result: PairedResult,
) -> dict[str, Any]:
    pairs = tally.sums.pairs
    reasons = Counter(reason for item in tally.unscored for reason in item.reasons())
    details = [
        side.detail
        for item in tally.unscored
        for side in (item.baseline, item.candidate)
        if side.detail is not None
    ]
    return {
        **context,
        "items": len(items),
        "pairs": pairs,
        "candidateMean": tally.candidate_total / pairs if pairs else None,
        "baselineMean": tally.baseline_total / pairs if pairs else None,
        "estimate": result.estimate,
        "lower": result.lower,
        "upper": result.upper,
        "candidateFailed": tally.sums.candidate_failed,
        "baselineFailed": tally.sums.baseline_failed,
        "bothFailed": tally.both_failed,
        "unscored": {
            "count": len(tally.unscored),
            "itemIds": [item.item_id for item in tally.unscored[:LISTED_IDS]],
            "reasons": dict(sorted(reasons.items())),
            "firstDetail": details[0] if details else None,
        },
        "refused": refused,
    }


def decide(
    gate: DatasetGate, items: Sequence[ItemRecord], refused: int, context: Mapping[str, Any]
) -> GateResult:
    """The verdict once every item ran and the scores are in (or will not come)."""
    settings = paired_settings(gate)
    tally = _tally(items, settings)
    result = paired_test(tally.sums, settings)
    summary = _summary(items, refused, context, tally, result)
    head = f"dataset {gate.name}: "
    pairs = tally.sums.pairs
    unscored = len(tally.unscored)
    if pairs < gate.min_pairs:
        left = f" ({unscored} unscored)" if unscored else ""
        return GateResult(
            GateOutcome.INCONCLUSIVE,
            f"{head}{pairs} pairs of {len(items)} items{left}, need {gate.min_pairs}",
            summary,
        )
    assert result.estimate is not None and result.lower is not None and result.upper is not None
    higher = settings.higher_is_better
    worse_bound, pass_bound = (
        (result.upper, result.lower) if higher else (result.lower, result.upper)
    )
    level = f"{(1.0 - gate.alpha) * 100:g}%"

    def stated(bound: float) -> str:
        return (
            f"{head}{pairs} pairs, candidate - baseline = {result.estimate:+.3g} "
            f"({level} bound {bound:+.3g})"
        )

    if result.verdict is Verdict.FAIL:
        return GateResult(
            GateOutcome.BLOCKED,
            f"{stated(worse_bound)}: worse by more than tolerance {settings.tolerance:g}",
            summary,
        )
    floor = gate.metric.min_score
    mean = tally.candidate_total / pairs
    if floor is not None and (mean < floor if higher else mean > floor):
        side = "below" if higher else "above"
        return GateResult(
            GateOutcome.BLOCKED,
            f"{head}candidate mean {mean:.3g} over {pairs} pairs is {side} minScore {floor:g}",
            summary,
        )
    margin = settings.promote_margin
    if result.verdict is Verdict.PASS:
        missing = unscored + tally.both_failed
        if missing > gate.max_unscored * len(items):
            return GateResult(
                GateOutcome.INCONCLUSIVE,
                f"{stated(pass_bound)}: within {margin:g}, but {missing} of {len(items)} items "
                f"are unscored or failed on both arms (maxUnscored {gate.max_unscored:g})",
                summary,
            )
        return GateResult(
            GateOutcome.PASSED,
            f"{stated(pass_bound)}: within promote tolerance {margin:g}",
            summary,
        )
    return GateResult(
        GateOutcome.INCONCLUSIVE,
        f"{stated(pass_bound)}: not shown within {margin:g} nor worse beyond tolerance "
        f"{settings.tolerance:g}",
        summary,
    )
