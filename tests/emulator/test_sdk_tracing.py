"""The official ``langfuse`` SDK, unmodified, traces into the emulator and reads back.

Each test gets its own project key and tracer provider: the SDK keeps one client per
public key for the life of the process and does not forget it on ``shutdown()``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from langfuse import Langfuse, observe, propagate_attributes
from langfuse.api import Prompt_Text
from langfuse.model import TextPromptClient
from opentelemetry.sdk.trace import TracerProvider

from tests.emulator.emulator_support import LiveEmulator, langfuse_client, sdk_emulator_settings

CANARY = "coalmine:arm:canary"
BASELINE = "coalmine:arm:baseline"


emulator_settings = pytest.fixture(name="emulator_settings")(sdk_emulator_settings)


@pytest.fixture
def langfuse(emulator: LiveEmulator) -> Iterator[Langfuse]:
    with langfuse_client(
        emulator, tracer_provider=TracerProvider(), release="2026.01.1", environment="staging"
    ) as client:
        yield client


def answer_prompt(version: int) -> TextPromptClient:
    """A prompt client as ``get_prompt`` returns one (built here: prompts are not the
    subject of these tests)."""
    prompt = Prompt_Text(
        name="support/answer",
        version=version,
        prompt="Answer {{question}}",
        config={},
        labels=["canary"],
        tags=[],
    )
    return TextPromptClient(prompt)


def tags_filter(*tags: str) -> str:
    condition = {"type": "arrayOptions", "column": "tags", "operator": "any of", "value": tags}
    return json.dumps([condition])


def test_a_traced_canary_request_reads_back_through_the_sdk(
    langfuse: Langfuse, emulator: LiveEmulator
) -> None:
    key = emulator.settings.public_key  # selects this client for @observe

    @observe(name="retrieve")
    def retrieve(question: str) -> list[str]:
        return [f"doc about {question}"]

    @observe(name="handle-request")
    def handle(question: str, prompt: TextPromptClient) -> str:
        docs = retrieve(question)
        with langfuse.start_as_current_observation(
            name="llm",
            as_type="generation",
            model="gpt-4o-mini",
            input={"question": question, "docs": docs},
            usage_details={"input": 120, "output": 30},
            cost_details={"input": 0.0012, "output": 0.0006},
            prompt=prompt,
        ) as generation:
            generation.update(output="42")
        return "42"

    @observe(name="handle-request")
    def failing(question: str) -> str:
        raise RuntimeError(f"upstream timeout for {question}")

    with propagate_attributes(
        tags=[CANARY], user_id="user-7", session_id="session-7", trace_name="support-chat"
    ):
        assert handle("life", answer_prompt(3), langfuse_public_key=key) == "42"
        with pytest.raises(RuntimeError):
            failing("taxes", langfuse_public_key=key)
    with propagate_attributes(tags=[BASELINE]):
        handle("baseline question", answer_prompt(2), langfuse_public_key=key)
    langfuse.flush()

    page = langfuse.api.observations.get_many(
        fields="core,basic,usage,prompt,trace_context", filter=tags_filter(CANARY), limit=100
    )
    by_name: dict[str, list[Any]] = {}
    for item in page.data:
        by_name.setdefault(item.name or "", []).append(item)
    assert sorted((name, len(items)) for name, items in by_name.items()) == [
        ("handle-request", 2),
        ("llm", 1),
        ("retrieve", 1),
    ]
    for item in page.data:
        assert item.tags == [CANARY]
        assert (item.user_id, item.session_id, item.trace_name) == (
            "user-7",
            "session-7",
            "support-chat",
        )
        assert item.environment == "staging" and item.release == "2026.01.1"

    [generation] = by_name["llm"]
    assert generation.type == "GENERATION" and generation.level == "DEFAULT"
    assert generation.usage_details == {"input": 120, "output": 30, "total": 150}
    assert generation.cost_details == pytest.approx(
        {"input": 0.0012, "output": 0.0006, "total": 0.0018}
    )
    assert generation.total_cost == pytest.approx(0.0018)
    assert (generation.prompt_name, generation.prompt_version) == ("support/answer", 3)

    ok, failed = sorted(by_name["handle-request"], key=lambda item: item.level or "")
    assert ok.level == "DEFAULT" and ok.is_root_observation is True
    assert failed.level == "ERROR"
    assert failed.status_message == "upstream timeout for taxes"
    assert generation.parent_observation_id == ok.id
    assert generation.trace_id == ok.trace_id

    roots = langfuse.api.observations.get_many(
        filter=tags_filter(CANARY, BASELINE), is_root_observation=True, fields="core,basic"
    )
    assert len(roots.data) == 3
    errors = langfuse.api.observations.get_many(level="ERROR", filter=tags_filter(CANARY))
    assert [item.id for item in errors.data] == [failed.id]
    baseline = langfuse.api.observations.get_many(
        type="GENERATION", filter=tags_filter(BASELINE), fields="prompt"
    )
    assert [item.prompt_version for item in baseline.data] == [2]


def test_sdk_paging_walks_every_span(langfuse: Langfuse) -> None:
    with propagate_attributes(tags=[CANARY]):
        for index in range(25):
            with langfuse.start_as_current_observation(name=f"step-{index}"):
                pass
    langfuse.flush()

    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = langfuse.api.observations.get_many(limit=10, cursor=cursor)
        seen.extend(item.name or "" for item in page.data)
        cursor = page.meta.cursor
        if cursor is None:
            break
    assert sorted(seen) == sorted(f"step-{index}" for index in range(25))
    assert len(seen) == 25


def test_uncompressed_exports_are_read_too(emulator: LiveEmulator) -> None:
    client = Langfuse(
        public_key=emulator.settings.public_key,
        secret_key=emulator.settings.secret_key,
        base_url=emulator.base_url,
        tracer_provider=TracerProvider(),
        otel_compression="none",
    )
    try:
        with client.start_as_current_observation(name="plain", metadata={"attempt": 2}):
            pass
        client.flush()
        [item] = client.api.observations.get_many(fields="core,basic,metadata").data
    finally:
        client.shutdown()
    assert item.name == "plain"
    assert item.metadata is not None and item.metadata["attempt"] == 2
