"""The `trace_error_rate` metric source: a rate like `error_rate`, with its rules."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from policies import Direction, MetricSource, PolicyError, load_policy_text

FILE = "policies/release.yaml"

# The cases replace a part of the last line and expect the issue on it (line 12).
BASE = """\
apiVersion: coalmine/v1
kind: Release
name: checkout-prompt
target:
  prompt: {name: checkout}
steps:
  - {weight: 5, minDuration: 10m}
analysis:
  metrics:
    - {name: errors, source: error_rate, tolerance: 0.01, critical: true}
    - {name: helpfulness, source: score, score: helpfulness, tolerance: 0.02}
    - {name: app-errors, source: trace_error_rate, tolerance: 0.01, critical: true}
"""
LINE = 12
METRIC = "source: trace_error_rate, tolerance: 0.01,"


def edit(old: str, new: str) -> str:
    """BASE with the single occurrence of `old` replaced by `new`."""
    assert BASE.count(old) == 1, f"{old!r} must occur exactly once in BASE"
    return BASE.replace(old, new)


def added(fields: str) -> str:
    """BASE with `fields` added to the trace_error_rate metric."""
    return edit(METRIC, f"{METRIC} {fields},")


@dataclass(frozen=True)
class Bad:
    text: str
    column: int
    path: str
    message: str


PATH = "analysis.metrics[2]"

INVALID: dict[str, Bad] = {
    # -------------------------------------------------------------- tolerance
    "tolerancePercent": Bad(
        edit(METRIC, "source: trace_error_rate, tolerancePercent: 1,"),
        70,
        f"{PATH}.tolerancePercent",
        "trace_error_rate metrics take tolerance, not tolerancePercent",
    ),
    "tolerance 1": Bad(
        edit(METRIC, "source: trace_error_rate, tolerance: 1,"),
        63,
        f"{PATH}.tolerance",
        "must be < 1: trace_error_rate metrics are rates",
    ),
    "promoteTolerance 1": Bad(
        added("promoteTolerance: 1"),
        87,
        f"{PATH}.promoteTolerance",
        "must be < 1: trace_error_rate metrics are rates",
    ),
    "promoteTolerancePercent": Bad(
        added("promoteTolerancePercent: 5"),
        94,
        f"{PATH}.promoteTolerancePercent",
        "goes with tolerancePercent; use promoteTolerance",
    ),
    # -------------------------------------------------------------- direction
    "direction higher": Bad(
        added("direction: higher"),
        80,
        f"{PATH}.direction",
        "must be lower for trace_error_rate metrics",
    ),
    # -------------------------------------------------- fields of other sources
    "score": Bad(
        added("score: helpfulness"),
        76,
        f"{PATH}.score",
        "only for source score, not trace_error_rate",
    ),
    "scoreType": Bad(
        added("scoreType: boolean"),
        80,
        f"{PATH}.scoreType",
        "only for source score, not trace_error_rate",
    ),
    "range": Bad(
        added("range: {min: 0, max: 1}"),
        76,
        f"{PATH}.range",
        "only for numeric scores, not trace_error_rate metrics",
    ),
    "badValues": Bad(
        added("badValues: [bad]"),
        80,
        f"{PATH}.badValues",
        "only for categorical scores, not trace_error_rate",
    ),
    "quantile": Bad(
        added("quantile: 0.9"),
        79,
        f"{PATH}.quantile",
        "only for latency metrics, not trace_error_rate",
    ),
    # -------------------------------------------------------------- the name
    "misspelt source": Bad(
        edit("source: trace_error_rate,", "source: trace_errors,"),
        34,
        f"{PATH}.source",
        "must be one of: score, error_rate, cost, latency, trace_error_rate",
    ),
}


@pytest.mark.parametrize("case", INVALID.values(), ids=INVALID.keys())
def test_invalid_trace_error_rate_metric_reports_where_and_what(case: Bad) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(case.text, FILE)
    issue = caught.value.issues[0]
    assert (issue.line, issue.column, issue.path) == (LINE, case.column, case.path), str(issue)
    assert case.message in issue.message, str(issue)


VALID: dict[str, tuple[str, float]] = {
    "tolerance only": (BASE, 0.01),
    "tolerance 0": (edit(METRIC, "source: trace_error_rate, tolerance: 0,"), 0.0),
    "promoteTolerance above tolerance": (added("promoteTolerance: 0.03"), 0.01),
    "direction lower": (added("direction: lower"), 0.01),
    "effectSize": (added("effectSize: 0.05"), 0.01),
}


@pytest.mark.parametrize(("text", "tolerance"), VALID.values(), ids=VALID.keys())
def test_trace_error_rate_is_a_rate_where_lower_is_better(text: str, tolerance: float) -> None:
    metric = load_policy_text(text, FILE).analysis.metrics[2]
    assert metric.source is MetricSource.TRACE_ERROR_RATE
    assert metric.direction is Direction.LOWER
    assert metric.tolerance == tolerance
    assert (metric.score, metric.range, metric.quantile) == (None, None, None)


def test_both_error_sources_are_error_rates() -> None:
    rates = {source.value for source in MetricSource if source.is_error_rate}
    assert rates == {"error_rate", "trace_error_rate"}
