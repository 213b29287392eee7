"""The sample support agent: an OpenAI-compatible chat endpoint traced with Langfuse.

Each request to ``POST /v1/chat/completions``:

1. runs inside :class:`coalmine.app.CoalmineMiddleware`, so its spans join the proxy's
   trace with the release and arm tags;
2. fetches the text prompt ``support-agent`` by the label the proxy names
   (``prompt_label()``, default ``production``) through the SDK's cached ``get_prompt``;
3. answers through the deterministic mock model (:mod:`coalmine.demo.agent.mock_llm`), whose
   quality and error rate come from the prompt version;
4. records a generation (model, usage, cost in USD, the prompt version, and the answer's
   ``quality`` in its metadata for the evaluator); a failed answer is a generation of
   level ERROR and an HTTP 500;
5. when the user asks for a refund or an email, calls the ``send_email`` tool, except
   on a shadow copy (``is_shadow()``), where the call is skipped and logged.

``stream: true`` answers with Server-Sent Events shaped like OpenAI's, so the ``openai``
SDK reads either form.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from langfuse import Langfuse, LangfuseGeneration
from langfuse.api import Prompt_Text
from langfuse.model import TextPromptClient
from pydantic import BaseModel, ConfigDict, Field

from coalmine.app import CoalmineMiddleware, current, is_shadow, prompt_label
from coalmine.demo.agent import mock_llm

logger = logging.getLogger("coalmine.demo.agent")

PROMPT_NAME: Final = "support-agent"
MODEL: Final = "mock-support-1"
FALLBACK_PROMPT: Final = (
    "You are a support agent. Answer the customer's question briefly and politely."
)
"""Used when Langfuse cannot be reached and nothing is cached; never linked to traces."""
_TOOL_TRIGGERS: Final = ("refund", "email")


@dataclass(frozen=True)
class AgentSettings:
    """How one agent process behaves."""

    name: str = "stable"
    """Which deployment this is (stable, canary, staging): for logs and span metadata."""
    prompt_name: str = PROMPT_NAME
    prompt_cache_seconds: int | None = None
    """TTL of the SDK's prompt cache; None keeps the SDK's default (60 s)."""
    llm_delay_ms: float = 0.0
    """Time the mock model takes per answer (spread over the chunks when streaming)."""
    model: str = MODEL


@dataclass
class Outbox:
    """Emails the ``send_email`` tool sent (the side effect shadow copies must skip)."""

    sent: list[dict[str, str]] = field(default_factory=list)
    skipped: int = 0


# ------------------------------------------------------------------ request shapes


class ChatMessage(BaseModel):
    """One message of an OpenAI chat request; content parts other than text are
    ignored."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(part.get("text", "")) for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """The part of an OpenAI ``chat.completions`` request the agent reads."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    user: str | None = None


# ------------------------------------------------------------------------- the app


def create_app(settings: AgentSettings, client: Langfuse) -> FastAPI:
    """The agent's FastAPI app; ``client`` fetches prompts and records observations."""
    app = FastAPI(title=f"support agent ({settings.name})")
    app.add_middleware(CoalmineMiddleware, client=client)
    app.state.outbox = Outbox()

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, error: RequestValidationError) -> JSONResponse:
        message = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc'])}: {issue['msg']}"
            for issue in error.errors()
        )
        return _error(400, message, "invalid_request_error")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "name": settings.name}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest) -> Response:
        return await _answer(settings, client, app.state.outbox, body)

    return app


async def _answer(
    settings: AgentSettings, client: Langfuse, outbox: Outbox, body: ChatRequest
) -> Response:
    ctx = current()
    label = prompt_label()
    prompt = await asyncio.to_thread(_fetch_prompt, client, settings, label)
    traits = mock_llm.PromptTraits.of(prompt.prompt, prompt.config)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    request_key = ctx.request_id or _digest(json.dumps(messages))
    completion = mock_llm.complete(prompt.prompt, messages, traits, request_key=request_key)
    generation = client.start_observation(
        name="chat-completion",
        as_type="generation",
        model=settings.model,
        input=[{"role": "system", "content": prompt.prompt}, *messages],
        model_parameters=None if body.temperature is None else {"temperature": body.temperature},
        prompt=None if prompt.is_fallback else prompt,
        metadata={"agent": settings.name, "prompt_label": label},
    )
    logger.info(
        "%s: %s arm=%s label=%s prompt=v%s quality=%.3f%s",
        settings.name,
        request_key,
        ctx.arm or "-",
        label,
        prompt.version,
        completion.quality,
        " FAILED" if completion.failed else "",
    )
    if completion.failed:
        generation.update(level="ERROR", status_message="mock model failed (prompt error rate)")
        generation.end()
        return _error(500, "The model failed to answer; try again.", "server_error")
    _maybe_send_email(client, outbox, settings, messages, body.user)
    answer_id = "chatcmpl-" + _digest(request_key)[:24]
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        chunks = _stream(settings, generation, completion, answer_id, include_usage)
        return StreamingResponse(chunks, media_type="text/event-stream")
    await asyncio.sleep(settings.llm_delay_ms / 1000)
    _finish(generation, completion)
    return JSONResponse(_completion_body(settings, completion, answer_id))


