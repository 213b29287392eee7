"""Sampled reads of the Langfuse source: only traces tagged sampled, their scores by
trace id at a first read and, when a name is missing, a final one at the timeout;
batches that fit a page; pending reads kept across a restart and across a spent budget."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from bench.sampled_reads import run as simulate
from coalmine.shared.conventions import SAMPLED_TAG
from controller.samples import Cursors, Poll
from controller.source.budget import BudgetSettings, RequestBudget
from controller.source.langfuse import MAX_URL_BYTES, LangfuseSource, SourceSettings
from policies.model import Policy
from tests.controller.source_support import (
    T0,
    FakeClock,
    app_span,
    policy,
    post_score,
    root_row,
    send_spans,
    tags_of,
    trace_id,
)
from tests.emulator.emulator_support import LiveEmulator

NAMES = ("helpfulness", "resolved")
TIMEOUT = 300.0


def scored_policy(name: str = "alpha") -> Policy:
    base = policy(name, scores=NAMES).model_dump(mode="json", by_alias=True, exclude_none=True)
    base["analysis"]["scoreTimeout"] = f"{TIMEOUT:g}s"
    return Policy.model_validate(base)


ALPHA = scored_policy()
RELEASES = {"alpha": ALPHA}
SAMPLED = SourceSettings(sampled=True)


class Recorder(httpx.BaseTransport):
    """Passes requests on and notes their URLs."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.urls: list[httpx.URL] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(request.url)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()

    def trace_reads(self) -> list[list[str]]:
        """The ``traceId`` lists of the score reads, in order."""
        reads = []
        for url in self.urls:
            if url.path.endswith("/v3/scores"):
                query = parse_qs(urlsplit(str(url)).query)
                reads.append(query["traceId"][0].split(","))
        return reads

    def count(self, endpoint: str) -> int:
        return sum(1 for url in self.urls if url.path.endswith(endpoint))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder(httpx.HTTPTransport())


@pytest.fixture
def budget(clock: FakeClock) -> RequestBudget:
    return RequestBudget(BudgetSettings(per_minute=1000), clock=clock)


def make(
    emulator: LiveEmulator,
    budget: RequestBudget,
    transport: httpx.BaseTransport,
    settings: SourceSettings = SAMPLED,
) -> LangfuseSource:
    return LangfuseSource(
        emulator.base_url,
        emulator.settings.public_key,
        emulator.settings.secret_key,
        budget=budget,
        settings=settings,
        transport=transport,
        rng=random.Random(7),
    )


@pytest.fixture
def source(
    emulator: LiveEmulator, budget: RequestBudget, recorder: Recorder
) -> Iterator[LangfuseSource]:
    with make(emulator, budget, recorder) as made:
        yield made


def send_trace(
    http: httpx.Client, number: int, start: float, *, arm: str = "canary", sampled: bool = True
) -> None:
    """A root (the proxy's span) and an app span; both tagged sampled when ``sampled``."""
    tags = tags_of("alpha", arm) + ([SAMPLED_TAG] if sampled else [])
    send_spans(
        http,
        [
            app_span(number, number, start, 0.25, tags, is_root=True, generation=False),
            app_span(number, 1000 + number, start + 0.05, 0.1, tags, cost=0.001),
        ],
    )


def score_names(poll: Poll) -> set[tuple[str, str]]:
    return {(score.trace_id, score.name) for score in poll.scores}


# --------------------------------------------------------------------------- reads


