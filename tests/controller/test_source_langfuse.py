"""The Langfuse sample source against a live emulator (and a few hand-made answers):
traces and scores of every release in one query, paging, cursors with a bounded
lookback, the request budget, and failures that leave the cursors where they were."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from langfuse import propagate_attributes
from langfuse.api import Prompt_Text
from langfuse.model import TextPromptClient
from opentelemetry.sdk.trace import TracerProvider

from coalmine.emulator.settings import EmulatorSettings, Plan
from controller.samples import Cursors, Poll, ScoreSample, TraceSample
from controller.source import SampleSource
from controller.source.budget import BudgetSettings, RequestBudget
from controller.source.langfuse import DEFAULT_MAX_WINDOW, LangfuseSource, SourceSettings
from controller.source.static import StaticSource
from policies.domain import Arm
from policies.model import Policy
from tests.controller.source_support import (
    T0,
    FakeClock,
    LiveEmulator,
    add_fault,
    app_span,
    clear_faults,
    langfuse_client,
    live_emulator,
    policy,
    post_score,
    refuse_requests,
    root,
    sdk_emulator_settings,
    send_roots,
    send_spans,
    tags_of,
    trace_id,
)

ALPHA = policy("alpha", prompt="support/answer", scores=["helpfulness"])
BETA = policy("beta", scores=["resolved"])
RELEASES: dict[str, Policy] = {"alpha": ALPHA, "beta": BETA}
OBSERVATIONS = "/api/public/v2/observations"


@pytest.fixture
def budget(clock: FakeClock) -> RequestBudget:
    return RequestBudget(BudgetSettings(per_minute=1000), clock=clock)


SourceFactory = Callable[..., LangfuseSource]


@pytest.fixture
def make_source(emulator: LiveEmulator, budget: RequestBudget) -> Iterator[SourceFactory]:
    made: list[LangfuseSource] = []

    def make(**options: object) -> LangfuseSource:
        arguments: dict[str, object] = {"budget": budget, "rng": random.Random(7)}
        arguments.update(options)
        source = LangfuseSource(
            emulator.base_url + "/",  # a trailing slash is fine
            emulator.settings.public_key,
            emulator.settings.secret_key,
            **arguments,  # type: ignore[arg-type]
        )
        made.append(source)
        return source

    yield make
    for source in made:
        source.close()


@pytest.fixture
def source(make_source: SourceFactory) -> LangfuseSource:
    return make_source()


def by_trace(poll: Poll) -> dict[str, TraceSample]:
    return {sample.trace_id: sample for sample in poll.traces}


def mock_source(
    handler: Callable[[httpx.Request], httpx.Response], budget: RequestBudget
) -> LangfuseSource:
    return LangfuseSource(
        "http://langfuse.invalid",
        "pk-lf-test",
        "sk-lf-test",
        budget=budget,
        transport=httpx.MockTransport(handler),
        rng=random.Random(7),
    )


def page(*rows: dict[str, object], cursor: str | None = None) -> httpx.Response:
    meta = {} if cursor is None else {"cursor": cursor}
    return httpx.Response(200, json={"data": list(rows), "meta": meta})


def root_row(trace: str, start: str = "2026-01-01T00:00:10.000Z") -> dict[str, object]:
    return {
        "id": f"root-{trace}",
        "traceId": trace,
        "startTime": start,
        "endTime": "2026-01-01T00:00:10.500Z",
        "isRootObservation": True,
        "level": "DEFAULT",
        "type": "SPAN",
        "tags": tags_of("alpha", "canary"),
        "totalCost": None,
        "costDetails": {},
        "promptName": None,
        "promptVersion": None,
    }


# --------------------------------------------------------------------------- traces


def test_traces_of_two_releases_and_every_arm(http: httpx.Client, source: LangfuseSource) -> None:
    send_roots(
        http,
        [
            root("alpha", "canary", 1, T0 + 10),
            root("alpha", "baseline", 2, T0 + 20, status=503),
            root("beta", "canary", 3, T0 + 30),
            root("beta", "baseline", 4, T0 + 40, duration=1.5),
            root("alpha", "shadow", 5, T0 + 50),
            root("gamma", "canary", 6, T0 + 60),  # not a running release
        ],
    )
    alpha_canary, beta_canary = tags_of("alpha", "canary"), tags_of("beta", "canary")
    send_spans(
        http,
        [
            app_span(
                1, 101, T0 + 10.05, 0.1, alpha_canary, cost=0.001, prompt=("support/answer", 3)
            ),
            app_span(
                1, 102, T0 + 10.15, 0.05, alpha_canary, cost=0.002, prompt=("support/answer", 3)
            ),
            app_span(
                3, 301, T0 + 30.1, 0.1, beta_canary, cost=0.5, prompt=("other", 1), level="ERROR"
            ),
            app_span(4, 401, T0 + 40.1, 1.0, tags_of("beta", "baseline"), generation=False),
            # A root that names a release but no arm.
            app_span(7, 7, T0 + 70, 0.2, ["coalmine:release:alpha"], is_root=True),
        ],
    )

    poll = source.poll(RELEASES, None, T0 + 100)

    assert poll.ok and poll.error is None
    assert poll.cursors == Cursors(observations_from=T0 + 100, scores_from=T0 + 100)
    assert poll.requests == {"observations": 1, "scores": 1}
    traces = by_trace(poll)
    assert list(traces) == [trace_id(n) for n in (1, 2, 3, 4, 5)]  # by start time
    first = traces[trace_id(1)]
    assert (first.release, first.arm, first.ts, first.error) == (
        "alpha",
        Arm.CANARY,
        T0 + 10,
        False,
    )
    assert first.latency_ms == pytest.approx(250.0)
    assert first.cost_usd == pytest.approx(0.003)
    assert first.prompt_version == 3
    failed = traces[trace_id(2)]
    assert (failed.release, failed.arm, failed.error) == ("alpha", Arm.BASELINE, True)
    assert failed.cost_usd is None and failed.prompt_version is None
    child_error = traces[trace_id(3)]
    assert (child_error.release, child_error.arm, child_error.error) == ("beta", Arm.CANARY, True)
    assert child_error.cost_usd == pytest.approx(0.5)
    assert child_error.prompt_version is None  # beta releases no prompt
    slow = traces[trace_id(4)]
    assert (slow.arm, slow.error, slow.cost_usd) == (Arm.BASELINE, False, None)
    assert slow.latency_ms == pytest.approx(1500.0)
    assert traces[trace_id(5)].arm is Arm.SHADOW
    assert source.skipped["trace_untagged"] == 1
    assert source.request_counts[("observations", "2xx")] == 1


def test_a_trace_is_reported_once_its_root_has_arrived_and_settled(
    http: httpx.Client, source: LangfuseSource
) -> None:
    tags = tags_of("alpha", "canary")
    send_spans(http, [app_span(1, 101, T0 + 10.1, 0.5, tags, cost=0.01)])
    assert source.poll(RELEASES, None, T0 + 30).traces == ()  # no root yet

    send_roots(http, [root("alpha", "canary", 1, T0 + 10, duration=15)])  # ends T0+25
    assert source.poll(RELEASES, None, T0 + 30).traces == ()  # ended 5 s ago: settling

    [trace] = source.poll(RELEASES, None, T0 + 35).traces
    assert trace.trace_id == trace_id(1) and trace.cost_usd == pytest.approx(0.01)


def test_the_app_traced_with_the_official_sdk() -> None:
    """No proxy in front: the app's own root span carries the tags."""
    with live_emulator(sdk_emulator_settings()) as emulator:
        with langfuse_client(emulator, tracer_provider=TracerProvider()) as langfuse:
            prompt = TextPromptClient(
                Prompt_Text(
                    name="support/answer",
                    version=4,
                    prompt="Answer {{question}}",
                    config={},
                    labels=["canary"],
                    tags=[],
                )
            )
            with (
                propagate_attributes(tags=tags_of("alpha", "canary")),
                langfuse.start_as_current_observation(name="handle") as span,
            ):
                with langfuse.start_as_current_observation(
                    name="llm",
                    as_type="generation",
                    cost_details={"input": 0.003, "output": 0.001},
                    prompt=prompt,
                ):
                    pass
                sdk_trace = span.trace_id
        budget = RequestBudget(BudgetSettings(per_minute=100))
        with LangfuseSource(
            emulator.base_url,
            emulator.settings.public_key,
            emulator.settings.secret_key,
            budget=budget,
        ) as source:
            poll = source.poll({"alpha": ALPHA}, None, time.time() + 30)
    assert poll.ok
    [trace] = poll.traces
    assert (trace.trace_id, trace.release, trace.arm) == (sdk_trace, "alpha", Arm.CANARY)
    assert trace.cost_usd == pytest.approx(0.004)
    assert trace.prompt_version == 4
    assert trace.error is False


