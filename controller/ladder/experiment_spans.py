"""One dataset item's run on one arm, as the Langfuse SDK's experiment runner records it.

Langfuse v4 knows an experiment only from span attributes: each item is a trace whose
root span ``experiment-item-run`` has a child ``experiment-item-task`` (the item's root
observation, which managed judges score), both in environment ``sdk-experiment`` and
both carrying the ``langfuse.experiment.*`` attributes. The experiment id is the one the
server and the SDK derive from the project, the dataset and the run name, so a run's
items group into one experiment without any API call creating it.

Ids are derived from the experiment and the item, not drawn at random, so an export
sent again after a lost answer replaces the spans it sent before.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

__all__ = [
    "ENVIRONMENT",
    "ItemIds",
    "ItemRun",
    "encode_export",
    "experiment_id",
    "item_ids",
    "serialize",
]

ENVIRONMENT: Final = "sdk-experiment"
"""The environment of the SDK runner's item spans (``langfuse/_client/constants.py``)."""
RUN_SPAN: Final = "experiment-item-run"
TASK_SPAN: Final = "experiment-item-task"
SCOPE_NAME: Final = "coalmine.controller.dataset_gate"
SERVICE_NAME: Final = "coalmine-controller"

# The SDK's attribute names (langfuse/_client/attributes.py).
A_ENVIRONMENT: Final = "langfuse.environment"
A_OBS_TYPE: Final = "langfuse.observation.type"
A_OBS_INPUT: Final = "langfuse.observation.input"
A_OBS_OUTPUT: Final = "langfuse.observation.output"
A_OBS_METADATA: Final = "langfuse.observation.metadata"
A_OBS_LEVEL: Final = "langfuse.observation.level"
A_OBS_STATUS_MESSAGE: Final = "langfuse.observation.status_message"
A_EXPERIMENT_ID: Final = "langfuse.experiment.id"
A_EXPERIMENT_NAME: Final = "langfuse.experiment.name"
A_EXPERIMENT_DESCRIPTION: Final = "langfuse.experiment.description"
A_EXPERIMENT_DATASET_ID: Final = "langfuse.experiment.dataset.id"
A_ITEM_ID: Final = "langfuse.experiment.item.id"
A_ITEM_EXPECTED_OUTPUT: Final = "langfuse.experiment.item.expected_output"
A_ITEM_METADATA: Final = "langfuse.experiment.item.metadata"
A_ITEM_ROOT_OBSERVATION_ID: Final = "langfuse.experiment.item.root_observation_id"


def experiment_id(project_id: str, dataset_id: str, run_name: str) -> str:
    """The stable experiment id of a run on a dataset: the first 16 hex digits of the
    SHA-256 of JavaScript's ``JSON.stringify`` of the four strings, as the server's
    ``createStableExperimentId`` and the SDK's ``_create_experiment_id`` compute it."""
    payload = json.dumps(
        ["langfuse-experiment-v1", project_id, dataset_id, run_name],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class ItemIds:
    """The trace and span ids of one item's run on one arm (lower-case hex)."""

    trace_id: str
    run_span_id: str
    task_span_id: str

    @property
    def traceparent(self) -> str:
        """A W3C ``traceparent`` naming the task span, so the app's own spans join the
        item's trace under it (as the SDK runs the task inside that span)."""
        return f"00-{self.trace_id}-{self.task_span_id}-01"


def item_ids(experiment: str, item_id: str) -> ItemIds:
    """Ids derived from the experiment and the dataset item."""
    digest = hashlib.sha256(json.dumps([experiment, item_id]).encode("utf-8")).hexdigest()
    return ItemIds(trace_id=digest[:32], run_span_id=digest[32:48], task_span_id=digest[48:64])


def serialize(value: Any) -> str | None:
    """An input or output as the SDK writes it: strings as they are, the rest as JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


@dataclass(frozen=True, slots=True)
class ItemRun:
    """What one arm did with one item: the spans' content."""

    ids: ItemIds
    experiment_id: str
    run_name: str
    description: str
    dataset_id: str
    item_id: str
    input: Any
    expected_output: Any
    item_metadata: Any
    output: Any
    failure: str | None
    """Why the call failed (the spans get level ERROR), or None."""
    start_ns: int
    end_ns: int
    metadata: Mapping[str, Any]
    """Observation metadata of both spans."""


def encode_export(runs: Sequence[ItemRun]) -> bytes:
    """A serialized OTLP export holding the two spans of each run."""
    spans = [span for run in runs for span in _spans(run)]
    resource = Resource(attributes=[_kv("service.name", SERVICE_NAME)])
    scope_spans = ScopeSpans(scope=InstrumentationScope(name=SCOPE_NAME), spans=spans)
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[scope_spans])]
    )
    return bytes(request.SerializeToString())


def _spans(run: ItemRun) -> tuple[Span, Span]:
    attributes = _attributes(run)
    trace = bytes.fromhex(run.ids.trace_id)
    root = bytes.fromhex(run.ids.run_span_id)
    spans = (
        Span(trace_id=trace, span_id=root, name=RUN_SPAN, attributes=attributes),
        Span(
            trace_id=trace,
            span_id=bytes.fromhex(run.ids.task_span_id),
            parent_span_id=root,
            name=TASK_SPAN,
            attributes=attributes,
        ),
    )
    for span in spans:
        span.kind = Span.SpanKind.SPAN_KIND_INTERNAL
        span.start_time_unix_nano = max(run.start_ns, 0)
        span.end_time_unix_nano = max(run.end_ns, run.start_ns, 0)
        if run.failure is not None:
            span.status.CopyFrom(
                Status(code=Status.StatusCode.STATUS_CODE_ERROR, message=run.failure)
            )
    return spans


def _attributes(run: ItemRun) -> list[KeyValue]:
    values: dict[str, str | None] = {
        A_ENVIRONMENT: ENVIRONMENT,
        A_OBS_TYPE: "span",
        A_OBS_INPUT: serialize(run.input),
        A_OBS_OUTPUT: serialize(run.output),
        A_OBS_METADATA: json.dumps(dict(run.metadata), ensure_ascii=False, default=str),
        A_OBS_LEVEL: None if run.failure is None else "ERROR",
        A_OBS_STATUS_MESSAGE: run.failure,
        A_EXPERIMENT_ID: run.experiment_id,
        A_EXPERIMENT_NAME: run.run_name,
        A_EXPERIMENT_DESCRIPTION: run.description,
        A_EXPERIMENT_DATASET_ID: run.dataset_id,
        A_ITEM_ID: run.item_id,
        A_ITEM_EXPECTED_OUTPUT: serialize(run.expected_output),
        A_ITEM_METADATA: (
            serialize(run.item_metadata) if isinstance(run.item_metadata, dict) else None
        ),
        A_ITEM_ROOT_OBSERVATION_ID: run.ids.task_span_id,
    }
    return [_kv(key, value) for key, value in values.items() if value is not None]


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))