def test_first_read_then_a_final_read_only_for_missing_names(
    http: httpx.Client, source: LangfuseSource, recorder: Recorder
) -> None:
    for number, start in ((1, T0 + 10), (2, T0 + 20), (3, T0 + 30)):
        send_trace(http, number, start)
    send_trace(http, 4, T0 + 15, sampled=False)  # not in the sample
    # the app tags its spans sampled, the proxy's root is not: no root is read
    send_spans(
        http,
        [
            app_span(5, 5, T0 + 16, 0.25, tags_of("alpha", "canary"), is_root=True),
            app_span(5, 1005, T0 + 16.1, 0.1, [*tags_of("alpha", "canary"), SAMPLED_TAG]),
        ],
    )
    for name in NAMES:
        post_score(http, name, 0.9, at=T0 + 40, trace=1)
        post_score(http, name, 0.5, at=T0 + 40, trace=4)
    post_score(http, "helpfulness", 0.7, at=T0 + 50, trace=2)

    first = source.poll(RELEASES, None, T0 + 60)
    assert first.ok and first.requests == {"observations": 1}  # no read due yet
    assert [trace.trace_id for trace in first.traces] == [trace_id(n) for n in (1, 2, 3)]
    assert first.cursors == Cursors(observations_from=T0 + 60, scores_from=T0 + 10)

    second = source.poll(RELEASES, first.cursors, T0 + 100)  # every first read is due
    assert second.ok
    assert score_names(second) == {
        (trace_id(1), "helpfulness"),
        (trace_id(1), "resolved"),
        (trace_id(2), "helpfulness"),
    }
    assert second.cursors.scores_from == T0 + 20  # trace 1 is done

    post_score(http, "resolved", 0.1, at=T0 + 200, trace=2)
    third = source.poll(RELEASES, second.cursors, T0 + 310)  # no final read due yet
    assert third.scores == ()

    fourth = source.poll(RELEASES, third.cursors, T0 + 400)
    assert score_names(fourth) == {(trace_id(2), "resolved"), (trace_id(2), "helpfulness")}
    assert fourth.cursors == Cursors(observations_from=T0 + 400, scores_from=T0 + 400)

    post_score(http, "helpfulness", 0.3, at=T0 + 450, trace=3)  # too late: not read
    for now in (T0 + 500, T0 + 900):
        later = source.poll(RELEASES, fourth.cursors, now)
        assert later.ok and later.scores == ()
    # trace 3, never scored, is read once more at its timeout and then never again
    assert recorder.trace_reads() == [
        [trace_id(1), trace_id(2), trace_id(3)],
        [trace_id(2), trace_id(3)],
    ]


def test_the_observations_read_asks_for_the_sample_tag(
    http: httpx.Client, source: LangfuseSource, recorder: Recorder
) -> None:
    source.poll(RELEASES, None, T0 + 60)
    [url] = recorder.urls
    assert SAMPLED_TAG in url.params["filter"] and "coalmine:release:alpha" in url.params["filter"]


def test_batches_fit_one_page(budget: RequestBudget) -> None:
    count = 120
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        if request.url.path.endswith("/v2/observations"):
            return httpx.Response(200, json={"data": roots(count, width=32), "meta": {}})
        return httpx.Response(200, json={"data": [], "meta": {}})

    source = mock(handler, budget)
    poll = source.poll(RELEASES, None, T0 + 200)
    assert poll.ok and len(poll.traces) == count
    batches = [url.params["traceId"].split(",") for url in seen[1:]]
    assert [len(batch) for batch in batches] == [50, 50, 20]  # 100 rows // 2 names
    assert all(url.params["name"] == "helpfulness,resolved" for url in seen[1:])


def test_batches_keep_urls_short(budget: RequestBudget) -> None:
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        if request.url.path.endswith("/v2/observations"):
            return httpx.Response(200, json={"data": roots(60, width=400), "meta": {}})
        return httpx.Response(200, json={"data": [], "meta": {}})

    source = mock(handler, budget)
    assert source.poll(RELEASES, None, T0 + 200).ok
    reads = seen[1:]
    assert sum(len(url.params["traceId"].split(",")) for url in reads) == 60
    assert len(reads) == 3 and all(len(str(url)) <= MAX_URL_BYTES for url in reads)


def test_a_root_without_the_sample_tag_is_skipped_and_counted(budget: RequestBudget) -> None:
    unsampled = roots(2, width=32)
    unsampled[1]["tags"] = tags_of("alpha", "canary")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/v2/observations"):
            return httpx.Response(200, json={"data": unsampled, "meta": {}})
        return httpx.Response(200, json={"data": [], "meta": {}})

    source = mock(handler, budget)
    poll = source.poll(RELEASES, None, T0 + 200)
    assert [trace.trace_id for trace in poll.traces] == [trace_id(1)]
    assert source.skipped["trace_unsampled"] == 1


