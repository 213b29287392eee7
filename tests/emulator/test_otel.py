"""POST /api/public/otel/v1/traces: OTLP protobuf and JSON, gzip or not, every mapped
field read back through GET /api/public/v2/observations."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

from tests.emulator.emulator_support import LiveEmulator

OTEL = "/api/public/otel/v1/traces"
OBSERVATIONS = "/api/public/v2/observations"
ALL_FIELDS = "core,basic,time,io,metadata,model,usage,prompt,metrics,trace_context"

T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z in nanoseconds
MS = 1_000_000


@dataclass
class SpanSpec:
    """A span, to be sent as protobuf or as OTLP/JSON."""

    span_id: str
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    trace_id: str = "0af7651916cd43dd8448eb211c80319c"
    parent_id: str | None = None
    status_code: int = 0
    status_message: str = ""


def _any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list):
        out = AnyValue()
        out.array_value.values.extend(_any_value(item) for item in value)
        return out
    return AnyValue(string_value=value)


def _key_values(attributes: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=key, value=_any_value(value)) for key, value in attributes.items()]


def protobuf_export(
    spans: list[SpanSpec],
    resource: dict[str, Any] | None = None,
    scope: tuple[str, str] = ("langfuse-sdk", "5.0.4"),
) -> bytes:
    """An ``ExportTraceServiceRequest`` as protobuf bytes."""
    resource_spans = ResourceSpans()
    resource_spans.resource.attributes.extend(_key_values(resource or {}))
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name, scope_spans.scope.version = scope
    for spec in spans:
        scope_spans.spans.append(
            Span(
                trace_id=bytes.fromhex(spec.trace_id),
                span_id=bytes.fromhex(spec.span_id),
                parent_span_id=bytes.fromhex(spec.parent_id) if spec.parent_id else b"",
                name=spec.name,
                kind=Span.SPAN_KIND_INTERNAL,
                start_time_unix_nano=spec.start_ns,
                end_time_unix_nano=spec.end_ns,
                attributes=_key_values(spec.attributes),
                status=Status(code=spec.status_code, message=spec.status_message),  # type: ignore[arg-type]
            )
        )
    return ExportTraceServiceRequest(resource_spans=[resource_spans]).SerializeToString()


def _json_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # int64 as a decimal string, per OTLP/JSON
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [_json_value(item) for item in value]}}
    return {"stringValue": value}


def _json_attributes(attributes: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": key, "value": _json_value(value)} for key, value in attributes.items()]


def json_export(
    spans: list[SpanSpec],
    resource: dict[str, Any] | None = None,
    scope: tuple[str, str] = ("langfuse-sdk", "5.0.4"),
) -> bytes:
    """The same request as OTLP/JSON: ids in hex, 64-bit integers as strings."""
    json_spans = []
    for spec in spans:
        entry: dict[str, Any] = {
            "traceId": spec.trace_id,
            "spanId": spec.span_id,
            "name": spec.name,
            "kind": 1,
            "startTimeUnixNano": str(spec.start_ns),
            "endTimeUnixNano": str(spec.end_ns),
            "attributes": _json_attributes(spec.attributes),
            "status": {"code": spec.status_code, "message": spec.status_message},
        }
        if spec.parent_id:
            entry["parentSpanId"] = spec.parent_id
        json_spans.append(entry)
    document = {
        "resourceSpans": [
            {
                "resource": {"attributes": _json_attributes(resource or {})},
                "scopeSpans": [
                    {"scope": {"name": scope[0], "version": scope[1]}, "spans": json_spans}
                ],
            }
        ]
    }
    return json.dumps(document).encode()


def send(
    client: httpx.Client,
    spans: list[SpanSpec],
    *,
    kind: str = "protobuf",
    compress: bool = False,
    resource: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST spans as the OTel exporters do."""
    if kind == "protobuf":
        body, content_type = protobuf_export(spans, resource), "application/x-protobuf"
    else:
        body, content_type = json_export(spans, resource), "application/json"
    all_headers = {"Content-Type": content_type, **(headers or {})}
    if compress:
        body = gzip.compress(body)
        all_headers["Content-Encoding"] = "gzip"
    return client.post(OTEL, content=body, headers=all_headers)


def by_id(client: httpx.Client, **params: Any) -> dict[str, dict[str, Any]]:
    response = client.get(OBSERVATIONS, params={"fields": ALL_FIELDS, "limit": 1000, **params})
    assert response.status_code == 200, response.text
    return {item["id"]: item for item in response.json()["data"]}


