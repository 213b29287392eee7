"""coalmine's ``SpanReporter`` built on the OpenTelemetry SDK instead of ``proxy/spans.py``:
the replacement the span exporter benchmark weighs.

Each outcome becomes an SDK span (``Tracer.start_span`` with the request's times, then
``end``) that the SDK's ``BatchSpanProcessor`` queues and its ``OTLPSpanExporter``
(http/protobuf, ``requests``) posts to Langfuse's OTLP endpoint. The span says what
``proxy.spans.span_of`` says: the same ids (a preset ``IdGenerator`` hands the SDK the
outcome's own), name, kind, times, attributes and status; the benchmark's collector
checks that both deliver identical spans.

Drops are counted by the SDK's own metrics (``otel.sdk.processor.span.processed`` with
``error.type``, ``otel.sdk.exporter.span.exported``), which it keeps only when
``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED`` is true: the constructor turns them on and
reads them through an in-memory metric reader.
"""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.environment_variables import OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from coalmine.shared.conventions import trace_tags
from proxy.outcome import RequestOutcome
from proxy.spans import (
    A_IS_APP_ROOT,
    A_OBS_LEVEL,
    A_OBS_STATUS_MESSAGE,
    A_TRACE_SHADOW_OF,
    A_TRACE_TAGS,
    MAX_NAME_CHARS,
    OTLP_TRACES_PATH,
    SCOPE_NAME,
    clean_path,
    error_message,
)

PROCESSED: Final = "otel.sdk.processor.span.processed"
EXPORTED: Final = "otel.sdk.exporter.span.exported"
ERROR_TYPE: Final = "error.type"

Attributes = dict[str, str | bool | int | list[str]]


class PresetIds(IdGenerator):
    """Hands the SDK the ids the proxy already chose for the request (the trace id also
    went to the app in ``traceparent``)."""

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_id = 0

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return self.span_id


def sdk_attributes(outcome: RequestOutcome, path: str) -> Attributes:
    """The attributes ``proxy.spans`` gives the span, in the SDK's form."""
    attributes: Attributes = {
        A_TRACE_TAGS: trace_tags(outcome.release, outcome.arm),
        A_IS_APP_ROOT: True,
        "http.request.method": outcome.method,
        "url.path": path,
        "coalmine.release": outcome.release,
        "coalmine.arm": str(outcome.arm),
        "coalmine.request_id": outcome.request_id,
    }
    if outcome.status:
        attributes["http.response.status_code"] = outcome.status
    if outcome.is_error:
        attributes[A_OBS_LEVEL] = "ERROR"
        attributes[A_OBS_STATUS_MESSAGE] = error_message(outcome)
    optional = (
        ("coalmine.prompt_label", outcome.prompt_label),
        ("coalmine.failure", str(outcome.failure) if outcome.failure else None),
        ("coalmine.shadow_of", outcome.shadow_of),
    )
    attributes.update((key, value) for key, value in optional if value)
    if outcome.shadow_of:
        attributes[A_TRACE_SHADOW_OF] = outcome.shadow_of
    return attributes


class SdkSpanReporter:
    """A ``SpanReporter`` on ``BatchSpanProcessor`` + ``OTLPSpanExporter``, configured
    like coalmine's defaults: a queue of ``max_queue``, batches of ``batch_size``, a
    flush every ``flush_interval`` seconds, ``timeout`` seconds per export (the SDK's
    retries included) and no compression."""

    def __init__(
        self,
        base_url: str,
        public_key: str,
        secret_key: str,
        *,
        max_queue: int = 10_000,
        batch_size: int = 512,
        flush_interval: float = 1.0,
        timeout: float = 10.0,
        service_name: str = "coalmine-proxy",
    ) -> None:
        os.environ[OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED] = "true"
        self._metrics = InMemoryMetricReader()
        meters = MeterProvider(metric_readers=[self._metrics])
        credentials = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode()
        exporter = OTLPSpanExporter(
            endpoint=base_url.rstrip("/") + OTLP_TRACES_PATH,
            headers={
                "Authorization": f"Basic {credentials}",
                "x-langfuse-ingestion-version": "4",
            },
            timeout=timeout,
            meter_provider=meters,
        )
        self._processor = BatchSpanProcessor(
            exporter,
            max_queue_size=max_queue,
            schedule_delay_millis=flush_interval * 1000,
            max_export_batch_size=batch_size,
            export_timeout_millis=timeout * 1000,
            meter_provider=meters,
        )
        self._ids = PresetIds()
        self._provider = TracerProvider(
            sampler=ALWAYS_ON,
            resource=Resource({"service.name": service_name}),
            id_generator=self._ids,
        )
        self._provider.add_span_processor(self._processor)
        self._tracer = self._provider.get_tracer(SCOPE_NAME)
        self.record_errors = 0

    def record(self, outcome: RequestOutcome) -> None:
        """Start and end the request's span; the SDK queues it. Never raises."""
        try:
            self._record(outcome)
        except Exception:  # the hot path must outlive a malformed outcome
            self.record_errors += 1

    def _record(self, outcome: RequestOutcome) -> None:
        self._ids.trace_id = int(outcome.trace_id, 16)
        self._ids.span_id = int(outcome.span_id, 16)
        context = None
        if outcome.parent_span_id:
            parent = SpanContext(
                trace_id=self._ids.trace_id,
                span_id=int(outcome.parent_span_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
            context = trace.set_span_in_context(NonRecordingSpan(parent))
        path = clean_path(outcome.path)
        span = self._tracer.start_span(
            f"{outcome.method} {path}"[:MAX_NAME_CHARS],
            context=context,
            kind=SpanKind.SERVER,
            attributes=sdk_attributes(outcome, path),
            start_time=max(outcome.start_ns, 0),
        )
        if outcome.is_error:
            span.set_status(Status(StatusCode.ERROR, error_message(outcome)))
        span.end(end_time=max(outcome.end_ns, outcome.start_ns, 0))

    async def start(self) -> None:
        """Nothing to do: the processor's thread runs from the constructor on."""

    async def aclose(self) -> None:
        """The SDK's shutdown (it blocks, so in a thread): sends what is queued."""
        await asyncio.to_thread(self._provider.shutdown)

    def counts(self) -> dict[str, int]:
        """Spans sent, dropped because the queue was full, and failed, as the SDK's
        metrics count them."""
        counts = {"sent": 0, "dropped_full": 0, "failed": 0}
        data = self._metrics.get_metrics_data()
        for resource_metrics in data.resource_metrics if data else ():
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    for point in getattr(metric.data, "data_points", ()):
                        _count(counts, metric.name, point)
        return counts


def _count(counts: dict[str, int], name: str, point: Any) -> None:
    error = point.attributes.get(ERROR_TYPE)
    if name == EXPORTED:
        counts["failed" if error else "sent"] += int(point.value)
    elif name == PROCESSED and error == "queue_full":
        counts["dropped_full"] += int(point.value)
    elif name == PROCESSED and error:
        counts["failed"] += int(point.value)
