"""Policies and the result of one `coalmine replay` run, shared by the replay tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# One prompt canary at a fixed 10% share, the split bench.streams generates by default.
ONE_STEP = """\
apiVersion: coalmine/v1
kind: Release
name: one-step
target:
  prompt: {name: support-agent}
steps:
  - {weight: 10, minDuration: 20m, maxDuration: 2h}
analysis:
  interval: 1m
  alpha: 0.05
  minSamples: 30
  scoreTimeout: 15m
  metrics:
    - {name: helpfulness, source: score, score: helpfulness, tolerance: 0.0, effectSize: 0.05, critical: true, alphaWeight: 3}
    - {name: errors, source: error_rate, tolerance: 0.005, critical: true}
    - {name: cost, source: cost, tolerancePercent: 10}
    - {name: latency, source: latency, quantile: 0.95, tolerancePercent: 20}
"""  # noqa: E501

# Three steps with lenient tolerances: a slightly better canary promotes in under an hour.
THREE_STEPS = """\
apiVersion: coalmine/v1
kind: Release
name: three-steps
target:
  prompt: {name: support-agent}
steps:
  - {weight: 10, minDuration: 5m}
  - {weight: 25, minDuration: 5m}
  - {weight: 50, minDuration: 5m}
analysis:
  interval: 1m
  scoreTimeout: 15m
  metrics:
    - {name: helpfulness, source: score, score: helpfulness, tolerance: 0.05, effectSize: 0.05, critical: true}
    - {name: errors, source: error_rate, tolerance: 0.03, critical: true}
    - {name: cost, source: cost, tolerancePercent: 50}
    - {name: latency, source: latency, quantile: 0.95, tolerancePercent: 50}
"""  # noqa: E501

METRICS = ("helpfulness", "errors", "cost", "latency")


@dataclass(frozen=True)
class Run:
    """What one `coalmine` invocation did."""

    code: int
    out: str
    err: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines()]

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.json_lines()[:-1]

    @property
    def summary(self) -> dict[str, Any]:
        return self.json_lines()[-1]
