"""Request spans: their OTLP content, and their delivery to a live emulator and to
scripted servers (rate limits, refusals, outages, shutdown)."""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any, TypeVar

import httpx
import pytest
import uvloop
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from coalmine.emulator.settings import EmulatorSettings
from coalmine.shared.conventions import trace_tags
from policies.domain import Arm
from proxy.outcome import Failure, RequestOutcome
from proxy.spans import (
    EXPORT_BACKOFF,
    NoopSpanReporter,
    OtlpSpanReporter,
    SpanExportSettings,
    SpanReporter,
    export_request,
    retry_delay,
)
from tests.emulator.emulator_support import LiveEmulator, start_emulator

OBSERVATIONS = "/api/public/v2/observations"
PUBLIC_KEY = "pk-lf-spans"
SECRET_KEY = "sk-lf-never-logged"
T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z in nanoseconds

T = TypeVar("T")


def run(coroutine: Awaitable[T]) -> T:
    async def main() -> T:
        return await coroutine

    return asyncio.run(main())


def outcome(**changes: Any) -> RequestOutcome:
    """A successful canary request with fresh ids; ``changes`` override fields."""
    base = RequestOutcome(
        release="summarizer-v2",
        arm=Arm.CANARY,
        method="POST",
        path="/v1/chat",
        status=200,
        start_ns=T0,
        end_ns=T0 + 250_000_000,
        trace_id=secrets.token_hex(16),
        span_id=secrets.token_hex(8),
        parent_span_id=None,
        request_id=secrets.token_hex(6),
        prompt_label=None,
    )
    return replace(base, **changes)


def attributes(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        if kind == "array_value":
            out[kv.key] = [item.string_value for item in kv.value.array_value.values]
        else:
            out[kv.key] = getattr(kv.value, kind)
    return out


def only_span(request: ExportTraceServiceRequest) -> Span:
    (resource_spans,) = request.resource_spans
    (scope_spans,) = resource_spans.scope_spans
    (span,) = scope_spans.spans
    found: Span = span
    return found


def span_count(body: bytes) -> int:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)


class Server:
    """A scripted OTLP endpoint: answers from ``replies`` in turn, then 200."""

    def __init__(self, *replies: httpx.Response) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.replies:
            return self.replies.pop(0)
        return httpx.Response(200, json={})

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def spans_received(self) -> list[int]:
        return [span_count(request.content) for request in self.requests]


FAST_RETRY = replace(EXPORT_BACKOFF, first=0.001)


def reporter(server: Server, **options: Any) -> OtlpSpanReporter:
    """A reporter to ``server``; ``options`` are its ``SpanExportSettings``."""
    options.setdefault("retry", FAST_RETRY)
    return OtlpSpanReporter(
        "https://langfuse.test/",
        PUBLIC_KEY,
        SECRET_KEY,
        SpanExportSettings(**options),
        transport=server.transport,
    )


async def wait_until(condition: Callable[[], bool]) -> None:
    """Yield to the reporter's task until ``condition`` holds (a hang fails, not a race)."""
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.005)


# --------------------------------------------------------------------------- content


def test_span_carries_ids_name_kind_times_and_tags() -> None:
    parent = secrets.token_hex(8)
    request_outcome = outcome(
        path="/v1/chat?stream=true", parent_span_id=parent, prompt_label="canary"
    )
    export = export_request([request_outcome], "proxy-under-test")

    span = only_span(export)
    assert span.trace_id.hex() == request_outcome.trace_id
    assert span.span_id.hex() == request_outcome.span_id
    assert span.parent_span_id.hex() == parent
    assert span.name == "POST /v1/chat"
    assert span.kind == Span.SpanKind.SPAN_KIND_SERVER
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == (
        request_outcome.start_ns,
        request_outcome.end_ns,
    )
    assert span.status.code == Status.StatusCode.STATUS_CODE_UNSET
    assert attributes(span) == {
        "langfuse.trace.tags": trace_tags("summarizer-v2", Arm.CANARY),
        "langfuse.internal.is_app_root": True,
        "http.request.method": "POST",
        "url.path": "/v1/chat",
        "http.response.status_code": 200,
        "coalmine.release": "summarizer-v2",
        "coalmine.arm": "canary",
        "coalmine.request_id": request_outcome.request_id,
        "coalmine.prompt_label": "canary",
    }
    (resource_spans,) = export.resource_spans
    assert attributes_of_resource(resource_spans.resource.attributes) == {
        "service.name": "proxy-under-test"
    }
    assert resource_spans.scope_spans[0].scope.name == "coalmine.proxy"


