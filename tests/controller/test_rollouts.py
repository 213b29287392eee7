"""A release that runs for months: one candidate after another, each a numbered rollout
with its own decisions and label moves, on one controller that is never restarted."""

from __future__ import annotations

from pathlib import Path

import pytest

from coalmine.shared.routing_tables.store import SqliteRoutingStore
from controller.errors import ManualActionError
from controller.lifecycle import policy_digest
from controller.release_store import ControllerState
from policies.domain import Phase
from policies.loader import load_policy_text
from tests.controller.test_loop import POLICY, Labels, Rig, World, _controller


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    path = tmp_path / "state.db"
    state = ControllerState(path)
    world = World(SqliteRoutingStore(path))
    labels = Labels()
    policies = {"support": load_policy_text(POLICY, "support.yaml")}
    return Rig(path, labels, world, policies, _controller(state, world, labels, policies), state)


def release(rig: Rig):  # type: ignore[no-untyped-def]
    found = rig.state.release("support")
    assert found is not None
    return found


def new_version(rig: Rig, version: int, *, good: bool) -> None:
    """The team labels a new prompt version ``canary``; it answers well or badly."""
    rig.labels.positions["canary"] = version
    rig.labels.positions["latest"] = version
    rig.world.canary_error = 0.01 if good else 0.25


def test_three_candidates_in_a_row_without_a_restart(rig: Rig) -> None:
    new_version(rig, 4, good=False)
    rig.run(240, until=Phase.ROLLED_BACK)
    assert (release(rig).rollout, release(rig).phase) == (1, Phase.ROLLED_BACK)
    rig.run(3)
    assert release(rig).phase is Phase.ROLLED_BACK  # parked: nothing new to roll out

    new_version(rig, 5, good=True)
    rig.run(1)
    assert (release(rig).rollout, release(rig).phase) == (2, Phase.CANARY)
    assert (release(rig).stable_version, release(rig).candidate_version) == (3, 5)
    rig.run(600, until=Phase.PROMOTED)
    assert release(rig).rollout == 2

    new_version(rig, 6, good=True)
    rig.run(2)
    assert (release(rig).rollout, release(rig).candidate_version) == (3, 6)
    rig.run(600, until=Phase.PROMOTED)
    assert (release(rig).rollout, release(rig).phase) == (3, Phase.PROMOTED)
    assert rig.labels.positions["production"] == 6

    log = [(record.rollout, record.decision) for record in rig.state.decisions("support")]
    assert log == [
        (1, "start"),
        (1, "rollback"),
        (2, "start"),
        (2, "advance"),
        (2, "advance"),
        (2, "promote"),
        (3, "start"),
        (3, "advance"),
        (3, "advance"),
        (3, "promote"),
    ]
    moves = [
        (move.rollout, move.label, move.from_version, move.to_version)
        for move in rig.state.label_moves("support")
    ]
    # the canary label was put on 5 and 6 by hand: coalmine records only its own moves
    assert moves == [(1, "canary", 4, 3), (2, "production", 3, 5), (3, "production", 5, 6)]


def test_each_rollout_is_judged_on_its_own_traces(rig: Rig) -> None:
    new_version(rig, 4, good=True)
    rig.run(600, until=Phase.PROMOTED)
    first = release(rig).started_at
    new_version(rig, 5, good=False)
    rig.run(2)
    assert release(rig).started_at != first
    live = rig.controller.live["support"]
    assert live.started_at == release(rig).started_at
    rig.run(240, until=Phase.ROLLED_BACK)
    rollback = rig.state.decisions("support")[-1]
    assert (rollback.rollout, rollback.decision) == (2, "rollback")
    # the label goes back to the version rollout 2 started from, not rollout 1's stable
    assert rig.labels.positions == {"production": 4, "canary": 4, "latest": 5}


def test_a_rolled_back_version_waits_for_a_person(rig: Rig) -> None:
    new_version(rig, 4, good=False)
    rig.run(240, until=Phase.ROLLED_BACK)
    rig.labels.positions["canary"] = 4  # someone puts the label back on the bad version
    rig.run(3)
    assert release(rig).phase is Phase.ROLLED_BACK
    assert "version 4 was judged by rollout 1 (rolled_back)" in release(rig).waiting
    with pytest.raises(ManualActionError, match="start support` begins the next rollout"):
        rig.controller.manual("support", "resume", actor="ops", now=rig.now)
    started = rig.controller.manual("support", "start", actor="ops", now=rig.now)
    assert (started.rollout, started.phase, started.candidate_version) == (2, Phase.CANARY, 4)
    start = rig.state.decisions("support")[-1]
    assert (start.decision, start.actor, start.rollout) == ("start", "ops", 2)


