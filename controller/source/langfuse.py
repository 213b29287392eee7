"""Samples from Langfuse's public API: observations v2 for traces, scores v3 for scores.

One poll serves every running release with one query per kind of row, so the number of
requests grows with traffic, not with the number of releases:

* ``GET /api/public/v2/observations``, filtered on the release tags of all releases at
  once (``tags`` *any of*), with the field groups ``core,basic,usage,trace_context,
  prompt``, paged by ``meta.cursor``. Rows are grouped by trace. A trace is reported
  once its root observation (``isRootObservation``) has arrived and ended ``settle``
  seconds (default 10) before ``now``, so the app's spans exported a little after the
  proxy's root are still counted in its cost and errors. Release and arm come from the
  root's tags; a root whose tags name no running release, no arm, or several of either,
  is skipped and counted in ``skipped["trace_untagged"]``.
* A shadow copy (arm ``shadow``) names its primary's trace id in the observation
  metadata key ``coalmine_shadow_of`` (``SHADOW_OF_KEYS``): the app helper propagates it
  to every span of the copy as ``langfuse.trace.metadata.coalmine_shadow_of``; the
  root's value is taken first, then the earliest span's. Langfuse v4 keeps only
  ``langfuse.*.metadata.*`` span attributes as metadata, so the proxy's plain
  ``coalmine.shadow_of`` attribute is not readable. The ``metadata`` field group is
  asked for only while a polled policy has a shadow rung (``shadow.gate``).
* ``GET /api/public/v3/scores``, filtered on the score names the policies use (their
  score metrics and their shadow rung's metric), with the
  ``subject`` field group (a score's trace is ``subject.id`` for a trace score and
  ``subject.traceId`` for an observation score; session and experiment scores are
  skipped). Every score is reported; the caller joins scores to traces by trace id.

Cursors and lookback
--------------------
A cursor is a time: every row whose start time (scores: timestamp) is before it and
that was readable when it was set has been read. A poll reads from ``cursor -
lookback`` up to ``now`` and, when it read everything, moves the cursor to ``now``.

The lookback covers what becomes readable late. The proxy writes a request's root span
when the request ends, stamped with the time it *started*; then ingestion takes a
moment. So a root appears up to (longest request + ingestion lag) after its start
time, and must still be inside the next poll's window, which is also held back by
``settle``. The lookback of observations is therefore the larger of ``lookback``
(default 2 minutes) and the longest ``routing.readTimeout`` of the policies plus 60 s
plus ``settle``. ``readTimeout`` bounds a request that waits for its upstream; a
response that keeps streaming for longer than the lookback can end too late to be
read, and its trace is not reported. The lookback of scores (``score_lookback``,
default 60 s) only covers ingestion lag: a score's timestamp is when it was made.

Each poll thus reads again what the previous one read within the lookback: traces
already reported come back (the caller deduplicates by trace id), bounded by the
traffic of one lookback. A trace is never reported twice in one poll.

After a long pause the window from the cursor to ``now`` can hold more rows than one
poll's request budget can read. Each poll therefore advances a cursor by at most
``max_window`` seconds (default 10 minutes): the controller catches up slice by slice
instead of starting again from the newest row every time.

A poll that cannot read everything (budget spent, 429, 5xx, timeout, a body that is
not what the API documents) returns ``ok`` False with its cursors unchanged, so the
next poll reads the same rows again. It still carries what it read completely: the
scores of the pages read, and the traces whose every observation lies in the pages
read (rows come newest first, and a trace's observations start no earlier than its
root, give or take ``CLOCK_SKEW``).

Reads cut by the budget: when the request budget stops a poll after some pages, the
next poll that starts from the same cursors, for the same releases, goes on from the
next page of the same windows (the page cursors are keysets, so rows already read are
not read again) instead of starting again from the newest page. Without that, a window
holding more pages than one poll may request (a burst of traces within its lookback)
would be cut at the same place at every poll, and reading would stop for good. Rows
that become readable inside a window after its read went past them are read by the
next window's lookback, as late rows always are.

Known limits: a span the app exports more than ``settle`` seconds after its root
ended is not counted in that trace's cost or errors (the trace was reported without
it); observations without the release's tags (an app that does not propagate them)
are not read at all.

Sampled reads
-------------
With ``SourceSettings.sampled`` the source reads only the requests the proxy put in
their release's score sample (``coalmine.shared.sampling``), so its requests grow with
the sample, not with traffic:

* Observations are read as above, filtered also on the tag ``SAMPLED_TAG`` (two
  ``arrayOptions`` conditions on ``tags``, which Langfuse ANDs); a root without that
  tag is skipped and counted in ``skipped["trace_unsampled"]``.
* Scores are read by trace: ``traceId=<id>,<id>,...`` with the score names the policies
  use, in batches of at most ``SCORES_PAGE // len(names)`` ids (a batch's expected rows
  fit one page) and a URL under ``MAX_URL_BYTES``. Each sampled trace is read twice at
  most: once it is ``first_read`` seconds old (at least its policy's ``scoreSettle``),
  and again at its start plus its policy's ``scoreTimeout``, only when a score name is
  still missing. A score of a trace not asked for is skipped and counted in
  ``skipped["score_unsampled"]``.
* Reads go through the request budget. One that does not fit waits for the next poll:
  the poll still succeeds when the observations were read, and the health record says
  the budget stopped it.
* The scores cursor is the start of the oldest trace with a read pending (the
  observations cursor when none is). A source started on stored cursors first reads
  the observations again from there, which rebuilds its schedule of reads; the
  traces it reports again are deduplicated by the caller.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

import httpx

from coalmine.shared.conventions import SAMPLED_TAG, TAG_PREFIX, release_tag
from coalmine.shared.retry import Backoff, status_class
from controller.judge import ScoreValue
from controller.samples import Cursors, Poll, ScoreSample, TraceSample
from controller.source.budget import Clock, RequestBudget
from controller.source.health import EndpointRead, PollHealth, PollRecord, SourceHealth
from controller.source.public_api import PublicApiClient, read_time
from controller.source.score_types import ScoreTypeBook, seen_type
from policies.domain import Arm
from policies.model import MetricSource, Policy, ShadowGate

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_FIRST_READ",
    "DEFAULT_LOOKBACK",
    "DEFAULT_MAX_WINDOW",
    "DEFAULT_SCORE_LOOKBACK",
    "DEFAULT_SETTLE",
    "INGESTION_MARGIN",
    "MAX_URL_BYTES",
    "POLL_BACKOFF",
    "LangfuseSource",
    "SourceSettings",
    "error_detail",
]

log = logging.getLogger("coalmine.controller.source")

OBSERVATIONS: Final = "observations"
SCORES: Final = "scores"
OBSERVATIONS_PATH: Final = "/api/public/v2/observations"
SCORES_PATH: Final = "/api/public/v3/scores"
OBSERVATION_FIELDS: Final = "core,basic,usage,trace_context,prompt"
SHADOW_FIELDS: Final = OBSERVATION_FIELDS + ",metadata"
"""The field groups while a shadow rung runs: a copy's primary is in its metadata."""
SHADOW_OF_KEYS: Final = ("coalmine_shadow_of", "coalmine.shadow_of")
"""Metadata keys naming a shadow copy's primary trace, in order of preference."""
MAX_TRACE_ID_CHARS: Final = 64
"""Longest primary trace id read from metadata (W3C trace ids have 32 characters)."""
SCORE_FIELDS: Final = "subject"
MAX_OBSERVATIONS_PAGE: Final = 1000
"""Langfuse's largest page of observations v2."""
SCORES_PAGE: Final = 100
"""Langfuse's largest page of scores v3."""
DEFAULT_MAX_RESUMED_ROWS: Final = 100_000
"""See ``SourceSettings.max_resumed_rows`` (a parsed observation takes about 350 bytes:
some 35 MB)."""
MAX_URL_BYTES: Final = 8192
"""Longest URL of a scores read by trace ids (servers and proxies commonly refuse
longer request lines)."""

