"""The answer to an external rollout's question: is the candidate worse than the baseline?

Argo Rollouts (its ``web`` metric provider) and Flagger (its webhooks) move the traffic
of a release whose policy says ``routing.provider: none``, and ask coalmine through the
admin API for one word about the current rollout, with the evidence behind it:

- ``nodata``: no rollout yet, no judgement of it yet, or it judges another version than
  the one asked about;
- ``fail``: rolled back, or its last judgement rolls back or shows a critical metric
  worse than tolerated;
- ``pass``: promoted (coalmine promotes in the tick its judge says so, unless it holds
  the promotion back on evidence not read up to date: that one must not pass);
- ``inconclusive``: anything else (still gathering, not yet shown, paused, waiting for
  approval, aborted). Missing data is never a pass.

Asked about a step (``step=N``, counted from 1), ``pass`` also means the rollout has
moved past step N: the external rollout may set the next step's weight.

Pure: from the release as stored, the policy it is judged by and its last judgement (in
the shape ``controller.evidence_log.judgement_summary`` gives) to the answer's JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from controller.judge import Decision, Verdict
from controller.lifecycle import ReleaseState
from policies.domain import Phase
from policies.model import Policy

GATES: Final = ("rollout", "promotion")
"""Flagger's webhook gates: ``rollout`` (its analysis, every interval: a closed gate is a
failed check) and ``promotion`` (``confirm-promotion``: promotion waits while closed)."""

RUNGS: Final = frozenset({Phase.DATASET, Phase.SHADOW})
ON_STEPS: Final = frozenset({Phase.CANARY, Phase.APPROVAL, Phase.PAUSED})


@dataclass(frozen=True, slots=True)
class Question:
    """What the external rollout asks about: a version of the candidate (None: whatever
    the current rollout judges) and a step counted from 1 (None: the whole rollout)."""

    version: str | None = None
    step: int | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    verdict: Verdict
    reason: str


def analysis(
    release: ReleaseState,
    policy: Policy | None,
    judgement: Mapping[str, Any] | None,
    source: str | None,
    question: Question,
) -> dict[str, Any]:
    """The answer's JSON: the verdict and why, the rollout's place, the last judgement's
    decision and per-metric evidence. ``policy`` is the one the rollout is judged by;
    ``source`` says where the judgement came from (``live``, ``decision-log``)."""
    answer = verdict_of(release, policy, judgement, question)
    metrics: Sequence[Mapping[str, Any]] = judgement.get("metrics", ()) if judgement else ()
    return {
        "release": release.name,
        "rollout": release.rollout or None,
        "phase": release.phase.value,
        "verdict": answer.verdict.value,
        "reason": answer.reason,
        "decision": None if judgement is None else judgement.get("decision"),
        "at": None if judgement is None else judgement.get("at"),
        "step": release.step + 1 if release.step_starts else None,
        "steps": None if policy is None else len(policy.steps),
        "canaryWeight": release.canary_weight,
        "versions": sorted(versions_of(release, policy)),
        "judgementSource": source,
        "metrics": [_metric(metric) for metric in metrics],
    }


def verdict_of(
    release: ReleaseState,
    policy: Policy | None,
    judgement: Mapping[str, Any] | None,
    question: Question,
) -> Answer:
    """The verdict on the release's current rollout, as the module says."""
    if release.rollout == 0 or release.phase is Phase.PENDING:
        return Answer(Verdict.NODATA, release.waiting or "no rollout has started yet")
    rollout = f"rollout {release.rollout}"
    versions = versions_of(release, policy)
    if question.version is not None and question.version not in versions:
        judged = ", ".join(sorted(versions)) or "a candidate without a version"
        return Answer(
            Verdict.NODATA,
            f"{rollout} judges {judged}, not {question.version}: "
            "coalmine has not started judging that version",
        )
    if release.phase is Phase.ROLLED_BACK:
        return Answer(Verdict.FAIL, f"{rollout} was rolled back: {release.reason}")
    if release.phase is Phase.PROMOTED:
        return Answer(Verdict.PASS, f"{rollout} was promoted: {release.reason}")
    worse = shown_worse(judgement)
    if worse is not None:
        return Answer(Verdict.FAIL, f"{rollout}: {worse}")
    return _undecided(release, policy, judgement, question.step)