def test_a_score_of_a_trace_not_asked_for_is_skipped_and_counted(budget: RequestBudget) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/v2/observations"):
            return httpx.Response(200, json={"data": roots(1, width=32), "meta": {}})
        rows = [score_row("s1", trace_id(1)), score_row("s2", trace_id(99))]
        return httpx.Response(200, json={"data": rows, "meta": {}})

    source = mock(handler, budget)
    poll = source.poll(RELEASES, None, T0 + 200)
    assert [score.score_id for score in poll.scores] == ["s1"]
    assert source.skipped["score_unsampled"] == 1


# --------------------------------------------------------------------------- restart


def test_a_new_source_on_stored_cursors_makes_every_pending_read(
    http: httpx.Client,
    emulator: LiveEmulator,
    budget: RequestBudget,
    source: LangfuseSource,
    recorder: Recorder,
) -> None:
    for number, start in ((1, T0 + 10), (2, T0 + 20), (3, T0 + 30)):
        send_trace(http, number, start)
    post_score(http, "helpfulness", 0.9, at=T0 + 40, trace=1)
    post_score(http, "resolved", 0.9, at=T0 + 40, trace=1)
    first = source.poll(RELEASES, None, T0 + 60)
    second = source.poll(RELEASES, first.cursors, T0 + 100)  # first reads; 2 and 3 pending
    assert second.cursors == Cursors(observations_from=T0 + 100, scores_from=T0 + 20)
    post_score(http, "resolved", 0.2, at=T0 + 200, trace=2)
    post_score(http, "helpfulness", 0.3, at=T0 + 250, trace=3)

    again = Recorder(httpx.HTTPTransport())
    with make(emulator, budget, again) as restarted:
        poll = restarted.poll(RELEASES, second.cursors, T0 + 400)
        assert poll.ok
        assert {trace.trace_id for trace in poll.traces} >= {trace_id(2), trace_id(3)}
        assert {(trace_id(2), "resolved"), (trace_id(3), "helpfulness")} <= score_names(poll)
        assert poll.cursors.scores_from == T0 + 400  # nothing pending any more
        assert restarted.poll(RELEASES, poll.cursors, T0 + 460).scores == ()


def test_a_restart_before_the_first_reads_loses_none(
    http: httpx.Client, emulator: LiveEmulator, budget: RequestBudget, source: LangfuseSource
) -> None:
    for number in range(1, 4):
        send_trace(http, number, T0 + 10 * number)
        post_score(http, "helpfulness", 0.5, at=T0 + 10 * number + 20, trace=number)
    first = source.poll(RELEASES, None, T0 + 60)
    with make(emulator, budget, httpx.HTTPTransport()) as restarted:
        poll = restarted.poll(RELEASES, first.cursors, T0 + 100)
    assert {score.trace_id for score in poll.scores} == {trace_id(n) for n in range(1, 4)}


# --------------------------------------------------------------------------- budget


def test_a_small_budget_defers_reads_and_loses_none(
    http: httpx.Client, emulator: LiveEmulator, clock: FakeClock, recorder: Recorder
) -> None:
    count = 130
    for number in range(1, count + 1):
        send_trace(http, number, T0 + 10 + number * 0.1)
    scores = [
        {"name": name, "value": 0.5, "traceId": trace_id(n), "timestamp": "2026-01-01T00:00:40Z"}
        for n in range(1, count + 1)
        for name in NAMES
    ]
    assert http.post("/api/public/scores", json=scores).status_code == 202
    budget = RequestBudget(BudgetSettings(per_minute=2), clock=clock)
    read: set[tuple[str, str]] = set()
    with make(emulator, budget, recorder) as source:
        cursors: Cursors | None = None
        now = T0 + 100
        for _ in range(6):
            poll = source.poll(RELEASES, cursors, now)
            assert poll.ok, poll.error
            read |= score_names(poll)
            cursors = poll.cursors
            clock.advance(60)
            now += 60
    assert read == {(trace_id(n), name) for n in range(1, count + 1) for name in NAMES}
    assert recorder.count("/v3/scores") == 3  # 50 + 50 + 30 traces, one poll each
    assert cursors is not None and cursors.scores_from == cursors.observations_from


