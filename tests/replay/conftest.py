"""Fixtures for `coalmine replay`: policy and stream files, and the CLI run in-process.

The repository root goes on ``sys.path`` so that ``bench.streams`` (the seeded stream
generator) imports when pytest runs from anywhere.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from coalmine.cli import main  # noqa: E402

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


@pytest.fixture
def coalmine(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """Run `coalmine ARGS...` in-process; return its exit status and output."""

    def run(*args: str | Path) -> Run:
        capsys.readouterr()
        code = main([str(arg) for arg in args])
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str | Iterable[str]], Path]:
    """Write a file under tmp_path: text as is, or lines joined with newlines."""

    def write_file(name: str, content: str | Iterable[str]) -> Path:
        path = tmp_path / name
        text = content if isinstance(content, str) else "".join(f"{line}\n" for line in content)
        path.write_text(text, encoding="utf-8")
        return path

    return write_file


@pytest.fixture
def one_step(write: Callable[[str, str], Path]) -> Path:
    return write("one-step.yaml", ONE_STEP)


@pytest.fixture
def three_steps(write: Callable[[str, str], Path]) -> Path:
    return write("three-steps.yaml", THREE_STEPS)
