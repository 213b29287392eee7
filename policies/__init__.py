"""The policy language: YAML release policies, their model, loader and JSON Schema.

    from policies import load_policy
    policy = load_policy("policies/examples/prompt-canary.yaml")

Both the proxy and the controller read policies through this package; it depends on
neither of them.
"""

from pathlib import Path
from typing import Final

from policies.durations import DURATION_PATTERN, Duration, format_duration, parse_duration
from policies.errors import PolicyError, PolicyIssue, RuleError, format_path
from policies.loader import load_policy, load_policy_text
from policies.model import (
    API_VERSION,
    KIND,
    Analysis,
    Approval,
    ApprovalQueue,
    CircuitBreaker,
    Direction,
    Metric,
    MetricSource,
    OnApprovalTimeout,
    OnMaxDuration,
    Policy,
    PromptTarget,
    Routing,
    SampleRatio,
    ScoreRange,
    ScoreType,
    Shadow,
    Step,
    Stickiness,
    Target,
    Upstreams,
    policy_json_schema,
    policy_json_schema_text,
)

PACKAGE_DIR: Final = Path(__file__).resolve().parent
EXAMPLES_DIR: Final = PACKAGE_DIR / "examples"
"""The example policies shipped with coalmine."""
SCHEMA_PATH: Final = PACKAGE_DIR / "schema.json"
"""The committed JSON Schema of policy files (`coalmine policy schema --output` writes it)."""

__all__ = [
    "API_VERSION",
    "DURATION_PATTERN",
    "EXAMPLES_DIR",
    "KIND",
    "SCHEMA_PATH",
    "Analysis",
    "Approval",
    "ApprovalQueue",
    "CircuitBreaker",
    "Direction",
    "Duration",
    "Metric",
    "MetricSource",
    "OnApprovalTimeout",
    "OnMaxDuration",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "PromptTarget",
    "Routing",
    "RuleError",
    "SampleRatio",
    "ScoreRange",
    "ScoreType",
    "Shadow",
    "Step",
    "Stickiness",
    "Target",
    "Upstreams",
    "format_duration",
    "format_path",
    "load_policy",
    "load_policy_text",
    "parse_duration",
    "policy_json_schema",
    "policy_json_schema_text",
]
