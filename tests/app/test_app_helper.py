"""The app-side helper: coalmine's headers in, a tagged continuation of the proxy's
trace out, read back from a live Langfuse emulator through the official SDK."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from langfuse import Langfuse
from opentelemetry.sdk.trace import TracerProvider

from coalmine.app import (
    CoalmineMiddleware,
    ReleaseContext,
    context_from_headers,
    current,
    is_shadow,
    prompt_label,
    request_scope,
)
from coalmine.shared.conventions import trace_tags
from policies.domain import Arm
from proxy.outcome import RequestOutcome
from proxy.spans import export_request
from tests.emulator.emulator_support import (
    LiveEmulator,
    langfuse_client,
)

ROOT = Path(__file__).resolve().parents[2]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PROXY_SPAN = "00f067aa0ba902b7"
SHADOW_TRACE = "5cf92f3577b34da6a3ce929d0e0e4737"
SHADOW_SPAN = "11f067aa0ba902b8"
PRIMARY_TRACE = "6df92f3577b34da6a3ce929d0e0e4738"


def proxied(
    arm: str = "canary",
    *,
    trace: str = TRACE,
    span: str = PROXY_SPAN,
    label: str = "canary",
    **extra: str,
) -> dict[str, str]:
    """The headers the proxy sends upstream for one request."""
    return {
        "x-coalmine-release": "support-agent",
        "x-coalmine-arm": arm,
        "x-coalmine-prompt-label": label,
        "x-request-id": "req-1",
        "traceparent": f"00-{trace}-{span}-01",
        **extra,
    }


# ----------------------------------------------------------------------- headers


def test_every_header_is_read_from_asgi_pairs_and_mappings() -> None:
    pairs = [(name.encode(), value.encode()) for name, value in proxied().items()]
    mapping = {name.upper(): value for name, value in proxied().items()}
    for source in (pairs, mapping):
        ctx = context_from_headers(source)
        assert ctx == ReleaseContext(
            release="support-agent",
            arm="canary",
            prompt_label="canary",
            shadow=False,
            shadow_of=None,
            request_id="req-1",
            traceparent=f"00-{TRACE}-{PROXY_SPAN}-01",
        )
        assert ctx.tags == trace_tags("support-agent", Arm.CANARY)
        assert (ctx.trace_id, ctx.parent_span_id) == (TRACE, PROXY_SPAN)


def test_a_shadow_copy_is_recognised() -> None:
    headers = proxied(
        "shadow",
        label="canary",
        **{"x-coalmine-shadow": "1", "x-coalmine-shadow-of": PRIMARY_TRACE},
    )
    ctx = context_from_headers(headers)
    assert ctx.shadow and ctx.arm == "shadow" and ctx.shadow_of == PRIMARY_TRACE
    assert ctx.tags == trace_tags("support-agent", Arm.SHADOW)


def test_the_first_of_repeated_headers_wins() -> None:
    pairs = [(b"x-coalmine-arm", b"baseline"), (b"X-Coalmine-Arm", b"canary")]
    assert context_from_headers(pairs).arm == "baseline"


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("x-coalmine-arm", "blue", "arm"),
        ("x-coalmine-arm", "", "arm"),
        ("x-coalmine-release", "Support Agent", "release"),
        ("x-coalmine-release", "-leading-dash", "release"),
        ("x-coalmine-release", "a" * 64, "release"),
        ("x-coalmine-prompt-label", "Prod/1", "prompt_label"),
        ("x-coalmine-prompt-label", "p" * 37, "prompt_label"),
        ("x-coalmine-shadow-of", "not-a-trace-id", "shadow_of"),
        ("x-request-id", "has spaces", "request_id"),
        ("x-request-id", "r" * 129, "request_id"),
        ("traceparent", "00-zz-yy-01", "trace_id"),
        ("traceparent", f"00-{'0' * 32}-{PROXY_SPAN}-01", "trace_id"),
        ("traceparent", f"00-{TRACE}-{'0' * 16}-01", "parent_span_id"),
        ("traceparent", f"ff-{TRACE}-{PROXY_SPAN}-01", "trace_id"),
        ("traceparent", f"00-{TRACE}-{PROXY_SPAN}-01-extra", "trace_id"),
        ("traceparent", "\x00" * 10, "traceparent"),
    ],
)
def test_garbage_values_count_as_absent(name: str, value: str, field: str) -> None:
    headers = {**proxied(), name: value}
    assert getattr(context_from_headers(headers), field) is None


def test_undecodable_and_odd_pairs_are_skipped() -> None:
    pairs: list[Any] = [
        (b"x-coalmine-arm", b"\xff\xfe"),
        (None, b"canary"),
        (b"x-coalmine-release", 7),
        (b"x-coalmine-shadow", b"maybe"),
    ]
    ctx = context_from_headers(pairs)
    assert ctx == ReleaseContext()
    assert ctx.tags == [] and not ctx.shadow


def test_tags_need_both_release_and_arm() -> None:
    assert context_from_headers({"x-coalmine-release": "support-agent"}).tags == []
    assert context_from_headers({"x-coalmine-arm": "canary"}).tags == []


def test_outside_a_request_the_context_is_empty() -> None:
    assert current() == ReleaseContext()
    assert not is_shadow()
    assert prompt_label() == "production"
    assert prompt_label("stable") == "stable"


def test_request_scope_sets_the_context_and_restores_it() -> None:
    with request_scope(proxied("baseline", label="production"), langfuse=False) as ctx:
        assert current() is ctx
        assert prompt_label("other") == "production"
        assert not is_shadow()
        with request_scope({"x-coalmine-shadow": "true"}, langfuse=False):
            assert is_shadow()
            assert prompt_label() == "production"  # no label: the default
        assert current() is ctx
    assert current() == ReleaseContext()


def test_importing_the_helper_needs_no_langfuse() -> None:
    code = (
        "import sys; import coalmine.app; "
        "assert not [m for m in sys.modules if m.split('.')[0] in "
        "('langfuse', 'opentelemetry', 'fastapi', 'starlette', 'httpx')]"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)


# ----------------------------------------------------------------------- tracing


@pytest.fixture
def langfuse(emulator: LiveEmulator) -> Iterator[Langfuse]:
    with langfuse_client(emulator, tracer_provider=TracerProvider()) as client:
        yield client


class Outbox:
    """What the app's side-effecting tool did."""

    def __init__(self) -> None:
        self.sent: list[str] = []


