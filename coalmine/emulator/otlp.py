"""OTLP trace exports turned into observation rows, the way Langfuse maps them.

Two halves:

* decoding: an ``ExportTraceServiceRequest`` as protobuf or OTLP/JSON (ids in hex),
  gzip-compressed or not, into `RawSpan`s; the checks and error messages follow
  Langfuse's route (``web/src/pages/api/public/otel/v1/traces/index.ts``) and its span
  id validation;
* mapping: span, resource and scope attributes to observation fields, following
  ``OtelIngestionProcessor`` and ``ObservationTypeMapper`` in
  ``packages/shared/src/server/otel``. Everything is stored per span, from that span's
  own attributes: the server does not copy trace attributes from a root span to its
  children (the SDK's ``propagate_attributes`` puts them on every span).

Deliberate omissions: framework-specific input/output and usage extraction (Vercel AI
SDK, LiveKit, Logfire events, gen_ai message events), media handling, and model
price matching (``modelId`` and prices stay null; costs are only what the span sent).
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from coalmine.emulator.errors import OtlpError

MAX_DECOMPRESSED_BYTES = 64 << 20
"""A gzip body may inflate to at most this many bytes (a guard, not a server rule)."""

TRACE_ID_BYTES = 16
SPAN_ID_BYTES = 8

LEVELS = frozenset({"DEBUG", "DEFAULT", "WARNING", "ERROR"})
OBSERVATION_TYPES = frozenset(
    {
        "SPAN",
        "GENERATION",
        "EVENT",
        "AGENT",
        "TOOL",
        "CHAIN",
        "RETRIEVER",
        "EVALUATOR",
        "EMBEDDING",
        "GUARDRAIL",
    }
)

STATUS_CODE_ERROR = 2


@dataclass(frozen=True, slots=True)
class Scope:
    """The instrumentation scope of a group of spans."""

    name: str
    version: str | None
    attributes: dict[str, Any]


@dataclass(slots=True)
class RawSpan:
    """One span as decoded, before any Langfuse mapping."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    start_ns: int | None
    end_ns: int | None
    attributes: dict[str, Any]
    status_code: int
    status_message: str | None
    resource: dict[str, Any]
    scope: Scope


# --------------------------------------------------------------------------- decoding


def decode_export(
    body: bytes, *, content_type: str | None, content_encoding: str | None
) -> list[RawSpan]:
    """The spans of an OTLP/HTTP trace export, or an `OtlpError`.

    The checks run in the server's order: decompression, content type, parsing, then
    the span ids. An export without resource spans decodes to no spans.
    """
    if content_encoding and "gzip" in content_encoding.lower():
        body = _gunzip(body)
    kind = (content_type or "").lower()
    if "application/x-protobuf" in kind:
        return _decode_protobuf(body)
    if "application/json" in kind:
        return _decode_json(body)
    raise OtlpError("Invalid content type")


def _gunzip(body: bytes) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, MAX_DECOMPRESSED_BYTES)
    except zlib.error:
        raise OtlpError("Failed to decompress request body") from None
    if inflater.unconsumed_tail:
        raise OtlpError(
            f"Failed to decompress request body: it inflates past {MAX_DECOMPRESSED_BYTES} bytes"
        )
    if not inflater.eof:
        raise OtlpError("Failed to decompress request body")
    return out


