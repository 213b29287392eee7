"""The release state machine, by tables of literal cases: which candidate starts a rollout,
what each transition does to a release and which actions it journals, what a person may
ask for in each phase."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controller import lifecycle
from controller.judge import Decision
from controller.lifecycle import (
    Candidate,
    MoveLabel,
    ReleaseState,
    SetWeight,
    Sighting,
    Transition,
    Waiting,
)
from policies import Policy
from policies.domain import Phase
from policies.loader import load_policy_text

PROMPT_POLICY = """\
apiVersion: coalmine/v1
kind: Release
name: support
target:
  prompt: {name: support-agent, stableLabel: production, canaryLabel: canary}
steps:
  - {weight: 10, minDuration: 10m}
  - {weight: 50, minDuration: 10m}
analysis:
  metrics:
    - {name: errors, source: error_rate, tolerance: 0.03, critical: true}
"""

AGENT_POLICY = """\
apiVersion: coalmine/v1
kind: Release
name: agent
target:
  upstreams: {stable: "http://127.0.0.1:8001", canary: "http://127.0.0.1:8002"}
  version: "{version}"
steps:
  - {weight: 20, minDuration: 10m}
analysis:
  metrics:
    - {name: errors, source: error_rate, tolerance: 0.03, critical: true}
"""

T = 1_000.0


def prompt_policy() -> Policy:
    return load_policy_text(PROMPT_POLICY, "support.yaml")


def agent_policy(version: str = "v2") -> Policy:
    return load_policy_text(AGENT_POLICY.replace("{version}", version), "agent.yaml")


def ended(phase: Phase, *, rollout: int = 1, candidate: int | None = 4) -> ReleaseState:
    return ReleaseState(
        name="support",
        phase=phase,
        rollout=rollout,
        stable_version=3,
        candidate_version=candidate,
        step_starts=(T,),
    )


PENDING = ReleaseState(name="support", phase=Phase.PENDING)


@pytest.mark.parametrize(
    ("release", "stable", "canary", "again", "starts"),
    [
        # (release, stable label's version, canary label's version, start asked, starts?)
        (PENDING, 3, 4, False, True),
        (PENDING, 3, 3, False, False),  # the canary label on the stable version
        (PENDING, 3, None, False, False),  # no version carries the canary label
        (ended(Phase.PROMOTED), 4, 4, False, False),  # promoted: both labels on it
        (ended(Phase.PROMOTED), 4, 5, False, True),  # the next candidate
        (ended(Phase.ROLLED_BACK), 3, 3, False, False),  # parked
        (ended(Phase.ROLLED_BACK), 3, 4, False, False),  # the rolled-back version again
        (ended(Phase.ROLLED_BACK), 3, 4, True, True),  # ... unless a person asks
        (ended(Phase.ROLLED_BACK), 3, 5, False, True),
        (ended(Phase.ABORTED), 3, 4, False, False),  # aborted: waits for a person
        (ended(Phase.ABORTED), 3, 4, True, True),
        (ended(Phase.ABORTED), 3, 3, True, False),  # nothing to start even when asked
    ],
)
def test_which_prompt_version_starts_the_next_rollout(
    release: ReleaseState, stable: int, canary: int | None, again: bool, starts: bool
) -> None:
    found = lifecycle.find_candidate(
        release, prompt_policy(), Sighting(stable, canary), again=again
    )
    assert isinstance(found, Candidate) is starts
    if isinstance(found, Candidate):
        assert (found.stable_version, found.candidate_version) == (stable, canary)


def test_every_wait_says_why_and_what_starts_the_next_rollout() -> None:
    policy = prompt_policy()
    reasons = {
        "no label": lifecycle.find_candidate(PENDING, policy, Sighting(3, None)),
        "on stable": lifecycle.find_candidate(PENDING, policy, Sighting(3, 3)),
        "judged": lifecycle.find_candidate(ended(Phase.ROLLED_BACK), policy, Sighting(3, 4)),
    }
    assert all(isinstance(found, Waiting) for found in reasons.values())
    text = {key: found.reason for key, found in reasons.items() if isinstance(found, Waiting)}
    assert text["no label"] == (
        "waiting for a candidate: no version carries label 'canary' of prompt 'support-agent'"
    )
    assert "is on version 3, the stable version ('production')" in text["on stable"]
    assert "version 4 was judged by rollout 1 (rolled_back)" in text["judged"]
    assert "`coalmine start support`" in text["judged"]


@pytest.mark.parametrize(
    ("last_ref", "version", "again", "starts"),
    [
        (None, "v2", False, False),  # recorded before candidates were: taken as judged
        ("http://127.0.0.1:8002 (v1)", "v2", False, True),  # the pipeline bumped it
        ("http://127.0.0.1:8002 (v2)", "v2", False, False),
        ("http://127.0.0.1:8002 (v2)", "v2", True, True),
    ],
)
def test_an_agent_release_starts_again_when_its_version_changes(
    last_ref: str | None, version: str, again: bool, starts: bool
) -> None:
    release = replace(ended(Phase.PROMOTED, candidate=None), name="agent", candidate_ref=last_ref)
    found = lifecycle.find_candidate(release, agent_policy(version), Sighting(), again=again)
    assert isinstance(found, Candidate) is starts


def test_the_first_rollout_of_an_agent_release_starts_on_its_canary_upstream() -> None:
    found = lifecycle.find_candidate(replace(PENDING, name="agent"), agent_policy("v7"), Sighting())
    assert found == Candidate(
        None, None, "http://127.0.0.1:8002 (v7)", "candidate http://127.0.0.1:8002 (v7)"
    )


def test_a_start_numbers_the_rollout_and_pins_its_policy() -> None:
    policy = prompt_policy()
    candidate = Candidate(4, 5, None, "candidate version 5 against stable version 4")
    before = replace(ended(Phase.PROMOTED, rollout=2), waiting="waiting for a candidate")
    change = lifecycle.start(before, policy, candidate, "digest", now=T + 60)
    started = change.release
    assert change.transition is Transition.START
    assert change.actions == (SetWeight(10.0),)
    assert (started.rollout, started.phase, started.step, started.step_starts) == (
        3,
        Phase.CANARY,
        0,
        (T + 60,),
    )
    assert (started.stable_version, started.candidate_version) == (4, 5)
    assert started.waiting == ""
    assert started.policy_digest == "digest"
    assert lifecycle.judged_by(started, agent_policy()) == (policy, None)


def test_a_rollout_judges_by_the_policy_it_started_with() -> None:
    started = lifecycle.start(
        PENDING, prompt_policy(), Candidate(3, 4, None, "r"), "d", now=T
    ).release
    edited = load_policy_text(PROMPT_POLICY.replace("weight: 50", "weight: 40"), "support.yaml")
    judged, problem = lifecycle.judged_by(started, edited)
    assert problem is None
    assert [step.weight for step in judged.steps] == [10.0, 50.0]
    damaged = replace(started, rollout_policy='{"apiVersion": "coalmine/v1"}')
    judged, problem = lifecycle.judged_by(damaged, edited)
    assert judged is edited
    assert problem is not None and "no longer loads" in problem


@pytest.mark.parametrize(
    ("decision", "phase", "weight", "actions"),
    [
        (Decision.ADVANCE, Phase.CANARY, 50.0, (SetWeight(50.0),)),
        (
            Decision.PROMOTE,
            Phase.PROMOTED,
            0.0,
            (
                MoveLabel("support-agent", "production", 4),
                MoveLabel("support-agent", "canary", 4),
                SetWeight(0.0),
            ),
        ),
        (
            Decision.ROLLBACK,
            Phase.ROLLED_BACK,
            0.0,
            (SetWeight(0.0), MoveLabel("support-agent", "canary", 3)),
        ),
        (Decision.PAUSE, Phase.PAUSED, 10.0, ()),
    ],
)
def test_what_each_decision_does_to_a_running_rollout(
    decision: Decision, phase: Phase, weight: float, actions: tuple[object, ...]
) -> None:
    running = replace(ended(Phase.CANARY), canary_weight=10.0)
    change = lifecycle.decided(running, prompt_policy(), decision, now=T + 600, reason="why")
    assert (change.release.phase, change.release.canary_weight) == (phase, weight)
    assert change.actions == actions
    assert change.release.rollout == 1
    assert change.release.reason == "why"


def test_an_agent_promotion_sends_everything_to_the_canary_upstream() -> None:
    running = replace(ended(Phase.CANARY, candidate=None), name="agent")
    change = lifecycle.promote(running, agent_policy(), now=T, reason="passed")
    assert change.actions == (SetWeight(100.0),)


def test_rolling_back_a_promotion_puts_the_stable_label_where_it_was() -> None:
    promoted = ended(Phase.PROMOTED)
    change = lifecycle.rollback(
        promoted, prompt_policy(), now=T, reason="bad", stable_before_promotion=2
    )
    assert change.actions == (
        SetWeight(0.0),
        MoveLabel("support-agent", "production", 2),
        MoveLabel("support-agent", "canary", 3),
    )


def test_continue_changes_nothing() -> None:
    with pytest.raises(ValueError, match="changes nothing"):
        lifecycle.decided(ended(Phase.CANARY), prompt_policy(), Decision.CONTINUE, now=T, reason="")


def test_advance_past_the_last_step_is_refused() -> None:
    last = replace(ended(Phase.CANARY), step=1)
    with pytest.raises(ValueError, match="last step"):
        lifecycle.advance(last, prompt_policy(), now=T, reason="")


@pytest.mark.parametrize(
    ("phase", "allowed"),
    [
        (Phase.PENDING, {Transition.START}),
        (
            Phase.CANARY,
            {Transition.PROMOTE, Transition.ROLLBACK, Transition.PAUSE, Transition.ABORT},
        ),
        (
            Phase.PAUSED,
            {Transition.PROMOTE, Transition.ROLLBACK, Transition.RESUME, Transition.ABORT},
        ),
        (Phase.PROMOTED, {Transition.ROLLBACK, Transition.START}),
        (Phase.ROLLED_BACK, {Transition.START}),
        (Phase.ABORTED, {Transition.START}),
    ],
)
def test_what_a_person_may_ask_for_in_each_phase(phase: Phase, allowed: set[Transition]) -> None:
    release = ended(phase)
    assert {t for t in lifecycle.MANUAL if lifecycle.refusal(release, t) is None} == allowed


def test_a_refusal_points_to_what_to_do_instead() -> None:
    assert lifecycle.refusal(ended(Phase.ROLLED_BACK), Transition.RESUME) == (
        "cannot resume release 'support': rollout 1 is rolled_back; "
        "`coalmine start support` begins the next rollout"
    )
    assert lifecycle.refusal(ended(Phase.CANARY), Transition.START) == (
        "cannot start release 'support': rollout 1 is canary; abort or roll it back first"
    )


@pytest.mark.parametrize(
    ("seen", "why"),
    [
        (Sighting(3, 4), None),
        (Sighting(3, None), None),  # a label read that found nothing is not a new candidate
        (Sighting(3, 5), "label 'canary' moved from version 4 to 5"),
    ],
)
def test_a_running_rollout_is_superseded_when_the_canary_label_moves(
    seen: Sighting, why: str | None
) -> None:
    assert lifecycle.superseded(ended(Phase.CANARY), prompt_policy(), seen) == why


def test_a_state_document_written_before_rollouts_reads_as_one_rollout() -> None:
    old = (
        '{"name": "support", "phase": "promoted", "step": 1, "stepStarts": [1.0, 2.0], '
        '"canaryWeight": 0.0, "stableVersion": 3, "candidateVersion": 4}'
    )
    release = ReleaseState.from_json(old)
    assert (release.rollout, release.candidate_ref, release.rollout_policy) == (1, None, "")
    assert ReleaseState.from_json(release.to_json()) == release
    pending = ReleaseState.from_json(old.replace('"promoted"', '"pending"'))
    assert pending.rollout == 0


def test_a_rollout_waiting_for_approval_keeps_when_it_began_to_wait() -> None:
    running = ended(Phase.CANARY)
    waiting = lifecycle.await_approval(running, now=500.0, reason="last step passed").release
    assert (waiting.phase, waiting.approval_since) == (Phase.APPROVAL, 500.0)
    assert waiting.canary_weight == running.canary_weight
    assert ReleaseState.from_json(waiting.to_json()) == waiting
    assert ReleaseState.from_json(running.to_json()).approval_since is None
    paused = lifecycle.pause(waiting, now=600.0, reason="hold").release
    resumed = lifecycle.resume(paused, now=900.0, reason="go on").release
    assert (resumed.phase, resumed.approval_since) == (Phase.APPROVAL, 900.0)
    assert lifecycle.refusal(waiting, lifecycle.Transition.APPROVE) is None
    assert lifecycle.refusal(waiting, lifecycle.Transition.PAUSE) is None
    refused = lifecycle.refusal(running, lifecycle.Transition.APPROVE)
    assert refused is not None and "waits for approval once its last step passes" in refused
