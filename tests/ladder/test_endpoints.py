"""Where a dataset run sends each arm: the application with prompt labels for a prompt
release, each version's upstream for an agent release."""

from __future__ import annotations

from typing import Any

import pytest

from controller.ladder.dataset_gate import ArmEndpoint, arm_endpoints
from policies.domain import Arm
from policies.loader import load_policy_text
from policies.model import Policy


def _policy(target: dict[str, Any]) -> Policy:
    return Policy.model_validate(
        {
            "apiVersion": "coalmine/v1",
            "kind": "Release",
            "name": "support-bot",
            "target": target,
            "steps": [{"weight": 10}],
            "analysis": {
                "metrics": [{"name": "errors", "source": "error_rate", "tolerance": 0.01}]
            },
        }
    )


def test_a_prompt_release_calls_the_application_with_each_arms_label() -> None:
    policy = _policy({"prompt": {"name": "support", "canaryLabel": "candidate"}})
    assert arm_endpoints(policy, "http://app:8000") == {
        Arm.BASELINE: ArmEndpoint(
            "http://app:8000",
            (
                ("x-coalmine-release", "support-bot"),
                ("x-coalmine-arm", "baseline"),
                ("x-coalmine-prompt-label", "production"),
            ),
        ),
        Arm.CANARY: ArmEndpoint(
            "http://app:8000",
            (
                ("x-coalmine-release", "support-bot"),
                ("x-coalmine-arm", "canary"),
                ("x-coalmine-prompt-label", "candidate"),
            ),
        ),
    }


def test_a_prompt_release_without_an_application_url_is_refused() -> None:
    policy = _policy({"prompt": {"name": "support"}})
    with pytest.raises(ValueError, match="no application URL is configured"):
        arm_endpoints(policy, None)


def test_an_agent_release_calls_each_versions_upstream() -> None:
    policy = _policy({"upstreams": {"stable": "http://v1:80", "canary": "http://v2:80/api"}})
    endpoints = arm_endpoints(policy, "http://app:8000")
    assert endpoints[Arm.BASELINE] == ArmEndpoint(
        "http://v1:80", (("x-coalmine-release", "support-bot"), ("x-coalmine-arm", "baseline"))
    )
    assert endpoints[Arm.CANARY] == ArmEndpoint(
        "http://v2:80/api", (("x-coalmine-release", "support-bot"), ("x-coalmine-arm", "canary"))
    )


def test_an_agent_release_with_a_prompt_sends_the_labels_too() -> None:
    policy = _policy(
        {"prompt": {"name": "support"}, "upstreams": {"stable": "http://v1", "canary": "http://v2"}}
    )
    endpoints = arm_endpoints(policy, None)
    assert endpoints[Arm.CANARY].url == "http://v2"
    assert ("x-coalmine-prompt-label", "canary") in endpoints[Arm.CANARY].headers
    assert ("x-coalmine-prompt-label", "production") in endpoints[Arm.BASELINE].headers


def test_a_prompt_on_the_stable_upstream_alone_runs_both_arms_there() -> None:
    policy = _policy({"prompt": {"name": "support"}, "upstreams": {"stable": "http://v1"}})
    endpoints = arm_endpoints(policy, None)
    assert endpoints[Arm.BASELINE].url == endpoints[Arm.CANARY].url == "http://v1"
    assert ("x-coalmine-prompt-label", "canary") in endpoints[Arm.CANARY].headers


def test_an_agent_release_without_a_candidate_is_refused() -> None:
    policy = _policy({"upstreams": {"stable": "http://v1"}})
    with pytest.raises(ValueError, match="no canary upstream"):
        arm_endpoints(policy, "http://app")


def test_an_agent_behind_a_gateway_route_is_called_at_its_services() -> None:
    text = """\
apiVersion: coalmine/v1
kind: Release
name: agent
target: {version: v2}
routing:
  provider: gatewayApi
  gatewayApi:
    httpRoute: route
    rule: agent
    stable: {name: agent-stable, port: 8080}
    canary: {name: agent-canary, port: 9090}
steps: [{weight: 10}]
analysis: {metrics: [{name: e, source: error_rate, tolerance: 0.02}]}
"""
    endpoints = arm_endpoints(load_policy_text(text, "agent.yaml"), None)
    assert endpoints[Arm.BASELINE].url == "http://agent-stable:8080"
    assert endpoints[Arm.CANARY].url == "http://agent-canary:9090"
    elsewhere = load_policy_text(
        text.replace("rule: agent", "rule: agent\n    namespace: llm"), "a.yaml"
    )
    assert arm_endpoints(elsewhere, None)[Arm.CANARY].url == "http://agent-canary.llm.svc:9090"