def attributes_of_resource(key_values: Any) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in key_values}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"status": 503}, "upstream answered 503"),
        ({"status": 504, "failure": Failure.TIMEOUT}, "upstream timed out"),
        ({"status": 502, "failure": Failure.CONNECT}, "upstream unreachable"),
        ({"status": 200, "failure": Failure.UPSTREAM}, "upstream broke the connection"),
    ],
)
def test_error_sets_status_level_and_message(changes: dict[str, Any], message: str) -> None:
    span = only_span(export_request([outcome(**changes)], "coalmine-proxy"))

    assert span.status.code == Status.StatusCode.STATUS_CODE_ERROR
    assert span.status.message == message
    found = attributes(span)
    assert found["langfuse.observation.level"] == "ERROR"
    assert found["langfuse.observation.status_message"] == message
    if "failure" in changes:
        assert found["coalmine.failure"] == changes["failure"].value


def test_client_errors_and_client_failures_are_not_errors() -> None:
    for changes in ({"status": 404}, {"status": 499, "failure": Failure.CLIENT_GONE}):
        span = only_span(export_request([outcome(**changes)], "coalmine-proxy"))
        assert span.status.code == Status.StatusCode.STATUS_CODE_UNSET
        assert "langfuse.observation.level" not in attributes(span)


def test_shadow_copy_names_its_original_and_omits_a_missing_status() -> None:
    original = secrets.token_hex(16)
    span = only_span(export_request([outcome(arm=Arm.SHADOW, status=0, shadow_of=original)], "p"))
    found = attributes(span)
    assert found["coalmine.shadow_of"] == original
    # what Langfuse keeps of it: trace metadata, which the shadow rung reads
    assert found["langfuse.trace.metadata.coalmine_shadow_of"] == original
    assert found["langfuse.trace.tags"] == trace_tags("summarizer-v2", Arm.SHADOW)
    assert "http.response.status_code" not in found


def test_long_path_is_cut_and_empty_path_is_root() -> None:
    long_span = only_span(export_request([outcome(path="/" + "a" * 500)], "p"))
    assert len(long_span.name) == 200
    assert len(attributes(long_span)["url.path"]) == 200
    root_span = only_span(export_request([outcome(method="GET", path="?q=1")], "p"))
    assert root_span.name == "GET /"


def test_malformed_ids_are_refused_and_a_malformed_parent_is_dropped() -> None:
    with pytest.raises(ValueError, match="trace id"):
        export_request([outcome(trace_id="0" * 32)], "p")
    with pytest.raises(ValueError, match="span id"):
        export_request([outcome(span_id="xyz")], "p")
    span = only_span(export_request([outcome(parent_span_id="not-hex")], "p"))
    assert span.parent_span_id == b""


def test_reporters_satisfy_the_protocol() -> None:
    server = Server()
    otlp = reporter(server)
    noop = NoopSpanReporter()
    assert isinstance(otlp, SpanReporter)
    assert isinstance(noop, SpanReporter)
    assert not isinstance(object(), SpanReporter)
    recorded = outcome()

    async def use(reporter_: SpanReporter) -> None:
        await reporter_.start()
        reporter_.record(recorded)
        await reporter_.aclose()

    references = sys.getrefcount(recorded)
    run(use(noop))
    assert vars(noop) == {}
    assert sys.getrefcount(recorded) == references  # the no-op kept nothing of it

    run(use(otlp))
    (request,) = server.requests
    export = ExportTraceServiceRequest()
    export.ParseFromString(request.content)
    span = only_span(export)
    assert (span.trace_id.hex(), span.span_id.hex()) == (recorded.trace_id, recorded.span_id)
    assert (otlp.spans_sent, otlp.spans_failed, otlp.queue_size) == (1, 0, 0)


