"""The demo's scenarios: which prompt versions exist, the release policy, what must happen."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

PROMPT = "support-agent"
RELEASE = "support-agent"
DATASET = "support-agent-golden"
"""The Langfuse dataset the ladder's dataset rung runs (``coalmine.demo.dataset``)."""
JUDGE = "coalmine.demo.judge:helpfulness"
"""The dataset rung's evaluator."""
STABLE_PROMPT = (
    "You are the support agent of Acme. Answer the customer's question precisely, "
    "cite the help-center article, and offer a next step."
)


LADDER_STABLE: dict[str, Any] = {"quality": 0.85, "error_rate": 0.0}
"""The ladder's versions never fail: an answer depends on the prompt and the question
only, so the dataset rung's verdict on a candidate is the same in every run."""


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


class Rung(StrEnum):
    """Where on the release ladder a rollout ended."""

    DATASET = "dataset"
    SHADOW = "shadow"
    CANARY = "canary"
    APPROVAL = "approval"


@dataclass(frozen=True)
class Candidate:
    """One prompt version a ladder scenario releases, and how its rollout must end."""

    name: str
    summary: str
    prompt: PromptVersion
    expected: Outcome
    rung: Rung
    """The rung its rollout ends at: rolled back there, or promoted from it."""


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    prompts: tuple[PromptVersion, ...]
    expected: Outcome
    canary: bool
    """A candidate version is released (else the release only mirrors to staging)."""
    candidates: tuple[Candidate, ...] = ()
    """A ladder scenario's candidates, released one after another once ``prompts`` (the
    stable version) exist; each rollout ends before the next candidate is created."""


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
    "ladder": Scenario(
        name="ladder",
        summary=(
            "three candidates climb the release ladder (dataset, shadow, canary steps, "
            "approval): a clearly bad one stopped at the dataset, a subtly bad one caught "
            "in shadow with no user exposed, a good one promoted once the demo approves it"
        ),
        prompts=(PromptVersion(STABLE_PROMPT, LADDER_STABLE, ("production",)),),
        expected=Outcome.PROMOTED,
        canary=True,
        candidates=(
            Candidate(
                name="clearly bad",
                summary="vague answers to every question",
                prompt=PromptVersion(
                    "You are a support agent. Be brief.",
                    {"quality": 0.5, "error_rate": 0.0},
                    ("canary",),
                ),
                expected=Outcome.ROLLED_BACK,
                rung=Rung.DATASET,
            ),
            Candidate(
                name="subtly bad",
                summary="as good as stable on the dataset, poor at refunds (live traffic only)",
                prompt=PromptVersion(
                    STABLE_PROMPT + " Keep answers short.",
                    {"quality": 0.85, "error_rate": 0.0, "topics": {"refund": 0.3}},
                    ("canary",),
                ),
                expected=Outcome.ROLLED_BACK,
                rung=Rung.SHADOW,
            ),
            Candidate(
                name="good",
                summary="as good as stable everywhere",
                prompt=PromptVersion(
                    STABLE_PROMPT + " Greet the customer by name.",
                    {"quality": 0.86, "error_rate": 0.0},
                    ("canary",),
                ),
                expected=Outcome.PROMOTED,
                rung=Rung.APPROVAL,
            ),
        ),
    ),
}


CANARY_METRICS = """\
  metrics:
    - name: helpfulness
      source: score
      score: helpfulness
      tolerance: 0.08
      effectSize: 0.15
      critical: true
    - {name: errors, source: error_rate, tolerance: 0.04, critical: true}
    - {name: cost, source: cost, tolerancePercent: 50}
"""
"""The metrics the canary scenarios judge (the ladder's canary steps too)."""


def policy_yaml(scenario: Scenario, *, stable: str, canary: str, staging: str, speed: float) -> str:
    """The time-compressed release policy of a scenario (durations divided by ``speed``)."""

    def seconds(value: float) -> str:
        return f"{max(value / speed, 1.0):g}s"

    if scenario.candidates:
        return _ladder_policy(stable=stable, canary=canary, staging=staging, seconds=seconds)
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
{CANARY_METRICS}"""


def _ladder_policy(
    *, stable: str, canary: str, staging: str, seconds: Callable[[float], str]
) -> str:
    """Every rung: the golden dataset, the shadow to staging (which answers with the
    canary label every copy carries), two short canary steps, then approval."""
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
dataset:
  name: {DATASET}
  path: /v1/chat/completions
  # 60 items bound a candidate's difference from stable to about +-0.1
  metric: {{score: helpfulness, tolerance: 0.15, effectSize: 0.15}}
  evaluator: {{python: "{JUDGE}"}}
  minPairs: 30
  concurrency: 8
  requestTimeout: 30s
  # the demo's agents fetch the prompt on every request: no cache to wait out
  startAfter: 0s
  scoreTimeout: {seconds(60)}
  onInconclusive: pause
shadow:
  upstream: "{staging}"
  percent: 100
  methods: [POST]
  gate:
    metric: {{score: helpfulness, tolerance: 0.05, effectSize: 0.1}}
    minPairs: 30
    maxDuration: 5m                  # a bound, never waited for: not compressed
    onInconclusive: pause
steps:
  - {{weight: 20, minDuration: {seconds(15)}}}
  - {{weight: 50, minDuration: {seconds(15)}, maxDuration: {seconds(150)}}}
analysis:
  interval: {seconds(2)}
  alpha: 0.05
  minSamples: 30
  scoreTimeout: {seconds(30)}
{CANARY_METRICS}approval: {{timeout: 1h, onTimeout: pause}}
"""
