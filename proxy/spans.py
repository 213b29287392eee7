"""Each request the proxy serves, reported to Langfuse as the root span of its trace.

The app's own spans join the same trace as children, but a request the app never
traced (it crashed, timed out, or is not instrumented) still shows up under its
release and arm tags, so it counts against its arm.

Spans are queued in memory and sent in the background as OTLP/HTTP protobuf. The hot
path only appends to a bounded queue: when Langfuse is slow or down, spans are
dropped and counted, never waited for.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from coalmine.shared.conventions import trace_tags
from coalmine.shared.retry import Backoff, Outcome, Random, outcome_of, parse_retry_after
from proxy.outcome import Failure, RequestOutcome

logger = logging.getLogger("coalmine.proxy.spans")

OTLP_TRACES_PATH: Final = "/api/public/otel/v1/traces"
SCOPE_NAME: Final = "coalmine.proxy"
MAX_NAME_CHARS: Final = 200

MAX_ATTEMPTS: Final = 3
"""Tries per batch before it is dropped."""
RETRY_AFTER_CAP: Final = 30.0
"""Longest wait, in seconds, that a ``Retry-After`` can impose."""
EXPORT_BACKOFF: Final = Backoff(
    attempts=MAX_ATTEMPTS, first=0.5, factor=2.0, jitter=0.5, retry_after_cap=RETRY_AFTER_CAP
)
"""Retries of a batch: 0.5 s, then 1 s, each jittered by ±50 % so that proxies do not
retry in step; a server's ``Retry-After`` wins, up to ``RETRY_AFTER_CAP``."""
WARNING_INTERVAL: Final = 60.0
"""Seconds between two warnings of the same kind."""

# Attributes Langfuse maps (packages/shared/src/server/otel).
A_TRACE_TAGS: Final = "langfuse.trace.tags"
A_OBS_LEVEL: Final = "langfuse.observation.level"
A_OBS_STATUS_MESSAGE: Final = "langfuse.observation.status_message"
A_IS_APP_ROOT: Final = "langfuse.internal.is_app_root"
A_TRACE_SHADOW_OF: Final = "langfuse.trace.metadata.coalmine_shadow_of"
"""A copy's link to its primary, read by the shadow rung (``controller.source``)."""

_FAILURE_MESSAGES: Final = {
    Failure.CONNECT: "upstream unreachable",
    Failure.TIMEOUT: "upstream timed out",
    Failure.UPSTREAM: "upstream broke the connection",
}

# Langfuse writes spans at once only for exporters that declare ingestion version 4;
# other traffic can lag by minutes, which would starve the controller.
_HEADERS: Final = {
    "Content-Type": "application/x-protobuf",
    "x-langfuse-ingestion-version": "4",
}


@runtime_checkable
class SpanReporter(Protocol):
    """Where the proxy hands each finished request."""

    def record(self, outcome: RequestOutcome) -> None:
        """Queue one request's span. Synchronous; never blocks, never raises."""

    async def start(self) -> None:
        """Begin sending in the background."""

    async def aclose(self) -> None:
        """Send what is queued, then stop."""


class NoopSpanReporter:
    """Spans switched off: every outcome is ignored."""

    def record(self, outcome: RequestOutcome) -> None:
        pass

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


# --------------------------------------------------------------------------- encoding


def export_request(
    outcomes: Iterable[RequestOutcome], service_name: str
) -> ExportTraceServiceRequest:
    """One OTLP export holding a span per outcome, under one resource and scope.

    Raises ``ValueError`` when an outcome's trace or span id is not valid hex of the
    right length (Langfuse rejects the whole export for one such span).
    """
    return _export([span_of(outcome) for outcome in outcomes], service_name)


def _export(spans: Sequence[Span], service_name: str) -> ExportTraceServiceRequest:
    resource = Resource(attributes=[_string_kv("service.name", service_name)])
    scope_spans = ScopeSpans(scope=InstrumentationScope(name=SCOPE_NAME), spans=spans)
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[scope_spans])]
    )


def span_of(outcome: RequestOutcome) -> Span:
    """The proxy's span for one request; ``ValueError`` for malformed ids."""
    path = clean_path(outcome.path)
    name = f"{outcome.method} {path}"[:MAX_NAME_CHARS]
    span = Span(
        trace_id=_id_bytes(outcome.trace_id, 16, "trace id"),
        span_id=_id_bytes(outcome.span_id, 8, "span id"),
        name=name,
        kind=Span.SpanKind.SPAN_KIND_SERVER,
        start_time_unix_nano=max(outcome.start_ns, 0),
        end_time_unix_nano=max(outcome.end_ns, outcome.start_ns, 0),
        attributes=_attributes(outcome, path),
    )
    parent = _parent_bytes(outcome.parent_span_id)
    if parent is not None:
        span.parent_span_id = parent
    if outcome.is_error:
        span.status.CopyFrom(
            Status(code=Status.StatusCode.STATUS_CODE_ERROR, message=error_message(outcome))
        )
    return span