# --------------------------------------------------------------------------- live emulator


@pytest.fixture
def emulator() -> Iterator[LiveEmulator]:
    live = start_emulator(EmulatorSettings(public_key=PUBLIC_KEY, secret_key=SECRET_KEY))
    try:
        yield live
    finally:
        live.stop()
    assert not live.checked.violations, "\n".join(live.checked.violations)


def read_observation(emulator: LiveEmulator, trace_id: str) -> dict[str, Any]:
    with emulator.client() as client:
        response = client.get(
            OBSERVATIONS, params={"traceId": trace_id, "fields": "core,basic,trace_context"}
        )
    response.raise_for_status()
    (row,) = response.json()["data"]
    return dict(row)


def test_spans_land_in_the_emulator_as_tagged_root_observations(
    emulator: LiveEmulator,
) -> None:
    parent = secrets.token_hex(8)
    ok = outcome(parent_span_id=parent)
    unavailable = outcome(arm=Arm.BASELINE, status=503)
    timed_out = outcome(status=504, failure=Failure.TIMEOUT)
    spans = OtlpSpanReporter(
        emulator.base_url, PUBLIC_KEY, SECRET_KEY, SpanExportSettings(flush_interval=0.05)
    )

    async def report() -> None:
        await spans.start()
        for each in (ok, unavailable, timed_out):
            spans.record(each)
        await spans.aclose()

    run(report())

    assert (spans.spans_sent, spans.spans_failed, spans.queue_size) == (3, 0, 0)
    row = read_observation(emulator, ok.trace_id)
    assert row["id"] == ok.span_id
    assert row["parentObservationId"] == parent
    assert row["isRootObservation"] is True
    assert row["name"] == "POST /v1/chat"
    assert row["level"] == "DEFAULT"
    assert row["tags"] == trace_tags("summarizer-v2", Arm.CANARY)
    assert row["environment"] == "default"

    row = read_observation(emulator, unavailable.trace_id)
    assert row["level"] == "ERROR"
    assert row["statusMessage"] == "upstream answered 503"
    assert row["parentObservationId"] is None
    assert row["tags"] == trace_tags("summarizer-v2", Arm.BASELINE)

    row = read_observation(emulator, timed_out.trace_id)
    assert row["level"] == "ERROR"
    assert row["statusMessage"] == "upstream timed out"


