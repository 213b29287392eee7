"""Langfuse emulator speed: OTLP ingestion from the SDK's exporter, and v2 observation
queries at 100,000 stored spans.

    python -m bench.emulator_speed [--traces 50000] [--queries 200] [--out bench/out]

The emulator runs in its own process (uvicorn, in-memory store), as ``coalmine
langfuse-emulator`` would. This process:

1. creates ``--traces`` traces with the ``langfuse`` SDK (a root span and a generation
   with usage, cost and a prompt link, under ``propagate_attributes(tags=[arm])``; half
   the traces canary, half baseline; a few percent with an error), collected in memory;
2. exports them with the SDK's own exporter (the ``OTLPSpanExporter`` that
   ``LangfuseSpanProcessor`` builds: protobuf, gzip, Langfuse headers) in batches of
   512 spans, one batch at a time as the SDK's batch processor sends them. References
   measured in the same run on the same batches: serialising and compressing alone
   (the client's share of every export), and the same exports to a bare uvicorn
   endpoint that reads the body and answers ``{}`` (the transport's share);
3. times ``--queries`` GET /api/public/v2/observations queries of the shapes coalmine
   uses, each with ``limit=1000``: per arm, root spans in a time window (latency, level,
   cost) and generations in a time window (cost, usage, prompt version).

The result is a Markdown table (stdout and ``<out>/emulator_speed.md``, with the
command) and ``<out>/emulator_speed.json``. Goals: at least 5,000 spans/s ingested, and
a p95 query latency of at most 50 ms.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import shlex
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from langfuse import Langfuse, propagate_attributes
from langfuse._client.span_processor import LangfuseSpanProcessor
from langfuse.api import Prompt_Text
from langfuse.model import TextPromptClient
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

PUBLIC_KEY = "pk-lf-bench"
SECRET_KEY = "sk-lf-bench"
BATCH = 512  # the SDK's batch processor's max_export_batch_size
INGEST_GOAL = 5_000.0  # spans per second
P95_GOAL_MS = 50.0
ARMS = ("coalmine:arm:canary", "coalmine:arm:baseline")

EMULATOR_SERVER = f"""
import sys, uvicorn
from coalmine.emulator.app import create_app
from coalmine.emulator.settings import EmulatorSettings
settings = EmulatorSettings(public_key={PUBLIC_KEY!r}, secret_key={SECRET_KEY!r})
uvicorn.run(create_app(settings), host="127.0.0.1", port=int(sys.argv[1]),
            log_level="warning", access_log=False)
"""

ECHO_SERVER = """
import sys, uvicorn

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False)
"""


class Collector(SpanExporter):
    """Keeps the SDK's finished spans in memory."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(code: str) -> Iterator[str]:
    """A uvicorn server in its own process; yields its base URL."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-c", code, str(port)])
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base_url}/api/public/health", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("server did not start") from None
                time.sleep(0.05)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)


def make_spans(traces: int, seed: int) -> tuple[list[ReadableSpan], float]:
    """Spans of ``traces`` traced requests, made by the SDK; and the seconds it took."""
    rng = random.Random(seed)
    collector = Collector()
    langfuse = Langfuse(
        public_key=PUBLIC_KEY,
        secret_key=SECRET_KEY,
        base_url="http://127.0.0.1:9",  # never contacted: spans go to the collector
        tracer_provider=TracerProvider(),
        span_exporter=collector,
        release="2026.01.1",
        environment="production",
    )
    prompts = {
        version: TextPromptClient(
            Prompt_Text(
                name="support/answer",
                version=version,
                prompt="Answer {{question}}",
                config={},
                labels=[],
                tags=[],
            )
        )
        for version in (3, 4)
    }
    started = time.perf_counter()
    for index in range(traces):
        canary = index % 2 == 0
        with (
            propagate_attributes(
                tags=[ARMS[0] if canary else ARMS[1]],
                user_id=f"user-{rng.randrange(1000)}",
                session_id=f"session-{rng.randrange(5000)}",
                trace_name="support-chat",
            ),
            langfuse.start_as_current_observation(
                name="handle-request", input={"question": f"q{index}"}
            ) as root,
        ):
            with langfuse.start_as_current_observation(
                name="llm",
                as_type="generation",
                model="gpt-4o-mini",
                usage_details={"input": rng.randrange(50, 500), "output": rng.randrange(5, 200)},
                cost_details={"input": rng.random() / 1000, "output": rng.random() / 1000},
                prompt=prompts[4 if canary else 3],
            ) as generation:
                generation.update(output="an answer")
            if rng.random() < 0.03:
                root.update(level="ERROR", status_message="upstream timeout")
            root.update(output="an answer")
    langfuse.flush()
    seconds = time.perf_counter() - started
    langfuse.shutdown()
    return collector.spans, seconds


def _sdk_exporter(base_url: str) -> Any:
    processor = LangfuseSpanProcessor(
        public_key=PUBLIC_KEY, secret_key=SECRET_KEY, base_url=base_url, timeout=60
    )
    return processor, processor.span_exporter


def time_exports(base_url: str, batches: list[list[ReadableSpan]]) -> float:
    """Seconds to export every batch, one after the other, with the SDK's exporter."""
    processor, exporter = _sdk_exporter(base_url)
    try:
        started = time.perf_counter()
        for batch in batches:
            if exporter.export(batch) is not SpanExportResult.SUCCESS:
                raise RuntimeError("an export failed")
        return time.perf_counter() - started
    finally:
        processor.shutdown()


