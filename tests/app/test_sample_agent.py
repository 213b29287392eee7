"""The sample support agent on a real loopback port, called with the ``openai`` SDK,
fetching its prompt from and tracing into a live Langfuse emulator."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI
from langfuse import Langfuse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from opentelemetry.sdk.trace import TracerProvider

from coalmine.demo.agent import mock_llm
from coalmine.demo.agent.app import FALLBACK_PROMPT, MODEL, AgentSettings, Outbox, create_app
from coalmine.shared.conventions import trace_tags
from policies.domain import Arm
from tests.emulator.emulator_support import LiveEmulator, langfuse_client
from tests.quick_stop_server import QuickStopServer

GOOD_PROMPT = "You are a careful support agent. Check the account before answering."
WEAK_PROMPT = "Answer something. [[quality=0.2]]"
QUESTION = [{"role": "user", "content": "Where is my order 1234?"}]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PROXY_SPAN = "00f067aa0ba902b7"


def proxied(arm: str, label: str, request_id: str, **extra: str) -> dict[str, str]:
    return {
        "x-coalmine-release": "support-agent",
        "x-coalmine-arm": arm,
        "x-coalmine-prompt-label": label,
        "x-request-id": request_id,
        **extra,
    }


# ----------------------------------------------------------------------- fixtures


@pytest.fixture
def langfuse(emulator: LiveEmulator) -> Iterator[Langfuse]:
    with langfuse_client(emulator, tracer_provider=TracerProvider()) as client:
        client.create_prompt(
            name="support-agent",
            prompt=GOOD_PROMPT,
            labels=["production"],
            config={"quality": 0.9, "error_rate": 0.0},
        )
        client.create_prompt(name="support-agent", prompt=WEAK_PROMPT, labels=["canary"])
        client.create_prompt(
            name="support-agent",
            prompt=GOOD_PROMPT,
            labels=["broken"],
            config={"quality": 0.9, "error_rate": 1.0},
        )
        yield client


@dataclass
class Agent:
    url: str
    app: FastAPI

    @property
    def outbox(self) -> Outbox:
        outbox: Outbox = self.app.state.outbox
        return outbox

    @contextmanager
    def openai(self, headers: dict[str, str] | None = None) -> Iterator[openai.OpenAI]:
        client = openai.OpenAI(
            base_url=f"{self.url}/v1", api_key="unused", max_retries=0, default_headers=headers
        )
        try:
            yield client
        finally:
            client.close()


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """``app`` on a free loopback port until the block ends."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = QuickStopServer(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("agent did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def agent(langfuse: Langfuse) -> Iterator[Agent]:
    # No prompt cache: each request reads the label's current version.
    app = create_app(AgentSettings(name="canary", prompt_cache_seconds=0), langfuse)
    with serve(app) as url:
        yield Agent(url, app)


def ask(client: openai.OpenAI, messages: list[dict[str, str]], **options: Any) -> ChatCompletion:
    """A chat completion; the messages are plain dicts, as the mock model reads them."""
    answer: ChatCompletion = client.chat.completions.create(
        model="any", messages=cast(Any, messages), **options
    )
    return answer


def ask_streamed(
    client: openai.OpenAI, messages: list[dict[str, str]], **options: Any
) -> list[ChatCompletionChunk]:
    """Every chunk of a streamed chat completion."""
    with client.chat.completions.create(
        model="any", messages=cast(Any, messages), stream=True, **options
    ) as stream:
        return list(stream)


def generations(langfuse: Langfuse, **params: Any) -> list[Any]:
    langfuse.flush()
    page = langfuse.api.observations.get_many(
        type="GENERATION",
        fields="core,basic,usage,prompt,model,metadata,trace_context",
        limit=100,
        **params,
    )
    return list(page.data)


def expected(prompt: str, messages: list[dict[str, str]], request_id: str) -> Any:
    traits = mock_llm.PromptTraits.of(prompt, {"quality": 0.9} if prompt == GOOD_PROMPT else {})
    return mock_llm.complete(prompt, messages, traits, request_key=request_id)


# ----------------------------------------------------------------------- answers