def _undecided(
    release: ReleaseState,
    policy: Policy | None,
    judgement: Mapping[str, Any] | None,
    step: int | None,
) -> Answer:
    """The verdict on a rollout neither finished nor shown worse: past the step asked
    about, or not yet judged, or not yet shown either way."""
    rollout = f"rollout {release.rollout}"
    if release.phase is Phase.ABORTED:
        return Answer(Verdict.INCONCLUSIVE, f"{rollout} was aborted: {release.reason}")
    if step is not None and past_step(release, policy, step):
        return Answer(
            Verdict.PASS, f"{rollout} has passed step {step}: it is at step {release.step + 1}"
        )
    if release.phase in RUNGS:
        return Answer(
            Verdict.NODATA,
            f"{rollout} is at its {release.phase.value} rung: the canary steps have not started",
        )
    if judgement is None:
        return Answer(Verdict.NODATA, f"{rollout} has no judgement yet")
    if release.phase is Phase.APPROVAL:
        return Answer(Verdict.INCONCLUSIVE, f"{rollout} passed every step and waits for approval")
    if release.phase is Phase.PAUSED:
        return Answer(Verdict.INCONCLUSIVE, f"{rollout} is paused: {release.reason}")
    where = "" if step is None else f" (at step {release.step + 1}, asked about step {step})"
    return Answer(Verdict.INCONCLUSIVE, f"{rollout}{where}: {judgement.get('reason') or 'judging'}")


def shown_worse(judgement: Mapping[str, Any] | None) -> str | None:
    """Why the judgement shows the candidate worse (its decision rolls back, or a
    critical metric fails), None when it does not."""
    if judgement is None:
        return None
    if judgement.get("decision") == Decision.ROLLBACK.value:
        return f"the judge decided to roll back: {judgement.get('reason', '')}"
    failed = [
        str(metric.get("name"))
        for metric in judgement.get("metrics", ())
        if metric.get("critical") and metric.get("verdict") == Verdict.FAIL.value
    ]
    if failed:
        return f"critical metric shown worse: {', '.join(failed)}"
    return None


def past_step(release: ReleaseState, policy: Policy | None, step: int) -> bool:
    """Whether the rollout has moved past ``step`` (counted from 1) of its canary steps:
    it judges a later step, or waits for approval after it (past the last step is
    promoted, which the caller has answered)."""
    if release.phase not in ON_STEPS or not release.step_starts:
        return False
    if policy is not None and step >= len(policy.steps):
        return False
    return release.step + 1 > step


def versions_of(release: ReleaseState, policy: Policy | None) -> set[str]:
    """What ``version`` may say to ask about the current rollout: the agent candidate's
    ``target.version`` it started with, and its prompt candidate's version number."""
    versions: set[str] = set()
    if policy is not None and policy.target.version is not None:
        versions.add(policy.target.version)
    if release.candidate_version is not None:
        versions.add(str(release.candidate_version))
    return versions


def gate_open(gate: str, verdict: Verdict) -> bool:
    """Whether a Flagger gate lets the canary go on: ``rollout`` unless the candidate
    failed, ``promotion`` only once it passed."""
    if gate == "rollout":
        return verdict is not Verdict.FAIL
    if gate == "promotion":
        return verdict is Verdict.PASS
    raise ValueError(f"unknown gate {gate!r}: one of {', '.join(GATES)}")


def _metric(metric: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": metric.get("name"),
        "verdict": metric.get("verdict"),
        "critical": metric.get("critical"),
        "scale": metric.get("scale"),
        "estimate": metric.get("estimate"),
        "lower": metric.get("lower"),
        "upper": metric.get("upper"),
        "nBaseline": metric.get("nBaseline"),
        "nCanary": metric.get("nCanary"),
    }
