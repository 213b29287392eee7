"""`coalmine policy validate|schema`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from coalmine.cli.errors import InputError
from policies import Policy, PolicyError, load_policy, policy_json_schema_text

app = typer.Typer(help="Check policy files and export their JSON Schema.", no_args_is_help=True)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _summary(policy: Policy) -> str:
    steps = _plural(len(policy.steps), "step")
    metrics = _plural(len(policy.analysis.metrics), "metric")
    return f"release {policy.name}, {steps}, {metrics}"


@app.command()
def validate(
    files: Annotated[
        list[Path],
        typer.Argument(help="Policy files to check.", metavar="FILE", show_default=False),
    ],
) -> None:
    """Check policy files; print every problem as FILE:LINE:COLUMN: FIELD: MESSAGE.

    Exits 0 when all files are valid, 2 when any is not.
    """
    bad_files = 0
    issue_count = 0
    for file in files:
        try:
            policy = load_policy(file)
        except PolicyError as error:
            bad_files += 1
            issue_count += len(error.issues)
            for issue in error.issues:
                print(issue, file=sys.stderr)
            continue
        print(f"ok: {file} ({_summary(policy)})")
    if bad_files:
        problems = _plural(issue_count, "problem")
        raise InputError(f"{problems} in {bad_files} of {_plural(len(files), 'policy file')}")


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
