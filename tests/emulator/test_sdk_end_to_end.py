"""One canary release as coalmine meets it, through the official SDK only.

Prompt versions are created and labelled, requests of both arms are traced with
``propagate_attributes(tags=[arm])`` and linked to the prompt version they used, an
evaluator scores them, and then everything the controller reads comes back through the
SDK's own API clients: observations v2, scores v3 and metrics v2, per arm. Last, the
canary is promoted by moving the label, and the SDK sees the move.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from langfuse import Langfuse, observe, propagate_attributes
from langfuse.model import TextPromptClient
from opentelemetry.sdk.trace import TracerProvider

from tests.emulator.emulator_support import LiveEmulator, langfuse_client, sdk_emulator_settings

CANARY = "coalmine:arm:canary"
BASELINE = "coalmine:arm:baseline"
PROMPT = "support-agent"

emulator_settings = pytest.fixture(name="emulator_settings")(sdk_emulator_settings)


@pytest.fixture
def langfuse(emulator: LiveEmulator) -> Iterator[Langfuse]:
    with langfuse_client(emulator, tracer_provider=TracerProvider()) as client:
        yield client


def arm_filter(arm: str) -> str:
    return json.dumps(
        [{"type": "arrayOptions", "column": "tags", "operator": "any of", "value": [arm]}]
    )


def metrics(langfuse: Langfuse, query: dict[str, Any]) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    window = {
        "fromTimestamp": (now - timedelta(hours=1)).isoformat(),
        "toTimestamp": (now + timedelta(hours=1)).isoformat(),
    }
    answer = langfuse.api.metrics.metrics(query=json.dumps({**query, **window}))
    return list(answer.data)


def by_arm(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["tags"][0]: row for row in rows if row["tags"]}


def test_a_canary_release_through_the_sdk(langfuse: Langfuse, emulator: LiveEmulator) -> None:
    key = emulator.settings.public_key
    langfuse.create_prompt(name=PROMPT, prompt="v1: answer {{q}}", labels=["production"])
    langfuse.create_prompt(name=PROMPT, prompt="v2: answer {{q}} briefly", labels=["canary"])
    stable = langfuse.get_prompt(PROMPT, label="production", cache_ttl_seconds=0)
    candidate = langfuse.get_prompt(PROMPT, label="canary", cache_ttl_seconds=0)
    assert (stable.version, candidate.version) == (1, 2)

    @observe(name="chat")
    def chat(question: str, prompt: TextPromptClient, fail: bool = False) -> str | None:
        with langfuse.start_as_current_observation(
            name="llm",
            as_type="generation",
            model="mock-llm",
            usage_details={"input": 100, "output": 20},
            cost_details={"total": 0.002 if prompt.version == 1 else 0.003},
            prompt=prompt,
        ) as generation:
            generation.update(output=prompt.compile(q=question))
        if fail:
            raise TimeoutError("upstream timed out")
        return langfuse.get_current_trace_id()

    traces: dict[str, list[str]] = {BASELINE: [], CANARY: []}
    for arm, prompt in ((BASELINE, stable), (CANARY, candidate)):
        with propagate_attributes(tags=[arm]):
            for i in range(4):
                trace_id = chat(f"question {i}", prompt, langfuse_public_key=key)
                assert trace_id is not None
                traces[arm].append(trace_id)
            if arm == CANARY:
                with pytest.raises(TimeoutError):
                    chat("slow question", prompt, fail=True, langfuse_public_key=key)
    for arm, value in ((BASELINE, 0.8), (CANARY, 0.6)):
        for trace_id in traces[arm]:
            langfuse.create_score(name="helpfulness", value=value, trace_id=trace_id)
    langfuse.flush()

    # observations v2: each arm's generations carry the prompt version it was served
    for arm, version in ((BASELINE, 1), (CANARY, 2)):
        page = langfuse.api.observations.get_many(
            type="GENERATION", filter=arm_filter(arm), fields="core,basic,usage,prompt"
        )
        assert {(item.prompt_name, item.prompt_version) for item in page.data} == {
            (PROMPT, version)
        }
        assert len(page.data) == (4 if arm == BASELINE else 5)

    # scores v3: joined to arms by trace id, as the controller does
    scores = langfuse.api.scores.get_many(name="helpfulness", fields="subject", limit=100)
    arm_of = {trace_id: arm for arm, ids in traces.items() for trace_id in ids}
    values: dict[str, list[float]] = {BASELINE: [], CANARY: []}
    for score in scores.data:
        assert score.subject is not None and score.subject.kind == "trace"
        values[arm_of[score.subject.id]].append(score.value)
    assert values == {BASELINE: [0.8] * 4, CANARY: [0.6] * 4}

    # metrics v2: per-arm score means, trace counts, cost and errors
    score_rows = by_arm(
        metrics(
            langfuse,
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
            },
        )
    )
    assert score_rows[BASELINE]["avg_value"] == pytest.approx(0.8)
    assert score_rows[CANARY]["avg_value"] == pytest.approx(0.6)
    assert int(score_rows[CANARY]["count_count"]) == 4
    root_rows = by_arm(
        metrics(
            langfuse,
            {
                "view": "observations",
                "dimensions": [{"field": "tags"}],
                "metrics": [
                    {"measure": "traceId", "aggregation": "uniq"},
                    {"measure": "totalCost", "aggregation": "sum"},
                ],
                "filters": [
                    {
                        "column": "type",
                        "operator": "=",
                        "value": "GENERATION",
                        "type": "string",
                    }
                ],
            },
        )
    )
    assert int(root_rows[BASELINE]["uniq_traceId"]) == 4
    assert int(root_rows[CANARY]["uniq_traceId"]) == 5
    assert float(root_rows[BASELINE]["sum_totalCost"]) == pytest.approx(0.008)
    assert float(root_rows[CANARY]["sum_totalCost"]) == pytest.approx(0.015)
    levels = metrics(
        langfuse,
        {
            "view": "observations",
            "dimensions": [{"field": "tags"}, {"field": "level"}],
            "metrics": [{"measure": "count", "aggregation": "count"}],
            "filters": [
                {"column": "isRootObservation", "operator": "=", "value": True, "type": "boolean"}
            ],
        },
    )
    errors = {(row["tags"][0], row["level"]): int(row["count_count"]) for row in levels}
    assert errors[(CANARY, "ERROR")] == 1
    assert (BASELINE, "ERROR") not in errors

    # promote: production moves onto the canary version, canary stays there
    langfuse.update_prompt(name=PROMPT, version=2, new_labels=["production"])
    promoted = langfuse.get_prompt(PROMPT, label="production", cache_ttl_seconds=0)
    assert promoted.version == 2
    assert set(promoted.labels) >= {"production", "canary", "latest"}
    old = langfuse.get_prompt(PROMPT, version=1, cache_ttl_seconds=0)
    assert "production" not in old.labels
