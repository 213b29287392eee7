"""The release ladder in the state machine, by tables of literal cases: where a rollout
begins, where each rung leads, what a failing rung does, and what a person may ask for
at a rung."""

from __future__ import annotations

from dataclasses import replace

import pytest

from coalmine.shared.routing_tables.table import initial_table
from controller import lifecycle
from controller.actions import wanted_shadow
from controller.lifecycle import Candidate, MoveLabel, ReleaseState, SetWeight, Transition
from policies import Policy
from policies.domain import Phase
from policies.loader import load_policy_text

HEAD = """\
apiVersion: coalmine/v1
kind: Release
name: support
target:
  prompt: {name: support-agent}
steps:
  - {weight: 10, minDuration: 10m}
  - {weight: 50, minDuration: 10m}
analysis:
  metrics:
    - {name: errors, source: error_rate, tolerance: 0.03, critical: true}
"""
DATASET = """\
dataset:
  name: golden-qa
  path: /v1/answer
  metric: {score: quality, tolerance: 0.02}
  evaluator: {langfuse: true}
"""
SHADOW = """\
shadow:
  upstream: http://staging.internal:8080
  percent: 100
  gate:
    metric: {score: quality, tolerance: 0.02}
"""
PLAIN_SHADOW = """\
shadow:
  upstream: http://staging.internal:8080
  percent: 10
"""

T = 1_000.0
CANDIDATE = Candidate(3, 4, None, "candidate version 4 against stable version 3")


def policy(*parts: str) -> Policy:
    return load_policy_text(HEAD + "".join(parts), "support.yaml")


def started(ladder: Policy) -> lifecycle.Change:
    release = lifecycle.pending("support", "d", now=T - 5)
    return lifecycle.start(release, ladder, CANDIDATE, "d", now=T)


@pytest.mark.parametrize(
    ("parts", "first", "weight", "step_starts", "rung_since"),
    [
        ((), Phase.CANARY, 10.0, (T,), None),
        ((DATASET,), Phase.DATASET, 0.0, (), T),
        ((SHADOW,), Phase.SHADOW, 0.0, (), T),
        ((DATASET, SHADOW), Phase.DATASET, 0.0, (), T),
        ((PLAIN_SHADOW,), Phase.CANARY, 10.0, (T,), None),
        ((DATASET, PLAIN_SHADOW), Phase.DATASET, 0.0, (), T),
    ],
)
def test_a_rollout_begins_at_its_first_rung(
    parts: tuple[str, ...],
    first: Phase,
    weight: float,
    step_starts: tuple[float, ...],
    rung_since: float | None,
) -> None:
    change = started(policy(*parts))
    assert change.transition is Transition.START
    assert change.release.phase is first
    assert change.release.canary_weight == weight
    assert change.release.step_starts == step_starts
    assert change.release.rung_since == rung_since
    assert change.actions == (SetWeight(weight),)
    assert change.release.running


@pytest.mark.parametrize(
    ("parts", "at", "then", "weight"),
    [
        ((DATASET,), Phase.DATASET, Phase.CANARY, 10.0),
        ((DATASET, SHADOW), Phase.DATASET, Phase.SHADOW, 0.0),
        ((DATASET, SHADOW), Phase.SHADOW, Phase.CANARY, 10.0),
        ((SHADOW,), Phase.SHADOW, Phase.CANARY, 10.0),
        ((DATASET, PLAIN_SHADOW), Phase.DATASET, Phase.CANARY, 10.0),
    ],
)
def test_a_passed_rung_leads_to_the_next_one(
    parts: tuple[str, ...], at: Phase, then: Phase, weight: float
) -> None:
    ladder = policy(*parts)
    release = replace(started(ladder).release, phase=at, rung_since=T)
    change = lifecycle.pass_rung(release, ladder, now=T + 60, reason="passed")
    assert change.transition is Transition.PASS_RUNG
    assert change.release.phase is then
    assert change.actions == (SetWeight(weight),)
    if then is Phase.CANARY:
        assert change.release.step_starts == (T + 60,)
        assert change.release.step == 0
        assert change.release.rung_since is None
    else:
        assert change.release.step_starts == ()
        assert change.release.rung_since == T + 60