# --------------------------------------------------------------------------- helpers


def mock(handler: Any, budget: RequestBudget) -> LangfuseSource:
    return LangfuseSource(
        "http://langfuse.invalid",
        "pk-lf-test",
        "sk-lf-test",
        budget=budget,
        settings=SAMPLED,
        transport=httpx.MockTransport(handler),
        rng=random.Random(7),
    )


def roots(count: int, *, width: int) -> list[dict[str, object]]:
    """Sampled root rows of alpha's canary, started at T0 + 10, with ids ``width`` long."""
    return [
        root_row(
            str(n),
            f"{n:0{width}x}",
            "2026-01-01T00:00:10.000Z",
            "2026-01-01T00:00:10.500Z",
            [*tags_of("alpha", "canary"), SAMPLED_TAG],
        )
        for n in range(1, count + 1)
    ]


def score_row(score_id: str, trace: str) -> dict[str, object]:
    return {
        "id": score_id,
        "name": "helpfulness",
        "dataType": "NUMERIC",
        "value": 0.5,
        "timestamp": "2026-01-01T00:01:00.000Z",
        "createdAt": "2026-01-01T00:01:00.000Z",
        "subject": {"kind": "trace", "id": trace},
    }


# --------------------------------------------------------------------------- traffic


def test_requests_a_minute_do_not_grow_with_traffic() -> None:
    small, large = (simulate(traffic, sampled=20, minutes=2) for traffic in (100, 1000))
    for result in (small, large):
        assert result.polls_ok == result.polls
        assert result.per_minute["first_reads"] == 20
    assert small.per_minute["observations"] == large.per_minute["observations"] == 2
    assert small.per_minute["scores"] == large.per_minute["scores"] == 2


# --------------------------------------------------------------------------- cut reads


def _burst(http: httpx.Client, count: int) -> None:
    for number in range(1, count + 1):
        send_trace(http, number, T0 + 10 + number * 0.5)


def test_a_read_the_budget_cuts_goes_on_from_its_next_page(
    http: httpx.Client, emulator: LiveEmulator, clock: FakeClock, recorder: Recorder
) -> None:
    # 12 traces of 2 observations: 5 pages of 5 rows; the budget allows 2 a minute
    _burst(http, 12)
    budget = RequestBudget(BudgetSettings(per_minute=2), clock=clock)
    settings = SourceSettings(sampled=True, page_limit=5)
    seen: list[str] = []
    polls: list[Poll] = []
    with make(emulator, budget, recorder, settings) as source:
        start = Cursors(observations_from=T0, scores_from=T0)
        for now in (T0 + 60, T0 + 40, T0 + 30):  # the loop asks for less after a cut
            polls.append(source.poll(RELEASES, start, now))
            seen += [trace.trace_id for trace in polls[-1].traces]
            clock.advance(60)
    assert [poll.ok for poll in polls] == [False, False, True]
    assert [poll.goes_on for poll in polls] == [True, True, False]
    assert [poll.cursors for poll in polls[:2]] == [start, start]
    # the window of the first poll, read whole: no page read twice
    assert polls[-1].cursors.observations_from == T0 + 60
    assert recorder.count("/v2/observations") == 5
    assert sorted(set(seen)) == sorted(trace_id(n) for n in range(1, 13))


def test_a_cut_read_over_its_row_limit_starts_again_next_poll(
    http: httpx.Client, emulator: LiveEmulator, clock: FakeClock, recorder: Recorder
) -> None:
    _burst(http, 12)
    budget = RequestBudget(BudgetSettings(per_minute=2), clock=clock)
    settings = SourceSettings(sampled=True, page_limit=5, max_resumed_rows=9)
    with make(emulator, budget, recorder, settings) as source:
        start = Cursors(observations_from=T0, scores_from=T0)
        first = source.poll(RELEASES, start, T0 + 60)
        clock.advance(60)
        second = source.poll(RELEASES, start, T0 + 60)
    assert not first.ok and not first.goes_on
    # both polls began at the newest page
    cursors = [url.params.get("cursor") for url in recorder.urls]
    assert cursors[0] is None and cursors[2] is None and not second.ok
