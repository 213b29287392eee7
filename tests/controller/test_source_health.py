"""The bookkeeping of Langfuse read health: the estimate of the requests needed, and the
verdict with its sentence, from polls recorded at the times of a fake clock."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from controller.samples import Cursors
from controller.samples import Poll as SourcePoll
from controller.source.health import (
    EndpointRead,
    PollHealth,
    PollRecord,
    ReadHealth,
    ReadVerdict,
)
from controller.source.static import StaticSource
from tests.controller.source_support import FakeClock

T0 = 1_767_225_600.0
DOCS = "docs/controller.md#langfuse-read-health"
RAISE = "raise COALMINE_REQUESTS_PER_MINUTE to at least"
SLOWER = "poll less often with a longer analysis.interval or COALMINE_TICK_SECONDS"


def observations(rows: int, covered: float, traces: int = 0) -> EndpointRead:
    return EndpointRead("observations", rows, covered, 120.0, 10, traces)


def scores(rows: int, covered: float) -> EndpointRead:
    return EndpointRead("scores", rows, covered, 60.0, 100)


@dataclass(frozen=True)
class Poll:
    """A poll for the table: seconds after the previous one, and what it did."""

    after: float
    reads: tuple[EndpointRead, ...] = ()
    complete: bool = True
    budget_stopped: bool = False
    error: str | None = None
    behind: float = 0.0
    """Seconds its cursors stop before its time."""


def recorded(polls: list[Poll], clock: FakeClock) -> PollHealth:
    health = PollHealth()
    cursor = clock.now
    for poll in polls:
        clock.advance(poll.after)
        if poll.complete:
            cursor = clock.now - poll.behind
        health.record(
            PollRecord(
                at=clock.now,
                cursors=Cursors(cursor, cursor),
                complete=poll.complete,
                budget_stopped=poll.budget_stopped,
                error=poll.error,
                reads=poll.reads,
            )
        )
    return health


# 0.5 rows a second on both endpoints: a 10 s poll reads 130 s of observations (65
# rows, 7 pages of 10) and 70 s of scores (35 rows, 1 page of 100): 8 requests.
BUSY = (observations(65, 130.0, traces=13), scores(35, 70.0))
QUIET = (observations(0, 130.0), scores(0, 70.0))


@pytest.mark.parametrize(
    ("polls", "needed"),
    [
        pytest.param([Poll(0, BUSY)], None, id="one poll: no interval yet"),
        pytest.param([Poll(0, BUSY), Poll(10, BUSY), Poll(10, BUSY)], 48.0, id="every 10 s"),
        # every 60 s: 180 s of observations (90 rows, 9 pages), 120 s of scores (1 page)
        pytest.param([Poll(0, BUSY), Poll(60, BUSY), Poll(60, BUSY)], 10.0, id="every 60 s"),
        pytest.param([Poll(0, QUIET), Poll(10, QUIET)], 12.0, id="nothing to read: 1 each"),
        # a poll stopped after 2 pages covering 40 s: the rate still counts; scores were
        # not reached, so 1 request for them
        pytest.param(
            [
                Poll(0, (observations(20, 40.0), scores(0, 0.0)), complete=False),
                Poll(10, (observations(20, 40.0), scores(0, 0.0)), complete=False),
            ],
            48.0,
            id="partial reads",
        ),
        # median interval: one long gap among 10 s ones does not change the pace
        pytest.param(
            [Poll(0, BUSY), Poll(10, BUSY), Poll(300, BUSY), Poll(10, BUSY)],
            48.0,
            id="median interval",
        ),
        pytest.param([Poll(0), Poll(10)], 0.0, id="no endpoint read: no request"),
    ],
)
def test_requests_needed_per_minute(polls: list[Poll], needed: float | None) -> None:
    assert recorded(polls, FakeClock(T0)).requests_needed_per_minute() == needed


@dataclass(frozen=True)
class Case:
    polls: list[Poll]
    verdict: ReadVerdict
    message: str
    used: int | None = 20
    budget: int | None = 24
    later: float = 5.0
    """Seconds from the last poll to the snapshot."""


SPENT = "request budget spent"
STOPPED = Poll(10, (observations(20, 40.0, traces=4), scores(0, 0.0)), False, True, error=SPENT)
STOPPED_QUIET = Poll(10, (QUIET[0], scores(0, 0.0)), False, True, error=SPENT)

CASES = {
    "no poll yet": Case([], ReadVerdict.OK, "Langfuse has not been read yet (no release running)."),
    "keeping up": Case(
        [Poll(0, QUIET), Poll(10, QUIET)],
        ReadVerdict.OK,
        "Langfuse reads keep up: 12 requests/min needed at this traffic, budget 24.",
    ),
    "needs more than the budget": Case(
        [Poll(0, BUSY), Poll(10, BUSY), Poll(10, BUSY)],
        ReadVerdict.STARVED,
        "Langfuse reads are starved: 48 requests/min needed at this traffic, budget 24 "
        f"({RAISE} 48, or {SLOWER}: one poll a minute needs 10; see {DOCS}).",
    ),
    "three polls in a row out of budget": Case(
        [Poll(0, QUIET), STOPPED_QUIET, STOPPED_QUIET, STOPPED_QUIET],
        ReadVerdict.STARVED,
        "Langfuse reads are starved: the last 3 polls ran out of request budget (24 a "
        "minute, 20 used in the last minute) before reading up to now; 12 requests/min "
        "needed at this traffic, budget 24 (raise COALMINE_REQUESTS_PER_MINUTE, or "
        f"{SLOWER}: one poll a minute needs 2; see {DOCS}).",
    ),
    "one poll out of budget": Case(
        [Poll(0, QUIET), Poll(10, QUIET), STOPPED_QUIET],
        ReadVerdict.CATCHING_UP,
        "Langfuse reads are catching up: read up to 15s before now; 12 requests/min "
        "needed at this traffic, budget 24.",
    ),
    "a complete poll left far behind": Case(
        [Poll(0, QUIET), Poll(10, QUIET, behind=300.0)],
        ReadVerdict.CATCHING_UP,
        "Langfuse reads are catching up: read up to 5m05s before now; 12 requests/min "
        "needed at this traffic, budget 24.",
    ),
    "a failed poll": Case(
        [Poll(0, QUIET), Poll(30, QUIET, complete=False, error="observations: HTTP 503")],
        ReadVerdict.FAILING,
        "Langfuse reads are failing: observations: HTTP 503; the last complete poll was "
        f"35s ago (see {DOCS}).",
    ),
    "failing from the start": Case(
        [Poll(0, complete=False, error="scores: no answer within 10s")],
        ReadVerdict.FAILING,
        f"Langfuse reads are failing: scores: no answer within 10s; no complete poll yet (see "
        f"{DOCS}).",
    ),
    "no budget (a static source)": Case(
        [Poll(0), Poll(10)],
        ReadVerdict.OK,
        "Langfuse reads keep up: 0 requests/min needed at this traffic.",
        used=None,
        budget=None,
    ),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_the_verdict_and_its_sentence(case: Case) -> None:
    clock = FakeClock(T0)
    health = recorded(case.polls, clock)
    clock.advance(case.later)
    snapshot = health.snapshot(
        clock.now, requests_last_minute=case.used, budget_per_minute=case.budget
    )
    assert (snapshot.verdict, snapshot.message) == (case.verdict, case.message)


def test_the_snapshot_holds_the_figures_behind_the_verdict() -> None:
    clock = FakeClock(T0)
    health = recorded([Poll(0, BUSY), Poll(10, BUSY), STOPPED], clock)
    clock.advance(5)
    assert health.snapshot(clock.now, requests_last_minute=23, budget_per_minute=24) == ReadHealth(
        verdict=ReadVerdict.STARVED,
        message=health.snapshot(clock.now, requests_last_minute=23, budget_per_minute=24).message,
        last_poll_at=T0 + 20,
        last_complete_poll_at=T0 + 10,
        lag_seconds=15.0,
        requests_last_minute=23,
        budget_per_minute=24,
        rate_limited_total=0,
        rate_limited_recent=0,
        last_error=SPENT,
        requests_needed_per_minute=48.0,
        traces_per_minute=6.0,  # 30 roots over 300 s of observations
        poll_interval_seconds=10.0,
    )


def test_429s_are_counted_in_all_and_in_the_last_15_minutes() -> None:
    clock = FakeClock(T0)
    health = PollHealth()
    for after in (0.0, 100.0, 850.0, 50.0):
        clock.advance(after)
        health.rate_limited(clock.now)
    snapshot = health.snapshot(clock.now)
    assert (snapshot.rate_limited_total, snapshot.rate_limited_recent) == (4, 3)
    clock.advance(901)
    snapshot = health.snapshot(clock.now)
    assert (snapshot.rate_limited_total, snapshot.rate_limited_recent) == (4, 0)


def test_only_the_recent_polls_count() -> None:
    clock = FakeClock(T0)
    # ten busy polls, then ten quiet ones: the estimate follows the traffic
    health = recorded([Poll(10, BUSY)] * 10 + [Poll(10, QUIET)] * 10, clock)
    assert health.requests_needed_per_minute() == 12.0


def test_the_static_source_reports_the_health_of_the_polls_it_hands_out() -> None:
    failed = SourcePoll(ok=False, cursors=Cursors(T0, T0), error="Langfuse answered 503")
    source = StaticSource([failed])
    assert source.health(T0).reads.message == (
        "Langfuse has not been read yet (no release running)."
    )
    source.poll({}, Cursors(T0, T0), T0 + 10)
    reads = source.health(T0 + 10).reads
    assert (reads.verdict, reads.last_error, reads.lag_seconds) == (
        ReadVerdict.FAILING,
        "Langfuse answered 503",
        10.0,
    )
    source.poll({}, Cursors(T0, T0), T0 + 20)
    reads = source.health(T0 + 20).reads
    assert (reads.verdict, reads.last_complete_poll_at, reads.budget_per_minute) == (
        ReadVerdict.OK,
        T0 + 20,
        None,
    )
    assert source.health(T0 + 20).score_type_mismatches == ()
