"""What the controller reads from an observability backend, before the judge sees it.

A source turns the backend's rows into these plain records; the controller stores them
with the source's cursors in one transaction and feeds them to the judge's evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.judge import ScoreValue
from policies.domain import Arm


@dataclass(frozen=True, slots=True)
class TraceSample:
    """One request of one arm of one release, complete enough to judge."""

    release: str
    trace_id: str
    arm: Arm
    ts: float
    """When the request started, in seconds since the epoch."""
    error: bool
    """The root span or any observation of the trace has level ERROR."""
    latency_ms: float | None
    """Duration of the trace's root span."""
    cost_usd: float | None
    """Sum of the costs of the trace's observations; None when none reported a cost."""
    prompt_version: int | None = None
    """Version of the release's prompt the trace used, when a generation links one."""
    shadow_of: str | None = None
    """For a shadow copy (arm ``shadow``): the trace id of the primary request it mirrors."""


@dataclass(frozen=True, slots=True)
class ScoreSample:
    """One evaluation score of a trace."""

    score_id: str
    trace_id: str
    name: str
    value: ScoreValue
    at: float
    """When the score was created, in seconds since the epoch."""


@dataclass(frozen=True, slots=True)
class Cursors:
    """Where the next poll starts reading, per kind of row (seconds since the epoch)."""

    observations_from: float
    scores_from: float


@dataclass(frozen=True, slots=True)
class Poll:
    """The result of one poll of the backend for every release it serves."""

    ok: bool
    """False when the backend could not be read: the judge then gets no new data, which
    is never a pass."""
    cursors: Cursors
    traces: tuple[TraceSample, ...] = ()
    scores: tuple[ScoreSample, ...] = ()
    error: str | None = None
    requests: dict[str, int] = field(default_factory=dict)
    """Requests made, by endpoint name."""
    scores_complete_until: float | None = None
    """With scores read by trace (a score sample): every trace whose ``scoreTimeout``
    ended before this time has had its last score read, though the scores cursor stays
    at the oldest trace with a read pending. None: the scores cursor says it."""
    goes_on: bool = False
    """An incomplete poll whose read the next poll goes on with from where it was cut
    (same cursors, same windows), rather than starting it again."""