class _Rejections:
    """Invalid ids and non-array collections of one export, reported together."""

    def __init__(self) -> None:
        self.invalid_spans = 0
        self.total_spans = 0
        self.malformed_collections = 0
        self.reasons: dict[str, int] = {}
        self.scopes: list[str] = []

    def reason(self, reason: str, scope: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if scope not in self.scopes and len(self.scopes) < 5:
            self.scopes.append(scope)

    def raise_if_any(self) -> None:
        if not self.invalid_spans and not self.malformed_collections:
            return
        problems = []
        if self.invalid_spans:
            problems.append(
                f"{self.invalid_spans} of {self.total_spans} span(s) cannot be processed"
            )
        if self.malformed_collections:
            problems.append(
                f"{self.malformed_collections} resource- or scope-level field(s) are "
                "present but not arrays"
            )
        hints = []
        if any(r.endswith((":absent", ":not_an_id")) for r in self.reasons):
            hints.append(
                "traceId and spanId are required on every span, and each must be a "
                "string or a byte array."
            )
        if any(r.endswith(":not_an_array") for r in self.reasons):
            hints.append(
                "scopeSpans, spans, attributes and events must all be arrays — OTLP "
                "attributes are a list of {key, value} entries, not a JSON object."
            )
        raise OtlpError(
            f"Invalid OTLP trace export: {'; '.join(problems)} "
            f"({', '.join(sorted(self.reasons))}). {' '.join(hints)} "
            "The entire export was rejected and no spans were ingested. "
            f"Instrumentation scopes: {', '.join(self.scopes) or 'unknown'}. "
            "This endpoint accepts OpenTelemetry traces only — if you are exporting "
            "OpenTelemetry logs, point your log exporter elsewhere."
        )


def _check_id_bytes(raw: bytes, size: int) -> str | None:
    if not raw:
        return "absent"
    if len(raw) != size:
        return "wrong_length"
    if not any(raw):
        return "all_zero"
    return None


_HEX = re.compile(r"[0-9a-fA-F]+")


def _json_id(value: Any, size: int) -> tuple[str | None, str | None]:
    """(id, None) or (None, rejection reason) for an id as OTLP/JSON clients send it.

    Hex is the OTLP/JSON encoding. Like the server, strings that are not hex are kept
    as they are (some clients send base64); byte arrays, and Node's serialised
    ``{"type": "Buffer", "data": [...]}``, are converted to hex.
    """
    if isinstance(value, dict) and "data" in value:
        value = value["data"]
    if value is None:
        return None, "absent"
    if isinstance(value, str):
        if not value:
            return None, "absent"
        if not _HEX.fullmatch(value):
            return value, None
        if len(value) != size * 2:
            return None, "wrong_length"
        if not value.strip("0"):
            return None, "all_zero"
        return value, None
    if isinstance(value, list):
        try:
            raw = bytes(int(b) & 0xFF for b in value)
        except (TypeError, ValueError):
            return None, "not_an_id"
        problem = _check_id_bytes(raw, size)
        return (None, problem) if problem else (raw.hex(), None)
    return None, "not_an_id"


def _decode_protobuf(body: bytes) -> list[RawSpan]:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except (DecodeError, ValueError, RuntimeError):
        raise OtlpError("Failed to parse OTel Protobuf Trace") from None
    spans: list[RawSpan] = []
    rejected = _Rejections()
    for resource_spans in request.resource_spans:
        resource = _pb_attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            pb_scope = scope_spans.scope
            scope = Scope(
                pb_scope.name,
                pb_scope.version or None,
                _pb_attributes(pb_scope.attributes),
            )
            for span in scope_spans.spans:
                rejected.total_spans += 1
                trace_problem = _check_id_bytes(span.trace_id, TRACE_ID_BYTES)
                span_problem = _check_id_bytes(span.span_id, SPAN_ID_BYTES)
                if trace_problem or span_problem:
                    rejected.invalid_spans += 1
                    if trace_problem:
                        rejected.reason(f"traceId:{trace_problem}", scope.name)
                    if span_problem:
                        rejected.reason(f"spanId:{span_problem}", scope.name)
                    continue
                status = span.status
                spans.append(
                    RawSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        start_ns=span.start_time_unix_nano or None,
                        end_ns=span.end_time_unix_nano or None,
                        attributes=_pb_attributes(span.attributes),
                        status_code=status.code,
                        status_message=status.message or None,
                        resource=resource,
                        scope=scope,
                    )
                )
    rejected.raise_if_any()
    return spans


def _pb_attributes(key_values: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: _pb_value(kv.value) for kv in key_values}