# --------------------------------------------------------------------------- scores


def test_scores_come_back_with_their_trace_ids(http: httpx.Client, source: LangfuseSource) -> None:
    now = T0 + 100
    helpful = post_score(http, "helpfulness", 0.75, at=now - 30, trace=1)
    resolved = post_score(
        http, "resolved", 1, at=now - 20, trace=2, observation=201, data_type="BOOLEAN"
    )
    post_score(http, "helpfulness", 0.5, at=now - 10, session="session-1")  # no trace
    post_score(http, "tone", "polite", at=now - 10, trace=1)  # no policy uses it
    post_score(http, "helpfulness", 0.25, at=now - 61, trace=3)  # before the lookback

    poll = source.poll(RELEASES, None, now)

    assert poll.ok
    scores = {score.score_id: score for score in poll.scores}
    assert set(scores) == {helpful, resolved}
    assert scores[helpful] == ScoreSample(
        score_id=helpful,
        trace_id=trace_id(1),
        name="helpfulness",
        value=0.75,
        at=scores[helpful].at,
    )
    assert (scores[resolved].trace_id, scores[resolved].value) == (trace_id(2), True)
    assert scores[helpful].at > 0  # when Langfuse stored it
    assert source.skipped["score_not_trace"] == 1


def test_no_score_request_when_no_policy_uses_scores(
    http: httpx.Client, source: LangfuseSource
) -> None:
    poll = source.poll({"plain": policy("plain")}, None, T0)
    assert poll.ok and poll.requests == {"observations": 1}


