"""Checks of policies that are valid one by one but cannot be in force together.

No two releases served together may share a release name (routing tables and release
state are kept by name), a path prefix (the proxy could not tell which release a request
belongs to) or a Langfuse prompt (their label moves would undo each other's).
``coalmine policy validate``, ``coalmine run`` and ``coalmine proxy`` apply these same
checks, so a set that validate accepts is a set they accept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from policies.model import Policy

ConflictKind = Literal["release", "path_prefix", "prompt"]
"""What two policies of one set claim both: a release name, a path prefix, a prompt."""


@dataclass(frozen=True, slots=True)
class SetProblem:
    """Two policies that conflict: where each comes from, and why."""

    first: str
    """The source (a file path) of the policy met first."""
    second: str
    """The source of the policy that conflicts with it."""
    release: str
    """The release name of the second policy."""
    message: str
    """What conflicts, naming the releases but not the files."""
    kind: ConflictKind
    """What both claim: one release name, one path prefix or one prompt."""

    def __str__(self) -> str:
        return f"{self.first} and {self.second}: {self.message}"


def _prompt_of(policy: Policy) -> str | None:
    prompt = policy.target.prompt
    return None if prompt is None else prompt.name


def _path_prefix_of(policy: Policy) -> str | None:
    # Every release is routed: one without upstreams goes to the proxy's application.
    return policy.routing.path_prefix


_CLAIMS: tuple[tuple[ConflictKind, Callable[[Policy], str | None], str], ...] = (
    (
        "path_prefix",
        _path_prefix_of,
        "releases '{first}' and '{second}' both claim path prefix '{value}'",
    ),
    ("prompt", _prompt_of, "releases '{first}' and '{second}' both release prompt '{value}'"),
)
"""What two releases may not share, and the message when they do."""


def check_policy_set(policies: Iterable[tuple[str, Policy]]) -> list[SetProblem]:
    """Every conflict among ``policies``: (source, policy) pairs in the order given.

    A policy whose release name was already given is reported once, as a duplicate, and
    not compared further; the first of two claims keeps it.
    """
    problems: list[SetProblem] = []
    sources: dict[str, str] = {}
    claimed: list[dict[str, tuple[str, str]]] = [{} for _ in _CLAIMS]
    for source, policy in policies:
        name = policy.name
        if name in sources:
            message = f"release '{name}' is given by two policy files"
            problems.append(SetProblem(sources[name], source, name, message, "release"))
            continue
        sources[name] = source
        for (kind, claim_of, template), holders in zip(_CLAIMS, claimed, strict=True):
            value = claim_of(policy)
            if value is None:
                continue
            if value in holders:
                holder_source, holder = holders[value]
                message = template.format(first=holder, second=name, value=value)
                problems.append(SetProblem(holder_source, source, name, message, kind))
            else:
                holders[value] = (source, name)
    return problems


def policy_files_in(directory: Path) -> list[Path]:
    """The policy files a directory contributes: its ``*.yaml`` and ``*.yml`` files, not
    hidden ones (a Kubernetes ConfigMap mount keeps its own under ``..data``), sorted."""
    return sorted(
        child
        for child in directory.iterdir()
        if child.suffix in (".yaml", ".yml") and not child.name.startswith(".")
    )
