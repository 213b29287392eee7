"""The annotation-queue client against a live emulator: finding the queue, adding
items once, and reading reviewers' verdicts (annotation scores with an author) while
leaving out API-written scores, other configs and scores from before ``since``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest

from coalmine.emulator.settings import EmulatorSettings, Plan
from coalmine.shared.errors import PermanentError, TemporaryError
from controller.source.budget import BudgetSettings, RequestBudget
from controller.source.review_queue import (
    MAX_ITEMS_PER_CALL,
    Ignored,
    Review,
    ReviewQueue,
    Verdict,
    choose_traces,
)
from tests.controller.source_support import add_fault, live_emulator, refuse_requests
from tests.emulator.emulator_support import LiveEmulator

TRACE_A = "a" * 32
TRACE_B = "b" * 32
TRACE_C = "c" * 32
APPROVAL = "release approval"


def _budget() -> RequestBudget:
    return RequestBudget(BudgetSettings(per_minute=1000))


def _client(emulator: LiveEmulator, **options: object) -> ReviewQueue:
    return ReviewQueue(
        emulator.base_url,
        emulator.settings.public_key,
        emulator.settings.secret_key,
        queue_budget=_budget(),
        score_budget=_budget(),
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
def queue(emulator: LiveEmulator) -> Iterator[ReviewQueue]:
    with _client(emulator) as client:
        yield client


def _config(http: httpx.Client, name: str = APPROVAL, data_type: str = "CATEGORICAL") -> str:
    body: dict[str, object] = {"name": name, "dataType": data_type}
    if data_type == "CATEGORICAL":
        body["categories"] = [
            {"value": 1, "label": "approve"},
            {"value": 0, "label": "reject"},
            {"value": 2, "label": "maybe"},
        ]
    response = http.post("/api/public/score-configs", json=body)
    assert response.status_code == 200, response.text
    config_id: str = response.json()["id"]
    return config_id


def _queue(http: httpx.Client, name: str, *config_ids: str) -> str:
    response = http.post(
        "/api/public/annotation-queues", json={"name": name, "scoreConfigIds": list(config_ids)}
    )
    assert response.status_code == 200, response.text
    queue_id: str = response.json()["id"]
    return queue_id


def _members(http: httpx.Client, *users: str) -> None:
    for user in users:
        response = http.post("/emulator/members", json={"userId": user, "role": "MEMBER"})
        assert response.status_code == 201, response.text


def _review(
    http: httpx.Client, queue_id: str, config_id: str, trace: str, user: str, value: object
) -> dict[str, object]:
    response = http.post(
        "/emulator/annotation-scores",
        json={
            "authorUserId": user,
            "configId": config_id,
            "traceId": trace,
            "queueId": queue_id,
            "value": value,
        },
    )
    assert response.status_code == 200, response.text
    score: dict[str, object] = response.json()
    return score


def _seconds(stamp: object) -> float:
    assert isinstance(stamp, str)
    return datetime.fromisoformat(stamp).timestamp()


# ----------------------------------------------------------------------------- the queue


def test_queue_id_finds_the_queue_by_name(http: httpx.Client, queue: ReviewQueue) -> None:
    config_id = _config(http)
    other = _queue(http, "other", config_id)
    releases = _queue(http, "releases", config_id)
    assert queue.queue_id("releases") == releases
    assert queue.queue_id("other") == other


def test_a_missing_queue_is_a_permanent_error_naming_it(
    http: httpx.Client, queue: ReviewQueue
) -> None:
    _queue(http, "other", _config(http))
    with pytest.raises(PermanentError, match="no annotation queue named 'releases'"):
        queue.queue_id("releases")


def test_items_are_added_once(http: httpx.Client, queue: ReviewQueue) -> None:
    queue_id = _queue(http, "releases", _config(http))
    first = queue.add_items(queue_id, [TRACE_A, TRACE_B, TRACE_A])
    assert len(first) == 2 and len(set(first)) == 2
    again = queue.add_items(queue_id, [TRACE_C, TRACE_B, TRACE_A])
    assert again[1:] == [first[1], first[0]]  # the items already there, not new ones
    assert queue.add_items(queue_id, []) == []
    listed = http.get(f"/api/public/annotation-queues/{queue_id}/items").json()["data"]
    assert sorted((item["objectId"], item["objectType"]) for item in listed) == [
        (TRACE_A, "TRACE"),
        (TRACE_B, "TRACE"),
        (TRACE_C, "TRACE"),
    ]
    assert {item["id"] for item in listed} == set(first) | set(again)
    assert queue.request_counts[("queue_item_add", "2xx")] == 3


def test_adding_items_to_a_missing_queue_is_permanent(queue: ReviewQueue) -> None:
    with pytest.raises(PermanentError, match="HTTP 404"):
        queue.add_items("no-such-queue", [TRACE_A])


def test_items_per_call_are_bounded() -> None:
    client = ReviewQueue(
        "http://langfuse.invalid",
        "pk",
        "sk",
        queue_budget=_budget(),
        score_budget=_budget(),
        transport=httpx.MockTransport(refuse_requests),
    )
    traces = [f"{number:032x}" for number in range(MAX_ITEMS_PER_CALL + 1)]
    with client, pytest.raises(ValueError, match=f"at most {MAX_ITEMS_PER_CALL}"):
        client.add_items("queue", traces)


# ----------------------------------------------------------------------------- verdicts


def test_reviewers_verdicts_are_read_and_api_scores_ignored(
    http: httpx.Client, queue: ReviewQueue
) -> None:
    config_id = _config(http)
    other_config = _config(http, "helpfulness", "BOOLEAN")
    queue_id = _queue(http, "releases", config_id, other_config)
    _members(http, "ada", "bob")
    since = time.time() - 60
    approved = _review(http, queue_id, config_id, TRACE_A, "ada", "approve")
    rejected = _review(http, queue_id, config_id, TRACE_B, "bob", "reject")
    _review(http, queue_id, other_config, TRACE_C, "ada", True)  # another config
    undecided = _review(http, queue_id, config_id, TRACE_C, "bob", "maybe")
    # Anyone with an API key can write an ANNOTATION score in the queue: no author.
    api = http.post(
        "/api/public/scores",
        json={
            "name": APPROVAL,
            "value": "approve",
            "dataType": "CATEGORICAL",
            "traceId": TRACE_C,
            "configId": config_id,
            "queueId": queue_id,
            "source": "ANNOTATION",
        },
    )
    assert api.status_code == 200, api.text

    found = queue.verdicts(queue_id, config_id, [TRACE_A, TRACE_B, TRACE_C], since)

    assert sorted(found.reviews, key=lambda review: review.trace_id) == [
        Review(
            TRACE_A, "ada", Verdict.APPROVE, _seconds(approved["timestamp"]), str(approved["id"])
        ),
        Review(
            TRACE_B, "bob", Verdict.REJECT, _seconds(rejected["timestamp"]), str(rejected["id"])
        ),
    ]
    assert sorted(found.ignored, key=lambda ignored: ignored.reason) == [
        Ignored(api.json()["id"], TRACE_C, "no_author"),
        Ignored(str(undecided["id"]), TRACE_C, "unmapped_value"),
    ]
    assert queue.request_counts[("scores", "2xx")] == 1


def test_boolean_configs_approve_when_true(http: httpx.Client, queue: ReviewQueue) -> None:
    config_id = _config(http, "ship it", "BOOLEAN")
    queue_id = _queue(http, "releases", config_id)
    _members(http, "ada")
    since = time.time() - 60
    _review(http, queue_id, config_id, TRACE_A, "ada", True)
    _review(http, queue_id, config_id, TRACE_B, "ada", False)
    found = queue.verdicts(queue_id, config_id, [TRACE_A, TRACE_B], since)
    assert {review.trace_id: review.verdict for review in found.reviews} == {
        TRACE_A: Verdict.APPROVE,
        TRACE_B: Verdict.REJECT,
    }
    assert found.ignored == ()


def test_verdicts_before_since_are_left_out_until_given_again(
    http: httpx.Client, queue: ReviewQueue
) -> None:
    config_id = _config(http)
    queue_id = _queue(http, "releases", config_id)
    _members(http, "ada", "bob")
    old = _review(http, queue_id, config_id, TRACE_A, "ada", "approve")
    since = _seconds(old["timestamp"]) + 0.001
    while time.time() < since + 0.002:  # the next scores are stamped after since
        time.sleep(0.001)
    fresh = _review(http, queue_id, config_id, TRACE_B, "bob", "reject")

    found = queue.verdicts(queue_id, config_id, [TRACE_A, TRACE_B], since)
    assert [(review.trace_id, review.author) for review in found.reviews] == [(TRACE_B, "bob")]
    assert found.reviews[0].score_id == fresh["id"]

    # A reviewer who changes a verdict overwrites the score: it is a decision made now.
    changed = _review(http, queue_id, config_id, TRACE_A, "bob", "reject")
    assert changed["id"] == old["id"]
    found = queue.verdicts(queue_id, config_id, [TRACE_A, TRACE_B], since)
    assert sorted((review.trace_id, review.author, review.verdict) for review in found.reviews) == [
        (TRACE_A, "bob", Verdict.REJECT),
        (TRACE_B, "bob", Verdict.REJECT),
    ]


def test_only_the_traces_asked_for_are_read(http: httpx.Client, queue: ReviewQueue) -> None:
    config_id = _config(http)
    queue_id = _queue(http, "releases", config_id)
    _members(http, "ada")
    since = time.time() - 60
    _review(http, queue_id, config_id, TRACE_A, "ada", "approve")
    _review(http, queue_id, config_id, TRACE_B, "ada", "approve")
    found = queue.verdicts(queue_id, config_id, [TRACE_B], since)
    assert [review.trace_id for review in found.reviews] == [TRACE_B]
    assert queue.verdicts(queue_id, config_id, [], since).reviews == ()


def test_labels_cannot_both_approve_and_reject(queue: ReviewQueue) -> None:
    with pytest.raises(ValueError, match="both approve and reject: ok"):
        queue.verdicts("q", "c", [TRACE_A], 0.0, approve=("ok",), reject=("ok", "no"))


# ----------------------------------------------------------------------------- trouble


def test_server_errors_are_temporary(
    http: httpx.Client, emulator: LiveEmulator, queue: ReviewQueue
) -> None:
    config_id = _config(http)
    queue_id = _queue(http, "releases", config_id)
    add_fault(http, "GET:/api/public/v3/scores=status:503,times:1")
    with pytest.raises(TemporaryError, match="HTTP 503"):
        queue.verdicts(queue_id, config_id, [TRACE_A], 0.0)
    add_fault(http, "POST:/api/public/annotation-queues=status:500,times:1")
    with pytest.raises(TemporaryError, match="HTTP 500"):
        queue.add_items(queue_id, [TRACE_A])
    add_fault(http, "GET:/api/public/annotation-queues=malformed,times:1")
    with pytest.raises(TemporaryError, match="not JSON"):
        queue.queue_id("releases")
    assert queue.queue_id("releases") == queue_id  # the faults are spent
    assert queue.request_counts[("scores", "5xx")] == 1


def test_rate_limits_are_temporary_and_hold_the_budget(
    http: httpx.Client, queue: ReviewQueue
) -> None:
    config_id = _config(http)
    queue_id = _queue(http, "releases", config_id)
    add_fault(http, "GET:/api/public/v3/scores=status:429,times:1")
    with pytest.raises(TemporaryError, match="rate limited") as raised:
        queue.verdicts(queue_id, config_id, [TRACE_A], 0.0)
    assert raised.value.delay == 60.0  # no Retry-After: a minute, Langfuse's window
    assert queue.score_budget.blocked is not None
    with pytest.raises(TemporaryError, match="request budget spent"):
        queue.verdicts(queue_id, config_id, [TRACE_A], 0.0)
    assert queue.queue_budget.blocked is None  # the queue routes are another bucket
    assert queue.queue_id("releases") == queue_id


def test_a_hobby_rate_limit_holds_for_its_retry_after() -> None:
    with live_emulator(EmulatorSettings(plan=Plan.HOBBY)) as emulator, emulator.client() as http:
        config_id = _config(http)
        queue_id = _queue(http, "releases", config_id)
        while http.get("/api/public/v3/scores").status_code != 429:
            pass  # the General bucket (30 a minute) is spent
        with _client(emulator) as queue, pytest.raises(TemporaryError) as raised:
            queue.verdicts(queue_id, config_id, [TRACE_A], 0.0)
        assert raised.value.delay is not None and 0 < raised.value.delay <= 60


def test_bad_keys_are_permanent(emulator: LiveEmulator) -> None:
    with (
        ReviewQueue(
            emulator.base_url,
            emulator.settings.public_key,
            "sk-lf-wrong",
            queue_budget=_budget(),
            score_budget=_budget(),
        ) as queue,
        pytest.raises(PermanentError, match="HTTP 401"),
    ):
        queue.queue_id("releases")


def test_no_answer_is_temporary(http: httpx.Client, emulator: LiveEmulator) -> None:
    add_fault(http, "GET:/api/public/annotation-queues=timeout:2s,times:1")
    with _client(emulator, timeout=0.2) as queue, pytest.raises(TemporaryError, match="no answer"):
        queue.queue_id("releases")


# ----------------------------------------------------------------------------- choosing


def test_choose_traces_takes_the_worst_then_a_seeded_sample() -> None:
    candidates = [f"t{number:02d}" for number in range(20)]
    chosen = choose_traces(["t03", "t07", "t03"], candidates, 6, seed="release-1")
    assert chosen[:2] == ["t03", "t07"]
    assert len(chosen) == len(set(chosen)) == 6
    assert set(chosen) <= set(candidates)
    assert chosen == choose_traces(["t03", "t07"], reversed(candidates), 6, seed="release-1")
    others = {tuple(choose_traces([], candidates, 4, seed=seed)) for seed in range(10)}
    assert len(others) > 1  # the seed picks the sample


def test_choose_traces_is_bounded_by_k_and_the_candidates() -> None:
    assert choose_traces(["w1", "w2", "w3"], ["c1"], 2, seed=1) == ["w1", "w2"]
    assert sorted(choose_traces(["w1"], ["c1", "c2", "w1"], 10, seed=1)) == ["c1", "c2", "w1"]
    assert choose_traces([], [], 3, seed=1) == []
    assert choose_traces(["w1"], ["c1"], 0, seed=1) == []
    with pytest.raises(ValueError, match="k must be at least 0"):
        choose_traces([], ["c1"], -1, seed=1)
