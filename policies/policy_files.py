"""Policy files, watched: reloaded when they change, the last good version kept when an
edit is bad, a release dropped when its file goes away.

Files and directories may be given; a directory contributes its ``*.yaml`` and ``*.yml``
files (a Kubernetes ConfigMap mount updates them through symlink swaps, which a content
digest notices where a modification time may not).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from policies import Policy, PolicyError
from policies.loader import load_policy_text
from policies.policy_set import check_policy_set, policy_files_in

log = logging.getLogger("coalmine.controller.policies")


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """A policy file that could not be used as it stands now."""

    path: str
    message: str
    kept: str | None
    """The release whose last good version stays in force, if any."""


@dataclass(slots=True)
class _Loaded:
    digest: str
    policy: Policy | None


@dataclass(slots=True)
class PolicyFiles:
    """The current set of policies, by release name."""

    paths: Sequence[Path]
    _files: dict[Path, _Loaded] = field(default_factory=dict)
    _good: dict[Path, Policy] = field(default_factory=dict)
    problems: list[PolicyProblem] = field(default_factory=list)
    load_errors: int = 0
    """Bad loads so far (a metric)."""

    def files(self) -> list[Path]:
        found: list[Path] = []
        for path in self.paths:
            if path.is_dir():
                found.extend(policy_files_in(path))
            elif path.exists():
                found.append(path)
        return found

    def reload(self) -> dict[str, Policy]:
        """Read what changed; return every release with its policy in force."""
        current = self.files()
        problems: list[PolicyProblem] = []
        for gone in set(self._files) - set(current):
            log.warning("policy file %s was removed", gone)
            self._files.pop(gone)
            self._good.pop(gone, None)
        for path in current:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                problems.append(self._problem(path, f"cannot read: {error}"))
                continue
            digest = hashlib.sha256(text.encode()).hexdigest()
            known = self._files.get(path)
            if known is not None and known.digest == digest:
                if known.policy is None:
                    problems.append(self._problem(path, self._last_error.get(path, "invalid")))
                continue
            try:
                policy = load_policy_text(text, str(path))
            except PolicyError as error:
                self.load_errors += 1
                self._files[path] = _Loaded(digest, None)
                self._last_error[path] = str(error)
                problem = self._problem(path, str(error))
                problems.append(problem)
                log.error(
                    "policy %s not loaded (%s): %s",
                    path,
                    f"keeping the last good version of {problem.kept}" if problem.kept else "new",
                    error,
                )
                continue
            self._files[path] = _Loaded(digest, policy)
            if known is not None:
                log.info("policy %s reloaded", path)
            self._good[path] = policy
        self.problems = problems
        return self._in_force()

    def _in_force(self) -> dict[str, Policy]:
        """The good policies by release; of a release given twice, the first file's (the
        second is reported). Releases that clash otherwise are left to the proxy, which
        refuses them when it starts."""
        good = [(str(path), policy) for path, policy in sorted(self._good.items())]
        duplicates = {
            conflict.second: conflict
            for conflict in check_policy_set(good)
            if conflict.kind == "release"
        }
        for path, conflict in duplicates.items():
            self.problems.append(PolicyProblem(path, str(conflict), None))
        return {policy.name: policy for path, policy in good if path not in duplicates}

    def _problem(self, path: Path, message: str) -> PolicyProblem:
        good = self._good.get(path)
        return PolicyProblem(str(path), message, None if good is None else good.name)

    _last_error: dict[Path, str] = field(default_factory=dict)