RESOURCE = {
    "service.name": "chat-api",
    "service.version": "svc-9",
    "langfuse.release": "rel-1",
    "deployment.environment.name": "qa",
}


def mapping_spans() -> list[SpanSpec]:
    """One span per mapping rule worth checking."""
    return [
        SpanSpec(
            "a000000000000001",
            "handle-request",
            T0,
            T0 + 1500 * MS,
            {
                "langfuse.trace.tags": ["coalmine:arm:canary", "team:search"],
                "langfuse.environment": "Production",
                "langfuse.version": "v7",
                "user.id": "user-1",
                "session.id": "session-1",
                "langfuse.trace.name": "chat",
                "langfuse.trace.metadata.arm": "canary",
                "langfuse.observation.metadata.step": 1,
                "langfuse.observation.input": '{"question": "hi"}',
                "langfuse.observation.output": "hello",
                "langfuse.trace.public": True,
            },
            status_code=2,
            status_message="upstream timeout",
        ),
        SpanSpec(
            "a000000000000002",
            "llm-call",
            T0 + 100 * MS,
            T0 + 1100 * MS,
            {
                "langfuse.observation.type": "generation",
                "langfuse.observation.model.name": "gpt-4o-mini",
                "langfuse.observation.model.parameters": '{"temperature": 0.2, "stop": ["x"]}',
                "langfuse.observation.usage_details": '{"input": 120, "output": 30}',
                "langfuse.observation.cost_details": '{"input": 0.0012, "output": 0.0006}',
                "langfuse.observation.prompt.name": "answer",
                "langfuse.observation.prompt.version": 3,
                "langfuse.observation.level": "WARNING",
                "langfuse.observation.status_message": "slow",
                "langfuse.observation.completion_start_time": '"2026-01-01T00:00:00.350Z"',
                "langfuse.trace.tags": '["coalmine:arm:canary", "json-tags"]',
            },
            parent_id="a000000000000001",
            status_code=2,  # the level attribute wins over the status
        ),
        SpanSpec(
            "a000000000000003",
            "retrieve",
            T0 + 200 * MS,
            T0 + 300 * MS,
            {
                "langfuse.observation.type": "span",
                "langfuse.observation.prompt.name": "answer",  # not a generation: dropped
                "langfuse.observation.prompt.version": 3,
                "langfuse.trace.tags": "comma-a, comma-b",
                "gen_ai.usage.cost": 0.5,
                "gen_ai.usage.input_tokens": 7,
                "gen_ai.usage.output_tokens": 3,
                "langfuse.environment": "LANGFUSE-staging eu!",
            },
            parent_id="a000000000000001",
        ),
        SpanSpec(
            "a000000000000004",
            "tool",
            T0 + 400 * MS,
            T0 + 450 * MS,
            {"llm.cost.total": 0.25, "langfuse.tags": ["fallback-tag"]},
            parent_id="a000000000000001",
        ),
        SpanSpec(
            "a000000000000005",
            "other-trace-root",
            T0 + 500 * MS,
            T0 + 900 * MS,
            {"langfuse.observation.metadata.langfuse_tags": "from-metadata"},
            trace_id="1af7651916cd43dd8448eb211c80319c",
        ),
    ]