def test_passing_is_refused_off_the_rungs() -> None:
    ladder = policy(DATASET)
    canary = replace(started(ladder).release, phase=Phase.CANARY, step_starts=(T,))
    with pytest.raises(ValueError, match="not at a rung"):
        lifecycle.pass_rung(canary, ladder, now=T, reason="x")


@pytest.mark.parametrize("at", [Phase.DATASET, Phase.SHADOW])
def test_a_failing_rung_parks_the_label_and_changes_nothing_live(at: Phase) -> None:
    ladder = policy(DATASET, SHADOW)
    release = replace(started(ladder).release, phase=at)
    change = lifecycle.rollback(release, ladder, now=T + 60, reason="worse")
    assert change.release.phase is Phase.ROLLED_BACK
    # no stable label move: nothing was promoted; the canary label back on the stable version
    assert change.actions == (SetWeight(0.0), MoveLabel("support-agent", "canary", 3))


@pytest.mark.parametrize("at", [Phase.DATASET, Phase.SHADOW])
def test_a_paused_rung_resumes_afresh(at: Phase) -> None:
    ladder = policy(DATASET, SHADOW)
    release = replace(started(ladder).release, phase=at, dataset_attempt=1)
    paused = lifecycle.pause(release, now=T + 60, reason="inconclusive").release
    assert paused.phase is Phase.PAUSED and paused.resume_phase is at
    resumed = lifecycle.resume(paused, now=T + 600, reason="again").release
    assert resumed.phase is at
    assert resumed.rung_since == T + 600
    assert resumed.dataset_attempt == 1  # the loop counts the next attempt when it runs


@pytest.mark.parametrize(
    ("phase", "allowed"),
    [
        (
            Phase.DATASET,
            {Transition.PROMOTE, Transition.ROLLBACK, Transition.PAUSE, Transition.ABORT},
        ),
        (
            Phase.SHADOW,
            {Transition.PROMOTE, Transition.ROLLBACK, Transition.PAUSE, Transition.ABORT},
        ),
    ],
)
def test_what_a_person_may_ask_for_at_a_rung(phase: Phase, allowed: set[Transition]) -> None:
    release = replace(started(policy(DATASET, SHADOW)).release, phase=phase)
    assert {t for t in lifecycle.MANUAL if lifecycle.refusal(release, t) is None} == allowed


def test_the_rung_state_survives_the_state_file() -> None:
    release = replace(started(policy(DATASET)).release, dataset_attempt=3)
    again = ReleaseState.from_json(release.to_json())
    assert again == release
    assert again.judged_since == T
    canary = lifecycle.pass_rung(again, policy(DATASET), now=T + 9, reason="ok").release
    assert ReleaseState.from_json(canary.to_json()).judged_since == T + 9


@pytest.mark.parametrize(
    ("phase", "mirrored"),
    [
        (Phase.DATASET, False),
        (Phase.SHADOW, True),
        (Phase.CANARY, False),
        (Phase.APPROVAL, False),
        (Phase.PAUSED, False),
        (Phase.ROLLED_BACK, False),
    ],
)
def test_a_shadow_rung_mirrors_only_while_the_rollout_stands_at_it(
    phase: Phase, mirrored: bool
) -> None:
    assert (wanted_shadow(policy(DATASET, SHADOW), phase) is not None) is mirrored


@pytest.mark.parametrize(
    ("phase", "mirrored"),
    [(Phase.DATASET, True), (Phase.CANARY, True), (Phase.PAUSED, True), (Phase.PROMOTED, False)],
)
def test_a_plain_shadow_mirrors_until_the_rollout_ends(phase: Phase, mirrored: bool) -> None:
    assert (wanted_shadow(policy(DATASET, PLAIN_SHADOW), phase) is not None) is mirrored


def test_a_table_no_rollout_has_set_mirrors_only_a_plain_shadow() -> None:
    assert initial_table(policy(DATASET, SHADOW)).shadow is None
    assert initial_table(policy(PLAIN_SHADOW)).shadow is not None
