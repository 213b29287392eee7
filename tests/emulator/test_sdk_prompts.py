"""The official Langfuse SDK, unmodified, against a live emulator: prompt management."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langfuse import Langfuse
from langfuse.api import NotFoundError

from tests.emulator.emulator_support import LiveEmulator, langfuse_client, sdk_emulator_settings

emulator_settings = pytest.fixture(name="emulator_settings")(sdk_emulator_settings)


@pytest.fixture
def langfuse(emulator: LiveEmulator) -> Iterator[Langfuse]:
    with langfuse_client(emulator) as client:
        yield client


def served_version(langfuse: Langfuse, name: str, **selector: object) -> int:
    prompt = langfuse.get_prompt(name, cache_ttl_seconds=0, max_retries=0, **selector)  # type: ignore[arg-type]
    return prompt.version


def test_create_and_get_by_label_and_version(langfuse: Langfuse) -> None:
    first = langfuse.create_prompt(
        name="support/greeting",
        prompt="Hello {{name}}",
        labels=["production"],
        tags=["support"],
        config={"model": "small", "temperature": 0.1},
        commit_message="first",
    )
    assert (first.version, first.labels) == (1, ["production", "latest"])
    second = langfuse.create_prompt(
        name="support/greeting", prompt="Hi {{name}}!", labels=["canary"]
    )
    assert second.version == 2
    assert second.tags == ["support"]

    production = langfuse.get_prompt("support/greeting", cache_ttl_seconds=0)
    assert production.version == 1
    assert production.compile(name="Ada") == "Hello Ada"
    assert production.config == {"model": "small", "temperature": 0.1}
    assert production.commit_message == "first"
    canary = langfuse.get_prompt("support/greeting", label="canary", cache_ttl_seconds=0)
    assert canary.compile(name="Ada") == "Hi Ada!"
    assert served_version(langfuse, "support/greeting", version=1) == 1
    assert served_version(langfuse, "support/greeting", label="latest") == 2


def test_update_prompt_moves_production_back_and_forth(langfuse: Langfuse) -> None:
    for text in ("v1", "v2", "v3"):
        langfuse.create_prompt(name="greeting", prompt=text, labels=["production"])
    assert served_version(langfuse, "greeting") == 3
    served = []
    for version in (2, 1, 3, 2):
        updated = langfuse.update_prompt(
            name="greeting", version=version, new_labels=["production"]
        )
        assert "production" in updated.labels
        served.append(served_version(langfuse, "greeting"))
    assert served == [2, 1, 3, 2]
    latest = langfuse.get_prompt("greeting", label="latest", cache_ttl_seconds=0)
    assert (latest.version, latest.labels) == (3, ["latest"])


def test_update_prompt_refuses_latest(langfuse: Langfuse) -> None:
    langfuse.create_prompt(name="greeting", prompt="v1")
    langfuse.create_prompt(name="greeting", prompt="v2")
    with pytest.raises(Exception, match="always assigned to the latest prompt version"):
        langfuse.update_prompt(name="greeting", version=1, new_labels=["latest"])


def test_missing_prompts_raise_not_found_or_serve_the_fallback(langfuse: Langfuse) -> None:
    with pytest.raises(NotFoundError) as raised:
        langfuse.get_prompt("missing", cache_ttl_seconds=0, max_retries=0)
    assert raised.value.status_code == 404
    assert raised.value.body["message"] == "Prompt not found: 'missing' with label 'production'"

    langfuse.create_prompt(name="greeting", prompt="v1")  # no production label
    with pytest.raises(NotFoundError):
        langfuse.get_prompt("greeting", cache_ttl_seconds=0, max_retries=0)
    fallback = langfuse.get_prompt(
        "greeting", cache_ttl_seconds=0, max_retries=0, fallback="Hello {{name}}"
    )
    assert fallback.is_fallback
    assert fallback.compile(name="Ada") == "Hello Ada"


def test_chat_prompts_with_placeholders(langfuse: Langfuse) -> None:
    langfuse.create_prompt(
        name="assistant",
        type="chat",
        prompt=[
            {"role": "system", "content": "You help with {{topic}}."},
            {"type": "placeholder", "name": "history"},
        ],
        labels=["production"],
    )
    prompt = langfuse.get_prompt("assistant", type="chat", cache_ttl_seconds=0)
    compiled = prompt.compile(topic="billing", history=[{"role": "user", "content": "hi"}])
    assert compiled == [
        {"role": "system", "content": "You help with billing."},
        {"role": "user", "content": "hi"},
    ]


def test_the_sdk_retries_through_an_injected_503(
    langfuse: Langfuse, emulator: LiveEmulator
) -> None:
    langfuse.create_prompt(name="greeting", prompt="v1", labels=["production"])
    with emulator.client() as admin:
        admin.post(
            "/emulator/faults", json={"spec": "GET:/api/public/v2/prompts=status:503,times:1"}
        )
        prompt = langfuse.get_prompt("greeting", cache_ttl_seconds=0, max_retries=1)
        assert prompt.version == 1
        assert admin.get("/emulator/faults").json()["faults"][0]["fired"] == 1
