"""The official ``langfuse`` SDK (5.x), unmodified, against the live emulator: scores
created with ``create_score`` come back through ``api.scores.get_many`` and
``api.metrics.metrics``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from langfuse import Langfuse

from coalmine.emulator.store import Store
from tests.emulator.emulator_support import LiveEmulator, langfuse_client, sdk_emulator_settings

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OBSERVATION = "00f067aa0ba902b7"


emulator_settings = pytest.fixture(name="emulator_settings")(sdk_emulator_settings)


@pytest.fixture
def langfuse(emulator: LiveEmulator) -> Iterator[Langfuse]:
    with langfuse_client(emulator) as client:
        yield client


def test_sdk_scores_round_trip(langfuse: Langfuse) -> None:
    langfuse.create_score(name="helpfulness", value=0.8, trace_id=TRACE, comment="clear")
    langfuse.create_score(name="resolved", value=1, trace_id=TRACE, data_type="BOOLEAN")
    langfuse.create_score(
        name="tone",
        value="friendly",
        trace_id=TRACE,
        observation_id=OBSERVATION,
        data_type="CATEGORICAL",
        score_id="tone-1",
    )
    langfuse.flush()

    page = langfuse.api.scores.get_many(trace_id=TRACE, fields="details,subject")
    scores = {score.name: score for score in page.data}
    assert set(scores) == {"helpfulness", "resolved", "tone"}
    assert (scores["helpfulness"].data_type, scores["helpfulness"].value) == ("NUMERIC", 0.8)
    assert scores["helpfulness"].comment == "clear"
    assert (scores["resolved"].data_type, scores["resolved"].value) == ("BOOLEAN", True)
    assert (scores["tone"].data_type, scores["tone"].value) == ("CATEGORICAL", "friendly")
    assert scores["tone"].id == "tone-1"
    subject = scores["tone"].subject
    assert subject is not None and (subject.kind, subject.id) == ("observation", OBSERVATION)
    assert page.meta.limit == 50 and page.meta.cursor is None

    only_boolean = langfuse.api.scores.get_many(data_type="BOOLEAN", value="true")
    assert [score.name for score in only_boolean.data] == ["resolved"]


def test_sdk_pages_with_the_cursor(langfuse: Langfuse) -> None:
    start = datetime.now(UTC) - timedelta(minutes=5)
    for i in range(5):
        langfuse.create_score(
            name="n", value=float(i), trace_id=TRACE, timestamp=start + timedelta(seconds=i)
        )
    langfuse.flush()

    values: list[float] = []
    cursor: str | None = None
    while True:
        page = langfuse.api.scores.get_many(limit=2, cursor=cursor)
        values.extend(float(score.value) for score in page.data)
        cursor = page.meta.cursor
        if cursor is None:
            break
    assert values == [4.0, 3.0, 2.0, 1.0, 0.0]


def test_sdk_metrics_per_arm(emulator: LiveEmulator, langfuse: Langfuse) -> None:
    store: Store = emulator.app.state.store
    now = datetime.now(UTC)
    stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    ms = int(now.timestamp() * 1000)
    arms = {"canary": "a" * 32, "baseline": "b" * 32}
    with store.transaction() as db:
        for arm, trace in arms.items():
            db.execute(
                "INSERT INTO observations (id, trace_id, type, name, start_time, start_ms, "
                "end_time, end_ms, is_root, tags, created_at, updated_at) "
                "VALUES (?, ?, 'SPAN', 'chat', ?, ?, ?, ?, 1, ?, ?, ?)",
                (trace[:16], trace, stamp, ms, stamp, ms + 50, json.dumps([arm]), stamp, stamp),
            )
    for value in (0.9, 0.7):
        langfuse.create_score(name="helpfulness", value=value, trace_id=arms["canary"])
    langfuse.create_score(name="helpfulness", value=0.4, trace_id=arms["baseline"])
    langfuse.create_score(name="thumbs", value=1, trace_id=arms["canary"], data_type="BOOLEAN")
    langfuse.flush()

    window = {
        "fromTimestamp": (now - timedelta(hours=1)).isoformat(),
        "toTimestamp": (now + timedelta(hours=1)).isoformat(),
    }
    numeric = langfuse.api.metrics.metrics(
        query=json.dumps(
            {
                "view": "scores-numeric",
                "dimensions": [{"field": "tags"}],
                "metrics": [
                    {"measure": "value", "aggregation": "avg"},
                    {"measure": "count", "aggregation": "count"},
                ],
                "filters": [
                    {"column": "name", "operator": "=", "value": "helpfulness", "type": "string"}
                ],
                **window,
            }
        )
    )
    rows = {tuple(row["tags"]): row for row in numeric.data}
    assert rows[("canary",)]["avg_value"] == pytest.approx(0.8)
    assert int(rows[("canary",)]["count_count"]) == 2
    assert rows[("baseline",)]["avg_value"] == pytest.approx(0.4)

    boolean = langfuse.api.metrics.metrics(
        query=json.dumps(
            {
                "view": "scores-boolean",
                "metrics": [{"measure": "value", "aggregation": "avg"}],
                **window,
            }
        )
    )
    assert boolean.data == [{"avg_value": 1.0}]