def clean_path(path: str) -> str:
    """The path without its query string, at most ``MAX_NAME_CHARS`` characters."""
    path = path.split("?", 1)[0] or "/"
    return path[:MAX_NAME_CHARS]


def error_message(outcome: RequestOutcome) -> str:
    """Why a request counts as an error, in a few words."""
    if outcome.failure in _FAILURE_MESSAGES:
        return _FAILURE_MESSAGES[outcome.failure]
    return f"upstream answered {outcome.status}"


def _attributes(outcome: RequestOutcome, path: str) -> list[KeyValue]:
    tags = AnyValue(
        array_value=ArrayValue(
            values=[
                AnyValue(string_value=tag)
                for tag in trace_tags(outcome.release, outcome.arm, outcome.sampled)
            ]
        )
    )
    attributes = [
        KeyValue(key=A_TRACE_TAGS, value=tags),
        # The caller's span, if any, never reaches Langfuse: this span is the app's root.
        KeyValue(key=A_IS_APP_ROOT, value=AnyValue(bool_value=True)),
        _string_kv("http.request.method", outcome.method),
        _string_kv("url.path", path),
        _string_kv("coalmine.release", outcome.release),
        _string_kv("coalmine.arm", str(outcome.arm)),
        _string_kv("coalmine.request_id", outcome.request_id),
    ]
    if outcome.status:
        attributes.append(
            KeyValue(key="http.response.status_code", value=AnyValue(int_value=outcome.status))
        )
    if outcome.is_error:
        attributes.append(_string_kv(A_OBS_LEVEL, "ERROR"))
        attributes.append(_string_kv(A_OBS_STATUS_MESSAGE, error_message(outcome)))
    optional = (
        ("coalmine.prompt_label", outcome.prompt_label),
        ("coalmine.failure", str(outcome.failure) if outcome.failure else None),
        ("coalmine.shadow_of", outcome.shadow_of),
    )
    attributes.extend(_string_kv(key, value) for key, value in optional if value)
    if outcome.shadow_of:
        # Langfuse keeps only langfuse.* attributes: as trace metadata the link survives
        attributes.append(_string_kv(A_TRACE_SHADOW_OF, outcome.shadow_of))
    return attributes