# --------------------------------------------------------------------------- paging


def test_paging_walks_every_page(http: httpx.Client, make_source: SourceFactory) -> None:
    send_roots(
        http, [root("alpha", "canary" if n % 2 else "baseline", n, T0 + n) for n in range(1, 9)]
    )
    tags = tags_of("alpha", "canary")
    send_spans(
        http, [app_span(n, 100 + n, T0 + n + 0.1, 0.1, tags, cost=0.001 * n) for n in range(1, 9)]
    )
    scores = [
        {
            "name": "helpfulness",
            "value": n / 200,
            "traceId": trace_id(n % 8 + 1),
            "timestamp": "2026-01-01T00:01:00Z",
        }
        for n in range(150)
    ]
    assert http.post("/api/public/scores", json=scores).status_code == 202
    source = make_source(settings=SourceSettings(page_limit=3))

    poll = source.poll(RELEASES, None, T0 + 100)

    assert poll.ok
    assert poll.requests == {"observations": 6, "scores": 2}  # 16 rows by 3; 150 by 100
    assert [trace.trace_id for trace in poll.traces] == [trace_id(n) for n in range(1, 9)]
    assert [trace.cost_usd for trace in poll.traces] == pytest.approx(
        [0.001 * n for n in range(1, 9)]
    )
    assert len(poll.scores) == 150


# --------------------------------------------------------------------------- cursors


