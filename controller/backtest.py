"""Backtest: a time range of Langfuse history, read as the controller would have read it,
turned into the records ``controller.replay.Replay`` takes.

The range is read window by window with the controller's own sample source, as one
controller polling until ``end``: each poll moves the cursors by at most the source's
window, reads again a lookback before them, and reports a trace once its root span
had settled by the end of the window. Traces that started in ``[start, end)`` become
``Trace`` records at their start; each score becomes a ``LateScores`` record at the time
it arrived, never before its trace.

When a score arrived: the live controller takes the time Langfuse created it. History
may have been written later than it happened (imported, backfilled), so the backtest
source (``LangfuseHistorySource``) takes the score's own timestamp when that is earlier:
the backtest judges the history as its timestamps tell it. Whatever a source says, a
score never counts later than the end of the window that read it.

Records come out in time order, as soon as no later poll can report anything earlier
(the source's lookback behind the cursor), so a consumer that has its decision can stop
reading before the end of the range.

A poll refused by the request budget or a 429 waits until the source may poll again; a
poll that fails otherwise is retried with the source's backoff, up to ``max_failures`` in
a row; an answer 4xx other than 429 (bad keys, a bad request) is not retried.
"""

from __future__ import annotations

import heapq
import itertools
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from controller.errors import BacktestError
from controller.judge import Trace
from controller.samples import Cursors, Poll, ScoreSample, TraceSample
from controller.source.langfuse import LangfuseSource
from controller.source.public_api import read_time
from controller.stream import LateScores
from policies.model import Policy

__all__ = ["History", "HistorySource", "LangfuseHistorySource", "Record"]

Record = Trace | LateScores

DEFAULT_MAX_FAILURES = 4
"""Failed polls in a row (Langfuse down, 5xx, timeouts) before a backtest gives up."""

# The source's errors, by what to do about them.
_REFUSED = re.compile(r": HTTP 4(?!29)\d\d\b")
"""Langfuse refused the request: the same request fails again."""
_HELD_BACK = re.compile(r"^request budget spent$|^backing off |: rate limited \(429\)")
"""The poll was not made, or not let through: wait, it is not Langfuse failing."""


class HistorySource(Protocol):
    """What a backtest needs of a sample source (``LangfuseSource`` has it)."""

    retry_at: float | None
    """Clock time before which a poll fails at once, after a failed poll."""

    def poll(self, releases: Mapping[str, Policy], cursors: Cursors | None, now: float) -> Poll:
        """See ``controller.source.SampleSource.poll``."""
        ...

    def lookback_for(self, releases: Mapping[str, Policy]) -> float:
        """Seconds a poll reads again before its cursor."""
        ...


class LangfuseHistorySource(LangfuseSource):
    """The controller's Langfuse source, with each score arriving at its timestamp when
    that is earlier than its creation (see the module's docstring)."""

    def _parse_score(self, raw: object) -> ScoreSample | None:
        score = super()._parse_score(raw)
        stamped = read_time(raw.get("timestamp")) if isinstance(raw, dict) else None
        if score is None or stamped is None or stamped >= score.at:
            return score
        return replace(score, at=stamped)


@dataclass
class _Reading:
    """What a backtest has read: records not handed out yet, in time order, and what
    was seen, by id."""

    traces: dict[str, float] = field(default_factory=dict)
    """Start time by trace id."""
    scores: set[str] = field(default_factory=set)
    waiting: dict[str, list[ScoreSample]] = field(default_factory=dict)
    """Scores read before their trace, by trace id."""
    released_until: float = float("-inf")
    _heap: list[tuple[float, int, int, Record]] = field(default_factory=list)
    _counter: Iterator[int] = field(default_factory=itertools.count)

    def push(self, record: Record) -> None:
        kind = 0 if isinstance(record, Trace) else 1  # a trace before its scores
        heapq.heappush(self._heap, (record.ts, kind, next(self._counter), record))

    def push_score(self, score: ScoreSample, opened: float) -> None:
        """A score of a trace that started at ``opened``: never before it, nor before
        records already handed out."""
        at = max(score.at, opened, self.released_until)
        self.push(LateScores(trace_id=score.trace_id, ts=at, scores={score.name: score.value}))

    def release(self, horizon: float) -> Iterator[Record]:
        """The records before ``horizon``, which nothing read later can precede."""
        while self._heap and self._heap[0][0] < horizon:
            yield heapq.heappop(self._heap)[3]
        self.released_until = max(self.released_until, horizon)


