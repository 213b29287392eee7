"""The Langfuse source's read health on real polls: a request budget too small for the
traffic at a 10 s interval starves the reads, with the numbers that say what to change;
the same traffic polled once a minute keeps up within the same budget."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import httpx

from controller.samples import Cursors
from controller.source.budget import BudgetSettings, RequestBudget
from controller.source.health import ReadVerdict
from controller.source.langfuse import LangfuseSource, SourceSettings
from policies.model import Policy
from tests.controller.source_support import (
    T0,
    FakeClock,
    policy,
    root_row,
    tags_of,
    trace_score_row,
)

RELEASES: dict[str, Policy] = {"alpha": policy("alpha", scores=["helpfulness"])}
EVERY = 2
"""Seconds between two traces (and two scores): 0.5 rows a second on each endpoint."""


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def _times(since: float, until: float) -> list[float]:
    """The rows' times in [since, until), newest first."""
    first = math.ceil(since / EVERY) * EVERY
    return sorted(range(first, math.ceil(until), EVERY), reverse=True)


def langfuse(request: httpx.Request) -> httpx.Response:
    """One root observation and one score every ``EVERY`` seconds, paged by offset."""
    query = {key: values[0] for key, values in parse_qs(urlsplit(str(request.url)).query).items()}
    limit = int(query["limit"])
    offset = int(query.get("cursor", "0"))
    if request.url.path.endswith("/observations"):
        times = _times(_seconds(query["fromStartTime"]), _seconds(query["toStartTime"]))
        rows = [
            root_row(str(at), f"trace-{at}", _iso(at), _iso(at + 0.5), tags_of("alpha", "canary"))
            for at in times
        ]
    else:
        times = _times(_seconds(query["fromTimestamp"]), _seconds(query["toTimestamp"]))
        rows = [trace_score_row(str(at), f"trace-{at}", _iso(at)) for at in times]
    page = rows[offset : offset + limit]
    more = offset + limit < len(rows)
    meta = {"cursor": str(offset + limit)} if more else {}
    return httpx.Response(200, json={"data": page, "meta": meta})


def polled(per_minute: int, interval: float, polls: int) -> tuple[LangfuseSource, float]:
    """A source with this budget, polled every ``interval`` seconds as the controller
    does (the cursors move only when a poll read everything); the time of the last poll."""
    clock = FakeClock()
    source = LangfuseSource(
        "http://langfuse.invalid",
        "pk-lf-test",
        "sk-lf-test",
        budget=RequestBudget(BudgetSettings(per_minute=per_minute), clock=clock),
        settings=SourceSettings(page_limit=10),
        transport=httpx.MockTransport(langfuse),
        clock=clock,
        rng=random.Random(7),
    )
    cursors = Cursors(T0, T0)
    now = T0
    for number in range(polls):
        if number:
            clock.advance(interval)
            now += interval
        poll = source.poll(RELEASES, cursors, now)
        if poll.ok:
            cursors = poll.cursors
    return source, now


def test_a_budget_too_small_for_the_traffic_starves_the_reads() -> None:
    # Each 10 s poll reads 130 s of observations (65 rows: 7 pages of 10) and 70 s of
    # scores (35 rows: 1 page of 100): 8 requests, 48 a minute; the budget is 24.
    source, now = polled(per_minute=24, interval=10, polls=12)
    with source:
        reads = source.health(now + 5).reads
    assert reads.verdict is ReadVerdict.STARVED
    assert reads.requests_needed_per_minute == 48.0
    assert (reads.budget_per_minute, reads.poll_interval_seconds) == (24, 10.0)
    assert reads.requests_last_minute == 24
    assert reads.traces_per_minute == 30.0
    # the first three polls completed and spent the minute's budget; from T0 + 60 each
    # poll gets the 8 requests of the poll a minute before it, and a read cut there goes
    # on at the next polls until it completes at T0 + 90
    assert reads.last_complete_poll_at == T0 + 90
    assert reads.lag_seconds == now + 5 - (T0 + 90)
    assert reads.last_error == "request budget spent"
    assert reads.message == (
        "Langfuse reads are starved: 48 requests/min needed at this traffic, budget 24 "
        "(raise COALMINE_REQUESTS_PER_MINUTE to at least 48, or poll less often with a "
        "longer analysis.interval or COALMINE_TICK_SECONDS: one poll a minute needs 10; "
        "see docs/controller.md#langfuse-read-health)."
    )


def test_the_same_traffic_polled_once_a_minute_keeps_up() -> None:
    # 180 s of observations (9 pages) and 120 s of scores (1 page): 10 a minute
    source, now = polled(per_minute=24, interval=60, polls=5)
    with source:
        reads = source.health(now + 5).reads
    assert reads.verdict is ReadVerdict.OK
    assert reads.requests_needed_per_minute == 10.0
    assert reads.last_complete_poll_at == now
    assert reads.message == (
        "Langfuse reads keep up: 10 requests/min needed at this traffic, budget 24."
    )


def test_a_429_fails_the_reads_and_is_counted() -> None:
    clock = FakeClock()

    def limited(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "30"})

    with LangfuseSource(
        "http://langfuse.invalid",
        "pk-lf-test",
        "sk-lf-test",
        budget=RequestBudget(BudgetSettings(per_minute=24), clock=clock),
        transport=httpx.MockTransport(limited),
        clock=clock,
        rng=random.Random(7),
    ) as source:
        source.poll(RELEASES, Cursors(T0, T0), T0)
        reads = source.health(T0 + 1).reads
    assert reads.verdict is ReadVerdict.FAILING
    assert (reads.rate_limited_total, reads.rate_limited_recent) == (1, 1)
    assert reads.last_error == "observations: rate limited (429), retry after 30s"
    assert reads.message.startswith(
        "Langfuse reads are failing: observations: rate limited (429), retry after 30s; "
        "no complete poll yet"
    )
