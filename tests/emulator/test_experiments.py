"""Experiments as a v4 server derives them from span attributes: the official SDK's
``run_experiment`` against the emulator, read back through ``/experiments``,
``/experiment-items``, v3 scores and the deprecated dataset run routes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from langfuse import Evaluation, Langfuse
from langfuse.experiment import LocalExperimentItem

from tests.emulator.emulator_support import LiveEmulator, langfuse_client, sdk_emulator_settings

emulator_settings = pytest.fixture(name="emulator_settings")(sdk_emulator_settings)

QUESTIONS = {"q1": "a1", "q2": "a2", "q3": "a3"}


@pytest.fixture
def langfuse(emulator: LiveEmulator) -> Iterator[Langfuse]:
    with langfuse_client(emulator) as client:
        yield client


def _golden(langfuse: Langfuse) -> None:
    langfuse.create_dataset(name="team/golden")
    for question, answer in QUESTIONS.items():
        langfuse.create_dataset_item(
            dataset_name="team/golden",
            id=f"item-{question}",
            input={"question": question},
            expected_output=answer,
            metadata={"topic": "t"},
        )


def _task(*, item: Any, **_: Any) -> str:
    question = item.input["question"]
    if question == "q3":
        raise RuntimeError("model down")
    return QUESTIONS[question] if question == "q1" else "wrong"


def _exact(*, output: Any, expected_output: Any, **_: Any) -> Evaluation:
    return Evaluation(name="exact", value=float(output == expected_output), comment="cmp")


def _mean(*, item_results: Any, **_: Any) -> Evaluation:
    values = [e.value for r in item_results for e in r.evaluations]
    return Evaluation(name="mean_exact", value=sum(values) / len(values))


def _since() -> datetime:
    return datetime.now(UTC) - timedelta(hours=1)


def test_run_experiment_on_a_dataset_end_to_end(langfuse: Langfuse, client: httpx.Client) -> None:
    _golden(langfuse)
    dataset = langfuse.get_dataset("team/golden")
    result = dataset.run_experiment(
        name="gate",
        run_name="coalmine/r1/1/candidate",
        description="candidate arm",
        task=_task,
        evaluators=[_exact],
        run_evaluators=[_mean],
        metadata={"arm": "candidate"},
    )
    langfuse.flush()

    expected_id = hashlib.sha256(
        json.dumps(
            ["langfuse-experiment-v1", "coalmine-local", dataset.id, "coalmine/r1/1/candidate"],
            separators=(",", ":"),
        ).encode()
    ).hexdigest()[:16]
    assert result.experiment_id == expected_id  # the SDK resolved the project id
    assert len(result.item_results) == 2  # the failed item is left out

    experiments = langfuse.api.experiments.list(
        from_start_time=_since(), fields="core,metadata,scores"
    )
    assert [e.id for e in experiments.data] == [expected_id]
    experiment = experiments.data[0]
    assert (experiment.name, experiment.description, experiment.dataset_id) == (
        "coalmine/r1/1/candidate",
        "candidate arm",
        dataset.id,
    )
    assert experiment.item_count == 3
    assert experiment.metadata == {"arm": "candidate"}
    assert [(s.name, s.value) for s in experiment.scores or []] == [("mean_exact", 0.5)]

    items = langfuse.api.experiments.list_items(
        from_start_time=_since(), experiment_id=expected_id, fields="core,dataset,io,scores"
    )
    by_item = {item.experiment_item_id: item for item in items.data}
    assert set(by_item) == {"item-q1", "item-q2", "item-q3"}
    assert by_item["item-q3"].level == "ERROR"
    assert by_item["item-q1"].environment == "sdk-experiment"
    assert by_item["item-q1"].experiment_dataset_id == dataset.id
    assert (by_item["item-q1"].input, by_item["item-q1"].output) == ({"question": "q1"}, "a1")
    assert by_item["item-q1"].expected_output == "a1"
    assert [(s.name, s.value) for s in by_item["item-q1"].scores or []] == [("exact", 1.0)]
    assert [(s.name, s.value) for s in by_item["item-q2"].scores or []] == [("exact", 0.0)]
    assert by_item["item-q3"].scores == []

    # The item scores sit on the task span (the item's id), as observation scores.
    scores = langfuse.api.scores.get_many(trace_id=by_item["item-q1"].trace_id, fields="subject")
    assert [(s.subject.kind, s.subject.id) for s in scores.data] == [
        ("observation", by_item["item-q1"].id)
    ]

    # The deprecated dataset run routes see the same run.
    runs = client.get("/api/public/datasets/team%2Fgolden/runs").json()
    assert [(r["id"], r["name"]) for r in runs["data"]] == [
        (expected_id, "coalmine/r1/1/candidate")
    ]
    run = client.get("/api/public/datasets/team%2Fgolden/runs/coalmine%2Fr1%2F1%2Fcandidate").json()
    assert sorted(i["datasetItemId"] for i in run["datasetRunItems"]) == sorted(by_item)
    run_items = client.get(
        "/api/public/dataset-run-items",
        params={"datasetId": dataset.id, "runName": "coalmine/r1/1/candidate"},
    ).json()
    assert run_items["meta"]["totalItems"] == 3


def test_two_arms_are_two_experiments_joined_on_item_id(langfuse: Langfuse) -> None:
    _golden(langfuse)
    dataset = langfuse.get_dataset("team/golden")
    for arm in ("baseline", "candidate"):
        dataset.run_experiment(name="gate", run_name=f"r1/{arm}", task=lambda **_: "x")
    langfuse.flush()
    experiments = langfuse.api.experiments.list(from_start_time=_since(), dataset_id=dataset.id)
    assert sorted(e.name for e in experiments.data) == ["r1/baseline", "r1/candidate"]
    per_arm = {
        e.name: {
            i.experiment_item_id
            for i in langfuse.api.experiments.list_items(
                from_start_time=_since(), experiment_id=e.id
            ).data
        }
        for e in experiments.data
    }
    assert per_arm["r1/baseline"] == per_arm["r1/candidate"] == {f"item-{q}" for q in QUESTIONS}


def test_experiment_items_page_with_a_cursor(langfuse: Langfuse) -> None:
    _golden(langfuse)
    langfuse.get_dataset("team/golden").run_experiment(
        name="gate", run_name="r", task=lambda **_: 1
    )
    langfuse.flush()
    seen: list[str] = []
    cursor = None
    while True:
        page = langfuse.api.experiments.list_items(from_start_time=_since(), limit=2, cursor=cursor)
        seen.extend(item.id for item in page.data)
        cursor = page.meta.cursor
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 3


def test_local_data_experiment_has_no_dataset(langfuse: Langfuse) -> None:
    result = langfuse.run_experiment(
        name="local",
        data=[LocalExperimentItem(input="a"), LocalExperimentItem(input="b")],
        task=lambda **_: "ok",
    )
    langfuse.flush()
    experiments = langfuse.api.experiments.list(from_start_time=_since(), id=result.experiment_id)
    assert [(e.dataset_id, e.item_count) for e in experiments.data] == [(None, 2)]


def test_dataset_run_items_post_writes_nothing(langfuse: Langfuse, client: httpx.Client) -> None:
    _golden(langfuse)
    dataset = langfuse.api.datasets.get(dataset_name="team%2Fgolden")
    answer = client.post(
        "/api/public/dataset-run-items",
        json={"runName": "legacy", "datasetItemId": "item-q1", "traceId": "t" * 32},
    )
    assert answer.status_code == 200
    expected = hashlib.sha256(
        json.dumps(
            ["langfuse-experiment-v1", "coalmine-local", dataset.id, "legacy"],
            separators=(",", ":"),
        ).encode()
    ).hexdigest()[:16]
    assert answer.json()["datasetRunId"] == expected
    assert client.get("/api/public/datasets/team%2Fgolden/runs").json()["data"] == []
    assert langfuse.api.experiments.list(from_start_time=_since()).data == []
    unknown = client.post(
        "/api/public/dataset-run-items",
        json={"runName": "legacy", "datasetItemId": "nope", "traceId": "t" * 32},
    )
    assert unknown.status_code == 404
    unlinked = client.post(
        "/api/public/dataset-run-items", json={"runName": "legacy", "datasetItemId": "item-q1"}
    )
    assert unlinked.status_code == 400


def test_experiment_errors(client: httpx.Client) -> None:
    missing = client.get("/api/public/experiments")
    assert missing.status_code == 400
    assert missing.json()["error"][0]["path"] == ["fromStartTime"]
    too_many = client.get(
        "/api/public/experiment-items",
        params={"fromStartTime": "2026-01-01T00:00:00Z", "limit": "101"},
    )
    assert too_many.status_code == 400
    bad_fields = client.get(
        "/api/public/experiments",
        params={"fromStartTime": "2026-01-01T00:00:00Z", "fields": "io"},
    )
    assert bad_fields.status_code == 400
    bad_filter = client.get(
        "/api/public/experiments",
        params={
            "fromStartTime": "2026-01-01T00:00:00Z",
            "filter": json.dumps([{"column": "level", "operator": "=", "value": "x"}]),
        },
    )
    assert bad_filter.status_code == 400
    no_run = client.get("/api/public/datasets/nope/runs")
    assert no_run.status_code == 404