def time_serialising(batches: list[list[ReadableSpan]]) -> tuple[float, int]:
    """Seconds to encode and gzip every batch as the exporter does; compressed bytes."""
    started = time.perf_counter()
    size = 0
    for batch in batches:
        size += len(gzip.compress(encode_spans(batch).SerializePartialToString()))
    return time.perf_counter() - started, size


@dataclass(frozen=True)
class Ingest:
    name: str
    spans: int
    seconds: float

    @property
    def spans_per_second(self) -> float:
        return self.spans / self.seconds


@dataclass(frozen=True)
class QueryShape:
    name: str
    description: str
    latencies_ms: list[float]
    rows: int

    def percentile(self, q: float) -> float:
        return _percentile(self.latencies_ms, q)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _iso(nanos: int) -> str:
    millis = nanos // 1_000_000
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000)) + f".{millis % 1000:03d}Z"
    )


def run_queries(
    base_url: str, spans: list[ReadableSpan], queries: int, seed: int
) -> list[QueryShape]:
    """``queries`` coalmine-shaped queries, alternating shapes, arms and time windows."""
    rng = random.Random(seed)
    starts = sorted(span.start_time or 0 for span in spans)
    first, last = starts[0], starts[-1]
    span_ns = max(last - first, 1)

    def window() -> list[dict[str, Any]]:
        # A window covering a quarter to all of the ingestion period.
        width = int(span_ns * rng.uniform(0.25, 1.0))
        begin = first + rng.randrange(0, span_ns - width + 1)
        return [
            {"type": "datetime", "column": "startTime", "operator": ">=", "value": _iso(begin)},
            {
                "type": "datetime",
                "column": "startTime",
                "operator": "<",
                "value": _iso(begin + width + 1_000_000),
            },
        ]

    def tags(arm: str) -> dict[str, Any]:
        return {"type": "arrayOptions", "column": "tags", "operator": "any of", "value": [arm]}

    def metrics_window() -> tuple[str, str]:
        width = int(span_ns * rng.uniform(0.25, 1.0))
        begin = first + rng.randrange(0, span_ns - width + 1)
        return _iso(begin), _iso(begin + width + 1_000_000)

    def metrics(query: dict[str, Any]) -> dict[str, Any]:
        start, end = metrics_window()
        return {"query": json.dumps({**query, "fromTimestamp": start, "toTimestamp": end})}

    both_arms = {"column": "tags", "operator": "any of", "value": list(ARMS)}
    observations = "/api/public/v2/observations"
    shapes: dict[str, tuple[str, str, Any]] = {
        "roots": (
            observations,
            "observations v2: tags any of [arm] + isRootObservation + startTime window; "
            "fields core,basic,usage,metrics,trace_context",
            lambda arm: {
                "filter": json.dumps(
                    [
                        tags(arm),
                        {
                            "type": "boolean",
                            "column": "isRootObservation",
                            "operator": "=",
                            "value": True,
                        },
                        *window(),
                    ]
                ),
                "fields": "core,basic,usage,metrics,trace_context",
                "limit": 1000,
            },
        ),
        "generations": (
            observations,
            "observations v2: tags any of [arm] + type GENERATION + startTime window; "
            "fields core,basic,usage,prompt",
            lambda arm: {
                "filter": json.dumps([tags(arm), *window()]),
                "type": "GENERATION",
                "fields": "core,basic,usage,prompt",
                "limit": 1000,
            },
        ),
        "metrics-arms": (
            "/api/public/v2/metrics",
            "metrics v2, observations view, by tags: count, p95 latency, sum totalCost, "
            "uniq traceId of root spans of both arms in a time window",
            lambda arm: metrics(
                {
                    "view": "observations",
                    "dimensions": [{"field": "tags"}],
                    "metrics": [
                        {"measure": "count", "aggregation": "count"},
                        {"measure": "latency", "aggregation": "p95"},
                        {"measure": "totalCost", "aggregation": "sum"},
                        {"measure": "traceId", "aggregation": "uniq"},
                    ],
                    "filters": [
                        {**both_arms, "type": "arrayOptions"},
                        {
                            "column": "isRootObservation",
                            "operator": "=",
                            "value": True,
                            "type": "boolean",
                        },
                    ],
                }
            ),
        ),
        "metrics-levels": (
            "/api/public/v2/metrics",
            "metrics v2, observations view, by tags and level: count (error rate per arm)",
            lambda arm: metrics(
                {
                    "view": "observations",
                    "dimensions": [{"field": "tags"}, {"field": "level"}],
                    "metrics": [{"measure": "count", "aggregation": "count"}],
                    "filters": [{**both_arms, "type": "arrayOptions"}],
                }
            ),
        ),
    }
    latencies: dict[str, list[float]] = {name: [] for name in shapes}
    rows: dict[str, int] = dict.fromkeys(shapes, 0)
    names = list(shapes)
    with httpx.Client(base_url=base_url, auth=(PUBLIC_KEY, SECRET_KEY), timeout=30) as client:
        for warm in range(len(names)):  # connection and caches
            path, _, build = shapes[names[warm]]
            client.get(path, params=build(ARMS[0]))
        for index in range(queries):
            name = names[index % len(names)]
            path, _, build = shapes[name]
            params = build(ARMS[(index // len(names)) % 2])
            started = time.perf_counter()
            response = client.get(path, params=params)
            body = response.content
            latencies[name].append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"query failed: {response.status_code} {body[:300]!r}")
            rows[name] += len(json.loads(body)["data"])
    return [
        QueryShape(name, shapes[name][1], latencies[name], rows[name] // len(latencies[name]))
        for name in names
    ]


def count_stored(base_url: str) -> int:
    """Observations the emulator holds, by paging through all of them."""
    count, cursor = 0, None
    with httpx.Client(base_url=base_url, auth=(PUBLIC_KEY, SECRET_KEY), timeout=30) as client:
        while True:
            params: dict[str, str | int] = {"fields": "core", "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            body = client.get("/api/public/v2/observations", params=params).json()
            count += len(body["data"])
            cursor = body["meta"].get("cursor")
            if cursor is None:
                return count


def markdown(
    *,
    command: str,
    spans: int,
    traces: int,
    generated_s: float,
    ingests: list[Ingest],
    shapes: list[QueryShape],
    compressed_bytes: int,
) -> str:
    reference, echo, emulator = ingests
    all_latencies = [value for shape in shapes for value in shape.latencies_ms]
    p50, p95 = _percentile(all_latencies, 0.5), _percentile(all_latencies, 0.95)
    lines = [
        "# Langfuse emulator speed",
        "",
        f"Command: `{command}`",
        "",
        f"{traces:,} traces made with the `langfuse` SDK ({spans:,} spans: a root span and a "
        f"generation each, in {generated_s:.1f} s), exported in batches of {BATCH} with the "
        f"SDK's OTLP exporter (protobuf, gzip; {compressed_bytes / spans:.0f} compressed "
        "bytes a span); all of them were stored, as paging through them confirms. "
        "The emulator and the echo endpoint each run in their own uvicorn "
        f"process. Python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPU(s).",
        "",
        "## Ingestion",
        "",
        "| measurement | spans | seconds | spans/s | seconds / reference |",
        "|---|---|---|---|---|",
    ]
    for ingest in ingests:
        lines.append(
            f"| {ingest.name} | {ingest.spans:,} | {ingest.seconds:.2f} | "
            f"{ingest.spans_per_second:,.0f} | {ingest.seconds / reference.seconds:.1f} |"
        )
    verdict = "meets" if emulator.spans_per_second >= INGEST_GOAL else "misses"
    lines += [
        "",
        f"The emulator ingests {emulator.spans_per_second:,.0f} spans/s: {verdict} the goal "
        f"of {INGEST_GOAL:,.0f} spans/s. The exporter waits for each answer, so this "
        "includes the client's own work (the reference row). Over the bare endpoint, the "
        f"emulator adds {emulator.seconds - echo.seconds:.2f} s, "
        f"{(emulator.seconds - echo.seconds) / emulator.spans * 1e6:.0f} µs a span "
        "(decoding, mapping and storing). References and echo are the faster of two runs.",
        "",
        f"## Queries at {spans:,} stored spans",
        "",
        "`GET /api/public/v2/observations` (`limit=1000`) and `GET /api/public/v2/metrics`, "
        "arms and time windows varied; "
        "latency from request to the last byte of the response, on one keep-alive "
        "connection.",
        "",
        "| shape | queries | rows per page (mean) | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|---|---|",
    ]
    for shape in shapes:
        lines.append(
            f"| {shape.name}: {shape.description} | {len(shape.latencies_ms)} | {shape.rows} | "
            f"{shape.percentile(0.5):.1f} | {shape.percentile(0.95):.1f} | "
            f"{max(shape.latencies_ms):.1f} |"
        )
    lines.append(
        f"| all | {len(all_latencies)} | | {p50:.1f} | {p95:.1f} | {max(all_latencies):.1f} |"
    )
    verdict = "meets" if p95 <= P95_GOAL_MS else "misses"
    lines += ["", f"p95 {p95:.1f} ms: {verdict} the goal of {P95_GOAL_MS:.0f} ms."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--traces", type=int, default=50_000, help="traces, 2 spans each")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    args = parser.parse_args(argv)
    command = "python -m bench.emulator_speed " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    command = command.strip()

    spans, generated_s = make_spans(args.traces, args.seed)
    batches = [spans[i : i + BATCH] for i in range(0, len(spans), BATCH)]
    serialising_s, compressed = min(time_serialising(batches) for _ in range(2))
    with server(ECHO_SERVER) as echo_url:
        echo_s = min(time_exports(echo_url, batches) for _ in range(2))
    with server(EMULATOR_SERVER) as emulator_url:
        emulator_s = time_exports(emulator_url, batches)
        stored = count_stored(emulator_url)
        if stored != len(spans):
            raise RuntimeError(f"exported {len(spans)} spans but {stored} are stored")
        shapes = run_queries(emulator_url, spans, args.queries, args.seed)
    ingests = [
        Ingest(
            "reference: encode + gzip only (the exporter's own work)", len(spans), serialising_s
        ),
        Ingest("SDK exporter -> bare uvicorn echo endpoint", len(spans), echo_s),
        Ingest("SDK exporter -> emulator (decode, map, store)", len(spans), emulator_s),
    ]
    text = markdown(
        command=command,
        spans=len(spans),
        traces=args.traces,
        generated_s=generated_s,
        ingests=ingests,
        shapes=shapes,
        compressed_bytes=compressed,
    )
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "emulator_speed.md").write_text(text + "\n", encoding="utf-8")
    all_latencies = [value for shape in shapes for value in shape.latencies_ms]
    result = {
        "command": command,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "traces": args.traces,
        "spans": len(spans),
        "batch": BATCH,
        "compressed_bytes": compressed,
        "ingest": [
            {**asdict(ingest), "spans_per_second": ingest.spans_per_second} for ingest in ingests
        ],
        "queries": [
            {
                "name": shape.name,
                "description": shape.description,
                "count": len(shape.latencies_ms),
                "rows_per_page": shape.rows,
                "p50_ms": shape.percentile(0.5),
                "p95_ms": shape.percentile(0.95),
                "max_ms": max(shape.latencies_ms),
            }
            for shape in shapes
        ],
        "p50_ms": _percentile(all_latencies, 0.5),
        "p95_ms": _percentile(all_latencies, 0.95),
        "goals": {"spans_per_second": INGEST_GOAL, "p95_ms": P95_GOAL_MS},
        "meets_goals": ingests[2].spans_per_second >= INGEST_GOAL
        and _percentile(all_latencies, 0.95) <= P95_GOAL_MS,
        "generated_seconds": generated_s,
        "stats": {"query_mean_ms": statistics.fmean(all_latencies)},
    }
    (args.out / "emulator_speed.json").write_text(
        json.dumps(result, indent=2) + "\n", encoding="utf-8"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
