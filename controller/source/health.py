"""How well the controller keeps up reading Langfuse: the bookkeeping behind a sample
source's ``health``, and its verdict in one sentence.

A source records each poll that read (or tried to read) Langfuse with ``PollHealth.
record``, and each 429 with ``rate_limited``; ``snapshot`` turns the recent polls into a
``ReadHealth``. Its verdict, from the worst down:

* ``failing``: the last poll failed for another reason than the request budget (an
  HTTP error, a 429, a timeout, a body that is not what the API documents).
* ``starved``: the requests needed to keep up at this traffic (see
  ``PollHealth.requests_needed_per_minute``) exceed the budget a minute, or the last
  ``STARVED_AFTER`` polls in a row ran out of budget before reading up to now.
* ``catching_up``: the last poll ran out of budget, or read completely but left its
  cursors more than ``CAUGHT_UP_WITHIN`` seconds behind its time (a window of at most
  ``max_window`` after a pause): the next polls read the rest.
* ``ok``: the last poll read everything up to its time.

Times are seconds on the scale of the polls' ``now`` (the read cursors' scale).
"""

from __future__ import annotations

import itertools
import math
import statistics
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from controller.samples import Cursors
from controller.source.score_types import ScoreTypeMismatch

__all__ = [
    "CAUGHT_UP_WITHIN",
    "DOCS",
    "RATE_LIMIT_WINDOW",
    "RECENT_POLLS",
    "STARVED_AFTER",
    "EndpointRead",
    "PollHealth",
    "PollRecord",
    "ReadHealth",
    "ReadVerdict",
    "SourceHealth",
]

CAUGHT_UP_WITHIN: Final = 60.0
"""A poll whose cursors stop further than this before its time is still catching up
(as the controller's loop judges it)."""
STARVED_AFTER: Final = 3
"""Polls in a row stopped by the request budget that make reads starved."""
RECENT_POLLS: Final = 10
"""Polls the estimates are made from."""
RATE_LIMIT_WINDOW: Final = 900.0
"""Seconds over which recent 429 answers are counted."""
DOCS: Final = "docs/controller.md#langfuse-read-health"
"""Where the verdicts and what to change are explained."""
ONE_POLL_A_MINUTE: Final = 60.0


class ReadVerdict(StrEnum):
    """How the source keeps up with Langfuse (see the module's docstring)."""

    OK = "ok"
    CATCHING_UP = "catching_up"
    STARVED = "starved"
    FAILING = "failing"


@dataclass(frozen=True, slots=True)
class EndpointRead:
    """What one poll read from one endpoint."""

    endpoint: str
    rows: int
    """Rows read (all pages read, complete or not)."""
    covered: float
    """Seconds of the endpoint's time window the rows cover: all of it when the read
    finished; from the oldest row read to the window's end when it stopped (rows come
    newest first); 0 when no page was read."""
    lookback: float
    """Seconds each poll reads again before the endpoint's cursor."""
    page_size: int
    """Rows a page holds at most."""
    traces: int | None = None
    """Traces among the rows (root observations); None: the endpoint reads no traces."""


@dataclass(frozen=True, slots=True)
class PollRecord:
    """One poll that read, or tried to read, Langfuse."""

    at: float
    """The poll's ``now``."""
    cursors: Cursors
    """The cursors after the poll (unchanged when it failed)."""
    complete: bool
    budget_stopped: bool = False
    """Stopped because the request budget was spent."""
    error: str | None = None
    reads: tuple[EndpointRead, ...] = ()
    """One per endpoint the poll needed, in the order read."""


@dataclass(frozen=True, slots=True)
class ReadHealth:
    """A snapshot of how a source keeps up with Langfuse."""

    verdict: ReadVerdict
    message: str
    """The verdict in one sentence, with what to change when it is not ok."""
    last_poll_at: float | None
    last_complete_poll_at: float | None
    lag_seconds: float | None
    """How far the read cursors are behind now; None before the first poll."""
    requests_last_minute: int | None
    """Requests the budget let through in the last 60 seconds (every client of the
    budget); None: the source has no budget."""
    budget_per_minute: int | None
    rate_limited_total: int
    """429 answers since the source started."""
    rate_limited_recent: int
    """429 answers in the last ``RATE_LIMIT_WINDOW`` seconds."""
    last_error: str | None
    """The error of the last poll, None when it read everything."""
    requests_needed_per_minute: float | None
    """Estimate of the requests a minute needed to keep up (``PollHealth.
    requests_needed_per_minute``); None before two polls."""
    traces_per_minute: float | None
    """Traces a minute the recent polls saw (root observations over the time read)."""
    poll_interval_seconds: float | None
    """Median time between the recent polls."""

    @property
    def ok(self) -> bool:
        return self.verdict is ReadVerdict.OK


