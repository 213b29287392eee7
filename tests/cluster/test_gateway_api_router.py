"""The Gateway API router on the fake API server, which validates every HTTPRoute write
against the CRD's schema and CEL rules: a release's rule holds its split and mirror,
the route's other rules are never touched, a foreign edit of the release's rule is
reported and put back, and a whole rollout runs through it."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from coalmine.shared.routing_tables.table import shadow_route
from controller.actions import Routers
from controller.errors import RoutingConflictError
from controller.routers import GatewayApiRouter, NoopRouter, ProxyTableRouter
from controller.routers.gateway_api import GROUP, OWNED_RULES, PLURAL, VERSION
from policies import Policy, load_policy_text
from policies.domain import Phase
from policies.model import RoutingProvider
from tests.controller.release_rig import POLICY, RELEASE, Rig, make_rig

NAMESPACE = "default"
ROUTE = "support-route"

AGENT = POLICY.replace(
    "  prompt: {name: support-agent, stableLabel: production, canaryLabel: canary}\n"
    '  upstreams: {stable: "http://127.0.0.1:9"}\n',
    "  version: v2\n",
).replace(
    "routing:\n",
    "routing:\n"
    "  provider: gatewayApi\n"
    "  gatewayApi:\n"
    f"    httpRoute: {ROUTE}\n"
    "    rule: support-canary\n"
    "    stable: {name: support-stable, port: 8080}\n"
    "    canary: {name: support-canary, port: 8080}\n"
    "    mirror: {name: support-staging, port: 8080}\n",
)
SHADOWED = AGENT + 'shadow: {upstream: "http://support-staging:8080", percent: 12.5}\n'
PROMPT = POLICY.replace('  upstreams: {stable: "http://127.0.0.1:9"}\n', "").replace(
    "routing:\n",
    "routing:\n"
    "  provider: gatewayApi\n"
    "  gatewayApi:\n"
    f"    httpRoute: {ROUTE}\n"
    "    rule: support-canary\n"
    "    stable: {name: support-app, port: 8080}\n",
)

DOCS_RULE: dict[str, Any] = {
    "name": "docs",
    "matches": [{"path": {"type": "PathPrefix", "value": "/docs"}}],
    "backendRefs": [{"name": "docs", "port": 80}],
}


def route_body() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HTTPRoute",
        "metadata": {"name": ROUTE, "namespace": NAMESPACE},
        "spec": {
            "parentRefs": [{"name": "gateway"}],
            "rules": [
                copy.deepcopy(DOCS_RULE),
                {
                    "name": "support-canary",
                    "matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
                    "backendRefs": [{"name": "support-stable", "port": 8080}],
                },
            ],
        },
    }


@pytest.fixture
def objects(api: Any) -> Any:
    return client.CustomObjectsApi(api)


@pytest.fixture
def route(objects: Any) -> dict[str, Any]:
    created: dict[str, Any] = objects.create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, route_body()
    )
    return created


def read(objects: Any) -> dict[str, Any]:
    found: dict[str, Any] = objects.get_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, ROUTE
    )
    return found


def rule(objects: Any, name: str = "support-canary") -> dict[str, Any]:
    return next(r for r in read(objects)["spec"]["rules"] if r.get("name") == name)


def weights(objects: Any) -> list[tuple[str, int]]:
    return [(ref["name"], ref["weight"]) for ref in rule(objects)["backendRefs"]]


def policy(text: str) -> Policy:
    return load_policy_text(text, "support.yaml")


def test_the_release_rule_holds_the_split_and_nothing_else_changes(
    api: Any, objects: Any, route: dict[str, Any]
) -> None:
    router = GatewayApiRouter(api, NAMESPACE)
    docs_before = rule(objects, "docs")
    router.set_routes(policy(AGENT), 10.0, None)
    assert weights(objects) == [("support-stable", 9000), ("support-canary", 1000)]
    assert rule(objects)["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}}]
    assert rule(objects, "docs") == docs_before
    stored = read(objects)
    assert json.loads(stored["metadata"]["annotations"][OWNED_RULES]) == {"support-canary": RELEASE}
    assert router.drift(policy(AGENT), 10.0, None) is None
    version = stored["metadata"]["resourceVersion"]
    router.set_routes(policy(AGENT), 10.0, None)  # nothing to change: nothing written
    assert read(objects)["metadata"]["resourceVersion"] == version
    router.set_routes(policy(AGENT), 12.5, None)
    assert weights(objects) == [("support-stable", 8750), ("support-canary", 1250)]


def test_a_shadow_mirrors_by_percent_or_fraction_and_goes_away(
    api: Any, objects: Any, route: dict[str, Any]
) -> None:
    router = GatewayApiRouter(api, NAMESPACE)
    shadowed = policy(SHADOWED)
    router.set_routes(shadowed, 0.0, shadow_route(shadowed))
    (mirror,) = rule(objects)["filters"]
    assert mirror["type"] == "RequestMirror"
    assert mirror["requestMirror"]["backendRef"]["name"] == "support-staging"
    assert mirror["requestMirror"]["fraction"] == {"numerator": 125000, "denominator": 1000000}
    whole = shadowed.model_copy(
        update={"shadow": shadowed.shadow.model_copy(update={"percent": 25.0})}  # type: ignore[union-attr]
    )
    router.set_routes(whole, 0.0, shadow_route(whole))
    assert rule(objects)["filters"][0]["requestMirror"]["percent"] == 25
    router.set_routes(whole, 10.0, None)
    assert "filters" not in rule(objects)


def test_a_prompt_release_sets_each_arm_headers_on_one_service(
    api: Any, objects: Any, route: dict[str, Any]
) -> None:
    GatewayApiRouter(api, NAMESPACE).set_routes(policy(PROMPT), 20.0, None)
    baseline, canary = rule(objects)["backendRefs"]
    assert (baseline["name"], baseline["weight"]) == ("support-app", 8000)
    assert (canary["name"], canary["weight"]) == ("support-app", 2000)
    headers = {
        ref["weight"]: {
            h["name"]: h["value"] for h in ref["filters"][0]["requestHeaderModifier"]["set"]
        }
        for ref in (baseline, canary)
    }
    assert headers[8000] == {
        "x-coalmine-arm": "baseline",
        "x-coalmine-release": RELEASE,
        "x-coalmine-prompt-label": "production",
    }
    assert headers[2000]["x-coalmine-arm"] == "canary"
    assert headers[2000]["x-coalmine-prompt-label"] == "canary"


def test_a_foreign_edit_of_the_release_rule_is_drift_and_of_another_rule_is_not(
    api: Any, objects: Any, route: dict[str, Any]
) -> None:
    router = GatewayApiRouter(api, NAMESPACE)
    router.set_routes(policy(AGENT), 10.0, None)
    stored = read(objects)
    stored["spec"]["rules"][0]["backendRefs"][0]["port"] = 81  # the docs rule: theirs
    objects.replace_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, ROUTE, stored)
    assert router.drift(policy(AGENT), 10.0, None) is None
    stored = read(objects)
    stored["spec"]["rules"][1]["backendRefs"][1]["weight"] = 5000  # the release's rule
    objects.replace_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, ROUTE, stored)
    drift = router.drift(policy(AGENT), 10.0, None)
    assert drift is not None and "support-canary:8080 weight 5000" in drift
    router.set_routes(policy(AGENT), 10.0, None)
    assert weights(objects) == [("support-stable", 9000), ("support-canary", 1000)]
    assert rule(objects, "docs")["backendRefs"][0]["port"] == 81


def test_a_missing_route_or_rule_is_reported_and_another_release_rule_refused(
    api: Any, objects: Any
) -> None:
    router = GatewayApiRouter(api, NAMESPACE)
    with pytest.raises(RoutingConflictError, match="does not exist"):
        router.set_routes(policy(AGENT), 10.0, None)
    body = route_body()
    body["spec"]["rules"] = [copy.deepcopy(DOCS_RULE)]
    objects.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
    with pytest.raises(RoutingConflictError, match="no rule named 'support-canary'"):
        router.set_routes(policy(AGENT), 10.0, None)
    assert router.drift(policy(AGENT), 10.0, None) is not None
    stored = read(objects)
    stored["spec"]["rules"].append(route_body()["spec"]["rules"][1])
    stored["metadata"]["annotations"] = {OWNED_RULES: json.dumps({"support-canary": "other"})}
    objects.replace_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, ROUTE, stored)
    with pytest.raises(ValueError, match="owned by release 'other'"):
        router.set_routes(policy(AGENT), 10.0, None)


@pytest.fixture
def rig(tmp_path: Path, api: Any, objects: Any, route: dict[str, Any]) -> Iterator[Rig]:
    def share() -> float:
        refs = rule(objects)["backendRefs"]
        total = sum(int(ref.get("weight", 1)) for ref in refs)
        canary = sum(int(ref["weight"]) for ref in refs if ref["name"] == "support-canary")
        return canary / total

    rig = make_rig(tmp_path, share_of=share)
    rig.controller.routers = Routers(
        ProxyTableRouter(rig.routing),
        {
            RoutingProvider.GATEWAY_API: GatewayApiRouter(api, NAMESPACE),
            RoutingProvider.NONE: NoopRouter(),
        },
    )
    rig.policies[RELEASE] = policy(SHADOWED)
    yield rig
    rig.close()


def test_a_rollout_runs_through_the_route(rig: Rig, objects: Any) -> None:
    seen: list[tuple[Phase, int, bool]] = []
    for _ in range(300):
        rig.run(1)
        canary_weight = weights(objects)[1][1]
        mirrored = any(f["type"] == "RequestMirror" for f in rule(objects).get("filters", []))
        if not seen or seen[-1] != (rig.release().phase, canary_weight, mirrored):
            seen.append((rig.release().phase, canary_weight, mirrored))
        if rig.release().phase is Phase.PROMOTED:
            break
    assert seen == [
        (Phase.CANARY, 1000, True),
        (Phase.CANARY, 3000, True),
        (Phase.CANARY, 5000, True),
        (Phase.PROMOTED, 10000, False),
    ]
    assert rig.routing.read(RELEASE) is None  # no proxy routing table for it
    # a foreign edit after the promotion is put back and counted
    stored = read(objects)
    stored["spec"]["rules"][1]["backendRefs"][1]["weight"] = 0
    objects.replace_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, ROUTE, stored)
    rig.run(1)
    assert weights(objects)[1] == ("support-canary", 10000)
    assert rig.controller.route_repairs == {RELEASE: 1}


def test_a_rollback_sends_everything_back_to_stable(rig: Rig, objects: Any) -> None:
    rig.run(3)
    assert weights(objects)[1] == ("support-canary", 1000)
    rig.controller.manual(RELEASE, "rollback", actor="sre", now=rig.now)
    assert weights(objects) == [("support-stable", 10000), ("support-canary", 0)]
    assert "filters" not in rule(objects)
