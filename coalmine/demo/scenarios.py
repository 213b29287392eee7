"""The demo's scenarios: which prompt versions exist, the release policy, what must happen."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

PROMPT = "support-agent"
RELEASE = "support-agent"
STABLE_PROMPT = (
    "You are the support agent of Acme. Answer the customer's question precisely, "
    "cite the help-center article, and offer a next step."
)


class Outcome(StrEnum):
    """How a demo run ended."""

    ROLLED_BACK = "rolled_back"
    PROMOTED = "promoted"
    SHADOWED = "shadowed"
    """Mirrored traffic reached staging and was recorded as the shadow arm."""
    PAUSED = "paused"
    TIMED_OUT = "timed_out"
    FAILED = "failed"


@dataclass(frozen=True)
class PromptVersion:
    text: str
    config: dict[str, Any]
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    prompts: tuple[PromptVersion, ...]
    expected: Outcome
    canary: bool
    """A candidate version is released (else the release only mirrors to staging)."""


SCENARIOS: dict[str, Scenario] = {
    "bad-canary": Scenario(
        name="bad-canary",
        summary=(
            "prompt v2 answers vaguely more often and fails more: coalmine rolls it back by itself"
        ),
        prompts=(
            PromptVersion(STABLE_PROMPT, {"quality": 0.85, "error_rate": 0.01}, ("production",)),
            PromptVersion(
                "You are a support agent. Be brief.",
                {"quality": 0.55, "error_rate": 0.08},
                ("canary",),
            ),
        ),
        expected=Outcome.ROLLED_BACK,
        canary=True,
    ),
    "good-canary": Scenario(
        name="good-canary",
        summary="prompt v2 is as good as v1: coalmine promotes it through every step",
        prompts=(
            PromptVersion(STABLE_PROMPT, {"quality": 0.85, "error_rate": 0.01}, ("production",)),
            PromptVersion(
                STABLE_PROMPT + " Greet the customer by name.",
                {"quality": 0.86, "error_rate": 0.01},
                ("canary",),
            ),
        ),
        expected=Outcome.PROMOTED,
        canary=True,
    ),
    "shadow": Scenario(
        name="shadow",
        summary=(
            "half the requests are mirrored to a staging agent: recorded as the shadow arm, "
            "no effect on users"
        ),
        prompts=(
            # no failures of its own, so any failed user request would be the shadow's doing
            PromptVersion(
                STABLE_PROMPT, {"quality": 0.85, "error_rate": 0.0}, ("production", "canary")
            ),
        ),
        expected=Outcome.SHADOWED,
        canary=False,
    ),
}


def policy_yaml(scenario: Scenario, *, stable: str, canary: str, staging: str, speed: float) -> str:
    """The time-compressed release policy of a scenario (durations divided by ``speed``)."""

    def seconds(value: float) -> str:
        return f"{max(value / speed, 1.0):g}s"

    if not scenario.canary:
        return f"""\
apiVersion: coalmine/v1
kind: Release
name: {RELEASE}
target:
  upstreams: {{stable: "{stable}"}}
routing:
  stickiness: {{header: x-user-id}}
  readTimeout: 30s
steps:
  - {{weight: 50}}
shadow: {{upstream: "{staging}", percent: 50, methods: [POST]}}
analysis:
  metrics:
    - {{name: errors, source: error_rate, tolerance: 0.03}}
"""
    return f"""\
apiVersion: coalmine/v1
kind: Release
name: {RELEASE}
target:
  prompt: {{name: {PROMPT}}}
  upstreams: {{stable: "{stable}", canary: "{canary}"}}
routing:
  stickiness: {{header: x-user-id}}
  readTimeout: 30s
steps:
  - {{weight: 20, minDuration: {seconds(20)}}}
  - {{weight: 50, minDuration: {seconds(20)}, maxDuration: {seconds(150)}}}
analysis:
  interval: {seconds(2)}
  alpha: 0.05
  minSamples: 30
  scoreTimeout: {seconds(60)}
  metrics:
    - name: helpfulness
      source: score
      score: helpfulness
      tolerance: 0.08
      effectSize: 0.15
      critical: true
    - {{name: errors, source: error_rate, tolerance: 0.04, critical: true}}
    - {{name: cost, source: cost, tolerancePercent: 50}}
"""
