"""The emulator's managed-judge route: scores with source EVAL, as Langfuse's evaluation
worker writes them, on spans recorded as experiment items."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from controller.ladder.experiment_spans import ItemRun, encode_export, item_ids
from tests.controller.source_support import live_emulator
from tests.emulator.emulator_support import LiveEmulator

IDS = item_ids("0123456789abcdef", "item-1")


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with live_emulator() as emulator:
        _ingest(emulator)
        with emulator.client() as client:
            yield client


def _ingest(emulator: LiveEmulator) -> None:
    now = time.time_ns()
    run = ItemRun(
        ids=IDS,
        experiment_id="0123456789abcdef",
        run_name="candidate",
        description="",
        dataset_id="dataset-1",
        item_id="item-1",
        input={"question": "q1"},
        expected_output="a1",
        item_metadata=None,
        output={"answer": "a1"},
        failure=None,
        start_ns=now,
        end_ns=now + 1_000_000,
        metadata={},
    )
    with emulator.client() as client:
        response = client.post(
            "/api/public/otel/v1/traces",
            content=encode_export([run]),
            headers={"content-type": "application/x-protobuf"},
        )
        assert response.status_code == 200, response.text


def _judge(http: httpx.Client, **body: object) -> httpx.Response:
    return http.post(
        "/emulator/eval-scores",
        json={"traceId": IDS.trace_id, "observationId": IDS.task_span_id, **body},
    )


def test_a_judge_score_is_stored_with_source_eval_on_the_judged_span(http: httpx.Client) -> None:
    response = _judge(http, name="correctness", value=0.8, comment="close enough")
    assert response.status_code == 200, response.text
    score = response.json()
    assert (score["source"], score["value"], score["dataType"]) == ("EVAL", 0.8, "NUMERIC")
    assert score["environment"] == "sdk-experiment"  # the judged observation's
    assert score["configId"] is None
    assert score["metadata"]["target_observation_id"] == IDS.task_span_id
    assert score["subject"] == {
        "kind": "observation",
        "id": IDS.task_span_id,
        "traceId": IDS.trace_id,
    }
    listed = http.get(
        "/api/public/v3/scores",
        params={"traceId": IDS.trace_id, "source": "EVAL", "name": "correctness"},
    ).json()["data"]
    assert [s["id"] for s in listed] == [score["id"]]


def test_a_boolean_judge_and_a_redelivered_score(http: httpx.Client) -> None:
    first = _judge(http, id="job-1", name="helpful", value=True).json()
    assert (first["dataType"], first["value"]) == ("BOOLEAN", True)
    again = _judge(http, id="job-1", name="helpful", value=False).json()
    assert again["value"] is False
    listed = http.get("/api/public/v3/scores", params={"traceId": IDS.trace_id}).json()["data"]
    assert len(listed) == 1


def test_a_judge_value_that_does_not_fit_is_refused(http: httpx.Client) -> None:
    response = _judge(http, name="correctness", value="good", dataType="NUMERIC")
    assert response.status_code == 400


def test_the_public_api_still_refuses_eval_scores(http: httpx.Client) -> None:
    response = http.post(
        "/api/public/scores",
        json={"traceId": IDS.trace_id, "name": "correctness", "value": 1, "source": "EVAL"},
    )
    assert response.status_code == 400
