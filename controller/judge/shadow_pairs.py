"""The shadow rung's pairs: each mirrored copy's score against its primary's.

While a rollout stands at the shadow rung every user is served by the baseline, and the
proxy mirrors a share of the requests to the candidate. A primary (a baseline trace)
and its copy (a shadow trace whose ``shadow_of`` is the primary's trace id) answered the
same request; the evaluators score both with the gate's metric. ``ShadowPairs`` gathers
the traces and scores as the source delivers them, in any order, and turns them into
the running sums of ``controller.judge.paired``; ``judge_shadow`` reads the rung's
verdict from those sums with the anytime-valid paired test.

When a side counts (``T`` is the analysis' ``scoreTimeout``):

* A side whose trace has ``error`` failed, whatever its score.
* A score counts when it was created at most ``T`` after its trace started; a side
  still without one then failed. A failed side takes the worst value of the range
  (``PairedSums.add``), so a candidate that fails more than the baseline looks worse.
* A score that is not a number of the metric's range (BOOLEAN counts 1 for true) is
  counted in ``invalid`` and left out: the side waits for another score, and fails at
  ``T`` like any unscored side, so an answer the evaluator cannot score is not dropped.
* A pair is added once both sides have a score or failed. A primary with no copy ``T``
  after it started was not mirrored: its value (the worst when it failed, as in the
  pairs) is an unmirrored baseline answer, the control variate of the paired test.
* A copy whose primary has not come ``T`` after it started is an orphan, left out; so is
  a copy with no primary named, one of a primary already counted as unmirrored, and a
  second copy of one primary.

``advance`` decides only on what has been read: a side times out once its deadline is
before ``scores_read_until`` and a primary is unmirrored, or a copy an orphan, once its
deadline is before ``traces_read_until`` (both default to ``now``), so a Langfuse that
could not be read for a while makes no side fail. A record is forgotten ``2 T`` after
its trace started, so memory holds what a few timeouts of traffic bring, however long
the rung runs; the same trace added again within that time is counted as a duplicate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from controller.judge.model import ScoreValue, Verdict
from controller.judge.paired import (
    PairedResult,
    PairedSums,
    paired_settings,
    paired_test,
)
from policies.domain import Arm
from policies.durations import format_duration
from policies.model import Direction, ShadowGate

__all__ = [
    "RungJudgement",
    "RungOutcome",
    "ShadowPairs",
    "judge_shadow",
    "paired_settings",
]

DOCUMENT_VERSION: Final = 1
FORGET_AFTER_TIMEOUTS: Final = 2.0
"""A decided trace is remembered (to catch duplicates) this many score timeouts after
it started."""

_COUNTERS: Final = (
    "orphan_copies",
    "invalid",
    "duplicates",
    "late_scores",
    "orphan_scores",
)


@dataclass(slots=True)
class _Trace:
    """One side: when its trace started, whether it failed, its score, its other side
    (a primary's copy once known; a copy's primary, always)."""

    ts: float
    error: bool
    value: float | None = None
    link: str | None = None

    def settled(self, scores_by: float, timeout: float) -> bool:
        return self.error or self.value is not None or self.ts + timeout <= scores_by

    @property
    def outcome(self) -> float | None:
        """The side's value for the sums: None when it failed."""
        return None if self.error else self.value