class History:
    """The traces and scores of ``policy``'s release in ``[start, end)``, from ``source``.

    ``clock`` and ``sleep`` are the source's time (its ``retry_at`` is on that clock)
    and how to wait for it.
    """

    def __init__(
        self,
        source: HistorySource,
        policy: Policy,
        start: float,
        end: float,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        max_failures: int = DEFAULT_MAX_FAILURES,
        on_wait: Callable[[float, str], None] | None = None,
    ) -> None:
        if not start < end:
            raise ValueError("start must be before end")
        self.source = source
        self.policy = policy
        self.start = start
        self.end = end
        self.clock = clock
        self.sleep = sleep
        self.max_failures = max_failures
        self.on_wait = on_wait
        self.polls = 0
        self.failed_polls = 0
        self.traces = 0
        self.scores = 0
        self.unmatched_scores = 0
        """Scores of traces outside the range or of no trace of the release."""

    def records(self) -> Iterator[Record]:
        """Every record, in time order; stop iterating to stop reading."""
        releases = {self.policy.name: self.policy}
        lookback = self.source.lookback_for(releases)
        cursors = Cursors(observations_from=self.start, scores_from=self.start)
        reading = _Reading()
        failures = 0
        while min(cursors.observations_from, cursors.scores_from) < self.end:
            poll = self.source.poll(releases, cursors, self.end)
            self.polls += 1
            if not poll.ok:
                failures = self._failed(poll.error or "the poll failed", failures)
                continue
            failures = 0
            cursors = poll.cursors
            read_until = min(cursors.observations_from, cursors.scores_from)
            self._take(poll, read_until, reading)
            yield from reading.release(read_until - lookback)
        self.unmatched_scores = sum(len(scores) for scores in reading.waiting.values())
        yield from reading.release(float("inf"))

    def _take(self, poll: Poll, read_until: float, reading: _Reading) -> None:
        """Queue what is new in a poll that read everything up to ``read_until``."""
        for sample in poll.traces:
            if sample.trace_id in reading.traces or not self.start <= sample.ts < self.end:
                continue
            reading.traces[sample.trace_id] = sample.ts
            self.traces += 1
            reading.push(_trace(sample))
            for score in reading.waiting.pop(sample.trace_id, []):
                reading.push_score(score, sample.ts)
        for score in poll.scores:
            if score.score_id in reading.scores:
                continue
            reading.scores.add(score.score_id)
            self.scores += 1
            dated = replace(score, at=min(score.at, read_until))
            opened = reading.traces.get(score.trace_id)
            if opened is None:
                reading.waiting.setdefault(score.trace_id, []).append(dated)
            else:
                reading.push_score(dated, opened)

    def _failed(self, error: str, failures: int) -> int:
        """Wait as the source asks, or raise; the count of failures in a row."""
        self.failed_polls += 1
        if _REFUSED.search(error):
            raise BacktestError(error, permanent=True)
        retry_at = self.source.retry_at
        wait = 0.0 if retry_at is None else retry_at - self.clock()
        if not _HELD_BACK.search(error) or wait <= 0:
            failures += 1
            if failures > self.max_failures:
                raise BacktestError(f"{error} ({failures} failed polls in a row)", permanent=False)
        if wait > 0:
            if self.on_wait is not None:
                self.on_wait(wait, error)
            self.sleep(wait)
        return failures


def _trace(sample: TraceSample) -> Trace:
    return Trace(
        trace_id=sample.trace_id,
        arm=sample.arm,
        ts=sample.ts,
        error=sample.error,
        latency_ms=sample.latency_ms,
        cost_usd=sample.cost_usd,
    )
