"""A routing table changed behind the controller's back so that live traffic goes to
staging, or shadow copies go to production, is put back from the policy at the next
tick; and the proxy refuses such a table outright (``check_upstreams``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from coalmine.shared.routing_tables.table import (
    ArmRoute,
    RoutingTable,
    check_upstreams,
    initial_table,
    shadow_route,
)
from policies import Policy, load_policy_text
from policies.domain import Phase
from tests.controller.release_rig import POLICY, RELEASE, Rig, make_rig

STABLE = "http://support-stable.internal:8000"
CANARY = "http://support-canary.internal:8000"
STAGING = "http://support-staging.internal:8002"

SHADOWED = POLICY.replace(
    '  upstreams: {stable: "http://127.0.0.1:9"}\n',
    f'  upstreams: {{stable: "{STABLE}", canary: "{CANARY}"}}\n'
    f"shadow: {{upstream: {STAGING!r}, percent: 10}}\n",
)


@pytest.fixture
def policy() -> Policy:
    assert SHADOWED != POLICY
    return load_policy_text(SHADOWED, "support.yaml")


@pytest.fixture
def rig(tmp_path: Path, policy: Policy) -> Iterator[Rig]:
    rig = make_rig(tmp_path)
    rig.policies[RELEASE] = policy
    rig.run(3)
    assert rig.release().phase is Phase.CANARY
    yield rig
    rig.close()


def stored(rig: Rig) -> RoutingTable:
    table = rig.routing.read(RELEASE)
    assert table is not None
    return table


def tamper(rig: Rig, **changes: object) -> None:
    table = stored(rig)
    rig.routing.write(table.model_copy(update=changes), table.version)


def assert_as_the_policy_says(table: RoutingTable) -> None:
    assert (table.baseline.upstream, table.canary.upstream) == (STABLE, CANARY)
    assert table.shadow is not None and table.shadow.upstream == STAGING
    assert table.canary_weight == 10.0
    assert table.reason == "controller"


def test_the_controller_wrote_the_policys_arms(rig: Rig) -> None:
    assert_as_the_policy_says(stored(rig))


def test_a_canary_pointed_at_staging_is_put_back(rig: Rig) -> None:
    table = stored(rig)
    tamper(rig, canary=table.canary.model_copy(update={"upstream": STAGING}))
    assert stored(rig).canary.upstream == STAGING
    assert rig.controller.route_repairs == {}

    rig.run(1)

    assert_as_the_policy_says(stored(rig))
    assert rig.controller.route_repairs == {RELEASE: 1}
    rig.run(2)  # nothing drifted since: nothing more put back
    assert rig.controller.route_repairs == {RELEASE: 1}


def test_a_baseline_pointed_at_staging_is_put_back(rig: Rig) -> None:
    table = stored(rig)
    tamper(rig, baseline=table.baseline.model_copy(update={"upstream": STAGING}))
    rig.run(1)
    assert_as_the_policy_says(stored(rig))


def test_swapped_arms_are_put_back(rig: Rig) -> None:
    table = stored(rig)
    tamper(rig, baseline=table.canary, canary=table.baseline)
    rig.run(1)
    assert_as_the_policy_says(stored(rig))


def test_a_shadow_pointed_at_the_baseline_is_put_back(rig: Rig) -> None:
    table = stored(rig)
    assert table.shadow is not None
    tamper(rig, shadow=table.shadow.model_copy(update={"upstream": STABLE}))
    rig.run(1)
    assert_as_the_policy_says(stored(rig))


# ----------------------------------------------------------------------- the proxy side


def table_of(policy: Policy, **arms: str) -> RoutingTable:
    """The policy's own table, with some upstreams replaced (``baseline``, ``canary``,
    ``shadow``)."""
    table = initial_table(policy).model_copy(update={"shadow": shadow_route(policy)})
    changes: dict[str, object] = {}
    for arm in ("baseline", "canary"):
        if arm in arms:
            route: ArmRoute = getattr(table, arm)
            changes[arm] = route.model_copy(update={"upstream": arms[arm]})
    if "shadow" in arms:
        assert table.shadow is not None
        changes["shadow"] = table.shadow.model_copy(update={"upstream": arms["shadow"]})
    return table.model_copy(update=changes)


def test_the_proxy_takes_the_policys_own_table(policy: Policy) -> None:
    check_upstreams(table_of(policy), policy)
    check_upstreams(table_of(policy, baseline=CANARY, canary=STABLE), policy)  # the arms' own


@pytest.mark.parametrize("arm", ["baseline", "canary"])
def test_the_proxy_refuses_live_traffic_to_staging(policy: Policy, arm: str) -> None:
    with pytest.raises(ValueError, match=f"{arm} upstream '{STAGING}' is the shadow's"):
        check_upstreams(table_of(policy, **{arm: STAGING}), policy)


@pytest.mark.parametrize("upstream", [STABLE, CANARY])
def test_the_proxy_refuses_shadow_copies_to_a_live_arm(policy: Policy, upstream: str) -> None:
    with pytest.raises(ValueError, match=f"shadow upstream '{upstream}' is not the policy's"):
        check_upstreams(table_of(policy, shadow=upstream), policy)


def test_the_proxy_refuses_an_upstream_the_policy_does_not_name(policy: Policy) -> None:
    with pytest.raises(ValueError, match="is not named by the release's policy"):
        check_upstreams(table_of(policy, canary="http://elsewhere.internal:8000"), policy)
