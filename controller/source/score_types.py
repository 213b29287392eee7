"""Whether a score's type can serve the metric that reads it, and the mismatches seen.

Langfuse types every score (``dataType``): NUMERIC (a number), BOOLEAN (stored as 1 or
0; scores v3 answers JSON ``true``/``false``), CATEGORICAL (a string), TEXT and
CORRECTION (strings). A metric says what it takes with ``scoreType``, and the judge
(``controller.judge.evidence.metric_value``) leaves out a value it cannot use. A score
of the wrong type would thus vanish silently, and the release would wait with "no
observations" until its maxDuration. So the source checks every score against the
metrics that read its name:

=================  =======================================================
metric scoreType   scores that serve it
=================  =======================================================
numeric            NUMERIC; BOOLEAN, read as 1.0 and 0.0 as Langfuse stores it
boolean            BOOLEAN; NUMERIC 0 or 1; a string "true" or "false"
categorical        a string (CATEGORICAL)
=================  =======================================================

Any other score is a mismatch, kept per (release, metric) while the release is polled:
logged as a warning the first time, counted (distinct scores), and shown in the
release's status until its rollout ends or its policy changes the metric.

Scores carry no release tags (the controller joins them to traces by trace id), so a
mismatched score counts for every polled release with a metric on that score name.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

from controller.judge import ScoreValue
from policies.model import MetricSource, Policy, ScoreType

__all__ = ["ScoreTypeBook", "ScoreTypeMismatch", "seen_type", "serves"]

log = logging.getLogger("coalmine.controller.source")

EXAMPLE_CHARS: Final = 40
"""Longest example value kept with a mismatch."""

_SUGGESTED: Final = {
    "NUMERIC": "numeric",
    "BOOLEAN": "boolean",
    "CATEGORICAL": "categorical (with badValues)",
}


@dataclass(frozen=True, slots=True)
class ScoreTypeMismatch:
    """Scores of one name whose type cannot serve one metric of one release."""

    release: str
    metric: str
    score: str
    """The Langfuse score name the metric reads."""
    seen: str
    """The score's Langfuse ``dataType`` (NUMERIC, BOOLEAN, CATEGORICAL, TEXT...)."""
    expected: str
    """The metric's ``scoreType``."""
    example: str
    """One value seen, shortened."""
    first_seen: float
    """Time of the poll that first saw it (the poll's ``now``)."""
    last_seen: float
    scores: int
    """Mismatched scores seen (each score once)."""

    def describe(self) -> str:
        """One line: what was seen, what was expected, and what to change."""
        suggested = _SUGGESTED.get(self.seen, "a type that matches")
        plural = "" if self.scores == 1 else "s"
        return (
            f"metric {self.metric} expects a {self.expected} score, but Langfuse holds "
            f"{self.score!r} as {self.seen} (e.g. {self.example}); {self.scores} "
            f"score{plural} left out of the judgement (set the metric's scoreType to "
            f"{suggested}, or fix what writes the score)"
        )


def seen_type(data_type: object, value: object) -> str:
    """The type a score was written as: its ``dataType``, else what its value is."""
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(data_type, str) and data_type:
        return data_type
    if isinstance(value, int | float):
        return "NUMERIC"
    return "CATEGORICAL"


def serves(expected: ScoreType, seen: str, value: ScoreValue) -> bool:
    """Whether a score written as ``seen`` with ``value`` (as the source reads it) can
    serve a metric whose ``scoreType`` is ``expected`` (see the module's table)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if expected is ScoreType.NUMERIC:
        return seen in ("NUMERIC", "BOOLEAN") and number
    if expected is ScoreType.BOOLEAN:
        if seen == "BOOLEAN":
            return True
        if seen == "NUMERIC":
            return number and value in (0, 1)
        return isinstance(value, str) and value.strip().lower() in ("true", "false")
    return isinstance(value, str)


@dataclass(frozen=True, slots=True)
class _Reader:
    """One metric of one release that reads a score name."""

    release: str
    metric: str
    expected: ScoreType


class ScoreTypeBook:
    """The score type mismatches of the polled releases.

    Each poll calls ``begin`` with the releases it serves, then ``check`` for each score
    read, then ``forget_before`` with the start of its score window. Thread-safe:
    ``mismatches`` and ``counts`` are read by the admin API and the metrics while a poll
    runs.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readers: dict[str, list[_Reader]] = {}
        self._found: dict[tuple[str, str], ScoreTypeMismatch] = {}
        self._seen_ids: dict[tuple[str, str], dict[str, float]] = {}
        self._counts: Counter[tuple[str, str]] = Counter()

    def begin(self, releases: Mapping[str, Policy]) -> None:
        """The releases of this poll: mismatches of releases no longer polled (their
        rollout ended), and of metrics that no longer read that score as that type, are
        dropped."""
        readers: dict[str, list[_Reader]] = {}
        wanted: set[tuple[str, str, str, str]] = set()
        for name, policy in releases.items():
            for metric in policy.analysis.metrics:
                if metric.source is MetricSource.SCORE and metric.score:
                    readers.setdefault(metric.score, []).append(
                        _Reader(name, metric.name, metric.score_type)
                    )
                    wanted.add((name, metric.name, metric.score, metric.score_type.value))
        with self._lock:
            self._readers = readers
            for key, found in list(self._found.items()):
                if (found.release, found.metric, found.score, found.expected) not in wanted:
                    del self._found[key]

    def check(
        self, *, score_id: str, name: str, seen: str, value: ScoreValue, stamp: float, now: float
    ) -> None:
        """Note a score read at the poll of ``now``; ``stamp`` is its timestamp, by which
        ``forget_before`` forgets it."""
        for reader in self._readers.get(name, ()):
            if serves(reader.expected, seen, value):
                continue
            key = (reader.release, reader.metric)
            with self._lock:
                ids = self._seen_ids.setdefault(key, {})
                new = score_id not in ids
                ids[score_id] = stamp
                found = self._found.get(key)
                if found is None:
                    found = ScoreTypeMismatch(
                        release=reader.release,
                        metric=reader.metric,
                        score=name,
                        seen=seen,
                        expected=reader.expected.value,
                        example=_example(value),
                        first_seen=now,
                        last_seen=now,
                        scores=1,
                    )
                    log.warning(
                        "release %s: score type mismatch: %s", reader.release, found.describe()
                    )
                elif new:
                    found = replace(found, last_seen=now, scores=found.scores + 1)
                else:
                    found = replace(found, last_seen=now)
                self._found[key] = found
                if new:
                    self._counts[key] += 1

    def forget_before(self, stamp: float) -> None:
        """Forget the ids of scores stamped before ``stamp``: no later poll reads them
        again, so they cannot be counted twice."""
        with self._lock:
            for ids in self._seen_ids.values():
                for score_id in [key for key, at in ids.items() if at < stamp]:
                    del ids[score_id]

    def mismatches(self) -> tuple[ScoreTypeMismatch, ...]:
        """The mismatches of the releases polled, by release and metric."""
        with self._lock:
            return tuple(self._found[key] for key in sorted(self._found))

    def counts(self) -> dict[tuple[str, str], int]:
        """Mismatched scores seen since the process started, by (release, metric)."""
        with self._lock:
            return dict(self._counts)


def _example(value: ScoreValue) -> str:
    text = repr(value)
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 3] + "..."