@dataclass(frozen=True, slots=True)
class SourceHealth:
    """What a sample source reports about itself: how it keeps up with Langfuse, and the
    scores whose type cannot serve the metric that reads them."""

    reads: ReadHealth
    score_type_mismatches: tuple[ScoreTypeMismatch, ...] = ()
    """Of the releases polled, by release and metric."""
    score_type_mismatch_counts: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """Mismatched scores since the source started, by (release, metric)."""


class PollHealth:
    """The recent polls of one source, and the 429s it was answered (thread-safe: the
    admin API and the metrics read it while a poll runs)."""

    def __init__(self, recent: int = RECENT_POLLS) -> None:
        self._lock = threading.Lock()
        self._polls: deque[PollRecord] = deque(maxlen=recent)
        self._budget_stopped_run = 0
        self._last_complete: float | None = None
        self._limited: deque[float] = deque()
        self._limited_total = 0

    def record(self, poll: PollRecord) -> None:
        """Note a poll that read, or tried to read, Langfuse."""
        with self._lock:
            self._polls.append(poll)
            self._budget_stopped_run = self._budget_stopped_run + 1 if poll.budget_stopped else 0
            if poll.complete:
                self._last_complete = poll.at

    def rate_limited(self, at: float) -> None:
        """Note a 429 answer at ``at``."""
        with self._lock:
            self._limited.append(at)
            self._limited_total += 1

    def requests_needed_per_minute(self) -> float | None:
        """Requests a minute needed to read everything at the polls' pace and the
        traffic they saw; None before two polls.

        Each poll reads, per endpoint, the time since the previous poll plus the
        endpoint's lookback, in pages of at most ``page_size`` rows, and makes at least
        one request even when there is nothing to read. So, with ``interval`` the median
        time between the recent polls and, per endpoint, ``rate`` the rows per second
        the recent polls saw (rows read over seconds covered, so a poll stopped after a
        few pages counts too), a poll costs

            requests per poll = sum over endpoints of
                                max(1, ceil(rate * (interval + lookback) / page_size))

        and keeping up costs ``requests per poll * 60 / interval`` a minute. Each row
        costs ``1 / page_size`` of a request per time it is read, and it is read
        ``(interval + lookback) / interval`` times, so frequent polls multiply the cost
        of each trace; an endpoint none of the recent polls reached counts one request.
        """
        with self._lock:
            return _needed(list(self._polls), None)

    def snapshot(
        self,
        now: float,
        *,
        requests_last_minute: int | None = None,
        budget_per_minute: int | None = None,
    ) -> ReadHealth:
        """How the source keeps up at ``now`` (see the module's docstring)."""
        with self._lock:
            polls = list(self._polls)
            stopped_run = self._budget_stopped_run
            last_complete = self._last_complete
            while self._limited and self._limited[0] < now - RATE_LIMIT_WINDOW:
                self._limited.popleft()
            limited_recent = len(self._limited)
            limited_total = self._limited_total
        last = polls[-1] if polls else None
        needed = _needed(polls, None)
        interval = _interval(polls)
        verdict, message = _verdict(
            last,
            now,
            _Figures(
                needed=needed,
                at_one_a_minute=_needed(polls, ONE_POLL_A_MINUTE),
                interval=interval,
                budget=budget_per_minute,
                used=requests_last_minute,
                stopped_run=stopped_run,
                last_complete=last_complete,
            ),
        )
        return ReadHealth(
            verdict=verdict,
            message=message,
            last_poll_at=None if last is None else last.at,
            last_complete_poll_at=last_complete,
            lag_seconds=None if last is None else max(0.0, now - _oldest(last.cursors)),
            requests_last_minute=requests_last_minute,
            budget_per_minute=budget_per_minute,
            rate_limited_total=limited_total,
            rate_limited_recent=limited_recent,
            last_error=None if last is None else last.error,
            requests_needed_per_minute=needed,
            traces_per_minute=_traces_per_minute(polls),
            poll_interval_seconds=interval,
        )


# -- estimates ------------------------------------------------------------------------


