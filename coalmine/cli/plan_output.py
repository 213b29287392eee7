"""`coalmine policy plan`: its flags read, its plan written as a table or as JSON."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from coalmine.cli.errors import InputError
from controller.planner import Plan, RegressionPlan, Spread, StepPlan, baseline_description
from policies.durations import format_duration

MAX_RUNS: Final = 1000
_TRAFFIC = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*(s|min|h)\s*$")
_PER_MINUTE: Final = {"s": 60.0, "min": 1.0, "h": 1.0 / 60.0}
_REGRESSION = re.compile(r"^([^=\s]+)=(.+)$")


def parse_traffic(text: str) -> float:
    """``--traffic`` in requests a minute: 120/min, 2/s, 7200/h."""
    match = _TRAFFIC.fullmatch(text)
    if match is None:
        raise InputError(
            f"--traffic: {text!r} must be requests per unit of time, such as 120/min, 2/s or 7200/h"
        )
    per_minute = float(match.group(1)) * _PER_MINUTE[match.group(2)]
    if per_minute <= 0:
        raise InputError(f"--traffic: {text!r} must be more than zero")
    return per_minute


def parse_regressions(items: Iterable[str]) -> dict[str, float]:
    """``--regression METRIC=DELTA`` flags: metric name to a positive number."""
    regressions: dict[str, float] = {}
    for item in items:
        match = _REGRESSION.fullmatch(item.strip())
        if match is None:
            raise InputError(f"--regression: {item!r} must be METRIC=DELTA, e.g. errors=0.03")
        name, raw = match.groups()
        try:
            delta = float(raw)
        except ValueError:
            raise InputError(f"--regression {name}: {raw!r} is not a number") from None
        if not (delta > 0 and math.isfinite(delta)):
            raise InputError(
                f"--regression {name}: {raw} must be a positive number, the degradation in "
                "the metric's units"
            )
        if name in regressions:
            raise InputError(f"--regression {name}: given twice")
        regressions[name] = delta
    return regressions


# -- JSON -------------------------------------------------------------------------------


def as_json(plan: Plan, file: Path, wall_seconds: float) -> str:
    """The plan as one JSON object; durations in seconds, null where never reached."""
    policy, settings = plan.policy, plan.settings
    document = {
        "release": policy.name,
        "file": str(file),
        "traffic_per_minute": settings.traffic_per_minute,
        "scores_per_trace": settings.scores_per_trace,
        "runs": settings.runs,
        "seed": settings.seed,
        "interval_s": policy.analysis.interval,
        "baseline": {m.name: baseline_description(m) for m in policy.analysis.metrics},
        "equal_canary": {
            "outcomes": dict(plan.equal.outcomes),
            "time_to_promote_s": _spread(plan.equal.time_to_promote),
        },
        "steps": [_step_json(step) for step in plan.steps],
        "regressions": [_regression_json(item) for item in plan.regressions],
        "warnings": list(plan.warnings),
        "wall_time_s": round(wall_seconds, 3),
    }
    return json.dumps(document, indent=2, allow_nan=False)


def _spread(spread: Spread) -> dict[str, float | None]:
    return {"median": _round(spread.median), "p90": _round(spread.p90)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _step_json(step: StepPlan) -> dict[str, Any]:
    return {
        "step": step.index,
        "weight": step.weight,
        "min_duration_s": step.min_duration,
        "max_duration_s": step.max_duration,
        "reached": step.reached,
        "passed": step.passed,
        "undecided": step.undecided,
        "waiting_on": dict(step.waiting),
        "mean_time_s": _round(step.mean_time),
        "time_to_pass_s": _spread(step.time_to_pass),
        "samples_per_arm": {
            "baseline": _round(step.samples_baseline),
            "canary": _round(step.samples_canary),
        },
    }


def _regression_json(item: RegressionPlan) -> dict[str, Any]:
    return {
        "metric": item.metric,
        "critical": item.critical,
        "regression": item.delta,
        "unit": item.unit or None,
        "expected": item.expected,
        "outcomes": dict(item.outcomes),
        "detected": item.detected,
        "time_to_detect_s": _spread(item.time_to_detect),
    }


# -- text -------------------------------------------------------------------------------


def as_text(plan: Plan, file: Path, wall_seconds: float) -> str:
    """The plan as tables for a terminal."""
    policy, settings = plan.policy, plan.settings
    runs = settings.runs
    lines = [
        f"plan of release {policy.name} ({file})",
        f"traffic {settings.traffic_per_minute:g}/min, scores on "
        f"{settings.scores_per_trace:.0%} of traces, {runs} runs from seed {settings.seed}, "
        f"a look every {format_duration(policy.analysis.interval)}",
        "",
        "baseline values (a worse canary differs on one metric):",
        *(f"  {m.name:<16} {baseline_description(m)}" for m in policy.analysis.metrics),
        "",
        "canary equal to the baseline:",
        f"  {_outcomes(plan.equal.outcomes, runs)}",
        f"  time to promote: median {_time(plan.equal.time_to_promote.median)}, "
        f"p90 {_time(plan.equal.time_to_promote.p90)}",
        "",
        *_table(
            (
                "step",
                "weight",
                "minDuration",
                "maxDuration",
                "reached",
                "passed",
                "mean time",
                "median to pass",
                "baseline/step",
                "canary/step",
            ),
            [_step_row(step) for step in plan.steps],
        ),
        "",
        "canary worse on one metric:",
        *_table(
            (
                "metric",
                "regression",
                "critical",
                "expected",
                "detected",
                "median",
                "p90",
                "promoted",
            ),
            [_regression_row(item, runs) for item in plan.regressions],
        ),
        "",
        "warnings:" if plan.warnings else "warnings: none",
        *(f"  {warning}" for warning in plan.warnings),
        "",
        f"{runs} runs of {1 + len(plan.regressions)} canaries in {wall_seconds:.1f}s "
        "(never: not reached by that share of the runs)",
    ]
    return "\n".join(lines)


def _outcomes(outcomes: Mapping[str, int], runs: int) -> str:
    return ", ".join(f"{name.replace('_', ' ')} {count}/{runs}" for name, count in outcomes.items())


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds >= 60:
        return format_duration(round(seconds / 60.0) * 60.0)
    return format_duration(round(seconds))


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _step_row(step: StepPlan) -> tuple[str, ...]:
    return (
        str(step.index),
        f"{step.weight:g}%",
        format_duration(step.min_duration),
        "-" if step.max_duration is None else format_duration(step.max_duration),
        str(step.reached),
        str(step.passed),
        "-" if step.mean_time is None else _time(step.mean_time),
        _time(step.time_to_pass.median) if step.reached else "-",
        _count(step.samples_baseline),
        _count(step.samples_canary),
    )


def _regression_row(item: RegressionPlan, runs: int) -> tuple[str, ...]:
    unit = {"%": "%", "ms": " ms", "": ""}[item.unit]
    return (
        item.metric,
        f"{item.delta:g}{unit}",
        "yes" if item.critical else "no",
        item.expected.replace("_", " "),
        f"{item.detected}/{runs}",
        _time(item.time_to_detect.median),
        _time(item.time_to_detect.p90),
        f"{item.outcomes['promoted']}/{runs}",
    )


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return [
        "  "
        + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