def test_wrong_keys_are_refused_at_once(
    emulator: LiveEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    spans = OtlpSpanReporter(emulator.base_url, PUBLIC_KEY, "sk-lf-wrong-secret")

    async def report() -> None:
        spans.record(outcome())
        await spans.aclose()

    with caplog.at_level(logging.WARNING, logger="coalmine.proxy.spans"):
        run(report())

    assert (spans.spans_sent, spans.spans_failed) == (0, 1)
    assert "401" in caplog.text
    assert "sk-lf-wrong-secret" not in caplog.text


# --------------------------------------------------------------------------- delivery


def test_request_is_protobuf_with_basic_auth_and_direct_write_header() -> None:
    server = Server()
    spans = reporter(server)

    async def report() -> None:
        spans.record(outcome())
        await spans.aclose()

    run(report())

    (request,) = server.requests
    assert str(request.url) == "https://langfuse.test/api/public/otel/v1/traces"
    assert request.headers["content-type"] == "application/x-protobuf"
    assert request.headers["x-langfuse-ingestion-version"] == "4"
    expected = base64.b64encode(f"{PUBLIC_KEY}:{SECRET_KEY}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected}"
    assert server.spans_received() == [1]


def test_full_queue_drops_and_counts_without_blocking() -> None:
    server = Server()
    spans = reporter(server, max_queue=5)

    for _ in range(10):
        spans.record(outcome())

    assert (spans.queue_size, spans.spans_dropped_full) == (5, 5)
    run(spans.aclose())
    assert (spans.spans_sent, spans.spans_failed, spans.queue_size) == (5, 0, 0)


def test_full_batch_is_sent_before_the_interval() -> None:
    server = Server()
    spans = reporter(server, batch_size=2, flush_interval=3600)

    async def report() -> None:
        await spans.start()
        spans.record(outcome())
        spans.record(outcome())
        await wait_until(lambda: spans.spans_sent == 2)
        await spans.aclose()

    run(report())
    assert server.spans_received() == [2]


def test_between_flushes_only_full_batches_are_sent() -> None:
    received: list[int] = []

    async def slow_collector(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.002)  # spans keep coming while a batch is posted
        received.append(span_count(request.content))
        return httpx.Response(200, json={})

    spans = OtlpSpanReporter(
        "https://langfuse.test/",
        PUBLIC_KEY,
        SECRET_KEY,
        SpanExportSettings(batch_size=50, flush_interval=3600, retry=FAST_RETRY),
        transport=httpx.MockTransport(slow_collector),
    )

    async def report() -> None:
        await spans.start()
        for _ in range(40):  # 400 spans at a steady rate, 10 a millisecond
            for _ in range(10):
                spans.record(outcome())
            await asyncio.sleep(0.001)
        await wait_until(lambda: spans.spans_sent == 400)
        await spans.aclose()

    run(report())
    assert received == [50] * 8


def test_partial_batch_is_sent_after_the_interval() -> None:
    server = Server()
    spans = reporter(server, batch_size=100, flush_interval=0.01)

    async def report() -> None:
        await spans.start()
        spans.record(outcome())
        await wait_until(lambda: spans.spans_sent == 1)
        await spans.aclose()

    run(report())
    assert server.spans_received() == [1]


def test_aclose_flushes_pending_spans_in_batches() -> None:
    server = Server()
    spans = reporter(server, batch_size=2, flush_interval=3600)

    async def report() -> None:
        await spans.start()
        for _ in range(5):
            spans.record(outcome())
        await spans.aclose()

    run(report())
    assert spans.spans_sent == 5
    assert sorted(server.spans_received()) == [1, 2, 2]


def test_rate_limited_batch_is_retried_and_sent_once() -> None:
    server = Server(httpx.Response(429, headers={"Retry-After": "0"}))
    # only Retry-After can make the retry prompt
    spans = reporter(server, retry=replace(EXPORT_BACKOFF, first=3600))

    async def report() -> None:
        for _ in range(3):
            spans.record(outcome())
        await spans.aclose()

    run(report())

    assert len(server.requests) == 2
    assert server.requests[0].content == server.requests[1].content
    assert (spans.spans_sent, spans.spans_failed) == (3, 0)


@pytest.mark.parametrize(
    ("retry_after", "attempt", "wait"),
    [
        (None, 1, 0.5),  # no header: the doubling from 0.5 s
        (None, 2, 1.0),
        ("0", 2, 0.0),
        ("7", 1, 7.0),
        ("-3", 1, 0.0),
        ("3600", 1, 30.0),  # capped at RETRY_AFTER_CAP
        ("Thu, 01 Jan 2026 00:00:10 GMT", 1, 10.0),
        ("Wed, 31 Dec 2025 23:00:00 GMT", 1, 0.0),  # a date in the past
        ("nan", 1, 0.5),  # not a wait: the doubling instead
        ("inf", 2, 1.0),
        ("soon", 1, 0.5),
    ],
)
def test_the_wait_before_a_retry(retry_after: str | None, attempt: int, wait: float) -> None:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    no_jitter = Midpoint()
    now = T0 / 1e9  # 2026-01-01T00:00:00Z
    answer = httpx.Response(429, headers=headers)
    delay = retry_delay(EXPORT_BACKOFF, attempt, answer, now=now, rng=no_jitter)
    assert delay == pytest.approx(wait)
    if retry_after is None:
        assert retry_delay(EXPORT_BACKOFF, attempt, None, now=now, rng=no_jitter) == delay


class Midpoint:
    """Jitter that always draws the middle of its range."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


def test_a_retry_after_of_nan_is_not_waited_on() -> None:
    # on uvloop, the proxy's loop, a wait of nan seconds raises instead of sleeping
    server = Server(httpx.Response(429, headers={"Retry-After": "nan"}))
    spans = reporter(server)

    async def report() -> None:
        spans.record(outcome())
        await spans.aclose()

    uvloop.run(report())
    assert len(server.requests) == 2
    assert (spans.spans_sent, spans.spans_failed) == (1, 0)


def test_server_errors_are_retried_then_the_batch_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = Server(*(httpx.Response(503) for _ in range(3)))
    spans = reporter(server, retry=replace(FAST_RETRY, attempts=3))

    async def report() -> None:
        spans.record(outcome())
        spans.record(outcome())
        await spans.aclose()

    with caplog.at_level(logging.WARNING, logger="coalmine.proxy.spans"):
        run(report())

    assert len(server.requests) == 3
    assert (spans.spans_sent, spans.spans_failed) == (0, 2)
    assert "503" in caplog.text


def test_server_error_then_success_is_sent() -> None:
    server = Server(httpx.Response(502))
    spans = reporter(server)

    async def report() -> None:
        spans.record(outcome())
        await spans.aclose()

    run(report())
    assert len(server.requests) == 2
    assert (spans.spans_sent, spans.spans_failed) == (1, 0)


def test_bad_request_is_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    server = Server(httpx.Response(400, json={"error": "Invalid OTLP trace export"}))
    spans = reporter(server)

    async def report() -> None:
        spans.record(outcome())
        spans.record(outcome())
        await spans.aclose()

    with caplog.at_level(logging.WARNING, logger="coalmine.proxy.spans"):
        run(report())

    assert len(server.requests) == 1
    assert (spans.spans_sent, spans.spans_failed) == (0, 2)
    assert "Invalid OTLP trace export" in caplog.text
    assert SECRET_KEY not in caplog.text


def test_malformed_outcome_is_counted_and_the_rest_are_sent() -> None:
    server = Server()
    spans = reporter(server)

    async def report() -> None:
        spans.record(outcome(trace_id="not-a-trace-id"))
        spans.record(outcome())
        await spans.aclose()

    run(report())
    assert server.spans_received() == [1]
    assert (spans.spans_sent, spans.spans_failed) == (1, 1)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_endpoint_counts_failures_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spans = OtlpSpanReporter(
        f"http://127.0.0.1:{closed_port()}",
        PUBLIC_KEY,
        SECRET_KEY,
        SpanExportSettings(batch_size=1, flush_interval=0.01, retry=FAST_RETRY),
    )

    async def report() -> None:
        await spans.start()
        for _ in range(4):
            spans.record(outcome())
        await spans.aclose()
        spans.record(outcome())  # after close: counted, not raised

    with caplog.at_level(logging.WARNING, logger="coalmine.proxy.spans"):
        run(report())

    assert spans.spans_sent == 0
    assert spans.spans_failed == 5
    assert len(caplog.records) == 1
    assert SECRET_KEY not in caplog.text


def test_aclose_gives_up_on_a_hanging_endpoint() -> None:
    release = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200)

    spans = OtlpSpanReporter(
        "https://langfuse.test",
        PUBLIC_KEY,
        SECRET_KEY,
        SpanExportSettings(timeout=0.05),
        transport=httpx.MockTransport(hang),
    )

    async def report() -> None:
        await spans.start()
        spans.record(outcome())
        spans.record(outcome())
        await spans.aclose()

    run(report())
    assert (spans.spans_sent, spans.spans_failed, spans.queue_size) == (0, 2, 0)