def sample_app(sdk: Langfuse, outbox: Outbox, **options: Any) -> FastAPI:
    """An app that reports what the helper told it and records a tool and an LLM call."""
    app = FastAPI()
    app.add_middleware(CoalmineMiddleware, **options)

    @app.post("/chat")
    async def chat() -> dict[str, Any]:
        ctx = current()
        with sdk.start_as_current_observation(name="send_email", as_type="tool") as tool:
            if is_shadow():
                tool.update(metadata={"skipped": True})
            else:
                outbox.sent.append(ctx.request_id or "")
        with sdk.start_as_current_observation(name="llm", as_type="generation"):
            pass
        return {
            "label": prompt_label(),
            "shadow": is_shadow(),
            "tags": ctx.tags,
            "trace_id": sdk.get_current_trace_id(),
        }

    @app.post("/sync")
    def sync_chat() -> dict[str, Any]:
        # Starlette runs plain functions in a worker thread, with the request's context.
        with sdk.start_as_current_observation(name="step"):
            return {"label": prompt_label(), "trace_id": sdk.get_current_trace_id()}

    @app.post("/broken")
    async def broken() -> JSONResponse:
        return JSONResponse({"error": "boom"}, status_code=503)

    return app


def call(app: FastAPI, path: str, headers: dict[str, str]) -> Any:
    with TestClient(app) as client:
        response = client.post(path, headers=headers)
    return response


def observations(langfuse: Langfuse, **params: Any) -> list[Any]:
    langfuse.flush()
    page = langfuse.api.observations.get_many(
        fields="core,basic,trace_context,metadata", limit=100, **params
    )
    return list(page.data)


def send_proxy_root(emulator: LiveEmulator, *, trace: str, span: str, arm: Arm) -> None:
    """The proxy's own span of the request, as ``proxy.spans`` exports it."""
    now = time.time_ns()
    outcome = RequestOutcome(
        release="support-agent",
        arm=arm,
        method="POST",
        path="/chat",
        status=200,
        start_ns=now - 50_000_000,
        end_ns=now + 50_000_000,
        trace_id=trace,
        span_id=span,
        parent_span_id=None,
        request_id="req-1",
        prompt_label="canary",
    )
    body = export_request([outcome], "coalmine-proxy").SerializeToString()
    headers = {"content-type": "application/x-protobuf", "x-langfuse-ingestion-version": "4"}
    with emulator.client() as http:
        response = http.post("/api/public/otel/v1/traces", content=body, headers=headers)
    assert response.status_code == 200, response.text


