"""Errors of policy files: each issue names file, line, column and field path.

The policy model depends on no other coalmine package, so its errors are ``ValueError``
(what pydantic validators raise and what readers of a policy catch), not
``coalmine.shared.errors``' classes. Both are permanent: the same file fails again. ::

    ValueError
    ├── PolicyError       a policy file that cannot be used; ``issues``, one per problem
    └── RuleError         a rule across several fields, raised inside model validators;
                          the loader turns its ``violations`` into ``PolicyIssue`` entries

``policies.durations`` raises plain ``ValueError`` for a duration it cannot read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "DOCUMENT",
    "FieldPath",
    "PolicyError",
    "PolicyIssue",
    "RuleError",
    "format_path",
]

FieldPath = tuple[str | int, ...]
"""A location in a policy document: YAML keys (camelCase) and list indexes."""

DOCUMENT = "<document>"
"""The path shown for problems of the file as a whole (syntax, empty file, ...)."""


def format_path(path: Sequence[str | int]) -> str:
    """`("analysis", "metrics", 1, "tolerance")` → `analysis.metrics[1].tolerance`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or DOCUMENT


@dataclass(frozen=True)
class PolicyIssue:
    """One problem in a policy file. Line and column are 1-based."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.path}: {self.message}"


class PolicyError(ValueError):
    """A policy file that cannot be used; `issues` lists every problem found, by line."""

    issues: tuple[PolicyIssue, ...]

    def __init__(self, issues: Iterable[PolicyIssue]) -> None:
        self.issues = tuple(issues)
        if not self.issues:
            raise ValueError("PolicyError needs at least one issue")
        super().__init__(str(self))

    def __str__(self) -> str:
        first = str(self.issues[0])
        more = len(self.issues) - 1
        return f"{first} (and {more} more)" if more else first


class RuleError(ValueError):
    """Raised by model validators for rules that involve several fields.

    Each entry is a path relative to the model being validated (YAML spelling) and a
    message; the loader appends the path to the model's own location so that the issue
    points at the most specific field involved. An empty path means the model itself.
    """

    violations: tuple[tuple[FieldPath, str], ...]

    def __init__(self, violations: Iterable[tuple[FieldPath, str]]) -> None:
        self.violations = tuple(violations)
        super().__init__(
            "; ".join(
                f"{format_path(path)}: {message}" if path else message
                for path, message in self.violations
            )
        )