def _string_kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _id_bytes(value: str, size: int, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{what} is not hex: {value!r}") from None
    if len(raw) != size or not any(raw):
        raise ValueError(f"{what} must be {size * 2} hex digits, not all zero: {value!r}")
    return raw


def _parent_bytes(value: str | None) -> bytes | None:
    """The parent id, or None when absent or unusable (the span then stays a root)."""
    if not value:
        return None
    try:
        return _id_bytes(value, 8, "parent span id")
    except ValueError:
        return None


# --------------------------------------------------------------------------- sending


class _Warnings:
    """At most one warning per kind per interval; the rest are counted and summed up."""

    def __init__(self, interval: float = WARNING_INTERVAL) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += " (%d similar warnings suppressed)"
            args = (*args, suppressed)
        logger.warning(message, *args)


@dataclass(frozen=True, slots=True)
class SpanExportSettings:
    """How the exporter queues, batches and retries."""

    max_queue: int = 10_000
    """Spans waiting at most; past it a span is dropped and counted."""
    batch_size: int = 512
    """Spans per export; a full batch is sent without waiting for the interval."""
    flush_interval: float = 1.0
    """Seconds a partial batch waits before it is sent."""
    timeout: float = 10.0
    """Seconds for one export request, and for the flush at shutdown."""
    service_name: str = "coalmine-proxy"
    """The ``service.name`` of the exported resource."""
    retry: Backoff = field(default=EXPORT_BACKOFF)
    """Tries per batch and the waits between them."""

    def __post_init__(self) -> None:
        if self.max_queue < 1 or self.batch_size < 1:
            raise ValueError("max_queue and batch_size must be at least 1")


class OtlpSpanReporter:
    """Sends request spans to Langfuse's OTLP endpoint in batches, in the background.

    Counters (read for metrics): ``spans_sent``, ``spans_dropped_full`` (the queue was
    full), ``spans_failed`` (not delivered: refused, out of retries, malformed, or still
    queued when closing ran out of time).
    """

    def __init__(
        self,
        base_url: str,
        public_key: str,
        secret_key: str,
        settings: SpanExportSettings | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        settings = settings or SpanExportSettings()
        self._url = base_url.rstrip("/") + OTLP_TRACES_PATH
        self._auth = httpx.BasicAuth(public_key, secret_key)
        self._max_queue = settings.max_queue
        self._batch_size = settings.batch_size
        self._flush_interval = settings.flush_interval
        self._timeout = settings.timeout
        self._transport = transport
        self._service_name = settings.service_name
        self._retry = settings.retry
        self._queue: deque[RequestOutcome] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self._warnings = _Warnings()
        self.spans_sent = 0
        self.spans_dropped_full = 0
        self.spans_failed = 0

    @property
    def queue_size(self) -> int:
        return len(self._queue)

    def record(self, outcome: RequestOutcome) -> None:
        """Queue one outcome; when the queue is full (or closed) it is dropped and counted.

        Call it from the event loop's thread.
        """
        if self._closing:
            self.spans_failed += 1
            return
        if len(self._queue) >= self._max_queue:
            self.spans_dropped_full += 1
            self._warnings.warn("full", "span queue full (%d): dropping spans", self._max_queue)
            return
        self._queue.append(outcome)
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    async def start(self) -> None:
        if self._task is None and not self._closing:
            self._client()  # made now, not on the first export while requests wait on the loop
            self._task = asyncio.create_task(self._run(), name="coalmine-span-reporter")

    async def aclose(self) -> None:
        """Send what is queued, within ``timeout`` seconds; what is left counts as failed."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        task = self._task or asyncio.create_task(self._drain())
        done, _ = await asyncio.wait({task}, timeout=self._timeout)
        if not done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._queue:
            self.spans_failed += len(self._queue)
            self._warnings.warn("close", "%d spans unsent at shutdown", len(self._queue))
            self._queue.clear()
        if self._http is not None:
            await self._http.aclose()

    async def _run(self) -> None:
        while not self._closing:
            interval_over = await self._wait_for_batch()
            # Between flushes only full batches go: a partial one would be whatever came
            # in during the last post, and at a steady rate that means a post per few spans.
            await self._drain(full_only=not interval_over)
        await self._drain()

    async def _wait_for_batch(self) -> bool:
        """Wait for a full batch, closing, or the flush interval; True when it was the
        interval (or closing) that ended the wait, so a partial batch is due."""
        interval_over = self._closing
        if len(self._queue) < self._batch_size and not self._closing:
            try:
                async with asyncio.timeout(self._flush_interval):
                    await self._wake.wait()
            except TimeoutError:
                interval_over = True
        self._wake.clear()
        return interval_over or self._closing

    async def _drain(self, *, full_only: bool = False) -> None:
        while len(self._queue) >= (self._batch_size if full_only else 1):
            count = min(self._batch_size, len(self._queue))
            batch = [self._queue.popleft() for _ in range(count)]
            try:
                await self._send(batch)
            except asyncio.CancelledError:
                self.spans_failed += len(batch)
                raise
            except Exception:  # the loop must outlive any one batch
                self.spans_failed += len(batch)
                logger.exception("span batch could not be sent")

    async def _send(self, batch: list[RequestOutcome]) -> None:
        # Building and serialising a large batch would hold up the proxy's event loop.
        body, count, problems = await asyncio.to_thread(_encode, batch, self._service_name)
        if problems:
            self.spans_failed += len(problems)
            self._warnings.warn("malformed", "dropped malformed span: %s", problems[0])
        if count:
            await self._deliver(body, count)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                auth=self._auth,
                timeout=self._timeout,
                transport=self._transport,
                headers=_HEADERS,
            )
        return self._http

    async def _deliver(self, body: bytes, count: int) -> None:
        """POST one export, retrying temporary failures (429, most 5xx, no answer at all)
        as ``retry`` says."""
        retry = self._retry
        problem = ""
        for attempt in range(1, retry.attempts + 1):
            response: httpx.Response | None = None
            try:
                response = await self._client().post(self._url, content=body)
            except httpx.TransportError as error:
                problem = f"{type(error).__name__}: {error}"
            else:
                outcome = outcome_of(response.status_code)
                if outcome is Outcome.DONE:
                    self.spans_sent += count
                    return
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
                if outcome is Outcome.PERMANENT:
                    self.spans_failed += count
                    self._warnings.warn(
                        "refused", "%s refused %d spans: %s", self._url, count, problem
                    )
                    return
            if retry.more_after(attempt):
                await asyncio.sleep(retry_delay(retry, attempt, response, now=time.time()))
        self.spans_failed += count
        self._warnings.warn(
            "retries",
            "dropped %d spans after %d attempts to %s: %s",
            count,
            retry.attempts,
            self._url,
            problem,
        )


def retry_delay(
    retry: Backoff,
    attempt: int,
    response: httpx.Response | None,
    *,
    now: float,
    rng: Random = random,
) -> float:
    """Seconds to wait after try ``attempt`` failed with ``response`` (None: no answer):
    what its ``Retry-After`` asks for, when it asks for a usable wait, else the backoff's
    jittered doubling."""
    header = None if response is None else response.headers.get("retry-after")
    asked = parse_retry_after(header, now=now, cap=retry.retry_after_cap)
    return retry.delay(attempt, retry_after=asked, rng=rng)


def _encode(batch: list[RequestOutcome], service_name: str) -> tuple[bytes, int, list[str]]:
    """The serialised export of the well-formed outcomes, their count, and why each of
    the others was left out."""
    spans: list[Span] = []
    problems: list[str] = []
    for outcome in batch:
        try:
            spans.append(span_of(outcome))
        except ValueError as error:
            problems.append(str(error))
    return _export(spans, service_name).SerializeToString(), len(spans), problems