def test_a_proxied_request_joins_under_the_proxy_span(
    langfuse: Langfuse, emulator: LiveEmulator
) -> None:
    outbox = Outbox()
    app = sample_app(langfuse, outbox, public_key=emulator.settings.public_key, name="handle")
    response = call(app, "/chat", proxied())
    send_proxy_root(emulator, trace=TRACE, span=PROXY_SPAN, arm=Arm.CANARY)

    tags = trace_tags("support-agent", Arm.CANARY)
    assert response.status_code == 200
    assert response.json() == {"label": "canary", "shadow": False, "tags": tags, "trace_id": TRACE}
    assert outbox.sent == ["req-1"]
    rows = {row.name: row for row in observations(langfuse, trace_id=TRACE)}
    assert set(rows) == {"POST /chat", "handle", "send_email", "llm"}
    proxy_root, handle = rows["POST /chat"], rows["handle"]
    assert proxy_root.id == PROXY_SPAN and proxy_root.is_root_observation is True
    # The app's span hangs under the proxy's span and leaves the root to it.
    assert handle.parent_observation_id == PROXY_SPAN
    assert handle.is_root_observation is False
    assert rows["send_email"].parent_observation_id == handle.id
    assert rows["llm"].parent_observation_id == handle.id
    assert [row.id for row in rows.values() if row.is_root_observation] == [PROXY_SPAN]
    for row in rows.values():
        assert row.trace_id == TRACE
        assert row.tags == tags
    assert handle.metadata["coalmine_release"] == "support-agent"
    assert handle.metadata["coalmine_arm"] == "canary"
    assert handle.metadata["coalmine_request_id"] == "req-1"


def test_without_proxy_spans_the_app_span_is_the_root(
    langfuse: Langfuse, emulator: LiveEmulator
) -> None:
    app = sample_app(langfuse, Outbox(), client=langfuse, name="handle", proxy_root=False)
    call(app, "/chat", proxied())
    rows = {row.name: row for row in observations(langfuse, trace_id=TRACE)}
    assert rows["handle"].parent_observation_id == PROXY_SPAN
    assert rows["handle"].is_root_observation is True
    assert rows["llm"].is_root_observation is False


def test_a_plain_function_endpoint_sees_the_context(
    langfuse: Langfuse, emulator: LiveEmulator
) -> None:
    app = sample_app(langfuse, Outbox(), client=langfuse, name="handle")
    assert call(app, "/sync", proxied()).json() == {"label": "canary", "trace_id": TRACE}
    rows = {row.name: row for row in observations(langfuse, trace_id=TRACE)}
    assert rows["step"].parent_observation_id == rows["handle"].id
    assert rows["step"].tags == trace_tags("support-agent", Arm.CANARY)


def test_a_shadow_copy_skips_the_tool(langfuse: Langfuse, emulator: LiveEmulator) -> None:
    outbox = Outbox()
    app = sample_app(langfuse, outbox, public_key=emulator.settings.public_key, name="handle")
    headers = proxied(
        "shadow",
        trace=SHADOW_TRACE,
        span=SHADOW_SPAN,
        **{"x-coalmine-shadow": "1", "x-coalmine-shadow-of": PRIMARY_TRACE},
    )
    response = call(app, "/chat", headers)

    assert response.json()["shadow"] is True
    assert outbox.sent == []
    rows = {row.name: row for row in observations(langfuse, trace_id=SHADOW_TRACE)}
    assert rows["send_email"].metadata["skipped"] is True
    assert rows["handle"].metadata["coalmine_shadow_of"] == PRIMARY_TRACE
    for row in rows.values():
        assert row.tags == trace_tags("support-agent", Arm.SHADOW)


def test_without_headers_nothing_is_tagged(langfuse: Langfuse, emulator: LiveEmulator) -> None:
    outbox = Outbox()
    app = sample_app(langfuse, outbox, public_key=emulator.settings.public_key, name="handle")
    response = call(app, "/chat", {})

    body = response.json()
    assert body["label"] == "production" and body["shadow"] is False and body["tags"] == []
    rows = {row.name: row for row in observations(langfuse, trace_id=body["trace_id"])}
    assert set(rows) == {"handle", "send_email", "llm"}
    assert all(row.tags in (None, []) for row in rows.values())
    # No proxy in front: the app's span is the trace's root.
    assert rows["handle"].is_root_observation is True
    assert rows["handle"].parent_observation_id is None
    assert outbox.sent == [""]


