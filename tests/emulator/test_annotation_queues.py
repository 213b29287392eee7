"""Annotation queues, items and assignments through the official SDK; reviewer actions
(annotation scores, "Mark Completed") through the emulator's admin routes."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from langfuse import Langfuse
from langfuse.api import ConfigCategory
from langfuse.api.core.api_error import ApiError

from coalmine.emulator.settings import EmulatorSettings, Plan
from tests.emulator.emulator_support import (
    LiveEmulator,
    langfuse_client,
    sdk_emulator_settings,
    start_emulator,
)

emulator_settings = pytest.fixture(name="emulator_settings")(sdk_emulator_settings)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def langfuse(emulator: LiveEmulator) -> Iterator[Langfuse]:
    with langfuse_client(emulator) as client:
        yield client


def _approval_config(langfuse: Langfuse) -> str:
    config = langfuse.api.score_configs.create(
        name="release approval",
        data_type="CATEGORICAL",
        categories=[
            ConfigCategory(value=1, label="approve"),
            ConfigCategory(value=0, label="reject"),
        ],
    )
    return str(config.id)


def test_queue_and_items_round_trip(langfuse: Langfuse) -> None:
    queues = langfuse.api.annotation_queues
    config_id = _approval_config(langfuse)
    queue = queues.create_queue(
        name="releases", description="approvals", score_config_ids=[config_id]
    )
    assert queue.score_config_ids == [config_id]
    assert queues.get_queue(queue.id).name == "releases"
    assert [q.id for q in queues.list_queues().data] == [queue.id]

    first = queues.create_queue_item(queue.id, object_id=TRACE, object_type="TRACE")
    again = queues.create_queue_item(queue.id, object_id=TRACE, object_type="TRACE")
    assert first.id != again.id  # no de-duplication
    assert (first.status, first.completed_at) == ("PENDING", None)
    listed = queues.list_queue_items(queue.id)
    assert [item.id for item in listed.data] == [again.id, first.id]  # newest first

    done = queues.update_queue_item(queue.id, first.id, status="COMPLETED")
    assert done.status == "COMPLETED" and done.completed_at is not None
    back = queues.update_queue_item(queue.id, first.id, status="PENDING")
    assert (back.status, back.completed_at) == ("PENDING", done.completed_at)
    assert queues.list_queue_items(queue.id, status="COMPLETED").data == []
    assert queues.get_queue_item(queue.id, again.id).object_id == TRACE

    assert queues.delete_queue_item(queue.id, again.id).success
    assert [item.id for item in queues.list_queue_items(queue.id).data] == [first.id]


def test_queue_errors(langfuse: Langfuse, client: httpx.Client) -> None:
    config_id = _approval_config(langfuse)
    client.post("/api/public/annotation-queues", json={"name": "q", "scoreConfigIds": [config_id]})
    duplicate = client.post(
        "/api/public/annotation-queues", json={"name": "q", "scoreConfigIds": [config_id]}
    )
    assert duplicate.status_code == 400
    assert duplicate.json()["message"] == "A queue with this name already exists"
    no_configs = client.post(
        "/api/public/annotation-queues", json={"name": "r", "scoreConfigIds": []}
    )
    assert no_configs.status_code == 400
    unknown_config = client.post(
        "/api/public/annotation-queues", json={"name": "r", "scoreConfigIds": ["nope"]}
    )
    assert unknown_config.status_code == 400
    assert client.get("/api/public/annotation-queues/nope").status_code == 404
    with pytest.raises(ApiError) as raised:
        langfuse.api.annotation_queues.get_queue_item("nope", "nope")
    assert raised.value.status_code == 404


def test_hobby_projects_have_one_queue() -> None:
    live = start_emulator(EmulatorSettings(plan=Plan.HOBBY))
    try:
        with live.client() as http:
            config = http.post(
                "/api/public/score-configs", json={"name": "ok", "dataType": "BOOLEAN"}
            ).json()
            body = {"name": "first", "scoreConfigIds": [config["id"]]}
            assert http.post("/api/public/annotation-queues", json=body).status_code == 200
            second = http.post("/api/public/annotation-queues", json={**body, "name": "second"})
            assert second.status_code == 405
            assert second.json()["message"] == (
                "Maximum number of annotation queues reached on Hobby plan"
            )
    finally:
        live.stop()
    assert not live.checked.violations, live.checked.violations


def test_assignments_need_a_member(langfuse: Langfuse, client: httpx.Client) -> None:
    queues = langfuse.api.annotation_queues
    queue = queues.create_queue(name="q", score_config_ids=[_approval_config(langfuse)])
    with pytest.raises(ApiError) as raised:
        queues.create_queue_assignment(queue.id, user_id="ada")
    assert raised.value.status_code == 404
    client.post("/emulator/members", json={"userId": "ada", "role": "MEMBER"})
    assigned = queues.create_queue_assignment(queue.id, user_id="ada")
    assert (assigned.user_id, assigned.queue_id) == ("ada", queue.id)
    assert queues.create_queue_assignment(queue.id, user_id="ada").user_id == "ada"  # upsert
    assert queues.delete_queue_assignment(queue.id, user_id="ada").success
    assert queues.delete_queue_assignment(queue.id, user_id="ada").success  # idempotent


def test_reviewer_scores_carry_the_author_and_the_last_one_wins(
    langfuse: Langfuse, client: httpx.Client
) -> None:
    config_id = _approval_config(langfuse)
    queue = langfuse.api.annotation_queues.create_queue(name="q", score_config_ids=[config_id])
    for user, role in (("ada", "MEMBER"), ("bob", "ADMIN"), ("vic", "VIEWER")):
        client.post("/emulator/members", json={"userId": user, "role": role})
    # A score written through the API never has an author.
    langfuse.create_score(
        name="release approval",
        value="approve",
        trace_id=TRACE,
        data_type="CATEGORICAL",
        config_id=config_id,
    )
    langfuse.flush()
    review = {"configId": config_id, "traceId": TRACE, "queueId": queue.id}
    first = client.post(
        "/emulator/annotation-scores", json={**review, "authorUserId": "ada", "value": "approve"}
    )
    assert first.status_code == 200, first.text
    second = client.post(
        "/emulator/annotation-scores", json={**review, "authorUserId": "bob", "value": "reject"}
    )
    assert second.json()["id"] == first.json()["id"]  # overwritten in place
    viewer = client.post(
        "/emulator/annotation-scores", json={**review, "authorUserId": "vic", "value": "approve"}
    )
    assert viewer.status_code == 403
    off_config = client.post(
        "/emulator/annotation-scores", json={**review, "authorUserId": "ada", "value": "maybe"}
    )
    assert off_config.status_code == 400

    page = langfuse.api.scores.get_many(
        trace_id=TRACE, queue_id=queue.id, source="ANNOTATION", fields="annotation,details"
    )
    assert [(s.author_user_id, s.value, s.config_id) for s in page.data] == [
        ("bob", "reject", config_id)
    ]
    api_scores = langfuse.api.scores.get_many(trace_id=TRACE, source="API", fields="annotation")
    assert [s.author_user_id for s in api_scores.data] == [None]


def test_mark_completed_records_the_reviewer_not_in_the_api(
    langfuse: Langfuse, client: httpx.Client
) -> None:
    queues = langfuse.api.annotation_queues
    queue = queues.create_queue(name="q", score_config_ids=[_approval_config(langfuse)])
    item = queues.create_queue_item(queue.id, object_id=TRACE, object_type="TRACE")
    client.post("/emulator/members", json={"userId": "ada"})
    done = client.post(
        f"/emulator/annotation-queues/{queue.id}/items/{item.id}/complete", json={"userId": "ada"}
    )
    assert done.json()["status"] == "COMPLETED"
    public = client.get(f"/api/public/annotation-queues/{queue.id}/items/{item.id}").json()
    assert public["status"] == "COMPLETED" and "annotatorUserId" not in public