def _pb_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "array_value":
        return [_pb_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _pb_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return None


def _decode_json(body: bytes) -> list[RawSpan]:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise OtlpError("Failed to parse OTel JSON Trace") from None
    resource_spans = document.get("resourceSpans") if isinstance(document, dict) else None
    if not resource_spans:
        return []
    if not isinstance(resource_spans, list):
        raise OtlpError(
            "Failed to parse OTel JSON Trace: resourceSpans must be an array of resource spans"
        )
    spans: list[RawSpan] = []
    rejected = _Rejections()
    for entry in resource_spans:
        if isinstance(entry, dict):
            spans.extend(_json_resource_spans(entry, rejected))
    rejected.raise_if_any()
    return spans


def _json_collection(value: Any, name: str, rejected: _Rejections, where: str) -> list[Any]:
    """The items of an array field; none, and a rejection if it is there but no array."""
    if value is None:
        return []
    if not isinstance(value, list):
        rejected.malformed_collections += 1
        rejected.reason(f"{name}:not_an_array", where)
        return []
    return value


def _json_resource_spans(entry: dict[str, Any], rejected: _Rejections) -> list[RawSpan]:
    resource_obj = entry.get("resource")
    resource = _json_attributes(
        resource_obj.get("attributes") if isinstance(resource_obj, dict) else None,
        rejected,
        "resource",
    )
    spans: list[RawSpan] = []
    for scope_spans in _json_collection(entry.get("scopeSpans"), "scopeSpans", rejected, "unknown"):
        if isinstance(scope_spans, dict):
            spans.extend(_json_scope_spans(scope_spans, resource, rejected))
    return spans


def _json_scope_spans(
    scope_spans: dict[str, Any], resource: dict[str, Any], rejected: _Rejections
) -> list[RawSpan]:
    scope_obj = scope_spans.get("scope")
    scope_obj = scope_obj if isinstance(scope_obj, dict) else {}
    scope_name = str(scope_obj.get("name") or "")
    scope = Scope(
        scope_name,
        str(scope_obj["version"]) if scope_obj.get("version") else None,
        _json_attributes(scope_obj.get("attributes"), rejected, scope_name),
    )
    span_list = _json_collection(
        scope_spans.get("spans"), "spans", rejected, scope_name or "unknown"
    )
    decoded = (_json_span(span, resource, scope, rejected) for span in span_list)
    return [span for span in decoded if span is not None]


def _json_span(
    span: Any, resource: dict[str, Any], scope: Scope, rejected: _Rejections
) -> RawSpan | None:
    if not isinstance(span, dict):
        return None
    rejected.total_spans += 1
    where = scope.name or "unknown"
    trace_id, trace_problem = _json_id(span.get("traceId"), TRACE_ID_BYTES)
    span_id, span_problem = _json_id(span.get("spanId"), SPAN_ID_BYTES)
    problems = _json_span_problems(span, trace_problem, span_problem)
    if problems:
        rejected.invalid_spans += 1
        for problem in problems:
            rejected.reason(problem, where)
        return None
    assert trace_id is not None and span_id is not None
    status_code, message = _json_status(span.get("status"))
    return RawSpan(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=_json_parent(span.get("parentSpanId")),
        name=str(span.get("name") or ""),
        start_ns=_json_nanos(span.get("startTimeUnixNano")),
        end_ns=_json_nanos(span.get("endTimeUnixNano")),
        attributes=_json_attributes(span.get("attributes"), rejected, where),
        status_code=status_code,
        status_message=message,
        resource=resource,
        scope=scope,
    )


def _json_span_problems(
    span: dict[str, Any], trace_problem: str | None, span_problem: str | None
) -> list[str]:
    """Why a span is rejected: bad ids, attributes or events that are not arrays."""
    problems = []
    if trace_problem:
        problems.append(f"traceId:{trace_problem}")
    if span_problem:
        problems.append(f"spanId:{span_problem}")
    for collection in ("attributes", "events"):
        if span.get(collection) is not None and not isinstance(span[collection], list):
            problems.append(f"{collection}:not_an_array")
    return problems


def _json_parent(parent: Any) -> str | None:
    if not parent:
        return None
    parent_id, _ = _json_id(parent, SPAN_ID_BYTES)
    return str(parent) if parent_id is None else parent_id  # not an id: the text sent


def _json_status(status: Any) -> tuple[int, str | None]:
    """The status code (0 unset, 1 ok, 2 error) and message."""
    status = status if isinstance(status, dict) else {}
    code, message = status.get("code"), status.get("message")
    if code in ("STATUS_CODE_ERROR", 2, "2"):
        status_code = STATUS_CODE_ERROR
    elif code in ("STATUS_CODE_OK", 1, "1"):
        status_code = 1
    else:
        status_code = 0
    return status_code, message if isinstance(message, str) and message else None


def _json_attributes(entries: Any, rejected: _Rejections, where: str) -> dict[str, Any]:
    if entries is None:
        return {}
    if not isinstance(entries, list):
        rejected.malformed_collections += 1
        rejected.reason("attributes:not_an_array", where)
        return {}
    out: dict[str, Any] = {}
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("key"), str):
            out[entry["key"]] = _json_value(entry.get("value"))
    return out


def _json_value(value: Any) -> Any:
    if not isinstance(value, dict):
        return None
    for key, decode in _JSON_VALUES:
        if key in value:
            return decode(value[key])
    return None


def _json_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _json_double(value: Any) -> Any:
    if isinstance(value, str):  # "NaN", "Infinity", "-Infinity" in OTLP/JSON
        try:
            return float(value)
        except ValueError:
            return None
    return value


def _json_array(array: Any) -> list[Any]:
    items = array.get("values") if isinstance(array, dict) else None
    return [_json_value(item) for item in items] if isinstance(items, list) else []


def _json_kvlist(kvlist: Any) -> dict[str, Any]:
    items = kvlist.get("values") if isinstance(kvlist, dict) else None
    if not isinstance(items, list):
        return {}
    return {
        item["key"]: _json_value(item.get("value"))
        for item in items
        if isinstance(item, dict) and isinstance(item.get("key"), str)
    }


def _as_sent(value: Any) -> Any:
    return value


_JSON_VALUES: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("stringValue", _as_sent),
    ("intValue", _json_int),
    ("doubleValue", _json_double),
    ("boolValue", bool),
    ("arrayValue", _json_array),
    ("kvlistValue", _json_kvlist),
    ("bytesValue", _as_sent),
)
"""An ``AnyValue``'s fields, by precedence, and how each is read."""