def test_start_with_nothing_to_roll_out_says_why(rig: Rig) -> None:
    rig.run(600, until=Phase.PROMOTED)
    with pytest.raises(ManualActionError, match="is on version 4, the stable version"):
        rig.controller.manual("support", "start", actor="ops", now=rig.now)


def test_a_promoted_release_explains_that_it_waits_for_the_next_candidate(rig: Rig) -> None:
    rig.run(600, until=Phase.PROMOTED)
    rig.run(1)
    assert release(rig).waiting == (
        "waiting for a candidate: label 'canary' of prompt 'support-agent' is on version 4, "
        "the stable version ('production'); put it on a new version to start"
    )
    assert release(rig).reason != release(rig).waiting  # the promotion's reason is kept


def test_a_new_candidate_during_a_rollout_supersedes_it(rig: Rig) -> None:
    rig.run(5)
    assert release(rig).candidate_version == 4
    new_version(rig, 5, good=True)
    rig.run(1)
    abort, start = rig.state.decisions("support")[-2:]
    assert (abort.rollout, abort.decision, abort.reason) == (
        1,
        "abort",
        "superseded: label 'canary' moved from version 4 to 5",
    )
    assert (start.rollout, start.decision) == (2, "start")
    assert (release(rig).rollout, release(rig).candidate_version) == (2, 5)
    assert release(rig).phase is Phase.CANARY
    assert release(rig).started_at == rig.now
    assert rig.weight() == 10.0


def run_to_second_step(rig: Rig) -> None:
    for _ in range(60):
        rig.run(1)
        if release(rig).step == 1:
            return
    raise AssertionError("the rollout never reached its second step")


def test_an_edit_waits_for_the_next_rollout(rig: Rig) -> None:
    rig.run(2)
    running = release(rig)
    edited_text = POLICY.replace("{weight: 30, minDuration: 10m}", "{weight: 20, minDuration: 10m}")
    edited = load_policy_text(edited_text, "support.yaml")
    rig.policies["support"] = edited
    run_to_second_step(rig)
    assert rig.weight() == 30.0  # the rollout keeps the steps it started with
    assert release(rig).policy_digest == running.policy_digest != policy_digest(edited)
    rig.run(600, until=Phase.PROMOTED)

    new_version(rig, 5, good=True)
    rig.run(1)
    assert release(rig).policy_digest == policy_digest(edited)
    run_to_second_step(rig)
    assert rig.weight() == 20.0


def test_rollouts_and_their_numbers_survive_a_restart(rig: Rig) -> None:
    rig.run(600, until=Phase.PROMOTED)
    new_version(rig, 5, good=True)
    rig.run(3)
    rig.restart()
    rig.run(600, until=Phase.PROMOTED)
    assert release(rig).rollout == 2
    assert [r.rollout for r in rig.state.decisions("support")][-1] == 2


AGENT_POLICY = POLICY.replace(
    """  prompt: {name: support-agent}
  upstreams: {stable: "http://127.0.0.1:9"}
""",
    """  upstreams: {stable: "http://127.0.0.1:9", canary: "http://127.0.0.1:10"}
  version: "{version}"
""",
)


def agent(version: str):  # type: ignore[no-untyped-def]
    return load_policy_text(AGENT_POLICY.replace("{version}", version), "support.yaml")


def test_an_agent_release_rolls_out_each_new_target_version(rig: Rig) -> None:
    rig.policies["support"] = agent("2026.12.1")
    rig.run(600, until=Phase.PROMOTED)
    assert (release(rig).rollout, rig.weight()) == (1, 100.0)
    assert release(rig).candidate_ref == "http://127.0.0.1:10 (2026.12.1)"
    rig.run(3)
    assert release(rig).phase is Phase.PROMOTED
    assert "was judged by rollout 1 (promoted); change target.version" in release(rig).waiting

    rig.policies["support"] = agent("2026.12.2")
    rig.run(1)
    assert (release(rig).rollout, release(rig).phase) == (2, Phase.CANARY)
    assert release(rig).candidate_ref == "http://127.0.0.1:10 (2026.12.2)"
    assert rig.weight() == 10.0


def test_a_new_agent_version_during_a_rollout_supersedes_it(rig: Rig) -> None:
    rig.policies["support"] = agent("a")
    rig.run(3)
    rig.policies["support"] = agent("b")
    rig.run(1)
    log = [(r.rollout, r.decision) for r in rig.state.decisions("support")]
    assert log == [(1, "start"), (1, "abort"), (2, "start")]
    assert release(rig).reason.startswith("candidate http://127.0.0.1:10 (b)")
