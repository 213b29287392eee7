"""Helpers for the tests of the Langfuse sample source and label mover: a live emulator,
policies, spans as the proxy and the app send them, scores, a clock that moves only
when told."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from coalmine.emulator.ratelimit import Clock
from coalmine.emulator.settings import EmulatorSettings
from coalmine.shared.conventions import trace_tags
from coalmine.shared.routing_tables.store import SqliteRoutingStore
from controller.labels import StaticPromptLabels
from controller.loop import Controller
from controller.release_store import ControllerState
from controller.source.budget import BudgetSettings, RequestBudget
from controller.source.langfuse import LangfuseSource, SourceSettings
from policies.domain import Arm
from policies.model import Policy
from proxy.outcome import RequestOutcome
from proxy.spans import export_request
from tests.emulator.emulator_support import (  # the SDK helpers are re-exported for the tests
    LiveEmulator,
    langfuse_client,  # noqa: F401
    sdk_emulator_settings,  # noqa: F401
    start_emulator,
)

T0 = 1_767_225_600.0
"""2026-01-01T00:00:00Z: the spans of the tests are placed around it."""

OTLP = "/api/public/otel/v1/traces"
SCORES = "/api/public/scores"
PROMPTS = "/api/public/v2/prompts"
FAULTS = "/emulator/faults"
OTLP_HEADERS = {"content-type": "application/x-protobuf", "x-langfuse-ingestion-version": "4"}


class FakeClock:
    """Seconds that move only when told."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextmanager
def live_emulator(
    settings: EmulatorSettings | None = None, *, clock: Clock | None = None
) -> Iterator[LiveEmulator]:
    """An emulator on a loopback port; every answer it gave must have kept to the spec."""
    live = start_emulator(settings or EmulatorSettings(), clock=clock)
    try:
        yield live
    finally:
        live.stop()
    assert not live.checked.violations, "\n".join(live.checked.violations)


def policy(
    name: str,
    *,
    prompt: str | None = None,
    scores: Sequence[str] = (),
    read_timeout: str = "10s",
) -> Policy:
    """A minimal valid policy: an error-rate metric, plus one metric per score name."""
    metrics: list[dict[str, Any]] = [
        {"name": "errors", "source": "error_rate", "tolerance": 0.01},
    ]
    metrics += [
        {"name": f"s-{score}", "source": "score", "score": score, "tolerance": 0.05}
        for score in scores
    ]
    target: dict[str, Any] = {"upstreams": {"stable": "http://127.0.0.1:9001"}}
    if prompt is not None:
        target["prompt"] = {"name": prompt}
    return Policy.model_validate(
        {
            "apiVersion": "coalmine/v1",
            "kind": "Release",
            "name": name,
            "target": target,
            "routing": {"readTimeout": read_timeout},
            "steps": [{"weight": 10}],
            "analysis": {"metrics": metrics},
        }
    )


def trace_id(number: int) -> str:
    return f"{number:032x}"


def span_id(number: int) -> str:
    return f"{number:016x}"


def ns(seconds: float) -> int:
    """Nanoseconds, whole milliseconds (what Langfuse keeps) counted exactly."""
    return round(seconds * 1000) * 1_000_000


def root(
    release: str,
    arm: Arm | str,
    trace: int,
    start: float,
    duration: float = 0.25,
    *,
    status: int = 200,
) -> RequestOutcome:
    """The proxy's record of one request: its span is the trace's root."""
    return RequestOutcome(
        release=release,
        arm=Arm(arm),
        method="POST",
        path="/chat",
        status=status,
        start_ns=ns(start),
        end_ns=ns(start + duration),
        trace_id=trace_id(trace),
        span_id=span_id(trace),
        parent_span_id=None,
        request_id=f"req-{trace}",
        prompt_label=None,
    )


def app_span(
    trace: int,
    span: int,
    start: float,
    duration: float,
    tags: Sequence[str],
    *,
    cost: float | None = None,
    prompt: tuple[str, int] | None = None,
    level: str | None = None,
    generation: bool = True,
    is_root: bool = False,
) -> Span:
    """A span of the app under the proxy's root span of ``trace`` (or a root itself)."""
    attributes = [
        KeyValue(
            key="langfuse.trace.tags",
            value=AnyValue(
                array_value=ArrayValue(values=[AnyValue(string_value=tag) for tag in tags])
            ),
        ),
        _string("langfuse.observation.type", "generation" if generation else "span"),
    ]
    if cost is not None:
        _add(attributes, "langfuse.observation.cost_details", json.dumps({"total": cost}))
    if prompt is not None:
        _add(attributes, "langfuse.observation.prompt.name", prompt[0])
        attributes.append(
            KeyValue(key="langfuse.observation.prompt.version", value=AnyValue(int_value=prompt[1]))
        )
    if level is not None:
        _add(attributes, "langfuse.observation.level", level)
    result = Span(
        trace_id=bytes.fromhex(trace_id(trace)),
        span_id=bytes.fromhex(span_id(span)),
        name="llm" if generation else "step",
        kind=Span.SpanKind.SPAN_KIND_INTERNAL,
        start_time_unix_nano=ns(start),
        end_time_unix_nano=ns(start + duration),
        attributes=attributes,
    )
    if not is_root:
        result.parent_span_id = bytes.fromhex(span_id(trace))
    return result