def _json_nanos(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        nanos = int(value)
    except (TypeError, ValueError):
        return None
    return nanos or None


# --------------------------------------------------------------------------- mapping

A_TRACE_NAME = "langfuse.trace.name"
A_TRACE_TAGS = "langfuse.trace.tags"
A_TRACE_PUBLIC = "langfuse.trace.public"
A_TRACE_METADATA = "langfuse.trace.metadata"
A_OBS_TYPE = "langfuse.observation.type"
A_OBS_METADATA = "langfuse.observation.metadata"
A_OBS_LEVEL = "langfuse.observation.level"
A_OBS_STATUS_MESSAGE = "langfuse.observation.status_message"
A_OBS_INPUT = "langfuse.observation.input"
A_OBS_OUTPUT = "langfuse.observation.output"
A_OBS_COMPLETION_START = "langfuse.observation.completion_start_time"
A_OBS_MODEL = "langfuse.observation.model.name"
A_OBS_MODEL_PARAMETERS = "langfuse.observation.model.parameters"
A_OBS_USAGE = "langfuse.observation.usage_details"
A_OBS_COST = "langfuse.observation.cost_details"
A_OBS_PROMPT_NAME = "langfuse.observation.prompt.name"
A_OBS_PROMPT_VERSION = "langfuse.observation.prompt.version"
A_ENVIRONMENT = "langfuse.environment"
A_RELEASE = "langfuse.release"
A_VERSION = "langfuse.version"
A_IS_APP_ROOT = "langfuse.internal.is_app_root"

_ENVIRONMENT_KEYS = (A_ENVIRONMENT, "deployment.environment.name", "deployment.environment")
_TAG_KEYS = (
    A_TRACE_TAGS,
    "langfuse.tags",
    f"{A_OBS_METADATA}.langfuse_tags",
    f"{A_TRACE_METADATA}.langfuse_tags",
    "ai.telemetry.metadata.tags",
    "tag.tags",
)
_USER_ID_KEYS = (
    "langfuse.user.id",
    "user.id",
    f"{A_OBS_METADATA}.langfuse_user_id",
    f"{A_TRACE_METADATA}.langfuse_user_id",
    "ai.telemetry.metadata.userId",
)
_SESSION_ID_KEYS = (
    "langfuse.session.id",
    "session.id",
    "gen_ai.conversation.id",
    f"{A_OBS_METADATA}.langfuse_session_id",
    f"{A_TRACE_METADATA}.langfuse_session_id",
    "ai.telemetry.metadata.sessionId",
)
_MODEL_KEYS = (
    A_OBS_MODEL,
    "gen_ai.response.model",
    "ai.model.id",
    "gen_ai.request.model",
    "llm.response.model",
    "llm.model_name",
    "model",
)
_TYPE_MODEL_KEYS = (
    A_OBS_MODEL,
    "gen_ai.request.model",
    "gen_ai.response.model",
    "llm.model_name",
    "model",
)
_METADATA_SKIP = frozenset(
    {
        "ai.telemetry.metadata.userId",
        "ai.telemetry.metadata.sessionId",
        "ai.telemetry.metadata.tags",
        "ai.telemetry.metadata.langfusePrompt",
    }
)
_IO_FALLBACKS = (
    ("mlflow.spanInputs", "mlflow.spanOutputs"),
    ("traceloop.entity.input", "traceloop.entity.output"),
    ("input.value", "output.value"),
    ("input", "output"),
    ("gen_ai.input.messages", "gen_ai.output.messages"),
    ("gen_ai.tool.call.arguments", "gen_ai.tool.call.result"),
)
_USAGE_KEY_NAMES = {
    "prompt_tokens": "input",
    "completion_tokens": "output",
    "total_tokens": "total",
    "input_tokens": "input",
    "output_tokens": "output",
    "prompt": "input",
    "completion": "output",
}
_DIRECT_TYPES = {
    "span": "SPAN",
    "generation": "GENERATION",
    "event": "EVENT",
    "embedding": "EMBEDDING",
    "agent": "AGENT",
    "tool": "TOOL",
    "chain": "CHAIN",
    "retriever": "RETRIEVER",
    "guardrail": "GUARDRAIL",
    "evaluator": "EVALUATOR",
}
_OPENINFERENCE_TYPES = {
    "CHAIN": "CHAIN",
    "RETRIEVER": "RETRIEVER",
    "LLM": "GENERATION",
    "EMBEDDING": "EMBEDDING",
    "AGENT": "AGENT",
    "TOOL": "TOOL",
    "GUARDRAIL": "GUARDRAIL",
    "EVALUATOR": "EVALUATOR",
}
_GENAI_OPERATION_TYPES = {
    "chat": "GENERATION",
    "completion": "GENERATION",
    "text_completion": "GENERATION",
    "generate_content": "GENERATION",
    "generate": "GENERATION",
    "embeddings": "EMBEDDING",
    "invoke_agent": "AGENT",
    "create_agent": "AGENT",
    "execute_tool": "TOOL",
}


@dataclass(slots=True)
class ObservationRow:
    """One row of the ``observations`` table (see ``schema.OBSERVATIONS``)."""

    id: str
    trace_id: str
    parent_observation_id: str | None
    type: str
    name: str
    start_time: str
    start_ms: int
    end_time: str
    end_ms: int
    completion_start_time: str | None
    completion_start_ms: int | None
    level: str
    status_message: str | None
    version: str | None
    environment: str
    user_id: str | None
    session_id: str | None
    is_root: bool
    public: bool
    tags: list[str]
    release: str | None
    trace_name: str | None
    prompt_name: str | None
    prompt_version: int | None
    model: str | None
    model_parameters: dict[str, Any] | None
    usage_details: dict[str, int]
    cost_details: dict[str, float]
    total_cost: float | None
    input_tokens: int
    output_tokens: int
    total_tokens: int | None
    input_cost: float
    output_cost: float
    metadata: dict[str, Any]
    input: str | None
    output: str | None
    prompt_id: str | None = None


def _truthy(value: Any) -> bool:
    """JavaScript truthiness for attribute values (the server tests ``if (attr)``)."""
    if value is None or value is False or value == "":
        return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value != 0 and not math.isnan(value)
    return True


def _meaningful(value: Any) -> bool:
    if value is None or value == "":
        return False
    if isinstance(value, list | dict):
        return bool(value)
    return True


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _first_text(attributes: Mapping[str, Any], keys: Iterable[str]) -> str | None:
    for key in keys:
        value = attributes.get(key)
        if _truthy(value):
            return _as_text(value)
    return None


def normalise_environment(value: Any) -> str:
    """An environment name as Langfuse stores it: lower case, at most 40 characters of
    ``[a-z0-9-_]``, without a leading ``langfuse`` (reserved); ``default`` if nothing
    is left."""
    text = str(value).lower()
    if text.startswith("langfuse"):
        text = text[len("langfuse") :]
    text = re.sub(r"[^a-z0-9_-]", "", text)[:40]
    return text or "default"


def _environment(attributes: Mapping[str, Any], resource: Mapping[str, Any]) -> str:
    for key in _ENVIRONMENT_KEYS:
        if _truthy(attributes.get(key)):
            return normalise_environment(attributes[key])
        if _truthy(resource.get(key)):
            return normalise_environment(resource[key])
    return "default"


def extract_tags(attributes: Mapping[str, Any]) -> list[str]:
    """Trace tags: an array, a JSON array string or a comma-separated string, from the
    first truthy of ``langfuse.trace.tags`` and its fallbacks."""
    value: Any = None
    for key in _TAG_KEYS:
        if _truthy(attributes.get(key)):
            value = attributes[key]
            break
    if value is None:
        return []
    if isinstance(value, list):
        return [_js_string(tag) for tag in value]
    if isinstance(value, str):
        if value.strip().startswith("["):
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = None
            if isinstance(parsed, list):
                return [_js_string(tag) for tag in parsed]
        if "," in value:
            return [tag.strip() for tag in value.split(",")]
        return [value]
    return []


def _js_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)