def test_garbage_headers_leave_the_request_untagged(
    langfuse: Langfuse, emulator: LiveEmulator
) -> None:
    outbox = Outbox()
    app = sample_app(langfuse, outbox, public_key=emulator.settings.public_key, name="handle")
    headers = {
        "x-coalmine-release": "Robert'); DROP TABLE",
        "x-coalmine-arm": "purple",
        "x-coalmine-prompt-label": "../../etc",
        "x-coalmine-shadow": "nope",
        "traceparent": "garbage",
    }
    body = call(app, "/chat", headers).json()
    assert body["label"] == "production" and body["shadow"] is False and body["tags"] == []
    assert body["trace_id"] != TRACE
    assert outbox.sent == [""]
    rows = observations(langfuse, trace_id=body["trace_id"])
    assert {row.name for row in rows} == {"handle", "send_email", "llm"}


def test_a_server_error_marks_the_request_span(langfuse: Langfuse, emulator: LiveEmulator) -> None:
    app = sample_app(langfuse, Outbox(), public_key=emulator.settings.public_key)
    response = call(app, "/broken", proxied("baseline", label="production"))
    assert response.status_code == 503
    [row] = observations(langfuse, trace_id=TRACE)
    assert row.name == "POST /broken" and row.parent_observation_id == PROXY_SPAN
    assert row.level == "ERROR" and row.status_message == "HTTP 503"
    assert row.tags == trace_tags("support-agent", Arm.BASELINE)


def test_langfuse_off_sets_the_context_only(langfuse: Langfuse, emulator: LiveEmulator) -> None:
    outbox = Outbox()
    app = sample_app(
        langfuse, outbox, public_key=emulator.settings.public_key, langfuse=False, name="handle"
    )
    body = call(app, "/chat", proxied()).json()
    assert body["label"] == "canary"
    rows = observations(langfuse)
    # The app's own spans are still recorded, with no tags and in a trace of their own.
    assert {row.name for row in rows} == {"send_email", "llm"}
    assert all(row.tags in (None, []) and row.trace_id != TRACE for row in rows)


def test_request_scope_traces_a_plain_function(langfuse: Langfuse, emulator: LiveEmulator) -> None:
    def handle(headers: dict[str, str]) -> str:
        with request_scope(headers, name="worker", public_key=emulator.settings.public_key) as ctx:
            with langfuse.start_as_current_observation(name="step"):
                pass
            return prompt_label() + ("/shadow" if ctx.shadow else "")

    assert handle(proxied("baseline", label="production")) == "production"
    rows = {row.name: row for row in observations(langfuse, trace_id=TRACE)}
    assert set(rows) == {"worker", "step"}
    assert rows["worker"].parent_observation_id == PROXY_SPAN
    assert rows["step"].parent_observation_id == rows["worker"].id
    for row in rows.values():
        assert row.tags == trace_tags("support-agent", Arm.BASELINE)
    assert current() == ReleaseContext()


def test_a_plain_asgi_app_gets_its_context() -> None:
    seen: list[ReleaseContext] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        seen.append(current())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with TestClient(CoalmineMiddleware(app, langfuse=False)) as client:
        assert client.get("/", headers=proxied()).status_code == 204
    assert seen and seen[0].arm == "canary"


def test_without_coalmine_headers_the_deployment_environment_says_the_arm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COALMINE_ARM", "canary")
    monkeypatch.setenv("COALMINE_RELEASE", "support")
    ctx = context_from_headers({"content-type": "application/json"})
    assert (ctx.release, ctx.arm) == ("support", Arm.CANARY)
    # a route's header modifier (or a proxy) wins over the environment
    routed = context_from_headers({"x-coalmine-arm": "baseline", "x-coalmine-release": "other"})
    assert (routed.release, routed.arm) == ("other", Arm.BASELINE)
    monkeypatch.setenv("COALMINE_ARM", "sideways")
    assert context_from_headers({}).arm is None


def test_without_headers_or_environment_there_is_no_release(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COALMINE_ARM", raising=False)
    monkeypatch.delenv("COALMINE_RELEASE", raising=False)
    ctx = context_from_headers({})
    assert (ctx.release, ctx.arm) == (None, None)
