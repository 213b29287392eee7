"""Routers: a release whose traffic another system moves (``routing.provider: none``)
is judged and its labels moved, and its routes are never touched; the proxy does not
route it."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.actions import Routers
from controller.routers import NoopRouter, ProxyTableRouter
from policies import load_policy_text
from policies.domain import Phase
from proxy.routes import Releases
from tests.controller.release_rig import POLICY, RELEASE, make_rig

EXTERNAL = (
    POLICY.replace("routing:\n", "routing:\n  provider: none\n")
    .replace("  - {weight: 10, minDuration: 30m}\n", "")
    .replace("  - {weight: 30, minDuration: 30m}\n", "")
    .replace("{weight: 50, minDuration: 30m, maxDuration: 4h}", "{weight: 30, minDuration: 30m}")
)
"""The other system sends 30% of users to the canary, as the policy's one step says (the
sample-ratio check holds it to that)."""


def test_an_externally_routed_release_is_judged_and_promoted_without_a_routing_table(
    tmp_path: Path,
) -> None:
    assert "provider: none" in EXTERNAL and EXTERNAL.count("weight:") == 1
    rig = make_rig(tmp_path, canary_share=0.3)  # the other system sends 30% to the canary
    try:
        rig.policies[RELEASE] = load_policy_text(EXTERNAL, "support.yaml")
        rig.run(400, until=Phase.PROMOTED)
        assert rig.release().phase is Phase.PROMOTED, rig.release().reason
        assert rig.routing.read(RELEASE) is None
        assert rig.labels.positions == {"production": 4, "canary": 4, "latest": 4}
        assert rig.controller.route_repairs == {}
    finally:
        rig.close()


def test_a_provider_without_a_router_fails_the_action_and_says_so(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    try:
        policy = load_policy_text(EXTERNAL, "support.yaml")
        with pytest.raises(ValueError, match=r"routing\.provider 'none'"):
            Routers(ProxyTableRouter(rig.routing)).of(policy)
        assert isinstance(
            Routers(ProxyTableRouter(rig.routing), {"none": NoopRouter()}).of(policy), NoopRouter
        )
    finally:
        rig.close()


def test_the_proxy_does_not_route_an_externally_routed_release() -> None:
    external = load_policy_text(EXTERNAL, "support.yaml")
    routed = load_policy_text(POLICY.replace("name: support", "name: other"), "other.yaml")
    releases = Releases([external, routed], app_url="http://127.0.0.1:9")
    assert set(releases.by_name) == {"other"}
    update = releases.update({"support": external, "other": routed})
    assert set(releases.by_name) == {"other"} and not update.added
