"""One run of the span exporter benchmark, in a process of its own: an asyncio hot path
records request outcomes into one reporter (coalmine's ``OtlpSpanReporter``, the SDK's,
or none), then the reporter is closed; the process writes what it measured as JSON.

    python -m bench.span_recording --spec '{"reporter": "coalmine", ...}' --out run.json

A process per run, so that peak RSS (``ru_maxrss``) and ``tracemalloc`` see one
reporter only. ``bench.span_export`` starts these runs and reads their results.

- ``burst``: ``spans`` outcomes recorded as fast as the loop can, in chunks of
  ``CHUNK`` with a yield to the loop between chunks; then the run waits until the
  reporter has accounted for every span (sent, dropped or failed) and closes it.
- ``paced``: ``rate`` outcomes a second, ``rate / 1000`` every millisecond on a fixed
  timetable, until ``spans`` are recorded; then the reporter is closed. How late the
  hot path wakes for each millisecond's work is what a busy loop costs the proxy.

Outcomes are made on the hot path from their index (``outcome_at``), outside the timed
``record`` calls, so that both reporters see the same spans and only what a reporter
keeps stays in memory.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from bench.machine import peak_rss_mb, rss_mb
from bench.sdk_spans import SdkSpanReporter
from policies.domain import Arm
from proxy.outcome import Failure, RequestOutcome
from proxy.spans import NoopSpanReporter, OtlpSpanReporter, SpanExportSettings

CHUNK: Final = 256
SETTLE_POLL_S: Final = 0.02
SETTLE_TIMEOUT_S: Final = 300.0
PUBLIC_KEY: Final = "pk-lf-bench"
SECRET_KEY: Final = "sk-lf-bench"
RELEASE: Final = "support-answer"
BASE_NS: Final = 1_767_225_600 * 10**9
GAP_NS: Final = 200_000
MASK_64: Final = (1 << 64) - 1
MASK_128: Final = (1 << 128) - 1
REPORTERS: Final = ("coalmine", "sdk", "none")


class Reporter(Protocol):
    def record(self, outcome: RequestOutcome) -> None: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class RunSpec:
    """What one run does."""

    reporter: str
    mode: str
    """``burst`` or ``paced``."""
    collector: str
    """``healthy``, ``slow`` or ``down``: a label; the URL says where spans go."""
    url: str
    spans: int
    rate: int = 0
    """Spans a second, for ``paced``."""
    max_queue: int = 10_000
    timeout: float = 10.0
    """Seconds per export (and for closing, for coalmine's reporter)."""
    tracemalloc: bool = False

    @property
    def settles(self) -> bool:
        """Whether the run waits for every span to be accounted for before closing: a
        burst to a healthy collector, which measures how fast spans get out."""
        return self.mode == "burst" and self.collector == "healthy"


@dataclass
class RunResult:
    """What one run measured. CPU and wall times in seconds, latencies in nanoseconds."""

    spec: RunSpec
    offered: int = 0
    record_ns: dict[str, float] = field(default_factory=dict)
    hot_cpu_s: float = 0.0
    loop_cpu_s: float = 0.0
    process_cpu_s: float = 0.0
    record_wall_s: float = 0.0
    settled_s: float | None = None
    close_s: float = 0.0
    late_ms: dict[str, float] = field(default_factory=dict)
    late_steady_ms: dict[str, float] = field(default_factory=dict)
    """Lateness over the second half of a paced run: what stays once every lazy start-up
    cost (a first connection, a first HTTP client) is paid."""
    counts: dict[str, int] = field(default_factory=dict)
    rss_before_mb: float = 0.0
    peak_rss_mb: float = 0.0
    traced_peak_mb: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        return cls(**{**data, "spec": RunSpec(**data["spec"])})


def outcome_at(index: int) -> RequestOutcome:
    """The ``index``-th request of the benchmark's traffic: a chat completion mostly, a
    quarter in the canary, some 5xx, timeouts, clients gone and shadow copies; half
    with a caller's span. Ids are valid and distinct."""
    arm = Arm.CANARY if index % 4 == 0 else Arm.BASELINE
    shadow_of = None
    if index % 50 == 7:
        arm, shadow_of = Arm.SHADOW, _trace_id(index - 1)
    status, failure = 200, None
    if index % 50 == 3:
        status = 500
    elif index % 100 == 11:
        status, failure = 504, Failure.TIMEOUT
    elif index % 200 == 17:
        failure = Failure.CLIENT_GONE
    get = index % 5 == 1
    start = BASE_NS + index * GAP_NS
    return RequestOutcome(
        release=RELEASE,
        arm=arm,
        method="GET" if get else "POST",
        path="/health" if get else f"/v1/chat/completions?user={index % 997}",
        status=status,
        start_ns=start,
        end_ns=start + 150_000_000 + (index % 7) * 10_000_000,
        trace_id=_trace_id(index),
        span_id=f"{((index + 1) * 0xD1B54A32D192ED03) & MASK_64:016x}",
        parent_span_id=(
            f"{((index + 1) * 0x94D049BB133111EB) & MASK_64:016x}" if index % 2 else None
        ),
        request_id=f"req-{index:08d}",
        prompt_label=None if get else ("canary" if arm is Arm.CANARY else "production"),
        failure=failure,
        shadow_of=shadow_of,
    )


def _trace_id(index: int) -> str:
    return f"{((index + 1) * 0x9E3779B97F4A7C15F39CC0605CEDC835) & MASK_128:032x}"


def make_reporter(spec: RunSpec) -> Reporter:
    if spec.reporter == "coalmine":
        settings = SpanExportSettings(max_queue=spec.max_queue, timeout=spec.timeout)
        return OtlpSpanReporter(spec.url, PUBLIC_KEY, SECRET_KEY, settings)
    if spec.reporter == "sdk":
        return SdkSpanReporter(
            spec.url, PUBLIC_KEY, SECRET_KEY, max_queue=spec.max_queue, timeout=spec.timeout
        )
    return NoopSpanReporter()


def counts_of(reporter: Reporter) -> dict[str, int]:
    """Spans the reporter says it sent, dropped because its queue was full, and failed."""
    if isinstance(reporter, OtlpSpanReporter):
        return {
            "sent": reporter.spans_sent,
            "dropped_full": reporter.spans_dropped_full,
            "failed": reporter.spans_failed,
        }
    if isinstance(reporter, SdkSpanReporter):
        return reporter.counts()
    return {"sent": 0, "dropped_full": 0, "failed": 0}


class HotPath:
    """The timed ``record`` calls: each one's latency, and the thread's CPU inside them."""

    def __init__(self, spans: int) -> None:
        self.latencies = array.array("q", bytes(8 * spans))
        self.count = 0
        self.cpu_ns = 0

    def record(self, reporter: Reporter, outcomes: Sequence[RequestOutcome]) -> None:
        latencies = self.latencies
        position = self.count
        clock = time.perf_counter_ns
        started = time.thread_time_ns()
        for outcome in outcomes:
            before = clock()
            reporter.record(outcome)
            latencies[position] = clock() - before
            position += 1
        self.cpu_ns += time.thread_time_ns() - started
        self.count = position

    def summary(self) -> dict[str, float]:
        values = sorted(self.latencies[: self.count])
        if not values:
            return {}
        return {
            "mean": sum(values) / len(values),
            "p50": float(values[len(values) // 2]),
            "p99": float(values[min(len(values) - 1, int(0.99 * len(values)))]),
            "max": float(values[-1]),
        }


def _quantiles_ms(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    return {
        "p50": 1000 * ordered[len(ordered) // 2],
        "p99": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max": 1000 * ordered[-1],
    }


async def burst(reporter: Reporter, spans: int, hot: HotPath) -> None:
    for first in range(0, spans, CHUNK):
        hot.record(reporter, [outcome_at(i) for i in range(first, min(spans, first + CHUNK))])
        await asyncio.sleep(0)


async def paced(reporter: Reporter, spans: int, rate: int, hot: HotPath) -> list[float]:
    """Records on a timetable; how late each millisecond's work started, in seconds."""
    per_tick = max(1, rate // 1000)
    tick_s = per_tick / rate
    late: list[float] = []
    began = time.perf_counter()
    for tick, first in enumerate(range(0, spans, per_tick)):
        due = began + tick * tick_s
        wait = due - time.perf_counter()
        await asyncio.sleep(max(wait, 0.0))
        late.append(max(0.0, time.perf_counter() - due))
        hot.record(reporter, [outcome_at(i) for i in range(first, min(spans, first + per_tick))])
    return late


async def settle(reporter: Reporter, offered: int) -> None:
    """Waits until the reporter has accounted for every span offered."""
    if isinstance(reporter, NoopSpanReporter):
        return
    deadline = time.perf_counter() + SETTLE_TIMEOUT_S
    while sum(counts_of(reporter).values()) < offered:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{type(reporter).__name__} did not settle: {counts_of(reporter)}")
        await asyncio.sleep(SETTLE_POLL_S)


async def run(spec: RunSpec) -> RunResult:
    result = RunResult(spec=spec)
    hot = HotPath(spec.spans)
    reporter = make_reporter(spec)
    await reporter.start()
    result.rss_before_mb = rss_mb()
    if spec.tracemalloc:
        tracemalloc.start()
    began, loop_cpu, process_cpu = time.perf_counter(), time.thread_time(), time.process_time()
    late: list[float] = []
    if spec.mode == "burst":
        await burst(reporter, spec.spans, hot)
    else:
        late = await paced(reporter, spec.spans, spec.rate, hot)
    result.record_wall_s = time.perf_counter() - began
    if spec.settles:
        await settle(reporter, hot.count)
        result.settled_s = time.perf_counter() - began
    closing = time.perf_counter()
    await reporter.aclose()
    result.close_s = time.perf_counter() - closing
    result.loop_cpu_s = time.thread_time() - loop_cpu
    result.process_cpu_s = time.process_time() - process_cpu
    if spec.tracemalloc:
        result.traced_peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
    result.offered = hot.count
    result.hot_cpu_s = hot.cpu_ns / 1e9
    result.record_ns = hot.summary()
    result.late_ms = _quantiles_ms(late)
    result.late_steady_ms = _quantiles_ms(late[len(late) // 2 :])
    result.counts = counts_of(reporter)
    result.peak_rss_mb = peak_rss_mb()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="a RunSpec as JSON")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    spec = RunSpec(**json.loads(args.spec))
    result = asyncio.run(run(spec))
    args.out.write_text(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