@pytest.mark.parametrize("kind", ["protobuf", "json"])
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_every_mapped_field_reads_back(
    client: httpx.Client, emulator: LiveEmulator, kind: str, compress: bool
) -> None:
    response = send(client, mapping_spans(), kind=kind, compress=compress, resource=RESOURCE)
    assert response.status_code == 200, response.text
    assert response.json() == {}

    seen = by_id(client)
    assert list(seen) == [  # newest first
        "a000000000000005",
        "a000000000000004",
        "a000000000000003",
        "a000000000000002",
        "a000000000000001",
    ]
    root, generation, retrieve, tool, other = (seen[f"a00000000000000{i}"] for i in range(1, 6))

    assert root["traceId"] == "0af7651916cd43dd8448eb211c80319c"
    assert root["projectId"] == emulator.settings.project_id
    assert root["parentObservationId"] is None and root["isRootObservation"] is True
    assert root["startTime"] == "2026-01-01T00:00:00.000Z"
    assert root["endTime"] == "2026-01-01T00:00:01.500Z"
    assert root["latency"] == 1.5
    assert root["type"] == "SPAN" and root["name"] == "handle-request"
    assert root["level"] == "ERROR"  # OTel status code 2
    assert root["statusMessage"] == "upstream timeout"
    assert root["tags"] == ["coalmine:arm:canary", "team:search"]
    assert root["environment"] == "production"  # span before resource, lower-cased
    assert root["version"] == "v7"
    assert root["release"] == "rel-1"  # from the resource
    assert root["userId"] == "user-1" and root["sessionId"] == "session-1"
    assert root["traceName"] == "chat"
    assert root["public"] is True and root["bookmarked"] is False
    assert root["metadata"]["arm"] == "canary" and root["metadata"]["step"] == 1
    assert root["metadata"]["resourceAttributes"]["service.name"] == "chat-api"
    assert root["input"] == '{"question": "hi"}' and root["output"] == "hello"
    assert root["usageDetails"] == {} and root["costDetails"] == {}
    assert root["totalCost"] is None
    assert root["promptName"] is None and root["promptVersion"] is None
    for required in ("modelId", "inputPrice", "outputPrice", "totalPrice"):
        assert root[required] is None

    assert generation["type"] == "GENERATION"
    assert generation["parentObservationId"] == "a000000000000001"
    assert generation["isRootObservation"] is False
    assert generation["level"] == "WARNING" and generation["statusMessage"] == "slow"
    assert generation["providedModelName"] == "gpt-4o-mini"
    assert generation["modelParameters"] == {"temperature": 0.2, "stop": '["x"]'}
    assert generation["usageDetails"] == {"input": 120, "output": 30, "total": 150}
    assert generation["costDetails"] == pytest.approx(
        {"input": 0.0012, "output": 0.0006, "total": 0.0018}
    )
    assert generation["totalCost"] == pytest.approx(0.0018)
    assert (generation["promptName"], generation["promptVersion"]) == ("answer", 3)
    assert generation["promptId"] is None  # no such prompt stored
    assert generation["completionStartTime"] == "2026-01-01T00:00:00.350Z"
    assert generation["timeToFirstToken"] == 0.25
    assert generation["tags"] == ["coalmine:arm:canary", "json-tags"]
    assert generation["environment"] == "qa"  # resource deployment.environment.name
    assert generation["version"] == "svc-9"  # resource service.version
    assert generation["userId"] is None  # nothing is copied from the root span

    assert retrieve["type"] == "SPAN"
    assert retrieve["promptName"] is None and retrieve["promptVersion"] is None
    assert retrieve["tags"] == ["comma-a", "comma-b"]
    assert retrieve["costDetails"] == {"total": 0.5} and retrieve["totalCost"] == 0.5
    assert retrieve["usageDetails"] == {"input": 7, "output": 3, "total": 10}
    assert retrieve["environment"] == "-stagingeu"

    assert tool["costDetails"] == {"total": 0.25} and tool["totalCost"] == 0.25
    assert tool["tags"] == ["fallback-tag"]

    assert other["isRootObservation"] is True and other["traceId"].startswith("1af7")
    assert other["tags"] == ["from-metadata"]
    assert other["level"] == "DEFAULT" and other["statusMessage"] is None


def test_default_field_groups_are_core_and_basic(client: httpx.Client) -> None:
    assert send(client, mapping_spans()[:1]).status_code == 200
    item = client.get(OBSERVATIONS).json()["data"][0]
    assert set(item) == {
        *("id", "traceId", "startTime", "endTime", "projectId", "parentObservationId", "type"),
        *("modelId", "inputPrice", "outputPrice", "totalPrice"),
        *("name", "level", "statusMessage", "version", "environment", "bookmarked"),
        *("public", "userId", "sessionId", "isRootObservation"),
    }


def test_a_resent_span_replaces_the_stored_one(client: httpx.Client) -> None:
    first = SpanSpec("b000000000000001", "v1", T0, T0 + MS, {"langfuse.trace.tags": ["old"]})
    assert send(client, [first]).status_code == 200
    second = SpanSpec("b000000000000001", "v2", T0, T0 + 2 * MS, {"langfuse.trace.tags": ["new"]})
    assert send(client, [second], kind="json").status_code == 200
    seen = by_id(client)
    assert list(seen) == ["b000000000000001"]
    assert seen["b000000000000001"]["name"] == "v2"
    assert seen["b000000000000001"]["tags"] == ["new"]
    tagged = 'filter=[{"type":"arrayOptions","column":"tags","operator":"any of","value":["old"]}]'
    assert client.get(f"{OBSERVATIONS}?{tagged}").json()["data"] == []