def observation_type(
    attributes: Mapping[str, Any], scope: Scope, resource: Mapping[str, Any]
) -> str:
    """The observation type, by Langfuse's mappers in priority order; SPAN by default."""
    if (
        attributes.get(A_OBS_TYPE) == "span"
        and scope.name == "langfuse-sdk"
        and resource.get("telemetry.sdk.language") == "python"
        and _legacy_python_sdk(scope.version)
        and any(
            key in attributes
            for key in (
                A_OBS_MODEL,
                A_OBS_COST,
                A_OBS_USAGE,
                A_OBS_COMPLETION_START,
                A_OBS_MODEL_PARAMETERS,
                A_OBS_PROMPT_NAME,
                A_OBS_PROMPT_VERSION,
            )
        )
    ):
        return "GENERATION"  # Python SDK <= 3.3 marked generations as spans
    for key, table in (
        (A_OBS_TYPE, _DIRECT_TYPES),
        ("openinference.span.kind", _OPENINFERENCE_TYPES),
        ("gen_ai.operation.name", _GENAI_OPERATION_TYPES),
    ):
        value = attributes.get(key)
        if _meaningful(value) and isinstance(value, str) and value in table:
            return table[value]
    if _meaningful(attributes.get("gen_ai.tool.name")) or _meaningful(
        attributes.get("gen_ai.tool.call.id")
    ):
        return "TOOL"
    if any(_meaningful(attributes.get(key)) for key in _TYPE_MODEL_KEYS):
        return "GENERATION"
    return "SPAN"


def _legacy_python_sdk(version: str | None) -> bool:
    if not version:
        return True
    parts = version.split(".")
    try:
        major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return True
    return major < 3 or (major == 3 and minor <= 3)


def _name(span_name: str, attributes: Mapping[str, Any]) -> str:
    for key in ("gen_ai.tool.name", "logfire.msg"):
        if _truthy(attributes.get(key)):
            return _as_text(attributes[key])
    if "ai.toolCall.name" in attributes:
        return _as_text(attributes["ai.toolCall.name"])
    if "ai.operationId" in attributes:
        function_id = attributes.get("ai.telemetry.functionId")
        prefix = f"{function_id}:" if _truthy(function_id) else ""
        return prefix + _as_text(attributes["ai.operationId"])
    return span_name


