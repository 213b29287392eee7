"""A poll cut short (request budget spent, a 429, a timeout) still carries what it read
completely: the controller keeps it, so a canary that is harming users is rolled back
even while Langfuse cannot be read in full, and never advanced or promoted on it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from coalmine.shared.routing_tables.store import SqliteRoutingStore
from controller.release_store import ControllerState
from controller.samples import Cursors, Poll
from policies import Policy
from policies.domain import Phase
from policies.loader import load_policy_text
from tests.controller.test_loop import POLICY, Labels, Rig, World, _controller


@dataclass
class CutShort(World):
    """Every poll runs out of budget, after reading its rows completely."""

    def poll(self, releases: Mapping[str, Policy], cursors: Cursors | None, now: float) -> Poll:
        read = super().poll(releases, cursors, now)
        assert cursors is not None
        return Poll(
            ok=False,
            cursors=cursors,
            traces=read.traces,
            scores=read.scores,
            error="request budget spent",
        )


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    path = tmp_path / "state.db"
    state = ControllerState(path)
    world = CutShort(SqliteRoutingStore(path))
    labels = Labels()
    policies = {"support": load_policy_text(POLICY, "support.yaml")}
    return Rig(path, labels, world, policies, _controller(state, world, labels, policies), state)


def test_what_an_incomplete_poll_read_is_kept_and_a_bad_canary_rolled_back(rig: Rig) -> None:
    rig.world.canary_error = 0.3
    rig.run(240, until=Phase.ROLLED_BACK)
    assert rig.phase() is Phase.ROLLED_BACK
    assert rig.decisions() == ["start", "rollback"]
    assert len(rig.state.traces("support", 0.0)) > 100


def test_a_good_canary_is_never_advanced_on_incomplete_polls(rig: Rig) -> None:
    rig.run(120)
    assert rig.phase() is Phase.CANARY
    assert rig.decisions() == ["start"]
    assert rig.weight() == 10.0