DEFAULT_LOOKBACK: Final = 120.0
"""Seconds each poll of observations reads again before its cursor, at least."""
INGESTION_MARGIN: Final = 60.0
"""Seconds allowed for a finished span to become readable (ingestion lag and clock
differences between the proxy and the controller)."""
DEFAULT_SCORE_LOOKBACK: Final = 60.0
"""Seconds each poll of scores reads again before its cursor."""
DEFAULT_SETTLE: Final = 10.0
"""Seconds a root must have ended before ``now`` for its trace to be reported."""
DEFAULT_MAX_WINDOW: Final = 600.0
"""Seconds a poll may move a cursor forward at most."""
DEFAULT_FIRST_READ: Final = 60.0
"""Age in seconds at which a sampled trace's scores are first read."""
CLOCK_SKEW: Final = 1.0
"""Seconds by which an app span may start before the proxy's root span (the clocks of
two hosts), for deciding which traces a partial read holds completely."""

POLL_BACKOFF: Final = Backoff(first=3.75, factor=2.0, cap=450.0, jitter=1 / 3)
"""The wait after consecutive failed polls: 2.5 to 5 s after the first, doubling up to
300 to 600 s (a ceiling of 5 s doubling up to 600 s, times a random 0.5 to 1)."""

_ARM_PREFIX: Final = f"{TAG_PREFIX}arm:"
_ARMS: Final = {arm.value: arm for arm in Arm}
_NO_TIME: Final = float("-inf")


class _PollError(Exception):
    """The poll cannot go on; ``message`` is its one-line error. Never leaves this module:
    ``poll`` turns it into a failed ``Poll`` (see ``controller.errors``)."""

    def __init__(self, message: str, *, budget: bool = False, retry_at: float | None = None):
        super().__init__(message)
        self.message = message
        self.budget = budget
        self.retry_at = retry_at


@dataclass(frozen=True, slots=True)
class SourceSettings:
    """How a ``LangfuseSource`` reads (see the module's docstring)."""

    timeout: float = 10.0
    """Seconds to wait for one answer."""

    page_limit: int = MAX_OBSERVATIONS_PAGE
    """Observations per page, 1 to ``MAX_OBSERVATIONS_PAGE``."""

    lookback: float = DEFAULT_LOOKBACK
    """Seconds each poll of observations reads again before its cursor, at least."""

    score_lookback: float = DEFAULT_SCORE_LOOKBACK
    """Seconds each poll of scores reads again before its cursor."""

    settle: float = DEFAULT_SETTLE
    """Seconds a root must have ended before ``now`` for its trace to be reported."""

    max_window: float = DEFAULT_MAX_WINDOW
    """Seconds a poll may move a cursor forward at most."""

    backoff: Backoff = POLL_BACKOFF
    """How long to wait after consecutive failed polls."""

    sampled: bool = False
    """Read only the traces tagged ``SAMPLED_TAG``, and their scores by trace id (see
    "Sampled reads" in the module's docstring). Off: every trace and every score."""

    first_read: float = DEFAULT_FIRST_READ
    """With ``sampled``: age in seconds of a trace at its first score read (raised to
    its policy's ``scoreSettle`` when that is longer)."""

    max_resumed_rows: int = DEFAULT_MAX_RESUMED_ROWS
    """Most rows a read cut by the budget may hold while it waits for the next poll to
    go on with it (see "Reads cut by the budget"); a larger one is dropped, and the
    next poll reads a shorter window from its newest page."""

    def __post_init__(self) -> None:
        if not 1 <= self.page_limit <= MAX_OBSERVATIONS_PAGE:
            raise ValueError(
                f"page_limit must be 1 to {MAX_OBSERVATIONS_PAGE}, not {self.page_limit}"
            )
        for name in ("lookback", "score_lookback", "settle", "first_read"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"{name} must be at least 0, not {value}")
        if not self.max_window > 0:
            raise ValueError(f"max_window must be positive, not {self.max_window}")