def test_the_next_poll_reads_what_is_new_and_a_bounded_overlap(
    http: httpx.Client, source: LangfuseSource
) -> None:
    assert source.lookback_for(RELEASES) == 120  # readTimeout 10 s + 60 s + settle < 2 min
    send_roots(
        http,
        [
            root("alpha", "canary", 1, T0 + 850),  # before the first window
            root("alpha", "canary", 2, T0 + 900),
            root("alpha", "baseline", 3, T0 + 990, duration=5),  # settles after T0+1005
        ],
    )
    first = source.poll(RELEASES, None, T0 + 1000)
    assert [t.trace_id for t in first.traces] == [trace_id(2)]
    assert first.cursors == Cursors(T0 + 1000, T0 + 1000)

    send_roots(http, [root("beta", "canary", 4, T0 + 1030)])
    second = source.poll(RELEASES, first.cursors, T0 + 1060)
    # New: 3 (settled now) and 4; again, within the lookback: 2; never 1.
    assert [t.trace_id for t in second.traces] == [trace_id(n) for n in (2, 3, 4)]
    assert second.cursors == Cursors(T0 + 1060, T0 + 1060)

    third = source.poll(RELEASES, second.cursors, T0 + 1200)
    # Reads from T0+1060-120: trace 2 (T0+900) has left the overlap.
    assert [t.trace_id for t in third.traces] == [trace_id(n) for n in (3, 4)]


def test_a_long_pause_is_caught_up_slice_by_slice(
    http: httpx.Client, source: LangfuseSource
) -> None:
    send_roots(http, [root("alpha", "canary", n, T0 + 400 * n) for n in range(1, 6)])
    cursors = Cursors(T0, T0)
    now = T0 + 3600
    seen: list[str] = []
    for _ in range(3):
        poll = source.poll(RELEASES, cursors, now)
        assert poll.ok
        assert poll.cursors.observations_from == min(
            now, cursors.observations_from + DEFAULT_MAX_WINDOW
        )
        seen += [t.trace_id for t in poll.traces if t.trace_id not in seen]
        cursors = poll.cursors
    assert cursors.observations_from == T0 + 3 * DEFAULT_MAX_WINDOW
    assert seen == [trace_id(n) for n in (1, 2, 3, 4)]  # T0+400 ... T0+1600


# --------------------------------------------------------------------------- budget


def test_a_spent_budget_makes_no_request(clock: FakeClock) -> None:
    budget = RequestBudget(BudgetSettings(per_minute=2), clock=clock)
    assert budget.try_acquire() and budget.try_acquire()
    cursors = Cursors(T0, T0)
    with mock_source(refuse_requests, budget) as source:
        poll = source.poll(RELEASES, cursors, T0 + 60)
        assert (poll.ok, poll.error, poll.cursors) == (False, "request budget spent", cursors)
        assert poll.requests == {} and not source.request_counts
        assert source.retry_at == clock.now + 60
        assert source.consecutive_failures == 0  # the backend did not fail


def test_a_budget_spent_while_paging_returns_the_complete_traces_read(
    http: httpx.Client, clock: FakeClock, emulator: LiveEmulator
) -> None:
    send_roots(http, [root("alpha", "canary", n, T0 + 10 * n) for n in range(1, 7)])
    tags = tags_of("alpha", "canary")
    send_spans(
        http, [app_span(n, 100 + n, T0 + 10 * n + 0.1, 0.1, tags, cost=0.5) for n in range(1, 7)]
    )
    budget = RequestBudget(BudgetSettings(per_minute=2), clock=clock)
    with LangfuseSource(
        emulator.base_url,
        emulator.settings.public_key,
        emulator.settings.secret_key,
        budget=budget,
        settings=SourceSettings(page_limit=4),
    ) as source:
        poll = source.poll(RELEASES, Cursors(T0 + 60, T0 + 60), T0 + 100)
    assert not poll.ok and poll.error == "request budget spent"
    assert poll.cursors == Cursors(T0 + 60, T0 + 60)
    assert poll.requests == {"observations": 2}
    # Newest first, pages 1-2 hold traces 6 to 3. Trace 3's root is the last row read:
    # an app span starting just before it (clock skew) could be unread, so only 4-6 count.
    assert [t.trace_id for t in poll.traces] == [trace_id(n) for n in (4, 5, 6)]
    assert all(t.cost_usd == 0.5 for t in poll.traces)


# --------------------------------------------------------------------------- failures