def _decode_value(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def extract_metadata(
    attributes: Mapping[str, Any], domain: str, *, json_values: bool = False
) -> dict[str, Any]:
    """Metadata from ``langfuse.<domain>.metadata`` (an object or a JSON string) and the
    flattened ``langfuse.<domain>.metadata.<key>`` attributes.

    ``json_values``: the values are JSON-encoded, as Langfuse SDK v5 writes them.
    """
    prefix = A_OBS_METADATA if domain == "observation" else A_TRACE_METADATA
    out: dict[str, Any] = {}
    top = attributes.get(prefix) or attributes.get("langfuse.metadata")
    if isinstance(top, str):
        try:
            parsed = json.loads(top)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            out.update(parsed)
    elif isinstance(top, dict):
        out.update(top)
    prefixes = (f"{prefix}.", "langfuse.metadata.", "ai.telemetry.metadata.")
    for key, value in attributes.items():
        if not key.startswith(prefixes) or key in _METADATA_SKIP:
            continue
        for candidate in prefixes:
            if key.startswith(candidate):
                out[key[len(candidate) :]] = _decode_value(value) if json_values else value
    if "ai.prompt.tools" in attributes and _truthy(attributes["ai.prompt.tools"]):
        out["tools"] = attributes["ai.prompt.tools"]
    return out


def _input_output(attributes: Mapping[str, Any]) -> tuple[Any, Any]:
    value_in = attributes.get(A_OBS_INPUT)
    value_out = attributes.get(A_OBS_OUTPUT)
    if value_in is not None or value_out is not None:
        return value_in, value_out
    for key_in, key_out in _IO_FALLBACKS:
        value_in, value_out = attributes.get(key_in), attributes.get(key_out)
        if _truthy(value_in) or _truthy(value_out):
            return value_in, value_out
    return None, None


def _raw_text(value: Any) -> str | None:
    """Input and output are stored, and returned by the v2 API, as raw strings."""
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)


def _non_negative_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return None


_OPENAI_SHAPES = (
    (
        ("prompt_tokens", "completion_tokens", "total_tokens"),
        ("prompt_tokens_details", "completion_tokens_details"),
    ),
    (
        ("input_tokens", "output_tokens", "total_tokens"),
        ("input_tokens_details", "output_tokens_details"),
    ),
)
"""OpenAI's usage shapes (chat completions, responses): the counts of input, output and
total, and the details of input and output."""


def _openai_usage(value: dict[str, Any]) -> dict[str, int] | None:
    """OpenAI completion or response usage, converted as Langfuse does, or None."""
    if "total_tokens" not in value:
        return None
    for names, details in _OPENAI_SHAPES:
        if not set(value) - set(names) - set(details) and set(names) <= set(value):
            return _openai_counts(value, names, details)
    return None


def _openai_counts(
    value: dict[str, Any], names: tuple[str, ...], details: tuple[str, ...]
) -> dict[str, int] | None:
    counts = [_non_negative_int(value[name]) for name in names]
    if any(count is None for count in counts):
        return None
    result = {"input": counts[0] or 0, "output": counts[1] or 0, "total": counts[2] or 0}
    for side, detail_key in zip(("input", "output"), details, strict=True):
        if not _take_details(result, side, value.get(detail_key)):
            return None
    return result


def _take_details(result: dict[str, int], side: str, detail: Any) -> bool:
    """Move the detail counts of one side out of its count (cached input tokens...);
    False for details Langfuse refuses."""
    if detail is None:
        return True
    if not isinstance(detail, dict):
        return False
    for key, raw in detail.items():
        if raw is None:
            continue
        count = _non_negative_int(raw)
        if count is None:
            return False
        result[f"{side}_{key}"] = count
        result[side] = max(result[side] - count, 0)
    return True


def validate_usage(value: Any) -> dict[str, int]:
    """Usage details as Langfuse accepts them (OpenAI shapes or a map of non-negative
    integers, null entries dropped); anything else is discarded, as the server does."""
    if not isinstance(value, dict):
        return {}
    openai = _openai_usage(value)
    if openai is not None:
        return openai
    out: dict[str, int] = {}
    for key, raw in value.items():
        if raw is None:
            continue
        count = _non_negative_int(raw)
        if count is None:
            return {}
        out[str(key)] = count
    return out


def validate_cost(value: Any) -> dict[str, float]:
    """Cost details: a map of non-negative numbers (null entries dropped), else empty."""
    if not isinstance(value, dict):
        return {}
    out: dict[str, float] = {}
    for key, raw in value.items():
        if raw is None:
            continue
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            return {}
        if raw < 0 or not math.isfinite(raw):
            return {}
        out[str(key)] = raw
    return out


