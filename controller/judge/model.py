"""What the judge takes in and gives back: samples, verdicts, decisions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from policies.domain import Arm


class Verdict(StrEnum):
    """Outcome of one metric. Only PASS counts towards a promotion."""

    PASS = "pass"  # shown within tolerance
    FAIL = "fail"  # shown worse than the baseline by more than its tolerance
    INCONCLUSIVE = "inconclusive"  # data, but not yet enough to show either
    NODATA = "nodata"  # no comparable data in one arm or both


class Decision(StrEnum):
    """What the release should do next."""

    CONTINUE = "continue"
    ADVANCE = "advance"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    PAUSE = "pause"


class Scale(StrEnum):
    """How a metric's estimate and bounds read: canary minus baseline, or canary over it."""

    DIFFERENCE = "difference"
    RATIO = "ratio"


ScoreValue = float | int | bool | str


@dataclass(frozen=True, slots=True)
class Trace:
    """One trace of one arm, as it is first seen.

    ``ts`` is when the trace started, in seconds since the epoch. ``scores`` holds the
    evaluation scores that had arrived when the trace was first seen; later ones come
    through ``Evidence.add_scores``.
    """

    trace_id: str
    arm: Arm
    ts: float
    error: bool | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None
    scores: Mapping[str, ScoreValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepStatus:
    """Where the release stands: which step (0-based) and since when."""

    index: int
    started_at: float
    awaiting_approval: bool = False
    """Every step passed and the rollout waits for a person: a regression still rolls
    back or pauses it, but nothing moves it forward and maxDuration no longer applies."""


@dataclass(frozen=True, slots=True)
class MetricResult:
    """Evidence and verdict for one metric."""

    name: str
    source: str
    verdict: Verdict
    critical: bool
    reason: str
    scale: Scale
    estimate: float | None  # canary minus (or over) baseline, in the metric's own units
    lower: float | None  # confidence-sequence bounds on the estimate, level 1 - alpha
    upper: float | None
    n_baseline: int  # observations compared, all steps
    n_canary: int
    n_baseline_step: int  # observations in the current step
    n_canary_step: int
    log_evalue: float  # rollback test statistic: log of the e-value against "within tolerance"
    log_threshold: float  # log(1 / alpha_metric): rollback when log_evalue reaches it
    worst_traces: tuple[str, ...] = ()  # canary trace ids that regressed most
    invalid: int = 0  # observations refused (wrong type, out of range)
    below_floor: bool = False  # too few observations to act on the rollback test yet


class CheckState(StrEnum):
    """A guard is shown fine, not yet shown either way, or shown broken."""

    OK = "ok"
    PENDING = "pending"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """A release-level guard: sample ratio, score coverage, circuit breaker, freshness."""

    name: str
    state: CheckState
    reason: str
    log_evalue: float = 0.0
    log_threshold: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state is CheckState.OK


@dataclass(frozen=True, slots=True)
class Judgement:
    """The judge's answer for one look: one decision, with all its evidence."""

    at: float
    step: int
    decision: Decision
    reason: str
    metrics: tuple[MetricResult, ...]
    checks: tuple[CheckResult, ...]
