"""`coalmine policy validate|schema`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from coalmine.cli.errors import InputError
from policies import Policy, PolicyError, PolicyIssue, load_policy, policy_json_schema_text
from policies.policy_set import SetProblem, check_policy_set, policy_files_in

app = typer.Typer(help="Check policy files and export their JSON Schema.", no_args_is_help=True)


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