def _usage(attributes: Mapping[str, Any]) -> dict[str, int]:
    provided = attributes.get(A_OBS_USAGE)
    if _truthy(provided):
        if isinstance(provided, str):
            try:
                return validate_usage(json.loads(provided))
            except ValueError:
                pass
        elif isinstance(provided, dict):
            return validate_usage(provided)
    generic: dict[str, Any] = {}
    for key, raw in attributes.items():
        if key.startswith("gen_ai.usage.") and key != "gen_ai.usage.cost":
            short = key[len("gen_ai.usage.") :]
        elif key.startswith("llm.token_count."):
            short = key[len("llm.token_count.") :]
        else:
            continue
        try:
            number = float(raw)
        except (TypeError, ValueError):
            continue
        if math.isnan(number):
            continue
        generic[_USAGE_KEY_NAMES.get(short, short)] = number
    return validate_usage(generic)


def _cost(attributes: Mapping[str, Any]) -> dict[str, float]:
    provided = attributes.get(A_OBS_COST)
    if _truthy(provided):
        if isinstance(provided, str):
            try:
                return validate_cost(json.loads(provided))
            except ValueError:
                pass
        elif isinstance(provided, dict):
            return validate_cost(provided)
    for key in ("gen_ai.usage.cost", "llm.cost.total"):
        if _truthy(attributes.get(key)):
            return validate_cost({"total": attributes[key]})
    return {}


def _with_total(details: dict[str, Any]) -> dict[str, Any]:
    """Langfuse adds ``total`` as the sum of the other entries when it is missing."""
    if details and "total" not in details:
        return {**details, "total": sum(details.values())}
    return details


def _model_parameters(attributes: Mapping[str, Any]) -> dict[str, Any] | None:
    raw = attributes.get(A_OBS_MODEL_PARAMETERS)
    params: Any = None
    if _truthy(raw):
        try:
            params = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            params = None
    if params is None and _truthy(attributes.get("llm.invocation_parameters")):
        try:
            params = json.loads(str(attributes["llm.invocation_parameters"]))
        except ValueError:
            params = None
    if params is None:
        params = {
            key[len("gen_ai.request.") :]: value
            for key, value in attributes.items()
            if key.startswith("gen_ai.request.") and key != "gen_ai.request.model"
        }
    if not isinstance(params, dict) or not params:
        return None
    return {
        str(key): value
        if isinstance(value, str)
        or (isinstance(value, int | float) and not isinstance(value, bool))
        else json.dumps(value)
        for key, value in params.items()
    }