def test_a_503_fails_the_poll_and_backs_off(
    http: httpx.Client, source: LangfuseSource, clock: FakeClock
) -> None:
    send_roots(http, [root("alpha", "canary", 1, T0 + 10)])
    cursors = Cursors(T0 + 50, T0 + 50)
    add_fault(http, f"GET:{OBSERVATIONS}=status:503")

    failed = source.poll(RELEASES, cursors, T0 + 100)
    assert (failed.ok, failed.cursors, failed.traces) == (False, cursors, ())
    assert failed.error is not None and failed.error.startswith("observations: HTTP 503")
    assert source.request_counts[("observations", "5xx")] == 1
    assert source.consecutive_failures == 1
    assert source.retry_at is not None and clock.now + 2.5 <= source.retry_at <= clock.now + 5

    held = source.poll(RELEASES, cursors, T0 + 100)
    assert not held.ok and held.error is not None and held.error.startswith("backing off")
    assert held.requests == {}

    clear_faults(http)
    clock.advance(5)
    healed = source.poll(RELEASES, cursors, T0 + 100)
    assert healed.ok and [t.trace_id for t in healed.traces] == [trace_id(1)]
    assert source.consecutive_failures == 0 and source.retry_at is None


def test_backoff_grows_with_consecutive_failures(clock: FakeClock, budget: RequestBudget) -> None:
    def unavailable(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"message": "down"})

    waits = []
    with mock_source(unavailable, budget) as source:
        for _ in range(10):
            poll = source.poll(RELEASES, None, T0)
            assert poll.error == "observations: HTTP 503: down"
            assert source.retry_at is not None
            waits.append(source.retry_at - clock.now)
            clock.now = source.retry_at
    assert waits[0] <= 5 and waits[3] >= 20 and all(wait <= 600 for wait in waits)
    assert waits[-1] >= 300


def test_malformed_json_fails_the_poll(http: httpx.Client, source: LangfuseSource) -> None:
    send_roots(http, [root("alpha", "canary", 1, T0 + 10)])
    add_fault(http, f"GET:{OBSERVATIONS}=malformed")
    cursors = Cursors(T0 + 50, T0 + 50)
    poll = source.poll(RELEASES, cursors, T0 + 100)
    assert (poll.ok, poll.error, poll.cursors) == (
        False,
        "observations: response is not JSON",
        cursors,
    )


def test_a_failing_score_read_keeps_the_traces(http: httpx.Client, source: LangfuseSource) -> None:
    send_roots(http, [root("alpha", "canary", 1, T0 + 10)])
    add_fault(http, "GET:/api/public/v3/scores=status:500")
    poll = source.poll(RELEASES, Cursors(T0 + 50, T0 + 50), T0 + 100)
    assert not poll.ok and poll.error is not None and poll.error.startswith("scores: HTTP 500")
    assert [t.trace_id for t in poll.traces] == [trace_id(1)]  # read completely
    assert poll.cursors == Cursors(T0 + 50, T0 + 50)


@pytest.mark.parametrize(
    "body",
    [[], {"data": {}, "meta": {}}, {"data": []}, {"data": [], "meta": {"cursor": 7}}],
)
def test_a_body_of_the_wrong_shape_fails_the_poll(body: object, budget: RequestBudget) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=body)

    with mock_source(handler, budget) as source:
        poll = source.poll(RELEASES, None, T0)
    assert not poll.ok and poll.error is not None and poll.error.startswith("observations: ")


