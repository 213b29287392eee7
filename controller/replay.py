"""Replay: a recorded sample stream through the judge, as the controller would see it.

A trace becomes visible at its ``ts`` and a late score at its own ``ts``; the judge is
asked every ``interval`` of stream time; the release advances, promotes, rolls back or
pauses as the decisions say. The engine does no I/O: feed it records, read its events.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from controller import lifecycle
from controller.judge import Decision, Evidence, Judgement, StepStatus, Trace, judge
from controller.lifecycle import Candidate
from controller.stream import LateScores
from policies.domain import Phase
from policies.model import Policy

REPLAYED = Candidate(None, None, "replayed stream", "the stream's first record")


@dataclass(frozen=True, slots=True)
class Event:
    """A judgement that changed the release's phase or step, with where it left it."""

    judgement: Judgement
    phase: Phase
    step: int  # 1-based step the release is in after the decision


@dataclass(slots=True)
class Counters:
    """What the replay saw."""

    traces: dict[str, int] = field(default_factory=lambda: {"baseline": 0, "canary": 0})
    late_score_lines: int = 0
    out_of_order: int = 0  # lines older than the replay clock: applied when read
    ignored_after_decision: int = 0
    looks: int = 0


class Replay:
    """Steps one release through a stream of traces and late scores."""

    def __init__(self, policy: Policy, interval: float | None = None) -> None:
        self.policy = policy
        self.interval = interval if interval is not None else policy.analysis.interval
        if self.interval <= 0:
            raise ValueError("interval must be positive")
        self.release = lifecycle.pending(policy.name, lifecycle.policy_digest(policy), now=0.0)
        self.evidence: Evidence | None = None
        self.next_look = 0.0
        self.clock = 0.0
        self.last: Judgement | None = None
        self.decided: Judgement | None = None
        self.counters = Counters()

    @property
    def phase(self) -> Phase:
        return self.release.phase

    @property
    def step(self) -> int:
        """0-based index of the current step."""
        return self.release.step

    @property
    def step_started_at(self) -> float:
        return self.release.step_started_at or 0.0

    @property
    def finished(self) -> bool:
        """Promoted, rolled back or paused: a replay ends at the first of them (a pause
        waits for a person, whom a replay does not have)."""
        return self.phase in (Phase.PROMOTED, Phase.ROLLED_BACK, Phase.PAUSED)

    def feed(self, record: Trace | LateScores) -> Iterator[Event]:
        """Apply one record at its time, after every look that falls before it."""
        if self.evidence is None:
            self.evidence = Evidence(self.policy, record.ts)
            started = lifecycle.start(
                self.release, self.policy, REPLAYED, self.release.policy_digest, now=record.ts
            ).release
            while started.phase in lifecycle.RUNGS:  # a replay judges the canary steps
                started = lifecycle.pass_rung(
                    started, self.policy, now=record.ts, reason="replayed"
                ).release
            self.release = started
            self.clock = record.ts
            self.next_look = record.ts + self.interval
        yield from self._look_until(record.ts)
        if self.finished:
            self.counters.ignored_after_decision += 1
            return
        if record.ts < self.clock:
            self.counters.out_of_order += 1
        else:
            self.clock = record.ts
        evidence = self.evidence
        if isinstance(record, LateScores):
            self.counters.late_score_lines += 1
            evidence.add_scores(record.trace_id, record.scores, max(record.ts, self.clock))
            return
        if evidence.add_trace(record) and record.arm.value in self.counters.traces:
            self.counters.traces[record.arm.value] += 1

    def finish(self) -> Iterator[Event]:
        """One last look at the first look time at or after the stream's end."""
        if self.evidence is not None and not self.finished:
            event = self._look(self.next_look)
            self.next_look += self.interval
            if event is not None:
                yield event

    def _look_until(self, ts: float) -> Iterator[Event]:
        """Every look before ``ts``: a record at a look's own time is visible to it."""
        while not self.finished and self.next_look < ts:
            event = self._look(self.next_look)
            self.next_look += self.interval
            if event is not None:
                yield event

    def _look(self, now: float) -> Event | None:
        evidence = self.evidence
        assert evidence is not None
        evidence.advance(max(now, evidence.observed_until))
        self.clock = max(self.clock, now)
        self.counters.looks += 1
        judgement = judge(self.policy, evidence, StepStatus(self.step, self.step_started_at), now)
        self.last = judgement
        decision = judgement.decision
        if decision is Decision.CONTINUE:
            return None
        change = lifecycle.decided(
            self.release, self.policy, decision, now=now, reason=judgement.reason
        )
        self.release = change.release
        if decision is Decision.ADVANCE:
            evidence.open_step(self.step, now)
        else:
            self.decided = judgement
        return Event(judgement=judgement, phase=self.phase, step=self.step + 1)

    def outcome(self) -> str:
        """promoted, rolled_back, paused, or running."""
        return "running" if not self.finished else self.phase.value