def _prompt_version(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _prompt(attributes: Mapping[str, Any]) -> tuple[str | None, int | None]:
    name = attributes.get(A_OBS_PROMPT_NAME)
    if name is None:
        name = attributes.get("langfuse.prompt.name")
    version = attributes.get(A_OBS_PROMPT_VERSION)
    if version is None:
        version = attributes.get("langfuse.prompt.version")
    if (name is None or version is None) and _truthy(
        attributes.get("ai.telemetry.metadata.langfusePrompt")
    ):
        try:
            ai_sdk = json.loads(str(attributes["ai.telemetry.metadata.langfusePrompt"]))
        except ValueError:
            ai_sdk = None
        if isinstance(ai_sdk, dict):
            name = ai_sdk.get("name") if name is None else name
            version = ai_sdk.get("version") if version is None else version
    prompt_version = _prompt_version(version)
    if not _truthy(name) or not prompt_version:
        return None, None  # name and version come together or not at all
    return str(name), prompt_version


def _completion_start(attributes: Mapping[str, Any]) -> int | None:
    value = attributes.get(A_OBS_COMPLETION_START)
    if not isinstance(value, str) or not value:
        return None
    millis = parse_iso_ms(value)
    if millis is None:
        try:
            decoded = json.loads(value)  # older SDKs double-encode the timestamp
        except ValueError:
            return None
        millis = parse_iso_ms(decoded) if isinstance(decoded, str) else None
    return millis


def parse_iso_ms(value: str) -> int | None:
    """Epoch milliseconds of an ISO 8601 date-time (a naive one is taken as UTC)."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000) if parsed.year >= 1 else None


_MIN_MS = -62135596800000  # 0001-01-01
_MAX_MS = 253402300799999  # 9999-12-31T23:59:59.999


def iso_ms(millis: int) -> str:
    """An ISO 8601 UTC timestamp with milliseconds, as JavaScript's toISOString gives."""
    millis = min(max(millis, _MIN_MS), _MAX_MS)
    seconds, rest = divmod(millis, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest:03d}Z"


def span_times(start_ns: int | None, end_ns: int | None, now_ms: int) -> tuple[int, int]:
    """Start and end in milliseconds; a missing edge takes the other, both missing: now."""
    start = start_ns // 1_000_000 if start_ns else None
    end = end_ns // 1_000_000 if end_ns else None
    if start is None:
        start = end if end is not None else now_ms
    if end is None:
        end = start
    return start, end


def map_span(
    span: RawSpan, *, now_ms: int | None = None, json_metadata: bool = False
) -> ObservationRow:
    """The observation Langfuse stores for one span.

    ``json_metadata``: metadata values are JSON-encoded (Langfuse Python SDK >= 5).
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    attributes = span.attributes
    resource = span.resource
    start_ms, end_ms = span_times(span.start_ns, span.end_ns, now_ms)
    kind = observation_type(attributes, span.scope, resource)

    level = attributes.get(A_OBS_LEVEL)
    if level not in LEVELS:
        level = "ERROR" if span.status_code == STATUS_CODE_ERROR else "DEFAULT"
    status_message = attributes.get(A_OBS_STATUS_MESSAGE)
    if status_message is None:
        status_message = span.status_message
    version = attributes.get(A_VERSION)
    if version is None:
        version = resource.get("service.version")
    release = attributes.get(A_RELEASE)
    if release is None:
        release = resource.get(A_RELEASE)
    public = attributes.get(A_TRACE_PUBLIC)
    if public is None:
        public = attributes.get("langfuse.public")
    trace_name = attributes.get(A_TRACE_NAME)

    prompt_name, prompt_version = _prompt(attributes) if kind == "GENERATION" else (None, None)
    usage = _with_total(_usage(attributes))
    cost = _with_total(_cost(attributes))
    completion_ms = _completion_start(attributes)
    value_in, value_out = _input_output(attributes)
    metadata = {
        "resourceAttributes": resource,
        "scopeAttributes": span.scope.attributes,
        **extract_metadata(attributes, "observation", json_values=json_metadata),
        **extract_metadata(attributes, "trace", json_values=json_metadata),
    }
    is_app_root = attributes.get(A_IS_APP_ROOT)
    return ObservationRow(
        id=span.span_id,
        trace_id=span.trace_id,
        parent_observation_id=span.parent_span_id,
        type=kind,
        name=_name(span.name, attributes),
        start_time=iso_ms(start_ms),
        start_ms=start_ms,
        end_time=iso_ms(end_ms),
        end_ms=end_ms,
        completion_start_time=iso_ms(completion_ms) if completion_ms is not None else None,
        completion_start_ms=completion_ms,
        level=level,
        status_message=None if status_message is None else _as_text(status_message),
        version=None if version is None else _as_text(version),
        environment=_environment(attributes, resource),
        user_id=_first_text(attributes, _USER_ID_KEYS),
        session_id=_first_text(attributes, _SESSION_ID_KEYS),
        is_root=span.parent_span_id is None or is_app_root is True or is_app_root == "true",
        public=public is True or public == "true",
        tags=extract_tags(attributes),
        release=None if release is None else _as_text(release),
        trace_name=None if trace_name is None else _as_text(trace_name),
        prompt_name=prompt_name,
        prompt_version=prompt_version,
        model=_first_text(attributes, _MODEL_KEYS),
        model_parameters=_model_parameters(attributes),
        usage_details=usage,
        cost_details=cost,
        total_cost=cost.get("total"),
        input_tokens=sum(v for k, v in usage.items() if "input" in k.lower()),
        output_tokens=sum(v for k, v in usage.items() if "output" in k.lower()),
        total_tokens=usage.get("total"),
        input_cost=sum(v for k, v in cost.items() if "input" in k.lower()),
        output_cost=sum(v for k, v in cost.items() if "output" in k.lower()),
        metadata=metadata,
        input=_raw_text(value_in),
        output=_raw_text(value_out),
    )


STORED_COLUMNS = (
    "id",
    "trace_id",
    "parent_observation_id",
    "type",
    "name",
    "start_time",
    "start_ms",
    "end_time",
    "end_ms",
    "completion_start_time",
    "completion_start_ms",
    "level",
    "status_message",
    "version",
    "environment",
    "user_id",
    "session_id",
    "is_root",
    "public",
    "release",
    "trace_name",
    "prompt_id",
    "prompt_name",
    "prompt_version",
    "model",
    "total_cost",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "input_cost",
    "output_cost",
    "input",
    "output",
)
"""Columns copied as they are from an `ObservationRow`; the JSON ones are added by
`row_params`."""

JSON_COLUMNS = ("tags", "model_parameters", "usage_details", "cost_details", "metadata")

_plain = attrgetter(*STORED_COLUMNS)
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode
_dumps_finite = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, default=str, allow_nan=False
).encode


def _dumps_json(value: Any) -> str:
    """JSON text, with NaN and infinities (which JSON cannot carry) as null."""
    try:
        return _dumps_finite(value)
    except ValueError:
        return _dumps(_finite(value))


def row_params(row: ObservationRow) -> tuple[Any, ...]:
    """Parameters for an INSERT of ``STORED_COLUMNS + JSON_COLUMNS``."""
    return (
        *_plain(row),
        _dumps(row.tags),
        None if row.model_parameters is None else _dumps_json(row.model_parameters),
        _dumps(row.usage_details),
        _dumps(row.cost_details),
        _dumps_json(row.metadata),
    )


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by null, which JSON cannot carry."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def sdk_writes_json_metadata(sdk_name: str | None, sdk_version: str | None) -> bool:
    """Whether the exporting SDK JSON-encodes metadata values (Python SDK >= 5)."""
    if (sdk_name or "").lower() != "python" or not sdk_version:
        return False
    head = sdk_version.split(".", 1)[0]
    return head.isdigit() and int(head) >= 5