def _string(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _add(attributes: list[KeyValue], key: str, value: str) -> None:
    attributes.append(_string(key, value))


def send_roots(http: httpx.Client, outcomes: Sequence[RequestOutcome]) -> None:
    """POST the proxy's spans of these requests, as the proxy does."""
    body = export_request(outcomes, "coalmine-proxy").SerializeToString()
    response = http.post(OTLP, content=body, headers=OTLP_HEADERS)
    assert response.status_code == 200, response.text


def send_spans(http: httpx.Client, spans: Sequence[Span]) -> None:
    """POST app spans in one OTLP export."""
    export = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]
    )
    response = http.post(OTLP, content=export.SerializeToString(), headers=OTLP_HEADERS)
    assert response.status_code == 200, response.text


def tags_of(release: str, arm: Arm | str) -> list[str]:
    return trace_tags(release, arm)


def post_score(
    http: httpx.Client,
    name: str,
    value: float | str,
    *,
    at: float,
    trace: int | None = None,
    data_type: str | None = None,
    observation: int | None = None,
    session: str | None = None,
) -> str:
    """Create one score; its id."""
    body: dict[str, Any] = {"name": name, "value": value, "timestamp": iso(at)}
    if trace is not None:
        body["traceId"] = trace_id(trace)
    if observation is not None:
        body["observationId"] = span_id(observation)
    if session is not None:
        body["sessionId"] = session
    if data_type is not None:
        body["dataType"] = data_type
    response = http.post(SCORES, json=body)
    assert response.status_code == 200, response.text
    score_id: str = response.json()["id"]
    return score_id


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def add_fault(http: httpx.Client, spec: str) -> None:
    response = http.post(FAULTS, json={"spec": spec})
    assert response.status_code == 201, response.text


def clear_faults(http: httpx.Client) -> None:
    assert http.delete(FAULTS).status_code == 204


def refuse_requests(request: httpx.Request) -> httpx.Response:
    """A transport handler for tests that must make no request."""
    raise AssertionError(f"unexpected request {request.method} {request.url}")


def held(name: str) -> Policy:
    """A release of prompt ``prompt-<name>`` scored on helpfulness, held in its first
    step for hours."""
    document = policy(name, prompt=f"prompt-{name}", scores=["helpfulness"]).model_dump(
        by_alias=True, exclude_none=True, mode="json"
    )
    document["steps"] = [{"weight": 50, "minDuration": "2h", "maxDuration": "4h"}]
    return Policy.model_validate(document)


@contextmanager
def controller_on_mock(
    path: Path,
    clock: FakeClock,
    answer: Callable[[httpx.Request], httpx.Response],
    *,
    per_minute: int,
    settings: SourceSettings,
    policies: dict[str, Policy],
) -> Iterator[tuple[Controller, ControllerState, LangfuseSource]]:
    """A controller whose Langfuse is ``answer``, within a budget of ``per_minute``, its
    releases' prompts on production 1 and canary 2."""
    state = ControllerState(path)
    routing = SqliteRoutingStore(path)
    source = LangfuseSource(
        "http://langfuse.invalid",
        "pk-lf-test",
        "sk-lf-test",
        budget=RequestBudget(BudgetSettings(per_minute=per_minute), clock=clock),
        settings=settings,
        transport=httpx.MockTransport(answer),
        clock=clock,
        rng=random.Random(3),
    )
    labels = {f"prompt-{name}": {"production": 1, "canary": 2} for name in policies}
    controller = Controller(
        state=state,
        routing=routing,
        source=source,
        labels=StaticPromptLabels(labels),
        policies=lambda: policies,
    )
    try:
        yield controller, state, source
    finally:
        source.close()
        state.close()
        routing.close()


def root_row(key: str, trace: str, start: str, end: str, tags: list[str]) -> dict[str, object]:
    """A root observation as ``GET /api/public/v2/observations`` lists it (times ISO)."""
    return {
        "id": f"root-{key}",
        "traceId": trace,
        "startTime": start,
        "endTime": end,
        "isRootObservation": True,
        "level": "DEFAULT",
        "type": "SPAN",
        "tags": tags,
    }


def trace_score_row(key: str, trace: str, at: str, value: float = 0.8) -> dict[str, object]:
    """A numeric ``helpfulness`` score of ``trace`` as ``GET /api/public/v3/scores``
    lists it (``at`` ISO)."""
    return {
        "id": f"score-{key}",
        "name": "helpfulness",
        "dataType": "NUMERIC",
        "value": value,
        "timestamp": at,
        "createdAt": at,
        "subject": {"kind": "trace", "id": trace},
    }
