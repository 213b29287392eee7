"""The rungs before the canary steps: the dataset gate and the paired shadow comparison.

``RungDriver.look`` says what a rollout standing at a rung should do now: keep going,
pass on to the next rung, roll back (the candidate was shown worse: nothing live changed,
the labels are parked), or pause (no verdict: a rung never passes on missing data). The
controller's loop turns that into the lifecycle's changes, as it does with the judge's
decisions on the canary steps.

A dataset run lives in this process (``controller.ladder``); one that a restart or a
resume left behind is never read again: the rung runs a new attempt, with experiments
named by it. A shadow rung's pairs are rebuilt from the stored samples of the rung's
time, as the canary's evidence is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from controller.judge.shadow_pairs import RungOutcome, ShadowPairs, judge_shadow
from controller.ladder.dataset_gate import ArmEndpoint, GateOutcome, GateResult, arm_endpoints
from controller.lifecycle import ReleaseState
from controller.release_store import ControllerState
from controller.samples import ScoreSample, TraceSample
from policies.domain import Arm, Phase
from policies.durations import format_duration
from policies.model import DatasetGate, OnInconclusive, Policy

log = logging.getLogger("coalmine.controller.rungs")


class DatasetRunner(Protocol):
    """Runs dataset rungs in the background (``controller.ladder.DatasetGates``)."""

    def ensure(
        self,
        release: str,
        rollout: int,
        attempt: int,
        gate: DatasetGate,
        arms: dict[Arm, ArmEndpoint],
        now: float,
    ) -> None:
        """Start that run unless it runs already; never waits on I/O."""
        ...

    def result(self, release: str, rollout: int, attempt: int, now: float) -> GateResult | None:
        """The run's state (outcome None while it runs); None: no such run here."""
        ...

    def cancel(self, release: str) -> None:
        """Stop every run of the release."""
        ...

    def close(self) -> None: ...


class RungMove(StrEnum):
    """What a rung says a rollout should do."""

    PASS = "pass"
    ROLLBACK = "rollback"
    PAUSE = "pause"


@dataclass(frozen=True, slots=True)
class RungVerdict:
    """A rung's call, with the reason and the evidence the decision log keeps."""

    move: RungMove
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _HeldPairs:
    pairs: ShadowPairs
    since: float
    next_look: float


@dataclass(frozen=True, slots=True)
class _DatasetRun:
    rollout: int
    since: float
    attempt: int


