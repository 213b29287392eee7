"""The release ladder's policy fields: the dataset rung, the shadow rung's gate, and every
mistake in them reported with its line and path."""

from __future__ import annotations

import pytest

from policies import PolicyError, load_policy_text
from policies.model import Direction, OnInconclusive

FILE = "policies/ladder.yaml"

LADDER = """\
apiVersion: coalmine/v1
kind: Release
name: support
target:
  prompt: {name: support-agent}
steps:
  - {weight: 10, minDuration: 10m}
dataset:
  name: golden-qa
  path: /v1/answer
  metric: {score: quality, tolerance: 0.02, minScore: 0.5}
  evaluator: {http: {url: "http://evaluator:9000/score", timeout: 30s}}
  scoreTimeout: 10m
shadow:
  upstream: http://staging:8080
  percent: 100
  gate:
    metric: {score: quality, range: {min: 1, max: 5}, direction: higher, tolerance: 0.1}
    maxDuration: 2h
    onInconclusive: rollback
analysis:
  metrics:
    - {name: errors, source: error_rate, tolerance: 0.03, critical: true}
"""


def test_the_whole_ladder_loads() -> None:
    policy = load_policy_text(LADDER, FILE)
    assert policy.dataset is not None and policy.shadow is not None
    assert policy.dataset.name == "golden-qa"
    assert policy.dataset.evaluator.http is not None
    assert policy.dataset.evaluator.http.timeout == 30.0
    assert policy.dataset.score_timeout == 600.0
    assert policy.dataset.on_inconclusive is OnInconclusive.PAUSE
    assert policy.dataset.metric.min_score == 0.5
    gate = policy.shadow.gate
    assert gate is not None
    assert (gate.metric.range.min, gate.metric.range.max) == (1.0, 5.0)
    assert gate.metric.direction is Direction.HIGHER
    assert (gate.max_duration, gate.on_inconclusive) == (7200.0, OnInconclusive.ROLLBACK)


@pytest.mark.parametrize(
    ("old", "new", "line", "path", "message"),
    [
        (
            '{http: {url: "http://evaluator:9000/score", timeout: 30s}}',
            "{}",
            12,
            "dataset.evaluator",
            "exactly one of langfuse, http, python (found none)",
        ),
        (
            '{http: {url: "http://evaluator:9000/score", timeout: 30s}}',
            '{langfuse: true, python: "evals.quality:score"}',
            12,
            "dataset.evaluator",
            "found langfuse, python",
        ),
        (
            '{http: {url: "http://evaluator:9000/score", timeout: 30s}}',
            '{python: "not a reference"}',
            12,
            "dataset.evaluator.python",
            "",
        ),
        ("minScore: 0.5", "minScore: 1.5", 11, "dataset.metric.minScore", "within range 0..1"),
        ("tolerance: 0.1}", "tolerance: 4}", 18, "shadow.gate.metric.tolerance", "smaller"),
        ("maxDuration: 2h", "maxDuration: 0s", 19, "shadow.gate.maxDuration", ""),
        ("onInconclusive: rollback", "onInconclusive: promote", 20, "shadow.gate", ""),
        ("  path: /v1/answer", "  path: v1/answer", 10, "dataset.path", "URL path"),
    ],
)
def test_a_mistake_in_the_ladder_is_reported_where_it_is(
    old: str, new: str, line: int, path: str, message: str
) -> None:
    assert LADDER.count(old) == 1
    with pytest.raises(PolicyError) as caught:
        load_policy_text(LADDER.replace(old, new), FILE)
    issue = caught.value.issues[0]
    assert issue.line == line, str(issue)
    assert issue.path.startswith(path), str(issue)
    assert message in issue.message, str(issue)