class ShadowPairs:
    """The pairs of one shadow rung: primaries (baseline traces) and copies (shadow
    traces, ``shadow_of`` = primary) with their scores of the gate's metric.

    A pure accumulator: no I/O, no clock. ``started_at`` is when the rung started
    (earlier traces are left out), ``score_timeout`` how long after its trace a score
    may come (the analysis' ``scoreTimeout``).
    """

    def __init__(self, gate: ShadowGate, *, started_at: float, score_timeout: float) -> None:
        if not (math.isfinite(score_timeout) and score_timeout > 0):
            raise ValueError(f"score_timeout must be a positive number, got {score_timeout}")
        self.gate = gate
        self.settings = paired_settings(gate)
        self.started_at = float(started_at)
        self.score_timeout = float(score_timeout)
        self._sums = PairedSums()
        self._primaries: dict[str, _Trace] = {}
        self._copies: dict[str, _Trace] = {}
        self._waiting: dict[str, str] = {}
        """Primary id -> the copy that waits for it."""
        self._done: dict[str, float] = {}
        """Decided trace id -> its start: a duplicate is caught, a late score counted."""
        self._early: dict[str, tuple[float, float]] = {}
        """Trace id -> (value, created) of a score read before its trace."""
        self._counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)

    # -- samples ---------------------------------------------------------------------

    def add_trace(
        self, trace_id: str, arm: Arm, ts: float, error: bool, shadow_of: str | None
    ) -> None:
        """A trace of the release; only baseline (primary) and shadow (copy) traces
        that started at or after ``started_at`` count."""
        if ts < self.started_at or arm is Arm.CANARY:
            return
        if self._known(trace_id):
            self._counters["duplicates"] += 1
            return
        trace = _Trace(ts=float(ts), error=bool(error))
        if arm is Arm.BASELINE:
            self._primaries[trace_id] = trace
            copy_id = self._waiting.pop(trace_id, None)
            if copy_id is not None:
                trace.link = copy_id
        elif not self._add_copy(trace_id, trace, shadow_of):
            return
        early = self._early.pop(trace_id, None)
        if early is not None:
            self._score(trace, *early)

    def _add_copy(self, trace_id: str, trace: _Trace, shadow_of: str | None) -> bool:
        """File a copy under its primary; False (an orphan) when it cannot be paired."""
        primary = None if shadow_of is None else self._primaries.get(shadow_of)
        if (
            not shadow_of
            or shadow_of in self._done
            or shadow_of in self._waiting
            or (primary is not None and primary.link is not None)
        ):
            self._counters["orphan_copies"] += 1
            self._done[trace_id] = trace.ts
            self._early.pop(trace_id, None)
            return False
        trace.link = shadow_of
        self._copies[trace_id] = trace
        if primary is None:
            self._waiting[shadow_of] = trace_id
        else:
            primary.link = trace_id
        return True

    def add_score(self, trace_id: str, name: str, value: ScoreValue, at: float) -> None:
        """A score created at ``at``; only the gate's metric counts."""
        if name != self.gate.metric.score:
            return
        number = self._number(value)
        if number is None:
            self._counters["invalid"] += 1
            return
        trace = self._primaries.get(trace_id) or self._copies.get(trace_id)
        if trace is not None:
            self._score(trace, number, float(at))
        elif trace_id in self._done:
            self._counters["late_scores"] += 1
        elif trace_id in self._early:
            self._counters["duplicates"] += 1
        else:
            self._early[trace_id] = (number, float(at))

    def _score(self, trace: _Trace, value: float, at: float) -> None:
        if trace.value is not None:
            self._counters["duplicates"] += 1
        elif at > trace.ts + self.score_timeout:
            self._counters["late_scores"] += 1
        else:
            trace.value = value

    def _number(self, value: ScoreValue) -> float | None:
        """The score as a number of the metric's range, or None."""
        if isinstance(value, bool):
            number = 1.0 if value else 0.0
        elif isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str) and value.strip().lower() in ("true", "false"):
            number = 1.0 if value.strip().lower() == "true" else 0.0
        else:
            return None
        return number if self.settings.valid(number) else None

    def _known(self, trace_id: str) -> bool:
        return trace_id in self._primaries or trace_id in self._copies or trace_id in self._done

    # -- time ------------------------------------------------------------------------

    def advance(
        self,
        now: float,
        *,
        scores_read_until: float | None = None,
        traces_read_until: float | None = None,
    ) -> None:
        """Add the pairs and unmirrored answers decided at ``now`` to the sums, in the
        order their primaries started (so the sums do not depend on arrival order)."""
        timeout = self.score_timeout
        scores_by = now if scores_read_until is None else min(now, scores_read_until)
        traces_by = now if traces_read_until is None else min(now, traces_read_until)
        decided: list[tuple[float, str]] = []
        for primary_id, primary in self._primaries.items():
            if not primary.settled(scores_by, timeout):
                continue
            if primary.link is None:
                if primary.ts + timeout <= traces_by:
                    decided.append((primary.ts, primary_id))
            elif self._copies[primary.link].settled(scores_by, timeout):
                decided.append((primary.ts, primary_id))
        for _, primary_id in sorted(decided):
            self._decide(primary_id)
        orphans = [
            (primary_id, copy_id)
            for primary_id, copy_id in self._waiting.items()
            if self._copies[copy_id].ts + timeout <= traces_by
        ]
        for primary_id, copy_id in orphans:
            del self._waiting[primary_id]
            self._done[copy_id] = self._copies.pop(copy_id).ts
        self._counters["orphan_copies"] += len(orphans)
        self._forget(now, traces_by)

    def _decide(self, primary_id: str) -> None:
        primary = self._primaries.pop(primary_id)
        self._done[primary_id] = primary.ts
        if primary.link is None:
            self._sums = self._sums.add_unmirrored(primary.outcome, self.settings)
            return
        copy = self._copies.pop(primary.link)
        self._done[primary.link] = copy.ts
        self._sums = self._sums.add(copy.outcome, primary.outcome, self.settings)

    def _forget(self, now: float, traces_by: float) -> None:
        horizon = now - FORGET_AFTER_TIMEOUTS * self.score_timeout
        for trace_id in [key for key, ts in self._done.items() if ts < horizon]:
            del self._done[trace_id]
        # a score's trace started before the score: read by now if it ever comes
        stale = [
            key for key, (_, at) in self._early.items() if at + self.score_timeout <= traces_by
        ]
        for trace_id in stale:
            del self._early[trace_id]
        self._counters["orphan_scores"] += len(stale)

    # -- reading ---------------------------------------------------------------------

    @property
    def sums(self) -> PairedSums:
        return self._sums

    def counts(self) -> dict[str, int]:
        """How the traces and scores were used: ``pairs`` added, traces ``waiting``,
        failed sides among the pairs, ``unmirrored`` primaries, ``orphan_copies``,
        ``invalid`` scores, ``duplicates`` (traces and scores), ``late_scores`` (after
        the timeout), ``orphan_scores`` (their trace never came)."""
        sums = self._sums
        return {
            "pairs": sums.pairs,
            "waiting": len(self._primaries) + len(self._copies),
            "copies_failed": sums.candidate_failed,
            "primaries_failed": sums.baseline_failed,
            "unmirrored": sums.unmirrored,
            "orphan_copies": self._counters["orphan_copies"],
            "invalid": self._counters["invalid"] + sums.invalid,
            "duplicates": self._counters["duplicates"],
            "late_scores": self._counters["late_scores"],
            "orphan_scores": self._counters["orphan_scores"],
        }

    # -- documents -------------------------------------------------------------------

    def to_document(self) -> dict[str, Any]:
        """Everything the pairs hold, as JSON: ``from_document`` gives them back exactly."""
        return {
            "version": DOCUMENT_VERSION,
            "startedAt": self.started_at,
            "scoreTimeout": self.score_timeout,
            "sums": self._sums.to_dict(),
            "counters": dict(self._counters),
            "primaries": [_row(key, trace) for key, trace in self._primaries.items()],
            "copies": [_row(key, trace) for key, trace in self._copies.items()],
            "done": [[key, ts] for key, ts in self._done.items()],
            "early": [[key, value, at] for key, (value, at) in self._early.items()],
        }

    @classmethod
    def from_document(cls, gate: ShadowGate, document: Mapping[str, Any]) -> ShadowPairs:
        """The pairs ``to_document`` wrote; ValueError for a document it did not write."""
        try:
            return cls._read(gate, document)
        except (KeyError, TypeError, IndexError, ValueError) as error:
            raise ValueError(f"not a shadow pairs document: {error}") from None

    @classmethod
    def _read(cls, gate: ShadowGate, document: Mapping[str, Any]) -> ShadowPairs:
        if document.get("version") != DOCUMENT_VERSION:
            raise ValueError(f"version {document.get('version')!r}, not {DOCUMENT_VERSION}")
        pairs = cls(
            gate,
            started_at=_float(document["startedAt"]),
            score_timeout=_float(document["scoreTimeout"]),
        )
        pairs._sums = PairedSums.from_dict(document["sums"])
        counters = document["counters"]
        if set(counters) != set(_COUNTERS):
            raise ValueError(f"counters must be {list(_COUNTERS)}")
        pairs._counters = {name: _count(counters[name]) for name in _COUNTERS}
        pairs._primaries = dict(_traces(document["primaries"]))
        pairs._copies = dict(_traces(document["copies"]))
        pairs._done = {_id(key): _float(ts) for key, ts in document["done"]}
        pairs._early = {
            _id(key): (_float(value), _float(at)) for key, value, at in document["early"]
        }
        for copy_id, copy in pairs._copies.items():
            primary = None if copy.link is None else pairs._primaries.get(copy.link)
            if copy.link is None or (primary is not None and primary.link != copy_id):
                raise ValueError(f"copy {copy_id} is filed under no primary")
            if primary is None:
                pairs._waiting[copy.link] = copy_id
        return pairs


