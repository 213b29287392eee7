"""The ladder in the controller's loop: the dataset rung run by a static runner, the
shadow rung judged on mirrored copies of the rig's traffic, and what each outcome does to
the rollout, its routing table and its labels."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller.ladder.dataset_gate import ArmEndpoint, GateOutcome, GateResult
from controller.loop import Controller
from policies import load_policy_text
from policies.domain import Arm, Phase
from policies.model import DatasetGate
from tests.controller.release_rig import MINUTE, POLICY, RELEASE, Rig, make_rig

DATASET = """\
dataset:
  name: golden
  metric: {score: helpfulness, tolerance: 0.02}
  evaluator: {langfuse: true}
"""
SHADOW = """\
shadow:
  upstream: http://127.0.0.1:9
  percent: 50
  gate:
    metric: {score: helpfulness, tolerance: 0.02}
    minPairs: 30
    maxDuration: 1h
"""


@dataclass
class StaticRunner:
    """A dataset runner whose runs end after ``takes`` seconds with ``outcomes[attempt]``."""

    outcomes: dict[int, GateOutcome]
    takes: float = 3 * MINUTE
    started: dict[tuple[str, int, int], float] = field(default_factory=dict)
    arms: list[dict[Arm, ArmEndpoint]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    def ensure(
        self,
        release: str,
        rollout: int,
        attempt: int,
        gate: DatasetGate,
        arms: dict[Arm, ArmEndpoint],
        now: float,
    ) -> None:
        self.started.setdefault((release, rollout, attempt), now)
        self.arms.append(arms)

    def result(self, release: str, rollout: int, attempt: int, now: float) -> GateResult | None:
        began = self.started.get((release, rollout, attempt))
        if began is None:
            return None
        if now - began < self.takes:
            return GateResult(None, f"attempt {attempt}: running", {"pairs": 0})
        outcome = self.outcomes[attempt]
        return GateResult(outcome, f"attempt {attempt}: {outcome.value}", {"pairs": 50})

    def cancel(self, release: str) -> None:
        self.cancelled.append(release)

    def close(self) -> None:
        pass


def ladder_rig(tmp_path: Path, *parts: str, **traffic: Any) -> Rig:
    rig = make_rig(tmp_path, **traffic)
    rig.policies[RELEASE] = load_policy_text(POLICY + "".join(parts), "support.yaml")
    rig.controller.rungs.app_url = "http://127.0.0.1:9"
    return rig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = ladder_rig(tmp_path, DATASET)
    yield rig
    rig.close()


def decisions(rig: Rig) -> list[str]:
    return [record.decision for record in rig.state.decisions(RELEASE)]


def weight(rig: Rig) -> float:
    table = rig.routing.read(RELEASE)
    assert table is not None
    return table.canary_weight


def test_a_passed_dataset_rung_starts_the_canary_steps(rig: Rig) -> None:
    runner = StaticRunner({1: GateOutcome.PASSED})
    rig.controller.rungs.datasets = runner
    rig.run(2)
    assert rig.release().phase is Phase.DATASET
    assert weight(rig) == 0.0
    assert list(runner.started) == [(RELEASE, 1, 1)]
    assert rig.release().dataset_attempt == 1
    # both arms reach the prompt release's application, each with its label
    headers = {arm: dict(endpoint.headers) for arm, endpoint in runner.arms[0].items()}
    assert headers[Arm.CANARY]["x-coalmine-prompt-label"] == "canary"
    assert headers[Arm.BASELINE]["x-coalmine-prompt-label"] == "production"
    rig.run(5, until=Phase.CANARY)
    release = rig.release()
    assert release.phase is Phase.CANARY and release.step == 0
    assert release.step_starts == (rig.now,)
    assert weight(rig) == 10.0
    assert decisions(rig) == ["start", "pass_rung"]
    passed = rig.state.decisions(RELEASE)[-1]
    assert passed.evidence == {"rung": "dataset", "pairs": 50}
    # the canary's evidence starts with its first step: nothing of the rung's time in it
    began = rig.now
    rig.run(1)
    assert rig.controller.live[RELEASE].started_at == began
    assert rig.controller.live[RELEASE].evidence.started_at == began


def test_a_blocked_dataset_rung_rolls_back_with_no_user_ever_on_the_candidate(rig: Rig) -> None:
    rig.controller.rungs.datasets = StaticRunner({1: GateOutcome.BLOCKED})
    seen: list[float] = []
    for _ in range(6):
        rig.run(1)
        seen.append(weight(rig))
    assert rig.release().phase is Phase.ROLLED_BACK
    assert set(seen) == {0.0}
    assert rig.labels.positions == {"production": 3, "canary": 3, "latest": 4}
    assert decisions(rig) == ["start", "rollback"]


def test_an_inconclusive_dataset_rung_pauses_and_resumes_as_a_new_attempt(rig: Rig) -> None:
    runner = StaticRunner({1: GateOutcome.INCONCLUSIVE, 2: GateOutcome.PASSED})
    rig.controller.rungs.datasets = runner
    rig.run(6, until=Phase.PAUSED)
    paused = rig.release()
    assert paused.phase is Phase.PAUSED and paused.resume_phase is Phase.DATASET
    assert paused.reason == "inconclusive: attempt 1: inconclusive"
    assert RELEASE in runner.cancelled
    rig.run(3)
    assert rig.release().phase is Phase.PAUSED  # nothing runs while paused
    rig.controller.manual(RELEASE, "resume", actor="sre", now=rig.now)
    rig.run(6, until=Phase.CANARY)
    assert rig.release().phase is Phase.CANARY
    assert [key[2] for key in runner.started] == [1, 2]
    assert decisions(rig) == ["start", "pause", "resume", "pass_rung"]


def test_a_restart_runs_the_dataset_again_as_the_next_attempt(rig: Rig) -> None:
    first = StaticRunner({1: GateOutcome.PASSED}, takes=60 * MINUTE)
    rig.controller.rungs.datasets = first
    rig.run(3)
    assert rig.release().dataset_attempt == 1
    again = Controller(
        state=rig.state,
        routing=rig.routing,
        source=rig.traffic,
        labels=rig.labels,
        policies=lambda: rig.policies,
    )
    again.rungs.app_url = "http://127.0.0.1:9"
    second = StaticRunner({2: GateOutcome.PASSED})
    again.rungs.datasets = second
    rig.controller = again
    rig.run(6, until=Phase.CANARY)
    assert list(second.started) == [(RELEASE, 1, 2)]
    assert rig.release().phase is Phase.CANARY


def test_items_wait_for_the_app_prompt_caches_and_the_attempt_is_counted_once(
    tmp_path: Path,
) -> None:
    rig = ladder_rig(tmp_path, DATASET + "  startAfter: 5m\n")
    try:
        runner = StaticRunner({1: GateOutcome.PASSED})
        rig.controller.rungs.datasets = runner
        rig.run(3)
        release = rig.release()
        assert release.phase is Phase.DATASET and runner.started == {}
        assert release.dataset_attempt == 0
        view = rig.controller.rungs.view_of(release)
        assert view is not None and "startAfter" in view["reason"]
        rig.run(4)
        assert list(runner.started) == [(RELEASE, 1, 1)]
        assert rig.release().dataset_attempt == 1
    finally:
        rig.close()


def test_a_new_rollout_never_shows_the_last_rung_view(rig: Rig) -> None:
    rig.controller.rungs.datasets = StaticRunner({1: GateOutcome.BLOCKED, 2: GateOutcome.PASSED})
    rig.run(6, until=Phase.ROLLED_BACK)
    assert rig.controller.rungs.view_of(rig.release()) is None
    rig.labels.move("support-agent", "canary", 5)
    rig.run(1)
    release = rig.release()
    assert (release.rollout, release.phase) == (2, Phase.DATASET)
    view = rig.controller.rungs.view_of(release)
    assert view is None or view["outcome"] is None  # never rollout 1's "blocked"


def test_without_a_runner_the_dataset_rung_pauses_and_says_why(rig: Rig) -> None:
    rig.run(2)
    release = rig.release()
    assert release.phase is Phase.PAUSED
    assert "Langfuse is not configured" in release.reason


def test_a_prompt_release_without_the_application_url_pauses(rig: Rig) -> None:
    rig.controller.rungs.datasets = StaticRunner({1: GateOutcome.PASSED})
    rig.controller.rungs.app_url = None
    rig.policies[RELEASE] = load_policy_text(
        (POLICY + DATASET).replace('  upstreams: {stable: "http://127.0.0.1:9"}\n', ""),
        "support.yaml",
    )
    rig.run(2)
    assert rig.release().phase is Phase.PAUSED
    assert "app_url" in rig.release().reason or "application" in rig.release().reason


def test_a_candidate_replaced_during_the_dataset_rung_ends_the_rollout(rig: Rig) -> None:
    runner = StaticRunner({1: GateOutcome.PASSED, 2: GateOutcome.PASSED}, takes=30 * MINUTE)
    rig.controller.rungs.datasets = runner
    rig.run(2)
    rig.labels.move("support-agent", "canary", 5)
    rig.run(2)
    assert decisions(rig)[:3] == ["start", "abort", "start"]
    assert rig.release().rollout == 2
    assert rig.release().candidate_version == 5
    assert RELEASE in runner.cancelled


@pytest.mark.parametrize(
    ("delta", "phase", "decision"),
    [(0.0, Phase.CANARY, "pass_rung"), (-0.3, Phase.ROLLED_BACK, "rollback")],
)
def test_the_shadow_rung_compares_each_copy_with_its_primary(
    tmp_path: Path, delta: float, phase: Phase, decision: str
) -> None:
    rig = ladder_rig(tmp_path, SHADOW, shadow_delta=delta)
    try:
        mirrored: list[bool] = []
        weights: list[float] = []
        for _ in range(30):
            rig.run(1)
            table = rig.routing.read(RELEASE)
            assert table is not None
            mirrored.append(table.shadow is not None)
            weights.append(table.canary_weight)
            if rig.release().phase is not Phase.SHADOW:
                break
        release = rig.release()
        assert release.phase is phase, release.reason
        assert decisions(rig) == ["start", decision]
        # mirrored while at the rung, no user on the candidate there; no mirror after it
        assert all(mirrored[:-1]) and not mirrored[-1]
        assert set(weights[:-1]) == {0.0}
        evidence = rig.state.decisions(RELEASE)[-1].evidence
        assert evidence["rung"] == "shadow"
        assert evidence["pairs"] >= 30
    finally:
        rig.close()


def test_a_shadow_rung_without_pairs_ends_inconclusive_at_max_duration(tmp_path: Path) -> None:
    rig = ladder_rig(tmp_path, SHADOW.replace("percent: 50", "percent: 0.001"))
    try:
        rig.run(70, until=Phase.PAUSED)
        release = rig.release()
        assert release.phase is Phase.PAUSED and release.resume_phase is Phase.SHADOW
        assert release.reason.startswith("inconclusive")
    finally:
        rig.close()