def _fetch_prompt(client: Langfuse, settings: AgentSettings, label: str) -> TextPromptClient:
    """The prompt version holding ``label``, through the SDK's cache; a fallback that
    is never linked to generations when Langfuse has none and nothing is cached."""
    fallback = TextPromptClient(
        Prompt_Text(
            name=settings.prompt_name,
            version=0,
            prompt=FALLBACK_PROMPT,
            config={},
            labels=[],
            tags=[],
        ),
        is_fallback=True,
    )
    try:
        prompt = client.get_prompt(
            settings.prompt_name,
            label=label,
            type="text",
            cache_ttl_seconds=settings.prompt_cache_seconds,
        )
    except Exception as error:  # the SDK raises its HTTP client's errors as they are
        logger.warning("prompt %s@%s unavailable: %s", settings.prompt_name, label, error)
        return fallback
    return prompt


def _maybe_send_email(
    client: Langfuse,
    outbox: Outbox,
    settings: AgentSettings,
    messages: Sequence[dict[str, str]],
    user: str | None,
) -> None:
    """The side effect: confirm a refund or send a transcript by email."""
    last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    if not any(word in last.lower() for word in _TOOL_TRIGGERS):
        return
    email = {"to": user or "customer@example.com", "subject": "Your support request"}
    with client.start_as_current_observation(
        name="send_email", as_type="tool", input=email
    ) as tool:
        if is_shadow():
            outbox.skipped += 1
            tool.update(output={"sent": False, "skipped": "shadow copy"})
            logger.info("%s: send_email skipped on a shadow copy", settings.name)
            return
        outbox.sent.append(email)
        tool.update(output={"sent": True})
        logger.info("%s: send_email to %s", settings.name, email["to"])


def _finish(generation: LangfuseGeneration, completion: mock_llm.Completion) -> None:
    generation.update(
        output=completion.text,
        usage_details=completion.usage_details,
        cost_details=completion.cost_details,
        metadata={"quality": completion.quality},
    )
    generation.end()


async def _stream(
    settings: AgentSettings,
    generation: LangfuseGeneration,
    completion: mock_llm.Completion,
    answer_id: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    created = int(time.time())
    pieces = mock_llm.stream_pieces(completion.text)
    pause = settings.llm_delay_ms / 1000 / len(pieces)
    finished = False
    try:
        yield _event(_chunk(settings, answer_id, created, {"role": "assistant", "content": ""}))
        for index, piece in enumerate(pieces):
            await asyncio.sleep(pause)
            if index == 0:
                generation.update(completion_start_time=datetime.now(UTC))
            yield _event(_chunk(settings, answer_id, created, {"content": piece}))
        yield _event(_chunk(settings, answer_id, created, {}, finish_reason="stop"))
        if include_usage:
            usage_chunk = _chunk(settings, answer_id, created, None)
            usage_chunk["usage"] = _usage(completion)
            yield _event(usage_chunk)
        yield "data: [DONE]\n\n"
        finished = True
    finally:
        if finished:
            _finish(generation, completion)
        else:
            generation.update(level="WARNING", status_message="client went away mid-stream")
            generation.end()


# ---------------------------------------------------------------- response bodies


def _completion_body(
    settings: AgentSettings, completion: mock_llm.Completion, answer_id: str
) -> dict[str, Any]:
    return {
        "id": answer_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": settings.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(completion),
        "system_fingerprint": None,
    }


def _chunk(
    settings: AgentSettings,
    answer_id: str,
    created: int,
    delta: dict[str, str] | None,
    *,
    finish_reason: str | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; ``delta`` None: the usage chunk, with no choices."""
    choices = (
        []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    )
    return {
        "id": answer_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": settings.model,
        "system_fingerprint": None,
        "choices": choices,
    }


def _usage(completion: mock_llm.Completion) -> dict[str, int]:
    return {
        "prompt_tokens": completion.input_tokens,
        "completion_tokens": completion.output_tokens,
        "total_tokens": completion.input_tokens + completion.output_tokens,
    }


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def _error(status: int, message: str, kind: str) -> JSONResponse:
    """An error in OpenAI's shape."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return JSONResponse(body, status_code=status)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