class RungDriver:
    """Looks at the rollouts standing at a rung; holds their dataset runs and pairs."""

    def __init__(self, state: ControllerState) -> None:
        self.state = state
        self.datasets: DatasetRunner | None = None
        """Runs the dataset rungs (None: Langfuse is not configured for them)."""
        self.app_url: str | None = None
        """The application a prompt release's dataset items are sent to."""
        self.views: dict[str, dict[str, Any]] = {}
        """The latest view of each release's rung, for status and the dashboard."""
        self._runs: dict[str, _DatasetRun] = {}
        self._pairs: dict[str, _HeldPairs] = {}

    # -- looking ---------------------------------------------------------------------------

    def look(
        self,
        release: ReleaseState,
        policy: Policy,
        now: float,
        *,
        read_until: tuple[float | None, float | None] = (None, None),
    ) -> RungVerdict | None:
        """What the rung ``release`` stands at says now (None: keep going);
        ``read_until``: until when scores and traces have been read from Langfuse, so
        that a side whose score is still to be read is not taken for failed."""
        if release.phase is Phase.DATASET:
            self._pairs.pop(release.name, None)
            return self._look_dataset(release, policy, now)
        if release.phase is Phase.SHADOW:
            self._runs.pop(release.name, None)
            return self._look_shadow(release, policy, now, read_until)
        self.leave(release.name)
        return None

    def view_of(self, release: ReleaseState) -> dict[str, Any] | None:
        """What the rung ``release`` stands at (or is paused at) said last; None when
        it is at no rung, or its rung has not said anything yet."""
        view = self.views.get(release.name)
        at = release.resume_phase if release.phase is Phase.PAUSED else release.phase
        if view is None or view.get("rollout") != release.rollout or view.get("rung") != at:
            return None
        if view.get("since") != release.rung_since:
            return None
        return {key: value for key, value in view.items() if key not in ("rollout", "since")}

    def _show(self, release: ReleaseState, view: dict[str, Any]) -> None:
        self.views[release.name] = {
            "rung": release.phase.value,
            "rollout": release.rollout,
            "since": release.rung_since,
            **view,
        }

    def leave(self, name: str) -> None:
        """The release is no longer at a rung: its dataset runs stop, its pairs go."""
        if self._runs.pop(name, None) is not None and self.datasets is not None:
            self.datasets.cancel(name)
        self._pairs.pop(name, None)

    def attempt_to_start(
        self, release: ReleaseState, policy: Policy, now: float
    ) -> ReleaseState | None:
        """The release with its dataset attempt counted, when the rung starts a run this
        process has not started (the first, after a resume, or after a restart)."""
        since, gate = release.rung_since, policy.dataset
        if release.phase is not Phase.DATASET or since is None or gate is None:
            return None
        if now < since + gate.start_after:
            return None
        run = self._runs.get(release.name)
        if run is not None and (run.rollout, run.since) == (release.rollout, since):
            return None
        return replace(release, dataset_attempt=release.dataset_attempt + 1)

    def _look_dataset(
        self, release: ReleaseState, policy: Policy, now: float
    ) -> RungVerdict | None:
        gate = policy.dataset
        since = release.rung_since
        if gate is None or since is None:
            return RungVerdict(RungMove.PASS, "the policy the rollout runs by has no dataset rung")
        if self.datasets is None:
            return RungVerdict(
                RungMove.PAUSE,
                "dataset rung: Langfuse is not configured (LANGFUSE_BASE_URL and keys), so "
                f"dataset '{gate.name}' cannot be run",
            )
        run = self._run(release, policy, gate, since, now)
        if not isinstance(run, _DatasetRun):
            return run
        result = self.datasets.result(release.name, run.rollout, run.attempt, now)
        if result is None:  # gone from the runner: run it again as a new attempt
            self._runs.pop(release.name, None)
            return None
        self._show(
            release,
            {
                "outcome": None if result.outcome is None else result.outcome.value,
                "reason": result.reason,
                **result.summary,
            },
        )
        if result.outcome is None:
            return None
        evidence = {"rung": "dataset", **result.summary}
        if result.outcome is GateOutcome.PASSED:
            return RungVerdict(RungMove.PASS, result.reason, evidence)
        if result.outcome is GateOutcome.BLOCKED:
            return RungVerdict(RungMove.ROLLBACK, result.reason, evidence)
        return _inconclusive(gate.on_inconclusive, result.reason, evidence)

    def _run(
        self, release: ReleaseState, policy: Policy, gate: DatasetGate, since: float, now: float
    ) -> _DatasetRun | RungVerdict | None:
        """The dataset run of the rung as it stands, started when it needs one; a
        verdict when it cannot be, None while it waits to start."""
        assert self.datasets is not None
        run = self._runs.get(release.name)
        if run is not None and (run.rollout, run.since) == (release.rollout, since):
            return run
        if now < since + gate.start_after:
            self._show(release, {"outcome": None, "reason": _waiting_caches(gate)})
            return None
        try:
            arms = arm_endpoints(policy, self.app_url)
        except ValueError as error:
            return RungVerdict(RungMove.PAUSE, f"dataset rung: {error}")
        if run is not None:
            self.datasets.cancel(release.name)
        run = _DatasetRun(release.rollout, since, release.dataset_attempt)
        self._runs[release.name] = run
        self.datasets.ensure(release.name, run.rollout, run.attempt, gate, arms, now)
        return run

    def _look_shadow(
        self,
        release: ReleaseState,
        policy: Policy,
        now: float,
        read_until: tuple[float | None, float | None],
    ) -> RungVerdict | None:
        gate = None if policy.shadow is None else policy.shadow.gate
        since = release.rung_since
        if gate is None or since is None:
            return RungVerdict(RungMove.PASS, "the policy the rollout runs by has no shadow rung")
        held = self._held(release.name, policy, since)
        if now < held.next_look:
            return None
        held.next_look = now + policy.analysis.interval
        held.pairs.advance(now, scores_read_until=read_until[0], traces_read_until=read_until[1])
        judgement = judge_shadow(gate, held.pairs, since=since, now=now)
        self._show(
            release,
            {"outcome": judgement.outcome.value, "reason": judgement.reason, **judgement.summary},
        )
        evidence = {"rung": "shadow", **judgement.summary}
        if judgement.outcome is RungOutcome.PASSED:
            return RungVerdict(RungMove.PASS, judgement.reason, evidence)
        if judgement.outcome is RungOutcome.BLOCKED:
            return RungVerdict(RungMove.ROLLBACK, judgement.reason, evidence)
        if judgement.outcome is RungOutcome.INCONCLUSIVE:
            return _inconclusive(gate.on_inconclusive, judgement.reason, evidence)
        return None

    def _held(self, name: str, policy: Policy, since: float) -> _HeldPairs:
        held = self._pairs.get(name)
        if held is not None and held.since == since:
            return held
        assert policy.shadow is not None and policy.shadow.gate is not None
        pairs = ShadowPairs(
            policy.shadow.gate, started_at=since, score_timeout=policy.analysis.score_timeout
        )
        for trace in self.state.traces(name, since):
            _add_trace(pairs, trace)
        for score in self.state.scores_for_release(name, since):
            pairs.add_score(score.trace_id, score.name, score.value, score.at)
        held = _HeldPairs(pairs, since, next_look=since + policy.analysis.interval)
        self._pairs[name] = held
        return held

    # -- samples -------------------------------------------------------------------------

    def wants(self, release: str) -> bool:
        """Whether new samples of ``release`` go to its shadow pairs."""
        return release in self._pairs

    def add_trace(self, trace: TraceSample) -> None:
        held = self._pairs.get(trace.release)
        if held is not None and trace.ts >= held.since:
            _add_trace(held.pairs, trace)

    def add_score(self, release: str, score: ScoreSample) -> None:
        held = self._pairs.get(release)
        if held is not None:
            held.pairs.add_score(score.trace_id, score.name, score.value, score.at)

    def close(self) -> None:
        if self.datasets is not None:
            self.datasets.close()


def _add_trace(pairs: ShadowPairs, trace: TraceSample) -> None:
    pairs.add_trace(trace.trace_id, trace.arm, trace.ts, trace.error, trace.shadow_of)


def _waiting_caches(gate: DatasetGate) -> str:
    return (
        f"dataset '{gate.name}': items are sent {format_duration(gate.start_after)} after the "
        "rollout began (dataset.startAfter), once the app's prompt caches hold the new label"
    )


def _inconclusive(
    on_inconclusive: OnInconclusive, reason: str, evidence: dict[str, Any]
) -> RungVerdict:
    move = RungMove.ROLLBACK if on_inconclusive is OnInconclusive.ROLLBACK else RungMove.PAUSE
    return RungVerdict(move, f"inconclusive: {reason}", evidence)
