"""Mirroring lasts as long as the rollout: the routing table the controller writes carries
the policy's shadow while the release runs and none once it has ended."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from coalmine.shared.routing_tables.table import RoutingTable
from policies.domain import Phase
from policies.loader import load_policy_text
from tests.controller.release_rig import POLICY, RELEASE, Rig, make_rig

STAGING = "http://127.0.0.1:10"
SHADOW_POLICY = POLICY + f'shadow: {{upstream: "{STAGING}", percent: 50}}\n'


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = make_rig(tmp_path)
    rig.policies[RELEASE] = load_policy_text(SHADOW_POLICY, "support.yaml")
    yield rig
    rig.close()


def _table(rig: Rig) -> RoutingTable:
    table = rig.routing.read(RELEASE)
    assert table is not None
    return table


def _shadow_upstream(rig: Rig) -> str | None:
    shadow = _table(rig).shadow
    return None if shadow is None else shadow.upstream


def test_the_running_canary_mirrors_to_the_policys_staging(rig: Rig) -> None:
    rig.run(1)
    assert rig.release().phase is Phase.CANARY
    table = _table(rig)
    assert (table.canary_weight, _shadow_upstream(rig)) == (10.0, STAGING)
    assert table.shadow is not None
    assert table.shadow.percent == 50.0
    rig.run(5)
    assert _table(rig).version == table.version, "a table that holds what is wanted is kept"


@pytest.mark.parametrize(
    ("action", "phase", "weight"),
    [
        ("rollback", Phase.ROLLED_BACK, 0.0),
        ("abort", Phase.ABORTED, 0.0),
        ("promote", Phase.PROMOTED, 0.0),
    ],
)
def test_a_finished_release_has_no_shadow_route(
    rig: Rig, action: str, phase: Phase, weight: float
) -> None:
    rig.run(3)
    assert _shadow_upstream(rig) == STAGING
    rig.controller.manual(RELEASE, action, actor="sre@example.com", now=rig.now)
    assert rig.release().phase is phase
    assert (_table(rig).canary_weight, _shadow_upstream(rig)) == (weight, None)
    rig.run(3)
    assert (_table(rig).canary_weight, _shadow_upstream(rig)) == (weight, None)


def test_a_judged_promotion_ends_the_mirroring(rig: Rig) -> None:
    rig.run(600, until=Phase.PROMOTED)
    assert rig.release().phase is Phase.PROMOTED
    assert _shadow_upstream(rig) is None


def test_a_release_whose_policy_is_removed_stops_mirroring(rig: Rig) -> None:
    rig.run(3)
    rig.policies.clear()
    rig.run(1)
    assert rig.release().phase is Phase.ABORTED
    assert (_table(rig).canary_weight, _shadow_upstream(rig)) == (0.0, None)


def test_a_shadow_written_back_after_a_rollback_is_removed_again(rig: Rig) -> None:
    rig.run(3)
    mirrored = _table(rig).shadow
    rig.controller.manual(RELEASE, "rollback", actor="sre@example.com", now=rig.now)
    table = _table(rig)
    rig.routing.write(table.model_copy(update={"shadow": mirrored}), table.version)
    assert _shadow_upstream(rig) == STAGING
    rig.run(1)
    assert (_table(rig).canary_weight, _shadow_upstream(rig)) == (0.0, None)


def test_a_shadow_removed_while_the_canary_runs_is_put_back(rig: Rig) -> None:
    rig.run(3)
    table = _table(rig)
    rig.routing.write(table.model_copy(update={"shadow": None}), table.version)
    rig.run(1)
    assert (_table(rig).canary_weight, _shadow_upstream(rig)) == (10.0, STAGING)
