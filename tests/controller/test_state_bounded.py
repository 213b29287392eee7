"""The state file of a running release stays bounded: a checkpoint of the release's
evidence lets the samples it holds go, and a controller restarted on it judges as one
that never stopped."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from coalmine.shared.routing_tables.store import SqliteRoutingStore
from controller.judge import Judgement
from controller.loop import CHECKPOINT_EVERY, READ_AGAIN
from controller.release_store import ControllerState
from policies.domain import Phase
from policies.loader import load_policy_text
from tests.controller.test_loop import MINUTE, Labels, Rig, World, _controller

RATE = 200
POLICY = """\
apiVersion: coalmine/v1
kind: Release
name: support
target:
  prompt: {name: support-agent, stableLabel: production, canaryLabel: canary}
  upstreams: {stable: "http://127.0.0.1:9"}
steps:
  - {weight: 50, minDuration: 24h, maxDuration: 48h}
analysis:
  interval: 1m
  minSamples: 50
  scoreTimeout: 5m
  metrics:
    - {name: errors, source: error_rate, tolerance: 0.03, critical: true}
    - {name: helpfulness, source: score, score: helpfulness, direction: higher,
       tolerance: 0.05, effectSize: 0.1, critical: true}
"""


def make(tmp_path: Path, name: str) -> Rig:
    path = tmp_path / name / "state.db"
    state = ControllerState(path)
    world = World(SqliteRoutingStore(path), rate=RATE, seed=5)
    labels = Labels()
    policies = {"support": load_policy_text(POLICY, "support.yaml")}
    return Rig(path, labels, world, policies, _controller(state, world, labels, policies), state)


def judgements(rig: Rig, minutes: int) -> list[Judgement]:
    looks: list[Judgement] = []
    for _ in range(minutes):
        rig.run(1)
        judgement = rig.controller.last_judgement("support")
        assert judgement is not None
        looks.append(judgement)
    return looks


def test_stored_samples_stay_bounded_while_a_release_runs(tmp_path: Path) -> None:
    rig = make(tmp_path, "bounded")
    # what a checkpoint keeps: the traces a poll may read again (readTimeout of 300 s by
    # default, plus READ_AGAIN), and those stored since the last checkpoint
    kept_minutes = (300.0 + READ_AGAIN + CHECKPOINT_EVERY) / MINUTE + 2
    counts = []
    for _ in range(5):
        rig.run(60)
        counts.append(rig.state.sample_counts())
    assert rig.phase() is Phase.CANARY
    assert sum(rig.world.served.values()) > 5 * 60 * RATE - RATE
    for traces, scores in counts[1:]:
        assert traces <= RATE * kept_minutes
        assert scores <= RATE * kept_minutes
    assert rig.state.checkpoint("support") is not None


def test_a_controller_restarted_on_a_checkpoint_judges_as_one_that_never_stopped(
    tmp_path: Path,
) -> None:
    steady, restarted = make(tmp_path, "steady"), make(tmp_path, "restarted")
    steady.run(185)
    restarted.run(185)  # checkpoints at 3 h, then five minutes more
    restarted.restart()
    before, _ = restarted.state.sample_counts()
    assert before < 185 * RATE / 2  # most of the release is in the checkpoint only
    after_steady = judgements(steady, 30)
    after_restart = judgements(restarted, 30)
    for one, other in zip(after_steady, after_restart, strict=True):
        assert one.decision == other.decision
        for a, b in zip(one.metrics, other.metrics, strict=True):
            assert (a.name, a.verdict, a.n_baseline, a.n_canary) == (
                b.name,
                b.verdict,
                b.n_baseline,
                b.n_canary,
            )
            # samples stored after the checkpoint are added in another order
            assert a.log_evalue == pytest.approx(b.log_evalue, rel=1e-9, abs=1e-12)
            assert _same(a.estimate, b.estimate)
        assert [c.state for c in one.checks] == [c.state for c in other.checks]


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