def test_rows_with_missing_fields_are_skipped_and_counted(budget: RequestBudget) -> None:
    good = root_row("t-good")
    no_start = {**root_row("t-bad"), "startTime": None}
    bad_cost = {**root_row("t-bad-cost"), "totalCost": "lots"}
    no_root_flag = {
        key: value for key, value in root_row("t-no-flag").items() if key != "isRootObservation"
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == OBSERVATIONS:
            return page(good, no_start, bad_cost, no_root_flag, "not a row")
        return page({"id": "s1", "name": "helpfulness", "dataType": "NUMERIC", "value": "x"})

    with mock_source(handler, budget) as source:
        poll = source.poll(RELEASES, None, T0 + 60)
    assert poll.ok
    assert [t.trace_id for t in poll.traces] == ["t-good"]
    assert source.skipped == {"observation_malformed": 4, "score_malformed": 1}


@pytest.mark.parametrize(
    ("error", "status_class", "message"),
    [
        (httpx.ReadTimeout("slow"), "timeout", "observations: no answer within 10s"),
        (
            httpx.ConnectError("refused"),
            "connection",
            "observations: connection failed (ConnectError)",
        ),
    ],
)
def test_timeouts_and_connection_errors_fail_the_poll(
    error: Exception, status_class: str, message: str, budget: RequestBudget
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    cursors = Cursors(T0, T0)
    with mock_source(handler, budget) as source:
        poll = source.poll(RELEASES, cursors, T0 + 60)
        assert (poll.ok, poll.error, poll.cursors) == (False, message, cursors)
        assert source.request_counts == {("observations", status_class): 1}


def test_the_query_names_every_release_tag_and_the_window(budget: RequestBudget) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return page()

    with mock_source(handler, budget) as source:
        assert source.poll(RELEASES, Cursors(T0 + 200, T0 + 200), T0 + 260).ok
    observations, scores = seen
    query = observations.url.params
    assert query["fields"] == "core,basic,usage,trace_context,prompt"
    assert query["limit"] == "1000"
    assert query["fromStartTime"] == "2026-01-01T00:01:20.000Z"  # cursor - 2 min
    assert query["toStartTime"] == "2026-01-01T00:04:20.000Z"  # now
    conditions = json.loads(query["filter"])
    assert conditions[0] == {
        "type": "arrayOptions",
        "column": "tags",
        "operator": "any of",
        "value": ["coalmine:release:alpha", "coalmine:release:beta"],
    }
    assert {c["value"] for c in conditions[1:]} == {query["fromStartTime"], query["toStartTime"]}
    assert scores.url.params["name"] == "helpfulness,resolved"
    assert scores.url.params["fromTimestamp"] == "2026-01-01T00:02:20.000Z"  # cursor - 60 s
    assert scores.url.params["limit"] == "100"
    assert observations.headers["authorization"].startswith("Basic ")


def test_a_429_blocks_the_budget_until_retry_after() -> None:
    langfuse_clock, clock = FakeClock(), FakeClock()
    with live_emulator(EmulatorSettings(plan=Plan.HOBBY), clock=langfuse_clock) as emulator:
        with emulator.client() as http:  # someone else spends the minute's 30 requests
            for _ in range(30):
                assert http.get("/api/public/v3/scores").status_code == 200
        budget = RequestBudget(clock=clock)
        with LangfuseSource(
            emulator.base_url,
            emulator.settings.public_key,
            emulator.settings.secret_key,
            budget=budget,
            clock=clock,
        ) as source:
            cursors = Cursors(T0, T0)
            poll = source.poll(RELEASES, cursors, T0 + 60)
            assert (poll.ok, poll.cursors) == (False, cursors)
            assert poll.error == "observations: rate limited (429), retry after 60s"
            assert source.request_counts == {("observations", "429"): 1}
            assert budget.blocked == clock.now + 60
            assert source.retry_at is not None and source.retry_at >= clock.now + 60
            assert not budget.try_acquire(clock.now + 59.9)
            clock.advance(60)
            langfuse_clock.advance(60)
            assert source.poll(RELEASES, cursors, T0 + 60).ok


def test_lookback_covers_the_longest_read_timeout(source: LangfuseSource) -> None:
    slow = policy("slow", read_timeout="5m")
    assert source.lookback_for({}) == 120
    assert source.lookback_for({"alpha": ALPHA, "slow": slow}) == 300 + 60 + 10


def test_the_source_hides_its_keys(source: LangfuseSource) -> None:
    assert "sk-lf" not in repr(source)


# --------------------------------------------------------------------------- static


def test_static_source_answers_queued_polls_then_empty_ones() -> None:
    queued = Poll(ok=False, cursors=Cursors(1.0, 1.0), error="down")
    source: SampleSource = StaticSource([queued])
    assert source.poll(RELEASES, None, 5.0) is queued
    assert source.poll(RELEASES, Cursors(1.0, 1.0), 6.0) == Poll(ok=True, cursors=Cursors(6.0, 6.0))
    assert isinstance(source, StaticSource)
    assert [call.releases for call in source.calls] == [("alpha", "beta")] * 2
    source.close()
    with pytest.raises(RuntimeError):
        source.poll(RELEASES, None, 7.0)
