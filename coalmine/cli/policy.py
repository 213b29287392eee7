"""`coalmine policy validate|schema|plan`."""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from coalmine.cli import plan_output
from coalmine.cli.errors import InputError
from controller.planner import DEFAULT_RUNS, Plan, PlanSettings, plan
from policies import Policy, PolicyError, PolicyIssue, load_policy, policy_json_schema_text
from policies.policy_set import SetProblem, check_policy_set, policy_files_in

app = typer.Typer(
    help="Check policy files, export their JSON Schema, and plan a release.",
    no_args_is_help=True,
)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _summary(policy: Policy) -> str:
    steps = _plural(len(policy.steps), "step")
    metrics = _plural(len(policy.analysis.metrics), "metric")
    return f"release {policy.name}, {steps}, {metrics}"


def _files_of(paths: list[Path]) -> list[Path]:
    """The files named, with each directory replaced by its policy files."""
    files: list[Path] = []
    for path in paths:
        files.extend(policy_files_in(path) if path.is_dir() else [path])
    return files


def _load_each(files: list[Path]) -> tuple[list[tuple[str, Policy]], list[PolicyIssue]]:
    """The valid policies with their files, and every issue of the others."""
    valid: list[tuple[str, Policy]] = []
    issues: list[PolicyIssue] = []
    for file in files:
        try:
            valid.append((str(file), load_policy(file)))
        except PolicyError as error:
            issues.extend(error.issues)
    return valid, issues


def _failure(
    issues: list[PolicyIssue], bad_files: int, conflicts: list[SetProblem], file_count: int
) -> str:
    parts = []
    if issues:
        problems = _plural(len(issues), "problem")
        parts.append(f"{problems} in {bad_files} of {_plural(file_count, 'policy file')}")
    if conflicts:
        parts.append(f"{_plural(len(conflicts), 'conflict')} between policy files")
    return "; ".join(parts)


@app.command()
def validate(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Policy files, or directories of *.yaml and *.yml policy files, to check "
            "as one set.",
            metavar="FILE|DIR",
            show_default=False,
        ),
    ],
) -> None:
    """Check policy files, each and together; print every problem as
    FILE:LINE:COLUMN: FIELD: MESSAGE and every conflict as FILE and FILE: MESSAGE.

    The files are checked as one set, as `coalmine run` and `coalmine proxy` load them:
    no release name, routing.pathPrefix or target.prompt.name may be given twice.
    Exits 0 when all files are valid and agree, 2 when not.
    """
    files = _files_of(paths)
    if not files:
        raise InputError(f"no policy files (*.yaml, *.yml) in {', '.join(map(str, paths))}")
    valid, issues = _load_each(files)
    for file, policy in valid:
        print(f"ok: {file} ({_summary(policy)})")
    for issue in issues:
        print(issue, file=sys.stderr)
    conflicts = check_policy_set(valid)
    for conflict in conflicts:
        print(conflict, file=sys.stderr)
    if issues or conflicts:
        bad_files = len(files) - len(valid)
        raise InputError(_failure(issues, bad_files, conflicts, len(files)))


@app.command()
def schema(
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write the schema to this file (e.g. policies/schema.json) instead of stdout.",
            metavar="FILE",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Print the JSON Schema of policy files, for editors and CI checks."""
    text = policy_json_schema_text()
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as error:
        raise InputError(f"cannot write {output}: {error.strerror or error}") from None
    print(f"wrote {output}")


MAX_DEFAULT_JOBS = 8


class Output(StrEnum):
    TEXT = "text"
    JSON = "json"


@app.command("plan")
def plan_command(
    file: Annotated[
        Path,
        typer.Argument(help="The policy file to plan.", metavar="FILE", show_default=False),
    ],
    traffic: Annotated[
        str,
        typer.Option(
            help="Requests to the release, e.g. 120/min, 2/s or 7200/h; split between the "
            "arms by each step's weight.",
            metavar="N/min",
            show_default=False,
        ),
    ],
    scores_per_trace: Annotated[
        float,
        typer.Option(help="Share of traces that get their scores (0 to 1).", metavar="F"),
    ] = 1.0,
    runs: Annotated[
        int, typer.Option(help="Seeded runs of each simulated canary.", metavar="K")
    ] = DEFAULT_RUNS,
    seed: Annotated[
        int, typer.Option(help="Seed of the runs: the same seed gives the same plan.", metavar="S")
    ] = 0,
    regression: Annotated[
        list[str] | None,
        typer.Option(
            help="The degradation of the canary worse on METRIC, in the metric's units "
            "(percent for tolerancePercent metrics). Default: tolerance plus effectSize "
            "(the judge's default effect when unset); latency: twice its tolerance.",
            metavar="METRIC=DELTA",
            show_default=False,
        ),
    ] = None,
    output: Annotated[Output, typer.Option(help="text (a table) or json.")] = Output.TEXT,
    jobs: Annotated[
        int | None,
        typer.Option(
            help="Worker processes that simulate runs side by side (the plan is the same "
            "for any number). Default: the CPUs available, at most 8.",
            metavar="N",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Simulate a release of FILE at the given traffic with the replay engine.

    Seeded runs of a canary equal to the baseline give the time to promote and the share
    of runs promoted, paused, rolled back or undecided; runs of a canary worse on each
    metric give how often and how fast it is caught. Warns when a step's maxDuration is
    too short, when minSamples, scoreSettle or scoreTimeout hold a step past its
    minDuration, and when the traffic cannot reach minSamples within maxDuration.
    """
    policy = _policy(file)
    settings = PlanSettings(
        traffic_per_minute=plan_output.parse_traffic(traffic),
        scores_per_trace=_share(scores_per_trace),
        runs=_runs(runs),
        seed=seed,
        regressions=plan_output.parse_regressions(regression or []),
    )
    workers = _jobs(jobs)
    started = time.perf_counter()
    try:
        result = _plan(policy, settings, workers)
    except ValueError as error:
        raise InputError(f"{file}: {error}") from None
    wall = time.perf_counter() - started
    if output is Output.JSON:
        print(plan_output.as_json(result, file, wall))
    else:
        print(plan_output.as_text(result, file, wall))


def _policy(file: Path) -> Policy:
    try:
        return load_policy(file)
    except PolicyError as error:
        raise InputError(str(error)) from None


def _plan(policy: Policy, settings: PlanSettings, workers: int) -> Plan:
    if workers == 1:
        return plan(policy, settings)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return plan(policy, settings, pool.map)


def _jobs(value: int | None) -> int:
    if value is None:
        return max(1, min(len(os.sched_getaffinity(0)), MAX_DEFAULT_JOBS))
    if value < 1:
        raise InputError(f"--jobs: {value} must be at least 1")
    return value


def _share(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise InputError(f"--scores-per-trace: {value:g} is not between 0 and 1")
    return value


def _runs(value: int) -> int:
    if not 1 <= value <= plan_output.MAX_RUNS:
        raise InputError(f"--runs: {value} is not between 1 and {plan_output.MAX_RUNS}")
    return value