@dataclass(frozen=True, slots=True)
class _Observation:
    """The fields of an observation row that samples are made of."""

    id: str
    trace_id: str
    start: float
    end: float | None
    is_root: bool
    level: str | None
    tags: tuple[str, ...]
    cost: float | None
    type: str | None
    prompt_name: str | None
    prompt_version: int | None
    shadow_of: str | None = None
    """The primary's trace id its metadata names (a shadow copy's spans)."""


@dataclass(frozen=True, slots=True)
class _Window:
    """Rows to read: start (or score) times in [start, end); the cursor moves to end."""

    start: float
    end: float


@dataclass(slots=True)
class _Pending:
    """A sampled trace whose scores are still to be read."""

    trace_id: str
    ts: float
    release: str
    names: frozenset[str]
    first_at: float
    """When its first read is due."""
    final_at: float
    """When its final read is due (start plus ``scoreTimeout``)."""
    first_done: bool = False
    seen: set[str] = field(default_factory=set)
    """Score names read for it so far."""

    def due(self, now: float) -> bool:
        return now >= (self.final_at if self.first_done else self.first_at)

    @property
    def due_at(self) -> float:
        return self.final_at if self.first_done else self.first_at


@dataclass
class _Reading:
    """What one poll has read so far."""

    rows: dict[tuple[str, str], _Observation] = field(default_factory=dict)
    oldest: float | None = None
    """Earliest start time among the rows read."""
    observations_done: bool = False
    observation_rows: int = 0
    """Rows of every page read, parsed or not."""
    roots: int = 0
    scores: dict[str, ScoreSample] = field(default_factory=dict)
    score_rows: int = 0
    scores_oldest: float | None = None
    """Earliest timestamp among the scores read."""
    scores_done: bool = False
    next_page: dict[str, str] = field(default_factory=dict)
    """Per endpoint, the cursor of the next page to read (its read was cut there)."""

    def add(self, row: _Observation) -> None:
        self.rows[(row.trace_id, row.id)] = row
        self.oldest = row.start if self.oldest is None else min(self.oldest, row.start)

    @property
    def complete_from(self) -> float:
        """Traces whose root started at or after this time were read completely."""
        if self.observations_done:
            return _NO_TIME
        if self.oldest is None:
            return math.inf
        # Pages come newest first: below the oldest row read, rows are still unread.
        return self.oldest + CLOCK_SKEW


@dataclass(frozen=True, slots=True)
class _Resume:
    """A read the request budget cut short, to go on with from its next pages while
    the cursors stay where it started (see "Reads cut by the budget")."""

    start: Cursors
    releases: frozenset[str]
    windows: tuple[_Window, _Window]
    reading: _Reading

    def fits(self, start: Cursors, releases: Mapping[str, Policy]) -> bool:
        return start == self.start and frozenset(releases) == self.releases