def test_a_plain_answer_is_deterministic_and_reports_usage(agent: Agent) -> None:
    headers = proxied("baseline", "production", "req-1")
    with agent.openai(headers) as client:
        first = ask(client, QUESTION)
        second = ask(client, QUESTION)

    want = expected(GOOD_PROMPT, QUESTION, "req-1")
    assert first.object == "chat.completion" and first.model == MODEL
    assert first.choices[0].message.content == want.text
    assert first.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == want.text
    assert first.usage is not None
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (
        want.input_tokens,
        want.output_tokens,
    )
    assert first.usage.total_tokens == want.input_tokens + want.output_tokens


def test_a_streamed_answer_matches_the_plain_one(agent: Agent) -> None:
    headers = proxied("baseline", "production", "req-2")
    with agent.openai(headers) as client:
        plain = ask(client, QUESTION)
        chunks = ask_streamed(client, QUESTION, stream_options={"include_usage": True})

    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == plain.choices[0].message.content
    assert len(pieces) > 3  # word by word, not one blob
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == "stop" and set(finals[:-1]) == {None}
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert plain.usage is not None and usage.completion_tokens == plain.usage.completion_tokens


def test_the_event_stream_is_shaped_like_openais(agent: Agent) -> None:
    body = {"model": "any", "messages": QUESTION, "stream": True}
    with httpx.Client() as http:
        response = http.post(f"{agent.url}/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = response.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(event.startswith("data: {") for event in events[:-2])


def test_the_generation_carries_usage_cost_prompt_and_quality(
    agent: Agent, langfuse: Langfuse
) -> None:
    headers = proxied("canary", "production", "req-3", traceparent=f"00-{TRACE}-{PROXY_SPAN}-01")
    with agent.openai(headers) as client:
        answer = ask(client, QUESTION)

    [row] = generations(langfuse)
    want = expected(GOOD_PROMPT, QUESTION, "req-3")
    assert row.trace_id == TRACE
    assert row.tags == trace_tags("support-agent", Arm.CANARY)
    assert row.level == "DEFAULT"
    # Langfuse's spec names the field providedModelName; SDK 5.0.4's model calls it model.
    assert (row.model_extra or {}).get("providedModelName") == MODEL
    assert (row.prompt_name, row.prompt_version) == ("support-agent", 1)
    assert answer.usage is not None
    assert row.usage_details == {
        "input": answer.usage.prompt_tokens,
        "output": answer.usage.completion_tokens,
        "total": answer.usage.total_tokens,
    }
    assert row.cost_details == pytest.approx(
        {**want.cost_details, "total": sum(want.cost_details.values())}
    )
    assert row.total_cost == pytest.approx(sum(want.cost_details.values()))
    assert float(row.metadata["quality"]) == pytest.approx(want.quality)
    assert row.metadata["agent"] == "canary"


def test_a_streamed_answer_is_recorded_too(agent: Agent, langfuse: Langfuse) -> None:
    headers = proxied("canary", "production", "req-4")
    with agent.openai(headers) as client:
        chunks = ask_streamed(client, QUESTION)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    [row] = generations(langfuse)
    want = expected(GOOD_PROMPT, QUESTION, "req-4")
    assert text == want.text
    assert row.usage_details["output"] == want.output_tokens
    assert row.end_time is not None and row.level == "DEFAULT"


def test_a_weaker_prompt_version_answers_worse(agent: Agent, langfuse: Langfuse) -> None:
    for arm, label in (("baseline", "production"), ("canary", "canary")):
        with agent.openai(proxied(arm, label, f"req-{arm}")) as client:
            ask(client, QUESTION)

    by_version = {row.prompt_version: row for row in generations(langfuse)}
    good, weak = by_version[1], by_version[2]
    assert float(weak.metadata["quality"]) < float(good.metadata["quality"])
    assert float(weak.metadata["quality"]) <= 0.2 + mock_llm.QUALITY_JITTER / 2
    assert weak.tags == trace_tags("support-agent", Arm.CANARY)
    assert good.tags == trace_tags("support-agent", Arm.BASELINE)


def test_a_failed_answer_is_an_error_generation_and_a_500(agent: Agent, langfuse: Langfuse) -> None:
    with (
        agent.openai(proxied("canary", "broken", "req-5")) as client,
        pytest.raises(openai.InternalServerError) as raised,
    ):
        ask(client, QUESTION)
    assert raised.value.status_code == 500
    [row] = generations(langfuse)
    assert row.level == "ERROR" and row.prompt_version == 3
    assert "quality" not in (row.metadata or {})


def test_without_the_prompt_the_agent_falls_back_unlinked(agent: Agent, langfuse: Langfuse) -> None:
    with agent.openai(proxied("canary", "missing", "req-6")) as client:
        answer = ask(client, QUESTION)
    want = mock_llm.complete(
        FALLBACK_PROMPT, QUESTION, mock_llm.PromptTraits(), request_key="req-6"
    )
    assert answer.choices[0].message.content == want.text
    [row] = generations(langfuse)
    assert row.prompt_name is None and row.prompt_version is None


# -------------------------------------------------------------------- side effects


REFUND = [{"role": "user", "content": "Please refund order 1234."}]


def test_the_email_tool_runs_for_live_traffic(agent: Agent, langfuse: Langfuse) -> None:
    with agent.openai(proxied("baseline", "production", "req-7")) as client:
        ask(client, REFUND, user="ana@example.com")
    assert agent.outbox.sent == [{"to": "ana@example.com", "subject": "Your support request"}]
    assert agent.outbox.skipped == 0


def test_a_shadow_copy_skips_the_email(agent: Agent, langfuse: Langfuse) -> None:
    headers = proxied("shadow", "canary", "req-8", **{"x-coalmine-shadow": "1"})
    with agent.openai(headers) as client:
        answer = ask(client, REFUND)
    assert answer.choices[0].message.content
    assert agent.outbox.sent == [] and agent.outbox.skipped == 1
    langfuse.flush()
    [tool] = langfuse.api.observations.get_many(
        name="send_email", fields="core,basic,io,trace_context"
    ).data
    assert json.loads(tool.output) == {"sent": False, "skipped": "shadow copy"}
    assert tool.tags == trace_tags("support-agent", Arm.SHADOW)


# -------------------------------------------------------------------- plain HTTP


def test_health_and_bad_requests(agent: Agent) -> None:
    with httpx.Client(base_url=agent.url) as http:
        assert http.get("/healthz").json() == {"status": "ok", "name": "canary"}
        response = http.post("/v1/chat/completions", json={"messages": []})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


# --------------------------------------------------------------------- mock model


def test_prompt_traits_come_from_config_then_markers() -> None:
    assert mock_llm.PromptTraits.of("plain") == mock_llm.PromptTraits(
        mock_llm.DEFAULT_QUALITY, mock_llm.DEFAULT_ERROR_RATE
    )
    marked = mock_llm.PromptTraits.of("x [[quality=0.4]] [[ error_rate = 0.05 ]]")
    assert marked == mock_llm.PromptTraits(0.4, 0.05)
    configured = mock_llm.PromptTraits.of("x [[quality=0.4]]", {"quality": 0.8})
    assert configured == mock_llm.PromptTraits(0.8, mock_llm.DEFAULT_ERROR_RATE)
    clipped = mock_llm.PromptTraits.of("x", {"quality": 3, "error_rate": -1})
    assert clipped == mock_llm.PromptTraits(1.0, 0.0)
    ignored = mock_llm.PromptTraits.of("x", {"quality": "high", "error_rate": True})
    assert ignored == mock_llm.PromptTraits()


def test_errors_are_drawn_per_request_id() -> None:
    traits = mock_llm.PromptTraits(quality=0.8, error_rate=0.3)
    outcomes = [
        mock_llm.complete("p", QUESTION, traits, request_key=f"r{i}").failed for i in range(200)
    ]
    again = [
        mock_llm.complete("p", QUESTION, traits, request_key=f"r{i}").failed for i in range(200)
    ]
    assert outcomes == again
    assert 30 < sum(outcomes) < 90  # about 60 of 200 with seeded request ids


def test_quality_follows_the_prompt() -> None:
    def mean_quality(quality: float) -> float:
        traits = mock_llm.PromptTraits(quality=quality)
        answers = [
            mock_llm.complete(
                "p", [{"role": "user", "content": f"q{i}"}], traits, request_key=str(i)
            )
            for i in range(100)
        ]
        assert all(abs(a.quality - quality) <= mock_llm.QUALITY_JITTER / 2 for a in answers)
        return sum(a.quality for a in answers) / len(answers)

    assert mean_quality(0.85) - mean_quality(0.6) == pytest.approx(0.25, abs=0.02)
