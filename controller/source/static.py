"""A sample source that hands out prepared polls, for tests of the controller."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from controller.samples import Cursors, Poll
from controller.source.health import PollHealth, PollRecord, SourceHealth
from controller.source.score_types import ScoreTypeMismatch
from policies.model import Policy


@dataclass(frozen=True, slots=True)
class PollCall:
    """One call of ``StaticSource.poll``, as made."""

    releases: tuple[str, ...]
    cursors: Cursors | None
    now: float


class StaticSource:
    """Answers each poll with the next queued ``Poll``; once the queue is empty, with
    ``default`` if given, else with an empty successful poll whose cursors are ``now``.

    Every call is recorded in ``calls``; ``queue`` adds polls at any time. ``health``
    judges the polls handed out (no request budget: never starved by one) and reports
    the mismatches set in ``score_type_mismatches``.
    """

    def __init__(self, polls: Iterable[Poll] = (), *, default: Poll | None = None) -> None:
        self._queue: deque[Poll] = deque(polls)
        self.default = default
        self.calls: list[PollCall] = []
        self.closed = False
        self.score_type_mismatches: tuple[ScoreTypeMismatch, ...] = ()
        self._health = PollHealth()

    def queue(self, *polls: Poll) -> None:
        """Answer the next polls with these, in order."""
        self._queue.extend(polls)

    def poll(self, releases: Mapping[str, Policy], cursors: Cursors | None, now: float) -> Poll:
        """The next queued poll (see the class)."""
        if self.closed:
            raise RuntimeError("StaticSource used after close()")
        self.calls.append(PollCall(tuple(releases), cursors, now))
        if self._queue:
            poll = self._queue.popleft()
        elif self.default is not None:
            poll = self.default
        else:
            poll = Poll(ok=True, cursors=Cursors(observations_from=now, scores_from=now))
        self._health.record(
            PollRecord(at=now, cursors=poll.cursors, complete=poll.ok, error=poll.error)
        )
        return poll

    def health(self, now: float) -> SourceHealth:
        """The health of the polls handed out (see the class)."""
        counts = {(m.release, m.metric): m.scores for m in self.score_type_mismatches}
        return SourceHealth(
            reads=self._health.snapshot(now),
            score_type_mismatches=self.score_type_mismatches,
            score_type_mismatch_counts=counts,
        )

    def close(self) -> None:
        self.closed = True