def _row(key: str, trace: _Trace) -> list[Any]:
    return [key, trace.ts, trace.error, trace.value, trace.link]


def _traces(rows: Iterable[Any]) -> Iterable[tuple[str, _Trace]]:
    for key, ts, error, value, link in rows:
        if not isinstance(error, bool):
            raise ValueError(f"error of {key!r} is not a boolean")
        trace = _Trace(
            ts=_float(ts),
            error=error,
            value=None if value is None else _float(value),
            link=None if link is None else _id(link),
        )
        yield _id(key), trace


def _id(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not a trace id")
    return value


def _float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return value


# ----------------------------------------------------------------------------- judging


class RungOutcome(StrEnum):
    """What the shadow rung says at a look."""

    CONTINUE = "continue"
    PASSED = "passed"
    BLOCKED = "blocked"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class RungJudgement:
    """The shadow rung's outcome at one look, with its one-line reason and the numbers
    (JSON-able) for the decision log and the status."""

    outcome: RungOutcome
    reason: str
    summary: dict[str, Any]


def judge_shadow(
    gate: ShadowGate, pairs: ShadowPairs, *, since: float, now: float
) -> RungJudgement:
    """The rung's outcome at ``now`` (it started at ``since``).

    BLOCKED when the paired test shows the candidate worse than the baseline beyond
    tolerance, or (with ``minPairs`` pairs) the candidate's mean misses ``minScore``;
    PASSED when the test shows it within the promotion tolerance over at least
    ``minPairs`` pairs; INCONCLUSIVE when ``maxDuration`` has passed without either;
    CONTINUE otherwise.
    """
    settings = paired_settings(gate)
    sums = pairs.sums
    result = paired_test(sums, settings)
    ready = sums.pairs >= gate.min_pairs
    candidate_mean, baseline_mean = _means(sums)
    elapsed = max(0.0, now - since)
    summary = _summary(gate, pairs, result, candidate_mean, baseline_mean, ready, elapsed)
    numbers = _numbers(gate, result)
    missed = _misses_min_score(gate, candidate_mean) if ready else None
    if result.verdict is Verdict.FAIL:
        reason = f"candidate worse than the baseline beyond tolerance: {numbers}"
        return RungJudgement(RungOutcome.BLOCKED, reason, summary)
    if missed is not None:
        return RungJudgement(RungOutcome.BLOCKED, f"{missed}: {numbers}", summary)
    if result.verdict is Verdict.PASS:
        reason = f"candidate shown within tolerance of the baseline: {numbers}"
        return RungJudgement(RungOutcome.PASSED, reason, summary)
    if elapsed >= gate.max_duration:
        reason = f"no verdict after {format_duration(gate.max_duration)} (maxDuration): {numbers}"
        return RungJudgement(RungOutcome.INCONCLUSIVE, reason, summary)
    return RungJudgement(RungOutcome.CONTINUE, f"not yet shown either way: {numbers}", summary)


def _means(sums: PairedSums) -> tuple[float | None, float | None]:
    if not sums.pairs:
        return None, None
    baseline = sums.sum_b / sums.pairs
    return (sums.sum_d + sums.sum_b) / sums.pairs, baseline


def _misses_min_score(gate: ShadowGate, candidate_mean: float | None) -> str | None:
    floor = gate.metric.min_score
    if floor is None or candidate_mean is None:
        return None
    if gate.metric.direction is Direction.HIGHER and candidate_mean < floor:
        return f"candidate mean {_n(candidate_mean)} below minScore {_n(floor)}"
    if gate.metric.direction is Direction.LOWER and candidate_mean > floor:
        return f"candidate mean {_n(candidate_mean)} above minScore {_n(floor)}"
    return None


def _numbers(gate: ShadowGate, result: PairedResult) -> str:
    """``40 pairs (need 30), difference -0.3 [-0.35, -0.25], tolerance 0.05`` and the
    failed copies, on one line."""
    metric = gate.metric
    text = f"{metric.score}: {result.pairs} pairs (need {gate.min_pairs})"
    if result.estimate is not None:
        text += (
            f", difference {_n(result.estimate)} (candidate - baseline) "
            f"bounds [{_n(result.lower)}, {_n(result.upper)}]"
        )
    text += f", tolerance {_n(metric.tolerance)}"
    if metric.promote_tolerance is not None:
        text += f", promote tolerance {_n(metric.promote_tolerance)}"
    if result.candidate_failed:
        text += f", {result.candidate_failed} failed copies counted as the worst value"
    return text


def _summary(
    gate: ShadowGate,
    pairs: ShadowPairs,
    result: PairedResult,
    candidate_mean: float | None,
    baseline_mean: float | None,
    ready: bool,
    elapsed: float,
) -> dict[str, Any]:
    metric = gate.metric
    counts = pairs.counts()
    return {
        "score": metric.score,
        "direction": metric.direction.value,
        "pairs": result.pairs,
        "minPairs": gate.min_pairs,
        "ready": ready,
        "verdict": result.verdict.value,
        "estimate": _finite(result.estimate),
        "lower": _finite(result.lower),
        "upper": _finite(result.upper),
        "pairedMean": _finite(result.paired_mean),
        "candidateMean": _finite(candidate_mean),
        "baselineMean": _finite(baseline_mean),
        "tolerance": metric.tolerance,
        "promoteTolerance": pairs.settings.promote_margin,
        "logEvalue": _finite(result.log_evalue),
        "logThreshold": result.log_threshold,
        "controlWeight": result.control_weight,
        "elapsed": elapsed,
        "maxDuration": gate.max_duration,
        **{_camel(name): value for name, value in counts.items() if name != "pairs"},
    }


def _finite(value: float | None) -> float | None:
    """The number, or None where JSON has none (an infinite bound)."""
    return value if value is not None and math.isfinite(value) else None


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _n(value: float | None) -> str:
    if value is None:
        return "none"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"
