"""A release's life: its rollouts, their steps, and what each decision does to them.

A release is the long-lived thing a policy names (a prompt, an agent). Each candidate of
it is a rollout, numbered from 1: it starts when a candidate is found, moves through the
policy's steps, and ends promoted, rolled back or aborted; the release then waits for the
next candidate. Every change of a release is a pure function here, from the release as it
stands and the decision taken, to the release's next state and the actions that carry it
out. No I/O and no clock: the loop, the replay engine (and through it backtests and the
planner) and cluster mode all move releases with these functions, so what promote and
rollback mean is written once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from controller.judge import Decision
from policies.domain import FINISHED, Phase
from policies.durations import format_duration
from policies.model import Policy

RUNGS = frozenset({Phase.DATASET, Phase.SHADOW})
"""Phases of the rungs before the canary steps: no user is sent to the candidate."""

RUNNING = frozenset({Phase.DATASET, Phase.SHADOW, Phase.CANARY, Phase.APPROVAL, Phase.PAUSED})
"""Phases of a rollout that has started and not ended."""


class Transition(StrEnum):
    """What a decision does to a release (the decision log's words)."""

    START = "start"
    ADVANCE = "advance"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    AWAIT_APPROVAL = "await_approval"
    APPROVE = "approve"
    PASS_RUNG = "pass_rung"


MANUAL = frozenset(
    {Transition.PROMOTE, Transition.ROLLBACK, Transition.PAUSE, Transition.RESUME}
    | {Transition.ABORT, Transition.START, Transition.APPROVE}
)
"""Transitions a person may ask for (admin API, CLI, dashboard)."""


class ActionKind(StrEnum):
    SET_WEIGHT = "set_weight"
    MOVE_LABEL = "move_label"


@dataclass(frozen=True, slots=True)
class SetWeight:
    """Make the release's routing table send ``weight`` percent to the canary."""

    weight: float

    def intent(self) -> tuple[ActionKind, dict[str, Any]]:
        return ActionKind.SET_WEIGHT, {"weight": self.weight}


@dataclass(frozen=True, slots=True)
class MoveLabel:
    """Put a Langfuse prompt label on a version."""

    prompt: str
    label: str
    version: int

    def intent(self) -> tuple[ActionKind, dict[str, Any]]:
        return ActionKind.MOVE_LABEL, {
            "prompt": self.prompt,
            "label": self.label,
            "version": self.version,
        }


Act = SetWeight | MoveLabel
"""One action a transition needs carried out, in order."""


def act_of(kind: ActionKind, intent: dict[str, Any]) -> Act:
    """The action a journalled intent describes. Raises ValueError on a malformed one."""
    try:
        if kind is ActionKind.SET_WEIGHT:
            return SetWeight(float(intent["weight"]))
        return MoveLabel(str(intent["prompt"]), str(intent["label"]), int(intent["version"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"malformed {kind.value} intent {intent!r}: {error}") from None


@dataclass(frozen=True, slots=True)
class ReleaseState:
    """One release as the controller last left it. Times in seconds since the epoch."""

    name: str
    phase: Phase
    step: int = 0
    """0-based index of the current step of the current rollout."""
    step_starts: tuple[float, ...] = ()
    """When each step of the current rollout began; the first is when it started."""
    canary_weight: float = 0.0
    """The weight the routing table should hold now."""
    stable_version: int | None = None
    """Prompt version that held the stable label when the rollout started."""
    candidate_version: int | None = None
    """Prompt version that held the canary label when the rollout started."""
    updated_at: float = 0.0
    reason: str = ""
    policy_digest: str = ""
    """Digest of the policy the current rollout judges by (while pending: the policy in
    force)."""
    resume_phase: Phase | None = None
    """The phase a paused release goes back to."""
    rollout: int = 0
    """Number of the current (or last) rollout; 0 before the first."""
    candidate_ref: str | None = None
    """An agent release's candidate: its canary upstream and ``target.version``."""
    rollout_policy: str = ""
    """The policy the current rollout started with (JSON): its steps and analysis hold
    until the rollout ends, so an edit never changes the statistics halfway."""
    waiting: str = ""
    """Why no rollout runs now (pending, or ended and waiting for the next candidate)."""
    approval_since: float | None = None
    """When the rollout began to wait for approval (phase ``approval``, or paused in it)."""
    review_queue: str | None = None
    """The id of the annotation queue its traces were added to for review."""
    review_traces: tuple[str, ...] = ()
    """The canary traces added to the review queue, whose reviews are read."""
    rung_since: float | None = None
    """When the current rung (``dataset``, ``shadow``) began, or began again on resume."""
    dataset_attempt: int = 0
    """Runs of the dataset rung in this rollout so far (each run's experiments are named
    by it, so every attempt has runs of its own in Langfuse)."""

    @property
    def started_at(self) -> float | None:
        return self.step_starts[0] if self.step_starts else None

    @property
    def judged_since(self) -> float | None:
        """When what is judged now began: the canary steps, else the current rung."""
        return self.step_starts[0] if self.step_starts else self.rung_since

    @property
    def step_started_at(self) -> float | None:
        return self.step_starts[-1] if self.step_starts else None

    @property
    def running(self) -> bool:
        return self.phase in RUNNING

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "phase": self.phase.value,
                "step": self.step,
                "stepStarts": list(self.step_starts),
                "canaryWeight": self.canary_weight,
                "stableVersion": self.stable_version,
                "candidateVersion": self.candidate_version,
                "updatedAt": self.updated_at,
                "reason": self.reason,
                "policyDigest": self.policy_digest,
                "resumePhase": None if self.resume_phase is None else self.resume_phase.value,
                "rollout": self.rollout,
                "candidateRef": self.candidate_ref,
                "rolloutPolicy": self.rollout_policy,
                "waiting": self.waiting,
                "approvalSince": self.approval_since,
                "reviewQueue": self.review_queue,
                "reviewTraces": list(self.review_traces),
                "rungSince": self.rung_since,
                "datasetAttempt": self.dataset_attempt,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ReleaseState:
        """Raises ValueError (or KeyError, TypeError) on a document that is not one."""
        data = json.loads(text)
        resume = data.get("resumePhase")
        phase = Phase(data["phase"])
        rollout = data.get("rollout")
        if rollout is None:  # written before rollouts were numbered
            rollout = 0 if phase is Phase.PENDING else 1
        return cls(
            name=data["name"],
            phase=phase,
            step=int(data["step"]),
            step_starts=tuple(float(value) for value in data["stepStarts"]),
            canary_weight=float(data["canaryWeight"]),
            stable_version=data.get("stableVersion"),
            candidate_version=data.get("candidateVersion"),
            updated_at=float(data.get("updatedAt", 0.0)),
            reason=str(data.get("reason", "")),
            policy_digest=str(data.get("policyDigest", "")),
            resume_phase=None if resume is None else Phase(resume),
            rollout=int(rollout),
            candidate_ref=data.get("candidateRef"),
            rollout_policy=str(data.get("rolloutPolicy", "")),
            waiting=str(data.get("waiting", "")),
            approval_since=_optional_float(data.get("approvalSince")),
            review_queue=data.get("reviewQueue"),
            review_traces=tuple(str(trace) for trace in data.get("reviewTraces", ())),
            rung_since=_optional_float(data.get("rungSince")),
            dataset_attempt=int(data.get("datasetAttempt", 0)),
        )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True)
class Change:
    """A release's next state and the actions that make it so, in order."""

    transition: Transition
    release: ReleaseState
    actions: tuple[Act, ...] = ()


@dataclass(frozen=True, slots=True)
class Sighting:
    """What the controller sees of a release's target now."""

    stable_version: int | None = None
    """The version the prompt's stable label is on (None: no prompt, or no such label)."""
    candidate_version: int | None = None
    """The version the prompt's canary label is on."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A candidate to roll out: the versions and the reason to start."""

    stable_version: int | None
    candidate_version: int | None
    candidate_ref: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Waiting:
    """No candidate to roll out, and why (status shows it as it is)."""

    reason: str


def agent_ref(policy: Policy) -> str | None:
    """An agent release's candidate as the policy names it (None: no canary upstream or
    Service)."""
    where = _canary_of(policy)
    if where is None:
        return None
    version = policy.target.version
    return where if version is None else f"{where} ({version})"


def _canary_of(policy: Policy) -> str | None:
    upstreams = policy.target.upstreams
    if upstreams is not None and upstreams.canary is not None:
        return str(upstreams.canary)
    gateway = policy.routing.gateway_api
    if gateway is not None and gateway.canary is not None:
        return f"service {gateway.canary.name}:{gateway.canary.port}"
    return None


def find_candidate(
    release: ReleaseState, policy: Policy, seen: Sighting, *, again: bool = False
) -> Candidate | Waiting:
    """Whether a waiting release has a candidate to roll out now.

    A prompt release's candidate is the version its canary label is on, when that is not
    the stable version; an agent release's is its canary upstream with ``target.version``.
    A candidate that a rollout of this release has already judged is not started again
    unless ``again`` (``coalmine start``): a rolled-back version must not return by
    itself, and an aborted one waits for a person.
    """
    prompt = policy.target.prompt
    last = f"rollout {release.rollout} ({release.phase.value})"
    if prompt is not None:
        stable, candidate = seen.stable_version, seen.candidate_version
        label = f"label '{prompt.canary_label}' of prompt '{prompt.name}'"
        if candidate is None:
            return Waiting(f"waiting for a candidate: no version carries {label}")
        if candidate == stable:
            return Waiting(
                f"waiting for a candidate: {label} is on version {candidate}, the stable "
                f"version ('{prompt.stable_label}'); put it on a new version to start"
            )
        if release.rollout and candidate == release.candidate_version and not again:
            return Waiting(
                f"waiting for a candidate: version {candidate} was judged by {last}; put "
                f"{label} on a new version, or `coalmine start {release.name}` to roll it "
                "out again"
            )
        return Candidate(
            stable,
            candidate,
            agent_ref(policy),
            f"candidate version {candidate} against stable version {stable}",
        )
    ref = agent_ref(policy)
    if ref is None:
        return Waiting(
            "waiting for a candidate: target.upstreams.canary (or routing.gatewayApi.canary) "
            "is not set"
        )
    # a rollout recorded before candidates were is taken to have judged this one
    judged = release.candidate_ref in (None, ref)
    if release.rollout and judged and not again:
        return Waiting(
            f"waiting for a candidate: {ref} was judged by {last}; change target.version "
            f"or the canary upstream, or `coalmine start {release.name}` to roll it out again"
        )
    return Candidate(None, None, ref, f"candidate {ref}")


def superseded(release: ReleaseState, policy: Policy, seen: Sighting) -> str | None:
    """Why a running rollout's candidate is no longer the one the target names (None: it
    still is). Its evidence would mix two candidates: the rollout must end."""
    prompt = policy.target.prompt
    if prompt is not None:
        now = seen.candidate_version
        if now is not None and now != release.candidate_version:
            return (
                f"label '{prompt.canary_label}' moved from version {release.candidate_version}"
                f" to {now}"
            )
        return None
    ref = agent_ref(policy)
    if ref is not None and release.candidate_ref is not None and ref != release.candidate_ref:
        return f"the candidate changed from {release.candidate_ref} to {ref}"
    return None


def policy_digest(policy: Policy) -> str:
    """A short digest of a policy as loaded (status shows which one is in force)."""
    return hashlib.sha256(policy.model_dump_json().encode()).hexdigest()[:16]


def pending(name: str, digest: str, *, now: float) -> ReleaseState:
    """A release seen for the first time."""
    return ReleaseState(name=name, phase=Phase.PENDING, updated_at=now, policy_digest=digest)


def first_rung(policy: Policy) -> Phase:
    """Where a rollout of ``policy`` begins: the dataset rung, the shadow rung, or the
    canary steps, whichever the policy has first."""
    if policy.dataset is not None:
        return Phase.DATASET
    return next_rung(policy, Phase.DATASET)


def next_rung(policy: Policy, after: Phase) -> Phase:
    """The rung after ``after`` (``dataset`` or ``shadow``) that the policy has."""
    if after is Phase.DATASET and policy.shadow is not None and policy.shadow.gate is not None:
        return Phase.SHADOW
    return Phase.CANARY


def ladder_of(policy: Policy) -> list[str]:
    """The rungs a rollout of ``policy`` climbs, in order (as phases are named)."""
    rungs = [Phase.DATASET.value] if policy.dataset is not None else []
    if next_rung(policy, Phase.DATASET) is Phase.SHADOW:
        rungs.append(Phase.SHADOW.value)
    rungs.append(Phase.CANARY.value)
    if policy.approval is not None:
        rungs.append(Phase.APPROVAL.value)
    return rungs


def start(
    release: ReleaseState, policy: Policy, candidate: Candidate, digest: str, *, now: float
) -> Change:
    """The next rollout begins at its first rung: no user on the candidate until the
    canary steps, which begin at the first step's weight."""
    phase = first_rung(policy)
    weight = policy.steps[0].weight if phase is Phase.CANARY else 0.0
    started = replace(
        release,
        phase=phase,
        step=0,
        step_starts=(now,) if phase is Phase.CANARY else (),
        rung_since=None if phase is Phase.CANARY else now,
        dataset_attempt=0,
        canary_weight=weight,
        stable_version=candidate.stable_version,
        candidate_version=candidate.candidate_version,
        candidate_ref=candidate.candidate_ref,
        updated_at=now,
        reason=candidate.reason,
        policy_digest=digest,
        resume_phase=None,
        rollout=release.rollout + 1,
        rollout_policy=policy.model_dump_json(by_alias=True),
        waiting="",
        approval_since=None,
        review_queue=None,
        review_traces=(),
    )
    return Change(Transition.START, started, (SetWeight(weight),))


def pass_rung(release: ReleaseState, policy: Policy, *, now: float, reason: str) -> Change:
    """The rung passed: on to the next rung, or to the canary steps at the first weight."""
    if release.phase not in RUNGS:
        raise ValueError(f"release {release.name!r} is {release.phase.value}: not at a rung")
    phase = next_rung(policy, release.phase)
    if phase is not Phase.CANARY:
        moved = replace(release, phase=phase, rung_since=now, updated_at=now, reason=reason)
        return Change(Transition.PASS_RUNG, moved, (SetWeight(0.0),))
    weight = policy.steps[0].weight
    moved = replace(
        release,
        phase=Phase.CANARY,
        step=0,
        step_starts=(now,),
        rung_since=None,
        canary_weight=weight,
        updated_at=now,
        reason=reason,
    )
    return Change(Transition.PASS_RUNG, moved, (SetWeight(weight),))


def advance(release: ReleaseState, policy: Policy, *, now: float, reason: str) -> Change:
    """On to the next step and its weight."""
    step = release.step + 1
    if step >= len(policy.steps):
        raise ValueError(f"release {release.name!r} is at its last step: nothing to advance to")
    weight = policy.steps[step].weight
    advanced = replace(
        release,
        step=step,
        step_starts=(*release.step_starts, now),
        canary_weight=weight,
        updated_at=now,
        reason=reason,
    )
    return Change(Transition.ADVANCE, advanced, (SetWeight(weight),))


def promote(release: ReleaseState, policy: Policy, *, now: float, reason: str) -> Change:
    """The candidate becomes stable: both labels onto it (a prompt), all traffic to the
    canary upstream (an agent), else the baseline arm, which now serves the candidate."""
    actions: list[Act] = []
    prompt = policy.target.prompt
    if prompt is not None and release.candidate_version is not None:
        actions.append(MoveLabel(prompt.name, prompt.stable_label, release.candidate_version))
        actions.append(MoveLabel(prompt.name, prompt.canary_label, release.candidate_version))
    weight = 100.0 if _canary_of(policy) is not None else 0.0
    actions.append(SetWeight(weight))
    promoted = replace(
        release, phase=Phase.PROMOTED, canary_weight=weight, updated_at=now, reason=reason
    )
    return Change(Transition.PROMOTE, promoted, tuple(actions))


def await_approval(release: ReleaseState, *, now: float, reason: str) -> Change:
    """The last step passed and the policy wants a person's approval: the canary keeps
    its weight and is still judged while the rollout waits."""
    waiting = replace(
        release, phase=Phase.APPROVAL, approval_since=now, updated_at=now, reason=reason
    )
    return Change(Transition.AWAIT_APPROVAL, waiting)


def approve(release: ReleaseState, policy: Policy, *, now: float, reason: str) -> Change:
    """A person approved the rollout waiting for it: it is promoted."""
    promoted = promote(release, policy, now=now, reason=reason)
    return Change(Transition.APPROVE, promoted.release, promoted.actions)


def approval_timed_out(release: ReleaseState, policy: Policy, now: float) -> str | None:
    """Why a rollout waiting for approval has waited too long (None: it has not)."""
    approval = policy.approval
    since = release.approval_since
    if release.phase is not Phase.APPROVAL or approval is None or since is None:
        return None
    if now - since < approval.timeout:
        return None
    return f"no approval within {format_duration(approval.timeout)} (approval.timeout)"


def rollback(
    release: ReleaseState,
    policy: Policy,
    *,
    now: float,
    reason: str,
    stable_before_promotion: int | None = None,
) -> Change:
    """Traffic off the candidate first (local, in force within a second), then a promoted
    stable label back where it was, and the canary label parked on the stable version.

    ``stable_before_promotion``: where the stable label was before this rollout promoted
    (from the label history); the rollout's stable version when unknown.
    """
    actions: list[Act] = [SetWeight(0.0)]
    prompt = policy.target.prompt
    if prompt is not None and release.stable_version is not None:
        if release.phase is Phase.PROMOTED:
            back = stable_before_promotion or release.stable_version
            actions.append(MoveLabel(prompt.name, prompt.stable_label, back))
        actions.append(MoveLabel(prompt.name, prompt.canary_label, release.stable_version))
    rolled = replace(
        release, phase=Phase.ROLLED_BACK, canary_weight=0.0, updated_at=now, reason=reason
    )
    return Change(Transition.ROLLBACK, rolled, tuple(actions))


def pause(release: ReleaseState, *, now: float, reason: str) -> Change:
    paused = replace(
        release, phase=Phase.PAUSED, resume_phase=release.phase, updated_at=now, reason=reason
    )
    return Change(Transition.PAUSE, paused)


def resume(release: ReleaseState, *, now: float, reason: str) -> Change:
    phase = release.resume_phase or Phase.CANARY
    resumed = replace(
        release,
        phase=phase,
        resume_phase=None,
        updated_at=now,
        reason=reason,
        # back to waiting for approval: the wait starts again
        approval_since=now if phase is Phase.APPROVAL else release.approval_since,
        # back to a rung: it runs again (a dataset run anew, a shadow rung's pairs afresh)
        rung_since=now if phase in RUNGS else release.rung_since,
    )
    return Change(Transition.RESUME, resumed)


def abort(release: ReleaseState, *, now: float, reason: str) -> Change:
    """The rollout ends where it stands: no traffic to the canary, labels left as they are."""
    aborted = replace(
        release, phase=Phase.ABORTED, canary_weight=0.0, updated_at=now, reason=reason
    )
    return Change(Transition.ABORT, aborted, (SetWeight(0.0),))


def decided(
    release: ReleaseState, policy: Policy, decision: Decision, *, now: float, reason: str
) -> Change:
    """What one of the judge's decisions (not CONTINUE) does to a running rollout."""
    if decision is Decision.ADVANCE:
        return advance(release, policy, now=now, reason=reason)
    if decision is Decision.PROMOTE:
        return promote(release, policy, now=now, reason=reason)
    if decision is Decision.ROLLBACK:
        return rollback(release, policy, now=now, reason=reason)
    if decision is Decision.PAUSE:
        return pause(release, now=now, reason=reason)
    raise ValueError(f"decision {decision.value!r} changes nothing")


def refusal(release: ReleaseState, transition: Transition) -> str | None:
    """Why a person may not ask for ``transition`` now (None: they may)."""
    phase = release.phase
    allowed = {
        Transition.PROMOTE: phase in RUNNING,
        Transition.ROLLBACK: phase in RUNNING or phase is Phase.PROMOTED,
        Transition.PAUSE: phase in (Phase.CANARY, Phase.APPROVAL) or phase in RUNGS,
        Transition.APPROVE: phase is Phase.APPROVAL,
        Transition.RESUME: phase is Phase.PAUSED,
        Transition.ABORT: phase in RUNNING,
        Transition.START: phase is Phase.PENDING or phase in FINISHED,
    }.get(transition, False)
    if allowed:
        return None
    where = (
        "it is pending" if phase is Phase.PENDING else f"rollout {release.rollout} is {phase.value}"
    )
    hint = ""
    if transition is Transition.APPROVE and phase is Phase.CANARY:
        hint = f" at step {release.step + 1}: it waits for approval once its last step passes"
    elif transition is Transition.RESUME and phase in FINISHED:
        hint = f"; `coalmine start {release.name}` begins the next rollout"
    elif transition is Transition.START and phase in RUNNING:
        hint = "; abort or roll it back first"
    return f"cannot {transition.value} release {release.name!r}: {where}{hint}"


def judged_by(release: ReleaseState, fallback: Policy) -> tuple[Policy, str | None]:
    """The policy a rollout judges by: the one it started with (edits wait for the next
    rollout), or ``fallback`` before any rollout. When the stored document no longer
    loads, ``fallback`` with the reason, for the caller to report."""
    if not release.rollout_policy:
        return fallback, None
    try:
        return Policy.model_validate_json(release.rollout_policy), None
    except ValueError as error:
        return fallback, (
            f"the policy rollout {release.rollout} started with no longer loads ({error}); "
            "judging by the policy file as it is now"
        )
