"""The official OpenAI SDK through the proxy: the tokens an OpenAI-like upstream reports
reach the request's outcome, streamed (``include_usage``) or not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from openai import OpenAI

from proxy.outcome import Failure, RequestOutcome, Usage
from tests.proxy.proxy_support import (
    RunningProxy,
    make_policy,
    serving,
    start_proxy,
    wait_until,
)


class Recorded:
    """A span reporter that keeps every outcome."""

    def __init__(self) -> None:
        self.outcomes: list[RequestOutcome] = []

    def record(self, outcome: RequestOutcome) -> None:
        self.outcomes.append(outcome)

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def openai_like(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Chat completions as OpenAI answers them: the last chunk before ``[DONE]`` carries
    ``usage`` when the request asked for it; a whole completion carries it always."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = json.loads(body)
    usage: dict[str, object] = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    if request["model"] == "malformed":
        usage["prompt_tokens"] = -12
    base = {"id": "chatcmpl-1", "created": 1, "model": request["model"]}
    if not request.get("stream"):
        completion = {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hi there"},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
        payload = json.dumps(completion).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})
        return
    include = (request.get("stream_options") or {}).get("include_usage", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
        }
    )
    for text in ("Hi", " there", None):
        delta = {"content": text} if text else {}
        chunk = {
            **base,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None if text else "stop"}],
            **({"usage": None} if include else {}),
        }
        event = f"data: {json.dumps(chunk)}\n\n".encode()
        await send({"type": "http.response.body", "body": event, "more_body": True})
    if include:
        last = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
        event = f"data: {json.dumps(last)}\n\n".encode()
        await send({"type": "http.response.body", "body": event, "more_body": True})
    if request["model"] == "hang":
        await receive()  # until the proxy goes away
        return
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


Proxied = tuple[OpenAI, Recorded, RunningProxy]


@pytest.fixture
def proxied(running: list[RunningProxy]) -> Iterator[Proxied]:
    with serving(openai_like) as upstream:
        recorded = Recorded()
        policy = make_policy(stable=upstream.base_url, canary=upstream.base_url)
        proxy = start_proxy([policy], running, spans=recorded)
        client = OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", timeout=10.0, max_retries=0)
        try:
            yield client, recorded, proxy
        finally:
            client.close()


def _outcome(recorded: Recorded) -> RequestOutcome:
    wait_until(lambda: len(recorded.outcomes) == 1, what="the request's outcome")
    return recorded.outcomes[0]


def test_a_stream_with_include_usage_gives_its_tokens(
    proxied: Proxied,
) -> None:
    client, recorded, _ = proxied
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hi there"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 12
    assert _outcome(recorded).usage == Usage(12, 3, None)


def test_a_stream_without_usage_gives_none(proxied: Proxied) -> None:
    client, recorded, _ = proxied
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert len(list(stream)) == 3
    outcome = _outcome(recorded)
    assert outcome.status == 200
    assert outcome.usage is None


def test_a_whole_completion_gives_its_tokens(proxied: Proxied) -> None:
    client, recorded, proxy = proxied
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3
    outcome = _outcome(recorded)
    assert outcome.usage == Usage(12, 3, None)
    tokens = "coalmine_proxy_tokens_total"
    proxy.wait_for(12.0, tokens, release="support", arm=outcome.arm.value, type="input")
    assert proxy.metric(tokens, release="support", arm=outcome.arm.value, type="output") == 3.0


def test_a_malformed_usage_is_none_and_counted(proxied: Proxied) -> None:
    client, recorded, proxy = proxied
    stream = client.chat.completions.create(
        model="malformed",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert len(list(stream)) == 4
    outcome = _outcome(recorded)
    assert outcome.usage is None
    unreadable = "coalmine_proxy_usage_unreadable_total"
    assert proxy.metric(unreadable, release="support", arm=outcome.arm.value) == 1.0


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_client_gone_mid_stream_gives_the_usage_read_so_far(
    proxied: Proxied, include_usage: bool
) -> None:
    """The upstream sends every chunk but ``[DONE]`` and hangs; the client leaves."""
    client, recorded, _ = proxied
    stream = client.chat.completions.create(
        model="hang",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": include_usage},
    )
    for seen, _chunk in enumerate(stream, start=1):
        if seen == (4 if include_usage else 3):
            break
    stream.close()
    outcome = _outcome(recorded)
    assert outcome.failure is Failure.CLIENT_GONE
    assert outcome.usage == (Usage(12, 3, None) if include_usage else None)
