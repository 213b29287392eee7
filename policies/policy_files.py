"""Policy files, watched: reloaded when they change, the last good version kept when an
edit is bad, a release dropped when its file goes away.

Files and directories may be given; a directory contributes its ``*.yaml`` and ``*.yml``
files (a Kubernetes ConfigMap mount updates them through symlink swaps, which a content
digest notices where a modification time may not).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from policies.errors import DOCUMENT, PolicyError, PolicyIssue
from policies.loader import load_policy_bytes, read_policy_file
from policies.model import Policy
from policies.policy_set import SetProblem, check_policy_set, policy_files_in

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
    """The current set of policies, by release name.

    One instance is the process's one view of the files: ``reload`` may be called from
    any thread (one reload at a time), and ``current`` gives every part of the process
    the set in force after the last reload.
    """

    paths: Sequence[Path]
    _files: dict[Path, _Loaded] = field(default_factory=dict)
    _good: dict[Path, Policy] = field(default_factory=dict)
    problems: list[PolicyProblem] = field(default_factory=list)
    load_errors: int = 0
    """Bad loads so far (a metric)."""
    _reloading: threading.Lock = field(default_factory=threading.Lock)
    _current: Mapping[str, Policy] = field(default_factory=lambda: MappingProxyType({}))
    _in_force_paths: dict[Path, Policy] = field(default_factory=dict)
    """The policies in force after the last reload, by file."""
    _clashing: Mapping[Path, SetProblem] = field(default_factory=lambda: MappingProxyType({}))
    """Files kept out, or kept at their version in force, for a clash at the last reload
    (each clash is logged once)."""
    _refused: Mapping[Path, SetProblem] = field(default_factory=lambda: MappingProxyType({}))
    """Files kept out for a clash at the last reload."""

    def files(self) -> list[Path]:
        found: list[Path] = []
        for path in self.paths:
            if path.is_dir():
                found.extend(policy_files_in(path))
            elif path.exists():
                found.append(path)
        return found

    def current(self) -> Mapping[str, Policy]:
        """The releases in force after the last reload, in their files' order: a
        read-only snapshot, replaced whole by the next reload (empty before the first)."""
        return self._current

    def kept_out(self) -> dict[str, str]:
        """The releases kept out for a clash at the last reload, with why."""
        return {problem.release: str(problem) for problem in self._refused.values()}

    def reload(self) -> dict[str, Policy]:
        """Read what changed; return every release with its policy in force."""
        with self._reloading:
            in_force = self._reload()
            self._current = MappingProxyType(dict(in_force))
            return in_force

    def _reload(self) -> dict[str, Policy]:
        current = self.files()
        problems: list[PolicyProblem] = []
        for gone in set(self._files) - set(current):
            log.warning("policy file %s was removed", gone)
            self._files.pop(gone)
            self._good.pop(gone, None)
        for path in current:
            try:
                data = read_policy_file(path)
            except PolicyError as error:  # gone or unreadable now: not a version to count
                problems.append(self._problem(path, str(error)))
                continue
            digest = hashlib.sha256(data).hexdigest()
            known = self._files.get(path)
            if known is not None and known.digest == digest:
                if known.policy is None:
                    problems.append(self._problem(path, self._last_error.get(path, "invalid")))
                continue
            try:
                policy = load_policy_bytes(data, str(path))
            except Exception as error:  # one file's trouble never stops the others
                failure = error if isinstance(error, PolicyError) else _unexpected(path, error)
                self.load_errors += 1
                self._files[path] = _Loaded(digest, None)
                self._last_error[path] = str(failure)
                problem = self._problem(path, str(failure))
                problems.append(problem)
                log.error(
                    "policy %s not loaded (%s): %s",
                    path,
                    f"keeping the last good version of {problem.kept}" if problem.kept else "new",
                    failure,
                    exc_info=failure is not error,
                )
                continue
            self._files[path] = _Loaded(digest, policy)
            if known is not None:
                log.info("policy %s reloaded", path)
            self._good[path] = policy
        self.problems = problems
        return self._in_force()

    def _in_force(self) -> dict[str, Policy]:
        """The good policies by release, in path order, without clashes: of two that claim
        one release name or one path prefix, one is in force and the other is reported,
        so that the controller and the proxy follow one set. A policy in force as it was
        at the last reload wins; between new ones, the first file by path. An edit that
        would clash keeps the version in force before it, as a bad edit does. (Two
        releases of one prompt are left to the commands, which refuse them when they
        start.)"""
        before = self._in_force_paths
        chosen = dict(self._good)
        clashes = _clashes(chosen, before)
        edits = {
            path: conflict
            for path, conflict in clashes.items()
            if path in before and before[path] is not chosen[path]
        }
        if edits:
            chosen.update({path: before[path] for path in edits})
            clashes = _clashes(chosen, before)
        for path, conflict in edits.items():
            if path not in clashes:
                self.problems.append(PolicyProblem(str(path), str(conflict), before[path].name))
                if path not in self._clashing:
                    log.error(
                        "policy %s: keeping the version in force: the edit clashes: %s",
                        path,
                        conflict,
                    )
        for path, conflict in clashes.items():
            self.problems.append(PolicyProblem(str(path), str(conflict), None))
            if path not in self._clashing:
                log.error("policy %s not in force: %s", path, conflict)
        self._clashing = MappingProxyType({**edits, **clashes})
        self._refused = MappingProxyType(clashes)
        in_force = {path: chosen[path] for path in sorted(chosen) if path not in clashes}
        self._in_force_paths = in_force
        return {policy.name: policy for policy in in_force.values()}

    def _problem(self, path: Path, message: str) -> PolicyProblem:
        good = self._good.get(path)
        return PolicyProblem(str(path), message, None if good is None else good.name)

    _last_error: dict[Path, str] = field(default_factory=dict)


def _unexpected(path: Path, error: Exception) -> PolicyError:
    """A failure the loader did not foresee, as the file's own PolicyError."""
    message = f"cannot load: {type(error).__name__}: {error}"
    return PolicyError([PolicyIssue(str(path), 1, 1, DOCUMENT, message)])


def _clashes(
    policies: Mapping[Path, Policy], before: Mapping[Path, Policy]
) -> dict[Path, SetProblem]:
    """The files whose policy clashes with one that goes first: one in force as it was
    before (``before``), then by path."""
    ranked = sorted(
        policies.items(), key=lambda item: (before.get(item[0]) is not item[1], item[0])
    )
    by_source = {str(path): path for path, _ in ranked}
    return {
        by_source[conflict.second]: conflict
        for conflict in check_policy_set((str(path), policy) for path, policy in ranked)
        if conflict.kind in ("release", "path_prefix")
    }