class LangfuseSource(PublicApiClient):
    """Reads traces and scores of every running release from Langfuse.

    ``budget`` is the request budget of Langfuse's General API bucket, shared with the
    other clients of that bucket in this process. ``settings`` say how to read (page
    size, lookbacks, windows, backoff). ``clock`` (default: the budget's) drives the
    budget, the backoff and ``retry_at``; ``now``, given to each poll, places the read
    windows among the rows' timestamps. ``rng`` draws the backoff's jitter.

    Counters for metrics: ``request_counts[(endpoint, status_class)]`` (endpoint
    ``observations`` or ``scores``; status class ``2xx``, ``3xx``, ``4xx``, ``429``,
    ``5xx``, ``timeout``, ``connection`` or ``error``) and ``skipped[reason]`` (rows
    and traces left out: ``observation_malformed``, ``trace_untagged``,
    ``trace_multiple_roots``, ``score_malformed``, ``score_not_trace``, and with sampled
    reads ``trace_unsampled`` and ``score_unsampled``; a trace seen again in a later
    poll's lookback is counted again).

    After a failed poll, ``retry_at`` (clock time) says when to poll again: polls made
    before then fail at once without a request. It grows exponentially, with jitter,
    over consecutive failures; a 429 holds it until its ``Retry-After``. A poll stopped
    only by the budget sets it to when the budget has room again.

    ``health(now)`` says how the reads keep up (``controller.source.health``) and which
    scores cannot serve the metric that reads them (``controller.source.score_types``):
    a BOOLEAN score is read as 1.0 or 0.0, as Langfuse stores it, so it serves numeric
    and boolean metrics alike.
    """

    def __init__(
        self,
        base_url: str,
        public_key: str,
        secret_key: str,
        *,
        budget: RequestBudget,
        settings: SourceSettings | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings or SourceSettings()
        super().__init__(
            base_url, public_key, secret_key, timeout=self.settings.timeout, transport=transport
        )
        self.budget = budget
        self._clock = clock or budget.now
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._poll_requests: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.consecutive_failures = 0
        self.retry_at: float | None = None
        self._health = PollHealth()
        self._score_types = ScoreTypeBook()
        # sampled reads: what is due, and what was read completely (so that a trace read
        # again in the lookback is not read again); both are rebuilt after a restart
        self._pending: dict[str, _Pending] = {}
        self._finished: dict[str, float] = {}
        self._scheduled = False
        self._resume: _Resume | None = None

    def health(self, now: float) -> SourceHealth:
        """How the reads keep up at ``now``, and the score type mismatches of the
        releases polled (see ``controller.source.SampleSource.health``)."""
        reads = self._health.snapshot(
            now,
            requests_last_minute=self.budget.used(self._clock()),
            budget_per_minute=self.budget.settings.per_minute,
        )
        return SourceHealth(
            reads=reads,
            score_type_mismatches=self._score_types.mismatches(),
            score_type_mismatch_counts=self._score_types.counts(),
        )

    def lookback_for(self, releases: Mapping[str, Policy]) -> float:
        """Seconds a poll of these releases reads again before the observations cursor."""
        longest = max((policy.routing.read_timeout for policy in releases.values()), default=0.0)
        return max(self.settings.lookback, longest + INGESTION_MARGIN + self.settings.settle)

    # ------------------------------------------------------------------------- polling

    def poll(self, releases: Mapping[str, Policy], cursors: Cursors | None, now: float) -> Poll:
        """Read the traces and scores of ``releases`` (by name) that arrived since
        ``cursors`` (None: read the last lookback before ``now``). Never raises for
        trouble with Langfuse: see the module's docstring."""
        with self._lock:
            return self._poll(releases, cursors, now)

    def _poll(self, releases: Mapping[str, Policy], cursors: Cursors | None, now: float) -> Poll:
        start = cursors or Cursors(observations_from=now, scores_from=now)
        if self.consecutive_failures and self.retry_at is not None:
            wait = self.retry_at - self._clock()
            if wait > 0:
                return Poll(
                    ok=False,
                    cursors=start,
                    error=f"backing off after {self.consecutive_failures} failed polls "
                    f"for another {wait:.0f}s",
                )
        if self.settings.sampled:
            return self._poll_sampled(releases, start, now)
        observed = self._window(start.observations_from, self.lookback_for(releases), now)
        scored = self._window(start.scores_from, self.settings.score_lookback, now)
        reading = _Reading()
        resume = self._take_resume(start, releases)
        if resume is not None:
            (observed, scored), reading = resume.windows, resume.reading
        self._poll_requests.clear()
        self._score_types.begin(releases)
        stop: _PollError | None = None
        try:
            self._read_observations(releases, observed, reading)
            self._read_scores(releases, scored, reading, now)
        except _PollError as stopped:
            stop = stopped
        self._keep_for_resume(start, releases, (observed, scored), reading, stop)
        requests = dict(self._poll_requests)
        after = start if stop is not None else Cursors(observed.end, scored.end)
        self._score_types.forget_before(after.scores_from - self.settings.score_lookback)
        self._record(releases, now, after, reading, stop, (observed, scored))
        settled_before = min(now, observed.end) - self.settings.settle
        traces = self._traces(
            reading.rows.values(), releases, settled_before, reading.complete_from
        )
        return self._finish(start, after, traces, reading, stop, requests)

    def _finish(
        self,
        start: Cursors,
        after: Cursors,
        traces: tuple[TraceSample, ...],
        reading: _Reading,
        stop: _PollError | None,
        requests: dict[str, int],
    ) -> Poll:
        """The poll's result; a failed poll keeps the cursors at ``start``."""
        scores = tuple(reading.scores.values())
        if stop is not None:
            self._failed(stop)
            log.warning("Langfuse poll incomplete: %s", stop.message)
            return Poll(
                ok=False,
                cursors=start,
                traces=traces,
                scores=scores,
                error=stop.message,
                requests=requests,
                goes_on=self._resume is not None,
            )
        self.consecutive_failures = 0
        self.retry_at = None
        return Poll(
            ok=True,
            cursors=after,
            traces=traces,
            scores=scores,
            requests=requests,
        )

    def _poll_sampled(self, releases: Mapping[str, Policy], start: Cursors, now: float) -> Poll:
        """A poll with sampled reads (see "Sampled reads" in the module's docstring)."""
        observed = self._window(start.observations_from, self.lookback_for(releases), now)
        again_from = observed.start
        if not self._scheduled:  # rebuild the schedule from the oldest pending read on
            observed = _Window(min(observed.start, start.scores_from), observed.end)
        reading = _Reading()
        resume = self._take_resume(start, releases)
        if resume is not None:
            observed, reading = resume.windows[0], resume.reading
        self._poll_requests.clear()
        self._score_types.begin(releases)
        stop: _PollError | None = None
        try:
            self._read_observations(releases, observed, reading)
        except _PollError as stopped:
            stop = stopped
        self._keep_for_resume(start, releases, (observed, observed), reading, stop)
        settled_before = min(now, observed.end) - self.settings.settle
        traces = self._traces(
            reading.rows.values(), releases, settled_before, reading.complete_from
        )
        self._schedule(traces, releases)
        deferred: _PollError | None = None
        if stop is None:
            self._scheduled = True
            try:
                self._read_sampled_scores(releases, reading, now)
            except _PollError as stopped:
                if stopped.budget:
                    deferred = stopped  # the rest waits for the next poll
                else:
                    stop = stopped
        requests = dict(self._poll_requests)
        after = start
        if stop is None:
            after = Cursors(observed.end, self._pending_from(observed.end))
            self._forget_finished(again_from)
        self._score_types.forget_before(after.scores_from - self.settings.score_lookback)
        scored = _Window(start.observations_from, observed.end)
        self._record(
            releases, now, after, reading, stop or deferred, (observed, scored), sampled=True
        )
        if deferred is not None:
            log.info("Langfuse score reads deferred to the next poll: %s", deferred.message)
        poll = self._finish(start, after, traces, reading, stop, requests)
        if not poll.ok:
            return poll
        last_reads = min((item.final_at for item in self._pending.values()), default=math.inf)
        return replace(poll, scores_complete_until=min(last_reads, after.observations_from))

    def _take_resume(self, start: Cursors, releases: Mapping[str, Policy]) -> _Resume | None:
        """The read cut short at the last poll, if this poll starts where it did."""
        resume, self._resume = self._resume, None
        return resume if resume is not None and resume.fits(start, releases) else None

    def _keep_for_resume(
        self,
        start: Cursors,
        releases: Mapping[str, Policy],
        windows: tuple[_Window, _Window],
        reading: _Reading,
        stop: _PollError | None,
    ) -> None:
        """Keep a read the budget cut after some pages, for the next poll to go on with,
        unless it holds more than ``max_resumed_rows`` (the loop then asks for a shorter
        window)."""
        if stop is None or not stop.budget:
            return
        if not (reading.next_page or reading.observations_done):
            return
        if reading.observation_rows + reading.score_rows <= self.settings.max_resumed_rows:
            self._resume = _Resume(start, frozenset(releases), windows, reading)

    def _schedule(self, traces: Iterable[TraceSample], releases: Mapping[str, Policy]) -> None:
        """Note the score reads of new sampled traces; forget those of releases gone."""
        gone = [key for key, item in self._pending.items() if item.release not in releases]
        for trace_id in gone:
            del self._pending[trace_id]
        for trace in traces:
            if trace.trace_id in self._pending or trace.trace_id in self._finished:
                continue
            policy = releases[trace.release]
            names = frozenset(_score_names([policy]))
            if not names:
                continue
            analysis = policy.analysis
            self._pending[trace.trace_id] = _Pending(
                trace_id=trace.trace_id,
                ts=trace.ts,
                release=trace.release,
                names=names,
                first_at=trace.ts + max(self.settings.first_read, analysis.score_settle),
                final_at=trace.ts + analysis.score_timeout,
            )

    def _pending_from(self, default: float) -> float:
        """The scores cursor: the start of the oldest trace with a read pending."""
        return min((item.ts for item in self._pending.values()), default=default)

    def _forget_finished(self, before: float) -> None:
        """Forget finished traces that no later poll reads again."""
        for trace_id in [key for key, ts in self._finished.items() if ts < before]:
            del self._finished[trace_id]

    def _read_sampled_scores(
        self, releases: Mapping[str, Policy], reading: _Reading, now: float
    ) -> None:
        """Read the scores of the sampled traces whose read is due, oldest first."""
        names = _score_names(releases.values())
        due = sorted(
            (item for item in self._pending.values() if item.due(now)),
            key=lambda item: (item.due_at, item.trace_id),
        )
        if names:
            for batch in self._batches(due, names):
                self._read_batch(batch, names, reading, now)
        reading.scores_done = True

    def _batches(self, due: list[_Pending], names: list[str]) -> Iterator[list[_Pending]]:
        """``due`` in batches whose expected rows fit one page and whose URL fits
        ``MAX_URL_BYTES``."""
        most = max(1, SCORES_PAGE // len(names))
        empty = _trace_query([""], names)  # every parameter, ``traceId`` empty
        base = len(str(httpx.URL(self.base_url + SCORES_PATH, params=empty)))
        batch: list[_Pending] = []
        length = base
        for item in due:
            added = len(quote(item.trace_id, safe="")) + (3 if batch else 0)  # %2C
            if batch and (len(batch) >= most or length + added > MAX_URL_BYTES):
                yield batch
                batch, length = [], base
                added -= 3
            batch.append(item)
            length += added
        if batch:
            yield batch

    def _read_batch(
        self, batch: list[_Pending], names: list[str], reading: _Reading, now: float
    ) -> None:
        wanted = {item.trace_id: item for item in batch}
        query = _trace_query(list(wanted), names)
        for page, _ in self._pages(SCORES, query):
            reading.score_rows += len(page)
            for raw in page:
                score = self._parse_score(raw)
                if score is None:
                    continue
                item = wanted.get(score.trace_id)
                if item is None:
                    self.skipped["score_unsampled"] += 1
                    continue
                item.seen.add(score.name)
                self._take_score(raw, score, reading, now)
        for item in batch:
            # a first read made after the final one was due is also the final read
            final = item.first_done or now >= item.final_at or item.names <= item.seen
            item.first_done = True
            if final:
                del self._pending[item.trace_id]
                self._finished[item.trace_id] = item.ts

    def _read_observations(
        self, releases: Mapping[str, Policy], window: _Window, reading: _Reading
    ) -> None:
        if reading.observations_done:
            return
        tags = sorted(release_tag(name) for name in releases)
        if tags:
            query = self._observation_query(tags, window, shadow=_any_shadow_gate(releases))
            pages = self._pages(OBSERVATIONS, query, reading.next_page.get(OBSERVATIONS))
            for page, next_page in pages:
                reading.observation_rows += len(page)
                for raw in page:
                    row = _parse_observation(raw)
                    if row is None:
                        self.skipped["observation_malformed"] += 1
                    else:
                        reading.add(row)
                        reading.roots += int(row.is_root)
                if next_page:
                    reading.next_page[OBSERVATIONS] = next_page
        reading.next_page.pop(OBSERVATIONS, None)
        reading.observations_done = True

    def _read_scores(
        self, releases: Mapping[str, Policy], window: _Window, reading: _Reading, now: float
    ) -> None:
        names = _score_names(releases.values())
        if names:
            query = _score_query(names, window)
            for page, next_page in self._pages(SCORES, query, reading.next_page.get(SCORES)):
                reading.score_rows += len(page)
                for raw in page:
                    score = self._parse_score(raw)
                    if score is not None:
                        self._take_score(raw, score, reading, now)
                if next_page:
                    reading.next_page[SCORES] = next_page
        reading.next_page.pop(SCORES, None)
        reading.scores_done = True

    def _take_score(self, raw: Any, score: ScoreSample, reading: _Reading, now: float) -> None:
        reading.scores[score.score_id] = score
        stamp = read_time(raw.get("timestamp")) if isinstance(raw, dict) else None
        stamp = score.at if stamp is None else stamp
        if reading.scores_oldest is None or stamp < reading.scores_oldest:
            reading.scores_oldest = stamp
        self._score_types.check(
            score_id=score.score_id,
            name=score.name,
            seen=seen_type(raw.get("dataType"), raw.get("value")),
            value=score.value,
            stamp=stamp,
            now=now,
        )

    def _record(
        self,
        releases: Mapping[str, Policy],
        now: float,
        cursors: Cursors,
        reading: _Reading,
        stop: _PollError | None,
        windows: tuple[_Window, _Window],
        *,
        sampled: bool = False,
    ) -> None:
        """Note the poll for ``health``: rows read and the time they cover, per endpoint
        (``windows``: of observations and of scores; with sampled reads, the scores'
        is the time the poll moved on, and they have no lookback)."""
        observed, scored = windows
        if sampled:
            # the scores cursor waits for pending reads by design: it is no read lag
            cursors = Cursors(cursors.observations_from, cursors.observations_from)
        reads: list[EndpointRead] = []
        if releases:
            reads.append(
                EndpointRead(
                    endpoint=OBSERVATIONS,
                    rows=reading.observation_rows,
                    covered=_covered(observed, reading.observations_done, reading.oldest),
                    lookback=self.lookback_for(releases),
                    page_size=self.settings.page_limit,
                    traces=reading.roots,
                )
            )
        if _score_names(releases.values()):
            reads.append(
                EndpointRead(
                    endpoint=SCORES,
                    rows=reading.score_rows,
                    covered=(
                        (scored.end - scored.start if reading.scores_done else 0.0)
                        if sampled
                        else _covered(scored, reading.scores_done, reading.scores_oldest)
                    ),
                    lookback=0.0 if sampled else self.settings.score_lookback,
                    page_size=SCORES_PAGE,
                )
            )
        if stop is not None and stop.retry_at is not None:
            self._health.rate_limited(now)
        self._health.record(
            PollRecord(
                at=now,
                cursors=cursors,
                complete=stop is None,
                budget_stopped=stop is not None and stop.budget,
                error=None if stop is None else stop.message,
                reads=tuple(reads),
            )
        )

    def _window(self, cursor: float, lookback: float, now: float) -> _Window:
        end = max(cursor, min(now, cursor + self.settings.max_window))
        return _Window(start=cursor - lookback, end=end)

    def _observation_query(
        self, tags: list[str], window: _Window, *, shadow: bool = False
    ) -> dict[str, str]:
        since, until = _iso(window.start), _iso(window.end)
        conditions = [
            {"type": "arrayOptions", "column": "tags", "operator": "any of", "value": tags},
            # The filter takes precedence over the plain parameters: the times go in both.
            {"type": "datetime", "column": "startTime", "operator": ">=", "value": since},
            {"type": "datetime", "column": "startTime", "operator": "<", "value": until},
        ]
        if self.settings.sampled:  # conditions are ANDed: a release's tag and the sample's
            conditions.insert(
                1,
                {
                    "type": "arrayOptions",
                    "column": "tags",
                    "operator": "any of",
                    "value": [SAMPLED_TAG],
                },
            )
        return {
            "fields": SHADOW_FIELDS if shadow else OBSERVATION_FIELDS,
            "limit": str(self.settings.page_limit),
            "fromStartTime": since,
            "toStartTime": until,
            "filter": json.dumps(conditions, separators=(",", ":")),
        }

    def _failed(self, stop: _PollError) -> None:
        clock = self._clock()
        if stop.budget:
            self.retry_at = self.budget.available_at(clock)
            return
        self.consecutive_failures += 1
        wait = self.settings.backoff.delay(self.consecutive_failures, rng=self._rng)
        retry_at = clock + wait
        if stop.retry_at is not None:  # a 429's Retry-After holds it at least that long
            retry_at = max(retry_at, stop.retry_at)
        self.retry_at = retry_at

    # ------------------------------------------------------------------------- HTTP

    def _pages(
        self, endpoint: str, query: dict[str, str], cursor: str | None = None
    ) -> Iterator[tuple[list[Any], str | None]]:
        """The ``data`` of each page from ``cursor`` (None: the first page) on, following
        ``meta.cursor`` to the end, each with the cursor of the page after it."""
        path = OBSERVATIONS_PATH if endpoint == OBSERVATIONS else SCORES_PATH
        while True:
            params = dict(query) if cursor is None else {**query, "cursor": cursor}
            body = self._get(endpoint, path, params)
            data = body.get("data")
            meta = body.get("meta")
            if not isinstance(data, list) or not isinstance(meta, dict):
                raise _PollError(f"{endpoint}: response is not an object with data and meta")
            cursor = meta.get("cursor")
            if cursor is not None and not isinstance(cursor, str):
                raise _PollError(f"{endpoint}: meta.cursor is not a string")
            yield data, cursor or None
            if not cursor:
                return

    def _get(self, endpoint: str, path: str, params: dict[str, str]) -> dict[str, Any]:
        """One GET, counted; the JSON object it answered, or ``_PollError``."""
        if not self.budget.try_acquire(self._clock()):
            raise _PollError("request budget spent", budget=True)
        self._poll_requests[endpoint] += 1
        try:
            response = self._http.get(self.base_url + path, params=params)
        except httpx.TimeoutException:
            self._count(endpoint, "timeout")
            raise _PollError(f"{endpoint}: no answer within {self.settings.timeout:g}s") from None
        except httpx.TransportError as error:
            self._count(endpoint, "connection")
            raise _PollError(f"{endpoint}: connection failed ({type(error).__name__})") from None
        except httpx.HTTPError as error:
            self._count(endpoint, "error")
            raise _PollError(f"{endpoint}: request failed ({type(error).__name__})") from None
        status = response.status_code
        self._count(endpoint, status_class(status))
        if status == 429:
            now = self._clock()
            wait = self.budget.hold_off(response.headers.get("retry-after"), now=now)
            message = f"{endpoint}: rate limited (429), retry after {wait:g}s"
            raise _PollError(message, retry_at=now + wait)
        if not 200 <= status < 300:
            raise _PollError(f"{endpoint}: HTTP {status}{error_detail(response)}")
        try:
            body = response.json()
        except ValueError:
            raise _PollError(f"{endpoint}: response is not JSON") from None
        if not isinstance(body, dict):
            raise _PollError(f"{endpoint}: response is not an object with data and meta")
        return body

    # ------------------------------------------------------------------------- rows

    def _traces(
        self,
        rows: Iterable[_Observation],
        releases: Mapping[str, Policy],
        settled_before: float,
        complete_from: float,
    ) -> tuple[TraceSample, ...]:
        by_trace: dict[str, list[_Observation]] = {}
        for row in rows:
            by_trace.setdefault(row.trace_id, []).append(row)
        by_tag = {release_tag(name): name for name in releases}
        samples: list[TraceSample] = []
        for trace_id, observations in by_trace.items():
            roots = sorted((row for row in observations if row.is_root), key=_start_order)
            if not roots:
                continue  # the root span comes when the request ends
            root = roots[0]
            if root.end is None or root.end > settled_before or root.start < complete_from:
                continue
            if len(roots) > 1:
                self.skipped["trace_multiple_roots"] += 1
            named = {by_tag[tag] for tag in root.tags if tag in by_tag}
            arms = _arms(root.tags)
            if len(named) != 1 or len(arms) != 1:
                self.skipped["trace_untagged"] += 1
                continue
            if self.settings.sampled and SAMPLED_TAG not in root.tags:
                self.skipped["trace_unsampled"] += 1  # only the app's spans carry the tag
                continue
            release = named.pop()
            arm = arms.pop()
            samples.append(
                TraceSample(
                    release=release,
                    trace_id=trace_id,
                    arm=arm,
                    ts=root.start,
                    error=any(row.level == "ERROR" for row in observations),
                    latency_ms=_milliseconds(root.end - root.start),
                    cost_usd=_cost(observations),
                    prompt_version=_prompt_version(observations, releases[release]),
                    shadow_of=_shadow_of(root, observations) if arm is Arm.SHADOW else None,
                )
            )
        samples.sort(key=lambda sample: (sample.ts, sample.trace_id))
        return tuple(samples)

    def _parse_score(self, raw: object) -> ScoreSample | None:
        if not isinstance(raw, dict):
            self.skipped["score_malformed"] += 1
            return None
        subject = raw.get("subject")
        score_id, name = raw.get("id"), raw.get("name")
        at = read_time(raw.get("createdAt"))
        if at is None:
            at = read_time(raw.get("timestamp"))
        value = _score_value(raw.get("dataType"), raw.get("value"))
        if (
            not isinstance(score_id, str)
            or not isinstance(name, str)
            or not isinstance(subject, dict)
            or at is None
            or value is None
        ):
            self.skipped["score_malformed"] += 1
            return None
        trace_id = subject.get("traceId")
        if trace_id is None and subject.get("kind") == "trace":
            trace_id = subject.get("id")
        if not isinstance(trace_id, str) or not trace_id:
            self.skipped["score_not_trace"] += 1
            return None
        return ScoreSample(score_id=score_id, trace_id=trace_id, name=name, value=value, at=at)


def _covered(window: _Window, done: bool, oldest: float | None) -> float:
    """Seconds of ``window`` that the rows read cover (rows come newest first)."""
    if done:
        return window.end - window.start
    if oldest is None:
        return 0.0
    return max(0.0, window.end - max(window.start, oldest))


def _score_query(names: list[str], window: _Window) -> dict[str, str]:
    return {
        "name": ",".join(names),
        "fromTimestamp": _iso(window.start),
        "toTimestamp": _iso(window.end),
        "limit": str(SCORES_PAGE),
        "fields": SCORE_FIELDS,
    }


def _trace_query(trace_ids: list[str], names: list[str]) -> dict[str, str]:
    query = {
        "name": ",".join(names),
        "limit": str(SCORES_PAGE),
        "fields": SCORE_FIELDS,
    }
    if trace_ids:
        query["traceId"] = ",".join(trace_ids)
    return query


def _score_names(policies: Iterable[Policy]) -> list[str]:
    """The score names the policies read: their score metrics' and their shadow rung's."""
    names: set[str] = set()
    for policy in policies:
        names.update(
            metric.score
            for metric in policy.analysis.metrics
            if metric.source is MetricSource.SCORE and metric.score
        )
        gate = _shadow_gate(policy)
        if gate is not None:
            names.add(gate.metric.score)
    return sorted(names)


def _shadow_gate(policy: Policy) -> ShadowGate | None:
    return None if policy.shadow is None else policy.shadow.gate


def _any_shadow_gate(releases: Mapping[str, Policy]) -> bool:
    return any(_shadow_gate(policy) is not None for policy in releases.values())


def _milliseconds(seconds: float) -> float:
    # Epoch seconds as floats carry noise in the tenth decimal; Langfuse keeps ms.
    return round(max(0.0, seconds) * 1000.0, 3)


def _arms(tags: Iterable[str]) -> set[Arm]:
    """The arms the tags name; empty when any arm tag names no arm."""
    arms: set[Arm] = set()
    for tag in tags:
        if tag.startswith(_ARM_PREFIX):
            arm = _ARMS.get(tag[len(_ARM_PREFIX) :])
            if arm is None:
                return set()
            arms.add(arm)
    return arms


def _start_order(row: _Observation) -> tuple[float, str]:
    return (row.start, row.id)


def _shadow_of(root: _Observation, observations: list[_Observation]) -> str | None:
    """The primary a shadow copy mirrors: as its root's metadata names it, else as its
    earliest span's does (the app's spans carry it when the proxy's root does not)."""
    if root.shadow_of is not None:
        return root.shadow_of
    named = [row for row in observations if row.shadow_of is not None]
    return min(named, key=_start_order).shadow_of if named else None


def _cost(observations: list[_Observation]) -> float | None:
    costs = [row.cost for row in observations if row.cost is not None]
    return math.fsum(costs) if costs else None


def _prompt_version(observations: list[_Observation], policy: Policy) -> int | None:
    prompt = policy.target.prompt
    if prompt is None:
        return None
    linked = [
        row
        for row in observations
        if row.type == "GENERATION"
        and row.prompt_name == prompt.name
        and row.prompt_version is not None
    ]
    if not linked:
        return None
    return min(linked, key=_start_order).prompt_version


# ----------------------------------------------------------------------------- parsing


class _MalformedError(ValueError):
    """A field this source uses is missing or of the wrong type. Never leaves this
    module: the row is skipped and counted."""


def _parse_observation(raw: object) -> _Observation | None:
    """The row, or None when a field this source uses is missing or of the wrong type."""
    try:
        return _observation(raw)
    except _MalformedError:
        return None


def _observation(raw: object) -> _Observation:
    if not isinstance(raw, dict):
        raise _MalformedError
    end_raw = raw.get("endTime")
    tags = raw.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise _MalformedError
    is_root = raw.get("isRootObservation")
    if not isinstance(is_root, bool):
        raise _MalformedError
    cost = _number(raw.get("totalCost"))
    if cost == 0 and not raw.get("costDetails"):
        cost = None  # no cost reported, as opposed to a cost of zero
    return _Observation(
        id=_string(raw.get("id")),
        trace_id=_string(raw.get("traceId")),
        start=_required_time(raw.get("startTime")),
        end=None if end_raw is None else _required_time(end_raw),
        is_root=is_root,
        level=_optional_string(raw.get("level")),
        tags=tuple(tags),
        cost=cost,
        type=_optional_string(raw.get("type")),
        prompt_name=_optional_string(raw.get("promptName")),
        prompt_version=_integer(raw.get("promptVersion")),
        shadow_of=_metadata_shadow_of(raw.get("metadata")),
    )


def _metadata_shadow_of(metadata: object) -> str | None:
    """The trace id under ``SHADOW_OF_KEYS`` in an observation's metadata, or None (a
    value that is no trace id is ignored: metadata is the app's, not this source's)."""
    if not isinstance(metadata, dict):
        return None
    for key in SHADOW_OF_KEYS:
        value = metadata.get(key)
        if isinstance(value, str) and value.startswith('"'):
            try:  # a JSON-encoded value (SDKs that write metadata as JSON)
                value = json.loads(value)
            except ValueError:
                continue
        if isinstance(value, str) and 0 < len(value.strip()) <= MAX_TRACE_ID_CHARS:
            return value.strip()
    return None


def _string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _MalformedError
    return value


def _optional_string(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _MalformedError
    return value


def _required_time(value: object) -> float:
    seconds = read_time(value)
    if seconds is None:
        raise _MalformedError
    return seconds


def _number(value: object) -> float | None:
    """A finite number, also written as a string (decimals may come as strings)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _MalformedError
    try:
        number = float(value)
    except ValueError:
        raise _MalformedError from None
    if not math.isfinite(number):
        raise _MalformedError
    return number


def _integer(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = _number(value)
    if number is None:
        return None
    if not number.is_integer():
        raise _MalformedError
    return int(number)


def _score_value(data_type: object, value: object) -> ScoreValue | None:
    """The value as its data type says: numeric a float; boolean (JSON true or false,
    or 1 or 0) 1.0 or 0.0, as Langfuse stores it; other types a string."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if data_type == "NUMERIC":
        try:
            return _number(value)
        except _MalformedError:
            return None
    if data_type == "BOOLEAN":
        if isinstance(value, int | float) and value in (0, 1):
            return float(value)
        return None
    if isinstance(data_type, str) and isinstance(value, str):
        return value
    return None


def _iso(seconds: float) -> str:
    """``2026-01-01T00:00:00.000Z``, as Langfuse writes times (milliseconds, floored)."""
    millis = math.floor(seconds * 1000)
    moment = datetime.fromtimestamp(millis // 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z"


# ----------------------------------------------------------------------------- HTTP


def error_detail(response: httpx.Response) -> str:
    """``: <message>`` from a Langfuse error body, on one line, or nothing."""
    try:
        body = response.json()
    except ValueError:
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str) or not message.strip():
        return ""
    return ": " + " ".join(message.split())[:200]