def test_json_accepts_integer_nanos_and_status_names(client: httpx.Client) -> None:
    document = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "name": "json-span",
                                "startTimeUnixNano": T0,
                                "endTimeUnixNano": T0 + 5 * MS,
                                "attributes": [
                                    {"key": "gen_ai.usage.input_tokens", "value": {"intValue": 4}}
                                ],
                                "status": {"code": "STATUS_CODE_ERROR"},
                            }
                        ]
                    }
                ]
            }
        ]
    }
    response = client.post(OTEL, json=document)
    assert response.status_code == 200, response.text
    item = by_id(client)["eee19b7ec3c1b174"]
    assert item["level"] == "ERROR" and item["latency"] == 0.005
    assert item["usageDetails"] == {"input": 4, "total": 4}


def test_an_empty_export_is_accepted(client: httpx.Client) -> None:
    for body, content_type in (
        (ExportTraceServiceRequest().SerializeToString(), "application/x-protobuf"),
        (b"{}", "application/json"),
        (b'{"resourceSpans": []}', "application/json"),
    ):
        response = client.post(OTEL, content=body, headers={"Content-Type": content_type})
        assert response.status_code == 200 and response.json() == {}


def test_ingestion_version_above_four_is_refused(client: httpx.Client) -> None:
    span = [SpanSpec("c000000000000001", "s", T0, T0 + MS)]
    ok = send(client, span, headers={"x-langfuse-ingestion-version": "4"})
    assert ok.status_code == 200
    for version in ("5", "abc"):
        refused = send(client, span, headers={"x-langfuse-ingestion-version": version})
        assert refused.status_code == 400
        assert refused.json()["message"] == (
            f'Unsupported x-langfuse-ingestion-version: "{version}". Maximum supported: "4".'
        )


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b"\x0a\xff\xff", {"Content-Type": "application/x-protobuf"}, "Failed to parse OTel"),
        (b"{not json", {"Content-Type": "application/json"}, "Failed to parse OTel JSON Trace"),
        (
            b"not gzip",
            {"Content-Type": "application/json", "Content-Encoding": "gzip"},
            "Failed to decompress request body",
        ),
        (b"{}", {"Content-Type": "text/plain"}, "Invalid content type"),
        (b"{}", {}, "Invalid content type"),
    ],
    ids=["bad-protobuf", "bad-json", "bad-gzip", "text-plain", "no-content-type"],
)
def test_malformed_bodies_are_refused(
    client: httpx.Client, body: bytes, headers: dict[str, str], message: str
) -> None:
    response = client.post(OTEL, content=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["message"].startswith(message)
    assert client.get(OBSERVATIONS).json()["data"] == []


@pytest.mark.parametrize(
    ("span", "reason"),
    [
        ({"spanId": "eee19b7ec3c1b174", "name": "x"}, "traceId:absent"),
        ({"traceId": "5b8e", "spanId": "eee19b7ec3c1b174"}, "traceId:wrong_length"),
        ({"traceId": "0" * 32, "spanId": "eee19b7ec3c1b174"}, "traceId:all_zero"),
        ({"traceId": "5b8efff798038103d269b633813fc60c", "spanId": 7}, "spanId:not_an_id"),
        (
            {
                "traceId": "5b8efff798038103d269b633813fc60c",
                "spanId": "eee19b7ec3c1b174",
                "attributes": {"key": "value"},
            },
            "attributes:not_an_array",
        ),
    ],
)
def test_spans_without_usable_ids_reject_the_whole_export(
    client: httpx.Client, span: dict[str, Any], reason: str
) -> None:
    good = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "aaa19b7ec3c1b174"}
    document = {
        "resourceSpans": [{"scopeSpans": [{"scope": {"name": "x"}, "spans": [good, span]}]}]
    }
    response = client.post(OTEL, json=document)
    assert response.status_code == 400
    message = response.json()["message"]
    assert message.startswith("Invalid OTLP trace export: 1 of 2 span(s) cannot be processed")
    assert reason in message
    assert client.get(OBSERVATIONS).json()["data"] == []


def test_protobuf_spans_with_truncated_ids_are_refused(client: httpx.Client) -> None:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id = b"\x6b", b"\x01\x02"
    response = client.post(
        OTEL,
        content=request.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert response.status_code == 400
    assert "traceId:wrong_length" in response.json()["message"]


def test_export_needs_the_project_keys(emulator: LiveEmulator) -> None:
    with httpx.Client(base_url=emulator.base_url) as anonymous:
        response = anonymous.post(OTEL, content=b"{}", headers={"Content-Type": "application/json"})
    assert response.status_code == 401