def _interval(polls: list[PollRecord]) -> float | None:
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(polls)]
    gaps = [gap for gap in gaps if gap > 0]
    return statistics.median(gaps) if gaps else None


def _needed(polls: list[PollRecord], interval: float | None) -> float | None:
    """Requests a minute at ``interval`` seconds between polls (None: the polls' own)."""
    pace = interval if interval is not None else _interval(polls)
    if pace is None or not polls:
        return None
    per_poll = 0
    for latest in polls[-1].reads:
        rows = 0
        covered = 0.0
        for poll in polls:
            for read in poll.reads:
                if read.endpoint == latest.endpoint:
                    rows += read.rows
                    covered += read.covered
        if covered <= 0:
            per_poll += 1
            continue
        window_rows = rows / covered * (pace + latest.lookback)
        per_poll += max(1, math.ceil(window_rows / latest.page_size - 1e-9))
    return per_poll * 60.0 / pace


def _traces_per_minute(polls: list[PollRecord]) -> float | None:
    traces = 0
    covered = 0.0
    for poll in polls:
        for read in poll.reads:
            if read.traces is not None:
                traces += read.traces
                covered += read.covered
    return traces / covered * 60.0 if covered > 0 else None


def _oldest(cursors: Cursors) -> float:
    return min(cursors.observations_from, cursors.scores_from)


# -- the verdict ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Figures:
    """What a verdict is made from, beside the last poll."""

    needed: float | None
    at_one_a_minute: float | None
    interval: float | None
    budget: int | None
    used: int | None
    stopped_run: int
    last_complete: float | None


def _verdict(last: PollRecord | None, now: float, figures: _Figures) -> tuple[ReadVerdict, str]:
    needed, budget, used = figures.needed, figures.budget, figures.used
    stopped_run, last_complete = figures.stopped_run, figures.last_complete
    if last is None:
        return ReadVerdict.OK, "Langfuse has not been read yet (no release running)."
    cost = _cost(needed, budget)
    if last.error is not None and not last.budget_stopped:
        since = (
            "no complete poll yet"
            if last_complete is None
            else f"the last complete poll was {_duration(now - last_complete)} ago"
        )
        return (
            ReadVerdict.FAILING,
            f"Langfuse reads are failing: {last.error}; {since} (see {DOCS}).",
        )
    over_budget = needed is not None and budget is not None and math.ceil(needed) > budget
    if over_budget or stopped_run >= STARVED_AFTER:
        fix = _fix(needed if over_budget else None, figures.at_one_a_minute, figures.interval)
        if over_budget:
            return ReadVerdict.STARVED, f"Langfuse reads are starved: {cost} ({fix})."
        spent = f"{budget} a minute" if budget is not None else "its limit"
        if used is not None:
            spent += f", {used} used in the last minute"
        return (
            ReadVerdict.STARVED,
            f"Langfuse reads are starved: the last {stopped_run} polls ran out of request "
            f"budget ({spent}) before reading up to now; {cost} ({fix}).",
        )
    behind = last.at - _oldest(last.cursors)
    if last.budget_stopped or behind > CAUGHT_UP_WITHIN:
        lag = _duration(max(0.0, now - _oldest(last.cursors)))
        return (
            ReadVerdict.CATCHING_UP,
            f"Langfuse reads are catching up: read up to {lag} before now; {cost}.",
        )
    return ReadVerdict.OK, f"Langfuse reads keep up: {cost}."


def _cost(needed: float | None, budget: int | None) -> str:
    wanted = (
        "requests needed not known yet"
        if needed is None
        else f"{math.ceil(needed)} requests/min needed at this traffic"
    )
    return wanted if budget is None else f"{wanted}, budget {budget}"


def _fix(needed: float | None, at_one_a_minute: float | None, interval: float | None) -> str:
    raise_to = "" if needed is None else f" to at least {math.ceil(needed)}"
    slower = "poll less often with a longer analysis.interval or COALMINE_TICK_SECONDS"
    if at_one_a_minute is not None and interval is not None and interval < ONE_POLL_A_MINUTE:
        slower += f": one poll a minute needs {math.ceil(at_one_a_minute)}"
    return f"raise COALMINE_REQUESTS_PER_MINUTE{raise_to}, or {slower}; see {DOCS}"


def _duration(seconds: float) -> str:
    whole = round(seconds)
    if whole < 120:
        return f"{whole}s"
    minutes, rest = divmod(whole, 60)
    if minutes < 120:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
