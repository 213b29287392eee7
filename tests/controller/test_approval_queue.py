"""Approval through a Langfuse annotation queue, with the controller loop and a live
emulator: the canary's traces are added to the queue once, a reviewer's score approves
or rejects the rollout, and a score written through the API never does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controller.source.budget import BudgetSettings, RequestBudget
from controller.source.review_queue import ReviewQueue
from policies import load_policy_text
from policies.domain import Phase
from tests.controller.release_rig import MINUTE, POLICY, RELEASE, Rig, make_rig
from tests.emulator.emulator_support import LiveEmulator

QUEUE = "release-reviews"
REVIEWER = "user-ada"


def _post(http: httpx.Client, path: str, body: dict[str, object]) -> dict[str, object]:
    response = http.post(path, json=body)
    assert response.status_code in (200, 201), response.text
    answer: dict[str, object] = response.json()
    return answer


@pytest.fixture
def config_id(http: httpx.Client) -> str:
    config = _post(
        http,
        "/api/public/score-configs",
        {
            "name": "release approval",
            "dataType": "CATEGORICAL",
            "categories": [{"value": 1, "label": "ship"}, {"value": 0, "label": "stop"}],
        },
    )
    _post(http, "/api/public/annotation-queues", {"name": QUEUE, "scoreConfigIds": [config["id"]]})
    _post(http, "/emulator/members", {"userId": REVIEWER, "role": "MEMBER"})
    return str(config["id"])


@pytest.fixture
def rig(tmp_path: Path, emulator: LiveEmulator, config_id: str) -> Iterator[Rig]:
    rig = make_rig(tmp_path)
    # reviewers score in real time: the rollout waits from a few hours ago
    rig.now = float(int(time.time() - 8 * 3600) // 60 * 60)
    rig.policies[RELEASE] = load_policy_text(
        POLICY
        + "approval:\n  timeout: 24h\n  queue: {name: "
        + QUEUE
        + ", scoreConfigId: "
        + config_id
        + ", approveValues: [ship], rejectValues: [stop], traces: 5}\n",
        "support.yaml",
    )
    budget = RequestBudget(BudgetSettings(per_minute=1000))
    rig.controller.reviews = ReviewQueue(
        emulator.base_url,
        emulator.settings.public_key,
        emulator.settings.secret_key,
        queue_budget=budget,
        score_budget=budget,
    )
    yield rig
    rig.controller.reviews.close()
    rig.close()


def _waiting(rig: Rig) -> tuple[str, ...]:
    rig.run(400, until=Phase.APPROVAL)
    release = rig.release()
    assert release.phase is Phase.APPROVAL, release
    assert release.review_queue is not None
    assert len(release.review_traces) == 5
    return release.review_traces


def _queued(http: httpx.Client, queue_id: str) -> list[str]:
    response = http.get(f"/api/public/annotation-queues/{queue_id}/items")
    assert response.status_code == 200, response.text
    return sorted(item["objectId"] for item in response.json()["data"])


def _score(http: httpx.Client, config_id: str, queue_id: str, trace: str, value: str) -> None:
    _post(
        http,
        "/emulator/annotation-scores",
        {
            "authorUserId": REVIEWER,
            "configId": config_id,
            "traceId": trace,
            "queueId": queue_id,
            "value": value,
        },
    )


def test_the_canary_traces_are_queued_once_and_a_review_approves(
    rig: Rig, http: httpx.Client, config_id: str
) -> None:
    traces = _waiting(rig)
    queue_id = rig.release().review_queue
    assert queue_id is not None
    assert _queued(http, queue_id) == sorted(traces)
    rig.run(3)
    assert rig.release().phase is Phase.APPROVAL
    assert _queued(http, queue_id) == sorted(traces)  # not added again
    _score(http, config_id, queue_id, traces[0], "ship")
    rig.run(2, until=Phase.PROMOTED)
    assert rig.release().phase is Phase.PROMOTED
    last = rig.state.decisions(RELEASE)[-1]
    assert (last.decision, last.actor) == ("approve", f"langfuse-review ({REVIEWER})")
    moves = [(m.label, m.to_version, m.actor) for m in rig.state.label_moves(RELEASE)]
    assert ("production", 4, f"langfuse-review ({REVIEWER})") in moves


def test_a_reject_rolls_back_and_wins_over_an_approval(
    rig: Rig, http: httpx.Client, config_id: str
) -> None:
    traces = _waiting(rig)
    queue_id = rig.release().review_queue
    assert queue_id is not None
    _score(http, config_id, queue_id, traces[0], "ship")
    _score(http, config_id, queue_id, traces[1], "stop")
    rig.run(2, until=Phase.ROLLED_BACK)
    release = rig.release()
    assert release.phase is Phase.ROLLED_BACK
    assert "rejected in review queue" in release.reason
    assert rig.labels.positions["production"] == 3


def test_a_score_written_through_the_api_approves_nothing(
    rig: Rig, http: httpx.Client, config_id: str
) -> None:
    traces = _waiting(rig)
    queue_id = rig.release().review_queue
    _post(
        http,
        "/api/public/scores",
        {
            "traceId": traces[0],
            "name": "release approval",
            "configId": config_id,
            "queueId": queue_id,
            "source": "ANNOTATION",
            "dataType": "CATEGORICAL",
            "value": "ship",
        },
    )
    rig.run(5)
    assert rig.release().phase is Phase.APPROVAL
    assert rig.now - (rig.release().approval_since or 0.0) == pytest.approx(5 * MINUTE)
