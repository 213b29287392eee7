"""Prompt labels: read and moved through the emulator with read-back, errors split into
temporary and permanent ones, and the in-memory stand-in for tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from coalmine.emulator.settings import EmulatorSettings, Plan
from controller.errors import LabelMoveError, LabelPermanentError, LabelTemporaryError
from controller.labels import (
    LangfusePromptLabels,
    PromptLabels,
    StaticPromptLabels,
    prompt_path,
)
from controller.source.budget import BudgetSettings, RequestBudget
from tests.controller.source_support import (
    PROMPTS,
    FakeClock,
    LiveEmulator,
    add_fault,
    live_emulator,
    refuse_requests,
)

NAME = "team/greeting"


@pytest.fixture
def budget(clock: FakeClock) -> RequestBudget:
    return RequestBudget(BudgetSettings(per_minute=100), clock=clock)


@pytest.fixture
def labels(emulator: LiveEmulator, budget: RequestBudget) -> Iterator[LangfusePromptLabels]:
    with LangfusePromptLabels(
        emulator.base_url + "/",
        emulator.settings.public_key,
        emulator.settings.secret_key,
        budget=budget,
    ) as client:
        yield client


@pytest.fixture
def versions(http: httpx.Client) -> None:
    """Version 1 in production, 2 on canary, 3 with no label of its own."""
    for labels in (["production"], ["canary"], []):
        response = http.post(PROMPTS, json={"name": NAME, "prompt": "Hi", "labels": labels})
        assert response.status_code == 201, response.text


def mock_labels(
    handler: Callable[[httpx.Request], httpx.Response], budget: RequestBudget
) -> LangfusePromptLabels:
    return LangfusePromptLabels(
        "http://langfuse.invalid",
        "pk-lf-test",
        "sk-lf-test",
        budget=budget,
        transport=httpx.MockTransport(handler),
    )


@pytest.mark.usefixtures("versions")
def test_where_labels_sit(labels: LangfusePromptLabels) -> None:
    assert labels.version_of(NAME, "production") == 1
    assert labels.version_of(NAME, "canary") == 2
    assert labels.version_of(NAME, "latest") == 3
    assert labels.version_of(NAME, "staging") is None
    assert labels.version_of("no-such-prompt", "production") is None
    assert labels.request_counts[("prompt_get", "2xx")] == 3
    assert labels.request_counts[("prompt_get", "4xx")] == 2


@pytest.mark.usefixtures("versions")
def test_a_move_is_read_back(labels: LangfusePromptLabels, budget: RequestBudget) -> None:
    labels.move(NAME, "production", 2)  # promote
    assert labels.version_of(NAME, "production") == 2
    labels.move(NAME, "canary", 2)  # park the canary on the stable version
    labels.move(NAME, "canary", 2)  # again: nothing changes
    assert labels.version_of(NAME, "canary") == 2
    labels.move(NAME, "staging", 3)  # a label no version held yet
    assert labels.version_of(NAME, "staging") == 3
    assert labels.request_counts[("prompt_label_move", "2xx")] == 4
    assert budget.remaining() == 100 - 4  # reads are in the unlimited prompts bucket


@pytest.mark.usefixtures("versions")
def test_moving_to_a_missing_version_is_permanent(labels: LangfusePromptLabels) -> None:
    with pytest.raises(LabelPermanentError, match="has no version 9"):
        labels.move(NAME, "production", 9)
    with pytest.raises(LabelPermanentError, match="has no version 1"):
        labels.move("no-such-prompt", "production", 1)
    with pytest.raises(LabelPermanentError, match="latest"):
        labels.move(NAME, "latest", 1)
    assert labels.version_of(NAME, "production") == 1


@pytest.mark.usefixtures("versions")
@pytest.mark.parametrize(
    ("status", "error"),
    [
        pytest.param(408, LabelTemporaryError, id="408"),
        pytest.param(502, LabelTemporaryError, id="502"),
        pytest.param(501, LabelPermanentError, id="501"),
        pytest.param(400, LabelPermanentError, id="400"),
    ],
)
def test_a_failed_move_is_temporary_or_permanent_as_its_status_says(
    labels: LangfusePromptLabels, http: httpx.Client, status: int, error: type[Exception]
) -> None:
    add_fault(http, f"PATCH:/api/public/v2/prompts=status:{status},times:1")
    with pytest.raises(error, match=f"HTTP {status}"):
        labels.move(NAME, "production", 2)


@pytest.mark.usefixtures("versions")
def test_an_unavailable_langfuse_is_temporary(
    labels: LangfusePromptLabels, http: httpx.Client
) -> None:
    add_fault(http, "PATCH:/api/public/v2/prompts=status:503,times:1")
    with pytest.raises(LabelTemporaryError, match="HTTP 503"):
        labels.move(NAME, "production", 2)
    add_fault(http, "GET:/api/public/v2/prompts=malformed,times:1")
    with pytest.raises(LabelTemporaryError, match="not JSON"):
        labels.version_of(NAME, "production")
    labels.move(NAME, "production", 2)  # the faults are spent
    assert labels.version_of(NAME, "production") == 2


def test_wrong_keys_are_permanent(emulator: LiveEmulator, budget: RequestBudget) -> None:
    with LangfusePromptLabels(
        emulator.base_url, emulator.settings.public_key, "sk-lf-wrong", budget=budget
    ) as labels:
        with pytest.raises(LabelPermanentError, match="HTTP 401"):
            labels.version_of(NAME, "production")
        with pytest.raises(LabelPermanentError, match="HTTP 401"):
            labels.move(NAME, "production", 1)
    assert "sk-lf-wrong" not in repr(labels)


def test_a_429_blocks_the_budget() -> None:
    langfuse_clock, clock = FakeClock(), FakeClock()
    with live_emulator(EmulatorSettings(plan=Plan.HOBBY), clock=langfuse_clock) as emulator:
        with emulator.client() as http:
            http.post(PROMPTS, json={"name": NAME, "prompt": "Hi", "labels": ["production"]})
            for _ in range(30):  # the minute's General API requests, spent by someone else
                assert http.get("/api/public/v3/scores").status_code == 200
        budget = RequestBudget(clock=clock)
        with LangfusePromptLabels(
            emulator.base_url,
            emulator.settings.public_key,
            emulator.settings.secret_key,
            budget=budget,
        ) as labels:
            with pytest.raises(LabelTemporaryError, match=r"rate limited \(429\)") as limited:
                labels.move(NAME, "canary", 1)
            assert limited.value.delay == 60
            assert budget.blocked == clock.now + 60
            with pytest.raises(LabelTemporaryError, match="budget spent"):
                labels.move(NAME, "canary", 1)
            assert labels.version_of(NAME, "production") == 1  # prompts: no limit
            clock.advance(60)
            langfuse_clock.advance(60)
            labels.move(NAME, "canary", 1)
            assert labels.version_of(NAME, "canary") == 1


def test_a_spent_budget_makes_no_request(clock: FakeClock) -> None:
    budget = RequestBudget(BudgetSettings(per_minute=1), clock=clock)
    assert budget.try_acquire()
    with mock_labels(refuse_requests, budget) as labels, pytest.raises(LabelTemporaryError):
        labels.move(NAME, "production", 2)


def test_a_read_back_that_disagrees_raises(budget: RequestBudget) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "PATCH":
            return httpx.Response(200, json={"name": NAME, "version": 2, "labels": ["production"]})
        return httpx.Response(200, json={"name": NAME, "version": 5, "labels": ["production"]})

    with mock_labels(handler, budget) as labels, pytest.raises(LabelMoveError) as raised:
        labels.move(NAME, "production", 2)
    assert (raised.value.expected, raised.value.found) == (2, 5)
    assert isinstance(raised.value, LabelTemporaryError)  # reconciling will move it again
    patch, get = seen
    assert patch.url.raw_path == b"/api/public/v2/prompts/team%2Fgreeting/versions/2"
    assert patch.read() == b'{"newLabels":["production"]}'
    assert (
        get.url.raw_path == b"/api/public/v2/prompts/team%2Fgreeting?label=production&resolve=false"
    )


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (httpx.ReadTimeout("slow"), "no answer within 10s"),
        (httpx.ConnectError("refused"), r"connection failed \(ConnectError\)"),
    ],
)
def test_timeouts_and_connection_errors_are_temporary(
    error: Exception, message: str, budget: RequestBudget
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    with mock_labels(handler, budget) as labels:
        with pytest.raises(LabelTemporaryError, match=message):
            labels.version_of(NAME, "production")
        with pytest.raises(LabelTemporaryError, match=message):
            labels.move(NAME, "production", 1)


def test_an_answer_without_a_version_is_temporary(budget: RequestBudget) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"name": NAME, "version": "2"})

    with (
        mock_labels(handler, budget) as labels,
        pytest.raises(LabelTemporaryError, match="version"),
    ):
        labels.version_of(NAME, "production")


def test_prompt_names_are_one_path_segment() -> None:
    assert prompt_path("team/greeting v2") == "team%2Fgreeting%20v2"


# --------------------------------------------------------------------------- static


def test_static_labels_follow_langfuse_rules() -> None:
    labels: PromptLabels = StaticPromptLabels(
        {"greeting": {"production": 1, "canary": 2}}, versions={"greeting": [3]}
    )
    assert isinstance(labels, StaticPromptLabels)
    assert labels.version_of("greeting", "canary") == 2
    assert labels.version_of("greeting", "staging") is None
    assert labels.version_of("other", "production") is None
    labels.move("greeting", "production", 2)
    assert labels.version_of("greeting", "production") == 2
    assert labels.moves == [("greeting", "production", 2)]
    with pytest.raises(LabelPermanentError):
        labels.move("greeting", "production", 7)
    with pytest.raises(LabelPermanentError):
        labels.move("other", "production", 1)
    with pytest.raises(LabelPermanentError):
        labels.move("greeting", "latest", 1)
    labels.add_version("greeting", 4, ["canary"])
    assert labels.version_of("greeting", "canary") == 4


def test_static_labels_fail_on_request() -> None:
    labels = StaticPromptLabels({"greeting": {"production": 1}})
    labels.fail_next(LabelTemporaryError("down"), LabelPermanentError("gone"))
    with pytest.raises(LabelTemporaryError, match="down"):
        labels.version_of("greeting", "production")
    with pytest.raises(LabelPermanentError, match="gone"):
        labels.move("greeting", "production", 1)
    assert labels.version_of("greeting", "production") == 1
    assert labels.moves == []
