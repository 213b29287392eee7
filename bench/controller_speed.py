"""Controller speed: Langfuse requests and CPU per tick, time from a rollback decision to
the proxy sending the canary nothing, and the controller's memory over a simulated day.

    python -m bench.controller_speed [--releases 10] [--rate 1000] [--minutes 10]
        [--rollbacks 30] [--hours 24] [--out bench/out]

1. **Polling Langfuse.** The Langfuse emulator runs in its own process (uvicorn,
   in-memory store). A simulated clock moves one minute at a time. For each minute this
   process writes, for each of ``--releases`` releases, ``--rate`` traces: the proxy's
   root span (release and arm tags, half canary, 2% answered 500, which Langfuse maps to
   level ERROR) with a generation under it (cost, prompt link), in OTLP exports of 1,000
   spans, and one score per trace, in lists of 1,000. Then the controller (the real
   ``LangfuseSource`` and ``LangfusePromptLabels``, a SQLite state file) ticks at the end
   of that minute plus the source's settle time. The policies set ``routing.readTimeout:
   30s``, so each poll reads the last 2 minutes again (the default lookback). After
   ``WARMUP_MINUTES`` minutes, ``--minutes`` ticks are measured: requests by endpoint,
   rows read, CPU time (``time.process_time`` of this process, which does nothing but the
   tick meanwhile) and the emulator's wall time per request. Reference, in the same run:
   right after each tick, the same pages read again by a bare ``httpx.Client.get`` loop
   with ``.json()``. A second controller, held to the default request budget (24 a
   minute), then reads the same data; a third run, at 90% of the largest traffic that
   budget is computed to sustain, checks that its polls complete.
2. **Rollback to no canary traffic.** ``coalmine proxy`` (one process, routing tables
   read from the controller's state file every 0.25 s) in front of two upstream ports
   served by one process that notes when each canary request arrives
   (``time.monotonic``, one clock for every process of the machine). A client sends
   requests one after another with stickiness keys that fall in the canary at weight 50.
   The controller starts the release (weight 50); once the canary gets traffic again and
   after a random 0.2 to 0.6 s, ``controller.manual(name, "rollback")``. Measured: from
   the return of ``manual()`` (the decision and the weight of 0 are committed) and from
   the decision's ``at`` (read just before the call) to the arrival of the last canary
   request. Then the release is deleted from the state and started again.
3. **Memory over a simulated day.** In a process of its own: the simulated world of
   ``bench/controller_world.py`` (1,000 traces a minute, split by the routing table,
   healthy canary, scores 5 s after their trace) feeds a controller on a fake clock that
   ticks every simulated minute; one release held in canary (one step, ``minDuration:
   25h``). Every simulated hour: ``tracemalloc``'s current size and RSS; ``tracemalloc``
   snapshots at hour 2 and at the end, compared by file and line.

The three run one after the other (at the same time they slow each other down, CPU time
included): about 9 minutes on 2 CPUs, 6 of them for the day, which ``tracemalloc`` makes
several times slower; ``--hours`` shortens it. The share of the machine's CPU time that
other work took while each part ran is reported with the results.

The result is Markdown (stdout and ``<out>/controller_speed.md``, with the command) and
``<out>/controller_speed.json``. Goals: the default request budget (24 a minute) covers
10 releases at 1,000 traces a minute each; no canary request later than 1 s after a
rollback; memory flat over 24 hours.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from bench.controller_world import World
from bench.machine import machine_busy, own_cpu
from coalmine.shared.conventions import trace_tags
from coalmine.shared.routing_tables.store import SqliteRoutingStore
from controller.labels import LangfusePromptLabels, StaticPromptLabels
from controller.loop import Controller
from controller.release_store import ControllerState
from controller.samples import Cursors, Poll
from controller.source.budget import (
    DEFAULT_PER_MINUTE,
    HOBBY_PUBLIC_API_LIMIT,
    BudgetSettings,
    RequestBudget,
)
from controller.source.health import SourceHealth
from controller.source.langfuse import (
    DEFAULT_LOOKBACK,
    DEFAULT_SCORE_LOOKBACK,
    DEFAULT_SETTLE,
    MAX_OBSERVATIONS_PAGE,
    SCORES_PAGE,
    LangfuseSource,
)
from controller.source.static import StaticSource
from policies import Policy
from policies.domain import Arm, Phase
from policies.loader import load_policy_text
from proxy.assign import key_point
from proxy.outcome import RequestOutcome
from proxy.spans import export_request

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
PUBLIC_KEY = "pk-lf-bench-controller"
SECRET_KEY = "sk-lf-bench-controller"
MINUTE = 60.0
WARMUP_MINUTES = 2  # the first tick whose window is all traffic is the third
READ_TIMEOUT = "30s"
SCORE_NAME = "helpfulness"
ERROR_SHARE = 0.02
EXPORT_TRACES = 500  # traces per OTLP export: 1,000 spans
SCORE_BATCH = 1000
OTLP_PATH = "/api/public/otel/v1/traces"
OTLP_HEADERS = {"content-type": "application/x-protobuf", "x-langfuse-ingestion-version": "4"}
CHECK_MINUTES = 5  # measured ticks of the run at the traffic the default budget sustains
CHECK_SHARE = 0.9  # of the computed ceiling: the rows of a window vary a little

ROLLBACK_RELEASE = "rollback-bench"
ROLLBACK_WEIGHT = 50.0
ROLLBACK_KEYS = 100
QUIET_S = 0.5  # no canary request for this long: the rollback has taken effect
SETTLE_WAIT_S = (0.2, 0.6)

MEMORY_RATE = 1000
MEMORY_START = 1_800_000_000.0
MEMORY_TIMEOUT_S = 1800.0
MEMORY_RELEASE = "support"
MEMORY_TOP = 8

GOAL_ROLLBACK_S = 1.0
GOAL_FLAT_SHARE = 0.05  # memory at the end within 5% of hour 2

EMULATOR_SERVER = f"""
import sys, uvicorn
from coalmine.emulator.app import create_app
from coalmine.emulator.settings import EmulatorSettings
settings = EmulatorSettings(public_key={PUBLIC_KEY!r}, secret_key={SECRET_KEY!r})
uvicorn.run(create_app(settings), host="127.0.0.1", port=int(sys.argv[1]),
            log_level="warning", access_log=False)
"""

UPSTREAM_SERVER = r"""
import asyncio, json, sys, time

counts = {"stable": 0, "canary": 0}
last = {"stable": 0.0, "canary": 0.0}


def handler(arm):
    async def serve(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                stats = head.startswith(b"GET /__stats ")
                if not stats:
                    counts[arm] += 1
                    last[arm] = time.monotonic()
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                payload = {"counts": counts, "last": last} if stats else {"upstream": arm}
                body = json.dumps(payload).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return serve


async def main():
    servers = [
        await asyncio.start_server(handler(arm), "127.0.0.1", int(port))
        for arm, port in zip(("stable", "canary"), sys.argv[1:3])
    ]
    await asyncio.gather(*(server.serve_forever() for server in servers))


asyncio.run(main())
"""


# --- processes -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def launched(args: Sequence[str], ready: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process that serves HTTP; ready once ``GET ready`` answers 200. Stopped on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(list(args), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(ready, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{shlex.join(args)} did not start:\n{tail}")
            time.sleep(0.05)
        yield process
    finally:
        _stop(process)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb() -> float:
    """This process's resident set size (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


@dataclass
class Load:
    """What else the machine did while one part ran."""

    part: str
    wall_s: float
    own_cpu_s: float
    machine_cpu_s: float

    @property
    def other_share(self) -> float:
        """CPU time of other work, as a share of the machine's CPU time."""
        capacity = self.wall_s * (os.cpu_count() or 1)
        return max(0.0, self.machine_cpu_s - self.own_cpu_s) / capacity


@contextmanager
def measured(part: str, loads: list[Load]) -> Iterator[None]:
    wall, own, busy = time.perf_counter(), own_cpu(), machine_busy()
    try:
        yield
    finally:
        loads.append(Load(part, time.perf_counter() - wall, own_cpu() - own, machine_busy() - busy))


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


# --- 1. polling Langfuse -----------------------------------------------------------------


class SimClock:
    """Simulated seconds since the epoch; moved by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingTransport(httpx.BaseTransport):
    """Passes requests on; notes each one's URL and the wall time to its last byte."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.exchanges: list[tuple[str, float]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        response = self.inner.handle_request(request)
        try:
            raw = b"".join(response.iter_raw())
        finally:
            response.close()
        self.exchanges.append((str(request.url), time.perf_counter() - started))
        return httpx.Response(response.status_code, headers=response.headers, content=raw)

    def close(self) -> None:
        self.inner.close()


class TimedSource:
    """A sample source that notes the CPU time of each poll and its result."""

    def __init__(self, inner: LangfuseSource) -> None:
        self.inner = inner
        self.cpu = 0.0
        self.last: Poll | None = None

    def poll(self, releases: Mapping[str, Policy], cursors: Cursors | None, now: float) -> Poll:
        started = time.process_time()
        poll = self.inner.poll(releases, cursors, now)
        self.cpu += time.process_time() - started
        self.last = poll
        return poll

    def health(self, now: float) -> SourceHealth:
        return self.inner.health(now)

    def close(self) -> None:
        self.inner.close()


def endpoint_of(url: str) -> str:
    return "observations" if "/observations" in url else "scores"


def poll_policy(name: str) -> Policy:
    text = f"""apiVersion: coalmine/v1
kind: Release
name: {name}
target:
  prompt: {{name: {name}-prompt}}
  upstreams: {{stable: "http://{HOST}:9"}}
routing:
  readTimeout: {READ_TIMEOUT}
steps:
  - {{weight: 50, minDuration: 1h}}
analysis:
  interval: 1m
  metrics:
    - {{name: errors, source: error_rate, tolerance: 0.02, critical: true}}
    - {{name: latency, source: latency, quantile: 0.95, tolerancePercent: 20}}
    - {{name: cost, source: cost, tolerancePercent: 20}}
    - {{name: {SCORE_NAME}, source: score, score: {SCORE_NAME}, tolerance: 0.05, critical: true}}
"""
    return load_policy_text(text, f"{name}.yaml")


def _ns(seconds: float) -> int:
    return round(seconds * 1000) * 1_000_000


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def generation(
    trace: str,
    span: str,
    parent: str,
    *,
    start: float,
    end: float,
    tags: Sequence[str],
    cost: float,
    prompt: tuple[str, int],
) -> Span:
    """The app's generation under the proxy's root span, as the Langfuse SDK sends it."""
    attributes = [
        KeyValue(
            key="langfuse.trace.tags",
            value=AnyValue(
                array_value=ArrayValue(values=[AnyValue(string_value=tag) for tag in tags])
            ),
        ),
        _kv("langfuse.observation.type", "generation"),
        _kv("langfuse.observation.model.name", "gpt-4o-mini"),
        _kv("langfuse.observation.cost_details", json.dumps({"total": cost})),
        _kv("langfuse.observation.prompt.name", prompt[0]),
        KeyValue(key="langfuse.observation.prompt.version", value=AnyValue(int_value=prompt[1])),
    ]
    return Span(
        trace_id=bytes.fromhex(trace),
        span_id=bytes.fromhex(span),
        parent_span_id=bytes.fromhex(parent),
        name="llm",
        kind=Span.SpanKind.SPAN_KIND_INTERNAL,
        start_time_unix_nano=_ns(start),
        end_time_unix_nano=_ns(end),
        attributes=attributes,
    )


@dataclass
class Writer:
    """Writes simulated traffic into the emulator through its public API."""

    http: httpx.Client
    scenario: int
    rng: random.Random
    traces: int = 0
    spans: int = 0
    scores: int = 0
    seconds: float = 0.0

    def prompts(self, names: Sequence[str]) -> None:
        """Each release's prompt: version 1 labelled production, version 2 canary."""
        for name in names:
            for version, label in ((1, "production"), (2, "canary")):
                response = self.http.post(
                    "/api/public/v2/prompts",
                    json={"name": f"{name}-prompt", "prompt": f"v{version}", "labels": [label]},
                )
                if response.status_code not in (200, 201):
                    raise RuntimeError(f"creating a prompt failed: {response.text[:300]}")

    def minute(self, names: Sequence[str], rate: int, start: float) -> None:
        """``rate`` traces of each release starting within [start, start + 60 s)."""
        began = time.perf_counter()
        rng = self.rng
        outcomes: list[RequestOutcome] = []
        children: list[Span] = []
        scores: list[dict[str, Any]] = []
        for name in names:
            for index in range(rate):
                number = self.traces
                self.traces += 1
                trace = f"{self.scenario:04x}{number:028x}"
                root_id = f"{self.scenario:02x}{2 * number:014x}"
                child_id = f"{self.scenario:02x}{2 * number + 1:014x}"
                ts = start + (index + rng.random()) * MINUTE / rate
                end = ts + min(rng.lognormvariate(0.0, 0.5), 20.0)
                arm = Arm.CANARY if index % 2 == 0 else Arm.BASELINE
                error = rng.random() < ERROR_SHARE
                outcomes.append(
                    RequestOutcome(
                        release=name,
                        arm=arm,
                        method="POST",
                        path="/v1/chat/completions",
                        status=500 if error else 200,
                        start_ns=_ns(ts),
                        end_ns=_ns(end),
                        trace_id=trace,
                        span_id=root_id,
                        parent_span_id=None,
                        request_id=f"req-{number}",
                        prompt_label=None,
                    )
                )
                children.append(
                    generation(
                        trace,
                        child_id,
                        root_id,
                        start=ts + 0.01,
                        end=end - 0.01,
                        tags=trace_tags(name, arm),
                        cost=rng.uniform(0.0005, 0.002),
                        prompt=(f"{name}-prompt", 2 if arm is Arm.CANARY else 1),
                    )
                )
                value = min(1.0, max(0.0, rng.gauss(0.8, 0.1)))
                scores.append(
                    {
                        "id": f"score-{trace}",
                        "traceId": trace,
                        "name": SCORE_NAME,
                        "value": round(value, 4),
                        "dataType": "NUMERIC",
                        "timestamp": _iso(end + rng.uniform(1.0, 5.0)),
                    }
                )
                if len(outcomes) == EXPORT_TRACES:
                    self._export(outcomes, children)
                    outcomes, children = [], []
        if outcomes:
            self._export(outcomes, children)
        for first in range(0, len(scores), SCORE_BATCH):
            batch = scores[first : first + SCORE_BATCH]
            response = self.http.post("/api/public/scores", json=batch)
            if response.status_code != 202:
                raise RuntimeError(f"writing scores failed: {response.text[:300]}")
            self.scores += len(batch)
        self.seconds += time.perf_counter() - began

    def _export(self, outcomes: list[RequestOutcome], children: list[Span]) -> None:
        export = export_request(outcomes, "coalmine-proxy")
        export.resource_spans.append(ResourceSpans(scope_spans=[ScopeSpans(spans=children)]))
        response = self.http.post(
            OTLP_PATH, content=export.SerializeToString(), headers=OTLP_HEADERS
        )
        if response.status_code != 200:
            raise RuntimeError(f"OTLP export failed: {response.text[:300]}")
        self.spans += len(outcomes) + len(children)


@dataclass
class Tick:
    """One measured tick of the controller."""

    minute: int
    ok: bool
    requests: dict[str, int]
    cpu_s: float
    poll_cpu_s: float
    wall_s: float
    emulator_cpu_s: float
    request_wall_s: dict[str, list[float]]
    new_traces: int
    new_scores: int
    rows: dict[str, int] = field(default_factory=dict)
    reference_cpu_s: float | None = None
    reference_wall_s: float | None = None


@dataclass
class PollRun:
    """One controller reading ``releases`` releases at ``rate`` traces a minute each."""

    name: str
    releases: int
    rate: int
    budget_per_minute: int
    ticks: list[Tick]
    written_traces: int
    write_seconds: float
    decisions: list[str]
    poll_errors: list[str]

    @property
    def traffic(self) -> int:
        return self.releases * self.rate

    def mean(self, value: str) -> float:
        return _mean([float(getattr(tick, value)) for tick in self.ticks])

    def requests(self, endpoint: str) -> float:
        return _mean([tick.requests.get(endpoint, 0) for tick in self.ticks])

    def rows(self, endpoint: str) -> float:
        return _mean([tick.rows.get(endpoint, 0) for tick in self.ticks])

    def request_wall_ms(self, endpoint: str, q: float) -> float:
        values = [v for tick in self.ticks for v in tick.request_wall_s.get(endpoint, [])]
        return 1000 * percentile(values, q)

    @property
    def complete(self) -> int:
        return sum(tick.ok for tick in self.ticks)


def reference_read(urls: Sequence[str]) -> tuple[float, float, dict[str, int]]:
    """CPU and wall seconds of a bare GET + ``.json()`` of each URL; rows per endpoint."""
    bodies: list[tuple[str, Any]] = []
    with httpx.Client(auth=(PUBLIC_KEY, SECRET_KEY), timeout=30) as client:
        client.get(urls[0]).json()  # the connection
        wall = time.perf_counter()
        cpu = time.process_time()
        for url in urls:
            bodies.append((url, client.get(url).json()))
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - wall
    rows: Counter[str] = Counter()
    for url, body in bodies:
        rows[endpoint_of(url)] += len(body["data"])
    return cpu, wall, dict(rows)


@dataclass(frozen=True)
class PollPlan:
    """What one poll run reads: ``releases`` releases named ``<prefix>-NN`` at ``rate``
    traces a minute each, ``minutes`` measured ticks under a budget; ``write`` makes the
    traffic first (else it reads what an earlier run wrote), ``reference`` reads each
    tick's pages again with a bare client."""

    name: str
    prefix: str
    releases: int
    rate: int
    minutes: int
    budget_per_minute: int
    start: float
    scenario: int
    write: bool
    reference: bool

    @property
    def release_names(self) -> list[str]:
        return [f"{self.prefix}-{index:02d}" for index in range(self.releases)]


@dataclass
class _PollRig:
    """A controller reading the emulator through a timed source and a recording transport."""

    controller: Controller
    state: ControllerState
    source: TimedSource
    transport: RecordingTransport
    clock: SimClock
    emulator_pid: int


def _measured_tick(rig: _PollRig, minute: int, reference: bool) -> tuple[Tick, str | None]:
    """One tick at the rig's clock, with its CPU, wall time and requests; its poll error."""
    rig.transport.exchanges.clear()
    rig.source.cpu = 0.0
    emulator_cpu = cpu_seconds(rig.emulator_pid)
    wall = time.perf_counter()
    cpu = time.process_time()
    report = rig.controller.tick(rig.clock.now)
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    emulator_cpu = cpu_seconds(rig.emulator_pid) - emulator_cpu
    poll = rig.source.last
    walls: dict[str, list[float]] = {}
    for url, seconds in rig.transport.exchanges:
        walls.setdefault(endpoint_of(url), []).append(seconds)
    tick = Tick(
        minute=minute,
        ok=bool(poll is not None and poll.ok and not report.poll_error),
        requests=dict(poll.requests) if poll is not None else {},
        cpu_s=cpu,
        poll_cpu_s=rig.source.cpu,
        wall_s=wall,
        emulator_cpu_s=emulator_cpu,
        request_wall_s=walls,
        new_traces=report.new_traces,
        new_scores=report.new_scores,
    )
    if reference and rig.transport.exchanges:
        urls = [url for url, _ in rig.transport.exchanges]
        tick.reference_cpu_s, tick.reference_wall_s, tick.rows = reference_read(urls)
    return tick, report.poll_error


def _ticks(rig: _PollRig, writer: Writer, plan: PollPlan) -> tuple[list[Tick], list[str]]:
    """Start the releases, then a minute of traffic and a tick, minute after minute."""
    names = plan.release_names
    if plan.write:
        writer.prompts(names)
    rig.controller.tick(plan.start)
    phases = {each: rig.state.release(each) for each in names}
    if any(r is None or r.phase is not Phase.CANARY for r in phases.values()):
        raise RuntimeError(f"releases did not start: {phases}")
    ticks: list[Tick] = []
    poll_errors: list[str] = []
    for minute in range(WARMUP_MINUTES + plan.minutes):
        minute_start = plan.start + minute * MINUTE
        if plan.write:
            writer.minute(names, plan.rate, minute_start)
        rig.clock.now = minute_start + MINUTE + DEFAULT_SETTLE
        measured = minute >= WARMUP_MINUTES
        tick, poll_error = _measured_tick(rig, minute, plan.reference and measured)
        if poll_error:
            poll_errors.append(poll_error)
        if measured:
            ticks.append(tick)
    return ticks, poll_errors


def poll_run(base_url: str, tmp: Path, emulator_pid: int, plan: PollPlan) -> PollRun:
    """Simulated minutes of traffic, each followed by one tick of a controller."""
    names = plan.release_names
    policies = {each: poll_policy(each) for each in names}
    clock = SimClock(plan.start)
    budget = RequestBudget(BudgetSettings(per_minute=plan.budget_per_minute), clock=clock)
    transport = RecordingTransport()
    source = TimedSource(
        LangfuseSource(
            base_url, PUBLIC_KEY, SECRET_KEY, budget=budget, transport=transport, clock=clock
        )
    )
    labels = LangfusePromptLabels(base_url, PUBLIC_KEY, SECRET_KEY, budget=budget)
    path = tmp / f"{plan.prefix}-{plan.scenario}.db"
    state = ControllerState(path)
    routing = SqliteRoutingStore(path)
    controller = Controller(
        state=state,
        routing=routing,
        source=source,
        labels=labels,
        policies=lambda: policies,
    )
    rig = _PollRig(controller, state, source, transport, clock, emulator_pid)
    with httpx.Client(base_url=base_url, auth=(PUBLIC_KEY, SECRET_KEY), timeout=60) as http:
        writer = Writer(http, plan.scenario, random.Random(plan.scenario))
        try:
            ticks, poll_errors = _ticks(rig, writer, plan)
            decisions = [
                f"{each}: {record.decision}"
                for each in names
                for record in state.decisions(each)
                if record.decision != "start"
            ]
        finally:
            source.close()
            labels.close()
            transport.close()
            routing.close()
            state.close()
    return PollRun(
        name=plan.name,
        releases=plan.releases,
        rate=plan.rate,
        budget_per_minute=plan.budget_per_minute,
        ticks=ticks,
        written_traces=writer.traces,
        write_seconds=writer.seconds,
        decisions=decisions,
        poll_errors=poll_errors,
    )


def requests_for(traffic: float, rows_per_trace: Mapping[str, float]) -> int:
    """Requests one poll needs at ``traffic`` traces a minute (all releases together)."""
    observations = rows_per_trace["observations"] * traffic
    scores = rows_per_trace["scores"] * traffic
    return max(1, math.ceil(observations / MAX_OBSERVATIONS_PAGE)) + max(
        1, math.ceil(scores / SCORES_PAGE)
    )


def sustained(budget: int, rows_per_trace: Mapping[str, float]) -> int:
    """The largest traffic, in traces a minute, whose poll fits in ``budget`` requests."""
    traffic = 1
    while requests_for(traffic + 1, rows_per_trace) <= budget:
        traffic += 1
    return traffic


@dataclass
class PollResults:
    main: PollRun
    default_budget: PollRun
    check: PollRun
    rows_per_trace: dict[str, float]
    sustained_default: int
    sustained_hobby: int
    emulator_log: str


def poll_benchmark(tmp: Path, releases: int, rate: int, minutes: int, start: float) -> PollResults:
    log = tmp / "emulator.log"
    port = _free_port()
    base_url = f"http://{HOST}:{port}"
    args = [sys.executable, "-c", EMULATOR_SERVER, str(port)]
    with launched(args, f"{base_url}/api/public/health", log) as emulator:
        main_plan = PollPlan(
            name=f"{releases} releases x {rate:,} traces/min, unbounded budget",
            prefix="rel",
            releases=releases,
            rate=rate,
            minutes=minutes,
            budget_per_minute=1_000_000,
            start=start,
            scenario=1,
            write=True,
            reference=True,
        )
        main = poll_run(base_url, tmp, emulator.pid, main_plan)
        default_plan = dataclasses.replace(
            main_plan,
            name=f"the same data, default budget ({DEFAULT_PER_MINUTE}/min)",
            budget_per_minute=DEFAULT_PER_MINUTE,
            scenario=2,
            write=False,
            reference=False,
        )
        default_budget = poll_run(base_url, tmp, emulator.pid, default_plan)
        traffic = main.traffic
        rows_per_trace = {
            endpoint: main.rows(endpoint) / traffic for endpoint in ("observations", "scores")
        }
        sustained_default = sustained(DEFAULT_PER_MINUTE, rows_per_trace)
        sustained_hobby = sustained(HOBBY_PUBLIC_API_LIMIT, rows_per_trace)
        check_rate = max(1, math.floor(CHECK_SHARE * sustained_default / releases))
        # later in simulated time: the scores query reads every score of its name
        check_start = start + (WARMUP_MINUTES + minutes + 5) * MINUTE
        check_plan = PollPlan(
            name=(
                f"{releases} releases x {check_rate:,} traces/min "
                f"({100 * CHECK_SHARE:.0f}% of the ceiling), default budget "
                f"({DEFAULT_PER_MINUTE}/min)"
            ),
            prefix="low",
            releases=releases,
            rate=check_rate,
            minutes=CHECK_MINUTES,
            budget_per_minute=DEFAULT_PER_MINUTE,
            start=check_start,
            scenario=3,
            write=True,
            reference=True,
        )
        check = poll_run(base_url, tmp, emulator.pid, check_plan)
    return PollResults(
        main=main,
        default_budget=default_budget,
        check=check,
        rows_per_trace=rows_per_trace,
        sustained_default=sustained_default,
        sustained_hobby=sustained_hobby,
        emulator_log=log.read_text(errors="replace")[-2000:],
    )


# --- 2. rollback to no canary traffic ------------------------------------------------------


@dataclass
class Rollback:
    """One rollback, in seconds (monotonic clock)."""

    manual_s: float
    """How long ``manual()`` took (decision, then the weight of 0, both committed)."""
    after_return_s: float
    """From ``manual()``'s return to the arrival of the last canary request."""
    after_decision_s: float
    """From the decision's ``at`` to the arrival of the last canary request."""


@dataclass
class RollbackResults:
    rollbacks: list[Rollback]
    client_requests: int
    client_errors: int
    canary_keys: int

    def stat(self, value: str, q: float) -> float:
        return percentile([getattr(each, value) for each in self.rollbacks], q)

    def worst(self, value: str) -> float:
        return float(max(getattr(each, value) for each in self.rollbacks))


def rollback_policy(stable: int, canary: int) -> str:
    return f"""apiVersion: coalmine/v1
kind: Release
name: {ROLLBACK_RELEASE}
target:
  upstreams: {{stable: "http://{HOST}:{stable}", canary: "http://{HOST}:{canary}"}}
routing:
  stickiness: {{header: x-user-id}}
steps:
  - {{weight: {ROLLBACK_WEIGHT:g}, minDuration: 1h}}
analysis:
  metrics:
    - {{name: errors, source: error_rate, tolerance: 0.01}}
"""


def canary_keys(count: int) -> list[str]:
    """Stickiness keys that fall in the canary at the release's weight."""
    keys: list[str] = []
    index = 0
    while len(keys) < count:
        key = f"user-{index}"
        if key_point(ROLLBACK_RELEASE, key) < ROLLBACK_WEIGHT:
            keys.append(key)
        index += 1
    return keys


class Client(threading.Thread):
    """Sends requests through the proxy one after another until stopped."""

    def __init__(self, url: str, keys: Sequence[str]) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.keys = list(keys)
        self.stop = threading.Event()
        self.requests = 0
        self.errors = 0

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            index = 0
            while not self.stop.is_set():
                key = self.keys[index % len(self.keys)]
                index += 1
                try:
                    response = client.get("/v1/chat", headers={"x-user-id": key})
                    self.requests += 1
                    if response.status_code != 200:
                        self.errors += 1
                except httpx.HTTPError:
                    self.errors += 1


def _canary(http: httpx.Client) -> tuple[int, float]:
    """Requests the canary upstream has received, and when the last one arrived."""
    body = http.get("/__stats").json()
    return int(body["counts"]["canary"]), float(body["last"]["canary"])


def _wait_canary(
    http: httpx.Client, *, more_than: int | None = None, quiet: float | None = None
) -> float:
    """Wait until the canary has received more than ``more_than`` requests, or none for
    ``quiet`` seconds; the arrival of its last request."""
    deadline = time.monotonic() + 10
    while True:
        count, last = _canary(http)
        if more_than is not None and count > more_than:
            return last
        if quiet is not None and time.monotonic() - last > quiet:
            return last
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for the canary's traffic to change")
        time.sleep(0.02)


def rollback_benchmark(tmp: Path, repeats: int, seed: int) -> RollbackResults:
    rng = random.Random(seed)
    stable_port, canary_port, proxy_port = _free_port(), _free_port(), _free_port()
    policy_file = tmp / f"{ROLLBACK_RELEASE}.yaml"
    policy_file.write_text(rollback_policy(stable_port, canary_port))
    policy = load_policy_text(policy_file.read_text(), policy_file.name)
    path = tmp / "rollback.db"
    state = ControllerState(path)
    routing = SqliteRoutingStore(path)
    routing.versions()  # the routing tables' schema, before the proxy opens the file
    controller = Controller(
        state=state,
        routing=routing,
        source=StaticSource(),
        labels=StaticPromptLabels(),
        policies=lambda: {ROLLBACK_RELEASE: policy},
    )
    keys = canary_keys(ROLLBACK_KEYS)
    upstream_args = [sys.executable, "-c", UPSTREAM_SERVER, str(stable_port), str(canary_port)]
    coalmine = Path(sys.executable).with_name("coalmine")
    proxy_args = [
        str(coalmine),
        "proxy",
        "--policy",
        str(policy_file),
        "--state",
        str(path),
        "--listen",
        f"{HOST}:{proxy_port}",
        "--metrics-listen",
        f"{HOST}:{_free_port()}",
        "--no-spans",
        "--log-level",
        "warning",
    ]
    rollbacks: list[Rollback] = []
    with ExitStack() as stack:
        stack.enter_context(
            launched(upstream_args, f"http://{HOST}:{canary_port}/__stats", tmp / "upstream.log")
        )
        stack.enter_context(
            launched(proxy_args, f"http://{HOST}:{proxy_port}/v1/chat", tmp / "proxy.log")
        )
        stats_http = stack.enter_context(
            httpx.Client(base_url=f"http://{HOST}:{canary_port}", timeout=5)
        )
        client = Client(f"http://{HOST}:{proxy_port}", keys)
        client.start()
        try:
            for repeat in range(repeats):
                if repeat:
                    state.delete_release(ROLLBACK_RELEASE)
                seen, _ = _canary(stats_http)
                controller.tick(time.time())
                release = state.release(ROLLBACK_RELEASE)
                if release is None or release.phase is not Phase.CANARY:
                    raise RuntimeError(f"the release did not start: {release}")
                _wait_canary(stats_http, more_than=seen)
                time.sleep(rng.uniform(*SETTLE_WAIT_S))
                at = time.time()
                decided = time.monotonic()
                controller.manual(ROLLBACK_RELEASE, "rollback", actor="bench", now=at)
                returned = time.monotonic()
                record = state.decisions(ROLLBACK_RELEASE, limit=1)[0]
                if record.decision != "rollback" or record.at != at:
                    raise RuntimeError(f"unexpected decision {record}")
                last = _wait_canary(stats_http, quiet=QUIET_S)
                rollbacks.append(
                    Rollback(
                        manual_s=returned - decided,
                        after_return_s=last - returned,
                        after_decision_s=last - decided,
                    )
                )
        finally:
            client.stop.set()
            client.join(timeout=15)
            state.close()
            routing.close()
    return RollbackResults(
        rollbacks=rollbacks,
        client_requests=client.requests,
        client_errors=client.errors,
        canary_keys=len(keys),
    )


# --- 3. memory over a simulated day ------------------------------------------------------

MEMORY_POLICY = f"""apiVersion: coalmine/v1
kind: Release
name: {MEMORY_RELEASE}
target:
  prompt: {{name: support-answer}}
  upstreams: {{stable: "http://{HOST}:9"}}
steps:
  - {{weight: 50, minDuration: 25h, maxDuration: 48h}}
analysis:
  interval: 1m
  metrics:
    - {{name: errors, source: error_rate, tolerance: 0.03, critical: true}}
    - {{name: latency, source: latency, quantile: 0.95, tolerancePercent: 20}}
    - name: {SCORE_NAME}
      source: score
      score: {SCORE_NAME}
      tolerance: 0.05
      effectSize: 0.1
      critical: true
"""


@dataclass
class Hour:
    hour: int
    traced_mb: float
    rss_mb: float
    traces: int
    """Traces the controller has taken in so far."""
    evidence_traces: int | None
    """Per-trace records the release's evidence holds."""
    tick_cpu_ms: float | None
    """Mean CPU time of the ticks of this hour (with ``tracemalloc`` on)."""
    state_mb: float
    """Size of the state file (with its WAL)."""


@dataclass
class Growth:
    where: str
    size_kb: float
    count: int


@dataclass
class MemoryResults:
    hours: list[Hour]
    top: list[Growth]
    files: list[Growth]
    phase: str
    decisions: list[str]
    wall_s: float

    def at(self, hour: int) -> Hour:
        return next(each for each in self.hours if each.hour == hour)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MemoryResults:
        return cls(
            hours=[Hour(**each) for each in data["hours"]],
            top=[Growth(**each) for each in data["top"]],
            files=[Growth(**each) for each in data["files"]],
            phase=data["phase"],
            decisions=data["decisions"],
            wall_s=data["wall_s"],
        )


def _file_mb(path: Path) -> float:
    total = 0
    for each in (path, path.with_name(path.name + "-wal")):
        if each.exists():
            total += each.stat().st_size
    return total / 1e6


def _snapshot() -> tracemalloc.Snapshot:
    return tracemalloc.take_snapshot().filter_traces(
        (
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
            tracemalloc.Filter(False, "<unknown>"),
        )
    )


def _where(filename: str, line: int) -> str:
    try:
        shown = str(Path(filename).resolve().relative_to(ROOT))
    except ValueError:
        shown = filename.rsplit("site-packages/", 1)[-1]
    return f"{shown}:{line}"


def memory_process(tmp: Path, hours: int) -> MemoryResults:
    """The day in a process of its own (``memory_child``), so that nothing else this
    process did counts in its memory."""
    out = tmp / "memory.json"
    log = tmp / "memory.log"
    args = [sys.executable, "-m", "bench.controller_speed", "--hours", str(hours)]
    args += ["--memory-child", str(out)]
    with log.open("wb") as sink:
        process = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        code = process.wait(timeout=MEMORY_TIMEOUT_S)
    finally:
        _stop(process)
    if code != 0 or not out.exists():
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the memory run failed:\n{tail}")
    return MemoryResults.from_json(json.loads(out.read_text()))


def _growth(
    final: tracemalloc.Snapshot, baseline: tracemalloc.Snapshot | None
) -> tuple[list[Growth], list[Growth]]:
    """The largest growths from the baseline to the final snapshot: by line, by file."""
    top: list[Growth] = []
    files: list[Growth] = []
    if baseline is None:
        return top, files
    for stat in final.compare_to(baseline, "lineno")[:MEMORY_TOP]:
        frame = stat.traceback[0]
        top.append(
            Growth(_where(frame.filename, frame.lineno), stat.size_diff / 1e3, stat.count_diff)
        )
    for stat in final.compare_to(baseline, "filename")[:MEMORY_TOP]:
        name = _where(stat.traceback[0].filename, 0).rsplit(":", 1)[0]
        files.append(Growth(name, stat.size_diff / 1e3, stat.count_diff))
    return top, files


def memory_benchmark(tmp: Path, hours: int, rate: int, start: float) -> MemoryResults:
    began = time.perf_counter()
    tracemalloc.start()
    path = tmp / "memory.db"
    state = ControllerState(path)
    routing = SqliteRoutingStore(path)
    policy = load_policy_text(MEMORY_POLICY, f"{MEMORY_RELEASE}.yaml")
    policies = {MEMORY_RELEASE: policy}
    world = World(routing, MEMORY_RELEASE, start=start, rate=rate)
    controller = Controller(
        state=state,
        routing=routing,
        source=world,
        labels=StaticPromptLabels({"support-answer": {"production": 3, "canary": 4}}),
        policies=lambda: policies,
    )
    controller.tick(start)
    samples = [
        Hour(
            hour=0,
            traced_mb=tracemalloc.get_traced_memory()[0] / 1e6,
            rss_mb=rss_mb(),
            traces=0,
            evidence_traces=0,
            tick_cpu_ms=None,
            state_mb=_file_mb(path),
        )
    ]
    baseline: tracemalloc.Snapshot | None = None
    baseline_file = tmp / "hour-2.tracemalloc"
    traces = 0
    cpu: list[float] = []
    try:
        for minute in range(1, hours * 60 + 1):
            now = start + minute * MINUTE
            world.run_until(now)
            ticked = time.process_time()
            report = controller.tick(now)
            cpu.append(time.process_time() - ticked)
            traces += report.new_traces
            if minute % 60:
                continue
            hour = minute // 60
            live = controller.live.get(MEMORY_RELEASE)
            kept: int | None = None
            if live is not None:
                forgotten = getattr(live.evidence, "forgotten_traces", None)
                kept = None if forgotten is None else traces - int(forgotten)
            samples.append(
                Hour(
                    hour=hour,
                    traced_mb=tracemalloc.get_traced_memory()[0] / 1e6,
                    rss_mb=rss_mb(),
                    traces=traces,
                    evidence_traces=kept,
                    tick_cpu_ms=1000 * _mean(cpu),
                    state_mb=_file_mb(path),
                )
            )
            cpu = []
            if hour == 2:
                # kept on disk: a snapshot in memory would count in the later samples
                _snapshot().dump(str(baseline_file))
        final = _snapshot()
        if baseline_file.exists():
            baseline = tracemalloc.Snapshot.load(str(baseline_file))
        release = state.release(MEMORY_RELEASE)
        phase = "none" if release is None else release.phase.value
        decisions = [record.decision for record in state.decisions(MEMORY_RELEASE)]
    finally:
        tracemalloc.stop()
        state.close()
        routing.close()
    top, files = _growth(final, baseline)
    return MemoryResults(
        hours=samples,
        top=top,
        files=files,
        phase=phase,
        decisions=decisions,
        wall_s=time.perf_counter() - began,
    )


# --- report ----------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None or math.isnan(seconds) else f"{1000 * seconds:.0f}"


def poll_markdown(results: PollResults) -> list[str]:
    main, limited, check = results.main, results.default_budget, results.check
    traffic = main.traffic
    reference = _mean([t.reference_cpu_s for t in main.ticks if t.reference_cpu_s is not None])
    lines = [
        "## Langfuse requests and CPU per tick",
        "",
        f"{main.releases} releases at {main.rate:,} traces a minute each ({traffic:,} a minute "
        "in all): each trace a root span and a generation, one score each. Lookback "
        f"{DEFAULT_LOOKBACK:.0f} s for observations (`readTimeout: {READ_TIMEOUT}`), "
        f"{DEFAULT_SCORE_LOOKBACK:.0f} s for scores, settle {DEFAULT_SETTLE:.0f} s; one tick "
        f"per simulated minute; {len(main.ticks)} ticks measured after {WARMUP_MINUTES} of "
        f"warm-up. {main.written_traces:,} traces written in {main.write_seconds:.0f} s. "
        "CPU is this process's `time.process_time()` around `tick()`; the emulator's own "
        "CPU is read from /proc.",
        "",
        "| per tick (mean) | observations | scores | all |",
        "|---|---|---|---|",
    ]
    obs, scores = main.requests("observations"), main.requests("scores")
    lines += [
        f"| requests | {obs:.1f} | {scores:.1f} | {obs + scores:.1f} |",
        f"| rows read | {main.rows('observations'):,.0f} | {main.rows('scores'):,.0f} | "
        f"{main.rows('observations') + main.rows('scores'):,.0f} |",
        f"| page size | {MAX_OBSERVATIONS_PAGE:,} | {SCORES_PAGE} | |",
        f"| emulator wall time per request (sent to last byte), p50 ms | "
        f"{main.request_wall_ms('observations', 0.5):.1f} | "
        f"{main.request_wall_ms('scores', 0.5):.1f} | |",
        f"| emulator wall time per request (sent to last byte), p95 ms | "
        f"{main.request_wall_ms('observations', 0.95):.1f} | "
        f"{main.request_wall_ms('scores', 0.95):.1f} | |",
        "",
        "| per tick (mean) | ms |",
        "|---|---|",
        f"| controller CPU (`tick()`) | {_ms(main.mean('cpu_s'))} |",
        f"| ... of which the poll (HTTP, JSON, rows to samples) | {_ms(main.mean('poll_cpu_s'))} |",
        f"| ... the rest (state file, evidence, judge, {main.releases} releases) | "
        f"{_ms(main.mean('cpu_s') - main.mean('poll_cpu_s'))} |",
        f"| reference: bare `httpx.Client.get` + `.json()` of the same pages, CPU | "
        f"{_ms(reference)} |",
        f"| wall time of `tick()` | {_ms(main.mean('wall_s'))} |",
        f"| emulator CPU during `tick()` | {_ms(main.mean('emulator_cpu_s'))} |",
        "",
        "| tick | requests (obs + scores) | rows (obs + scores) | new traces | new scores | "
        "CPU ms | poll CPU ms | reference CPU ms | wall ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for tick in main.ticks:
        lines.append(
            f"| {tick.minute} | {tick.requests.get('observations', 0)} + "
            f"{tick.requests.get('scores', 0)} | {tick.rows.get('observations', 0):,} + "
            f"{tick.rows.get('scores', 0):,} | {tick.new_traces:,} | {tick.new_scores:,} | "
            f"{_ms(tick.cpu_s)} | {_ms(tick.poll_cpu_s)} | {_ms(tick.reference_cpu_s)} | "
            f"{_ms(tick.wall_s)} |"
        )
    per_obs = results.rows_per_trace["observations"]
    per_score = results.rows_per_trace["scores"]
    lines += [
        "",
        "### Against the request budget",
        "",
        "One poll serves every release with one paged query per kind of row, so requests "
        "grow with the traffic of all releases together, not with their number. Measured: "
        f"each trace a minute costs {per_obs:.2f} observation rows and {per_score:.2f} score "
        "rows per poll (the rows of one minute plus the lookback). A poll at T traces a "
        f"minute needs ceil({per_obs:.2f} T / {MAX_OBSERVATIONS_PAGE:,}) + "
        f"ceil({per_score:.2f} T / {SCORES_PAGE}) requests, once a minute.",
        "",
        "| budget | requests a minute | ceiling (traces a minute, all releases) |"
        " e.g. 10 releases at |",
        "|---|---|---|---|",
        f"| controller default | {DEFAULT_PER_MINUTE} | {results.sustained_default:,} | "
        f"{results.sustained_default // 10:,} a minute each |",
        f"| Langfuse Hobby, General API (all of it) | {HOBBY_PUBLIC_API_LIMIT} | "
        f"{results.sustained_hobby:,} | {results.sustained_hobby // 10:,} a minute each |",
        "",
        "| run | polls complete | requests per tick (mean) | new traces per tick (mean) |"
        " CPU ms per tick |",
        "|---|---|---|---|---|",
    ]
    for run in (main, limited, check):
        total = run.requests("observations") + run.requests("scores")
        lines.append(
            f"| {run.name} | {run.complete} of {len(run.ticks)} | {total:.1f} | "
            f"{run.mean('new_traces'):,.0f} of {run.traffic:,} | {_ms(run.mean('cpu_s'))} |"
        )
    need = obs + scores
    share = scores / need if need else math.nan
    lines += [
        "",
        "What limits it: requests, not CPU. The scores make "
        f"{100 * share:.0f}% of the requests: scores v3 pages hold {SCORES_PAGE} rows where "
        f"observations v2 pages hold {MAX_OBSERVATIONS_PAGE:,}. Each poll reads every "
        "observation of the lookback again (3 minutes of rows for one new minute) and every "
        "score of the score lookback again (2 minutes for one), and the scores query takes "
        "every score with the policies' score names in the project, whether its trace "
        "belongs to a release or not. Past the ceiling the controller sees nothing at all: "
        "a poll stopped by the budget returns incomplete, the controller keeps none of it "
        "and the cursors stay, so the next window is longer still"
        + (f" (polls end with `{limited.poll_errors[-1]}`)" if limited.poll_errors else "")
        + f". At the measured traffic the tick costs {_ms(main.mean('cpu_s'))} ms of CPU, "
        f"{100 * main.mean('cpu_s') / MINUTE:.1f}% of one CPU at a tick a minute; "
        f"{_ms(reference)} ms of it is what a bare HTTP client spends to fetch and decode "
        "the same pages.",
    ]
    if main.decisions or limited.decisions or check.decisions:
        lines += ["", "Decisions made: " + ", ".join(main.decisions + check.decisions)]
    return lines


def rollback_markdown(results: RollbackResults) -> list[str]:
    lines = [
        "## Rollback to no canary traffic",
        "",
        f"`coalmine proxy` (routing poll every 0.25 s) and a controller sharing one state "
        f"file; {len(results.rollbacks)} rollbacks by `controller.manual()` while a client "
        f"sent requests one after another ({results.client_requests:,} in all, "
        f"{results.client_errors} errors) with {results.canary_keys} stickiness keys in the "
        "canary. Time to the arrival of the last canary request at the upstream, from the "
        "return of `manual()` (decision and weight 0 committed) and from the decision's "
        "`at` (read just before the call and stored in the decision log).",
        "",
        "| from | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|",
    ]
    for label, value in (
        ("`manual()` returned", "after_return_s"),
        ("decision's `at`", "after_decision_s"),
        ("(duration of `manual()`)", "manual_s"),
    ):
        lines.append(
            f"| {label} | {1000 * results.stat(value, 0.5):.0f} | "
            f"{1000 * results.stat(value, 0.95):.0f} | {1000 * results.worst(value):.0f} |"
        )
    return lines


def memory_markdown(results: MemoryResults, hours: int) -> list[str]:
    lines = [
        "## Controller memory over a simulated day",
        "",
        f"One release held in canary for {hours} simulated hours at {MEMORY_RATE:,} traces a "
        "minute (simulated world, fake clock, a tick a minute), in a process of its own "
        "started after the other runs; `tracemalloc` on from the start (wall time "
        f"{results.wall_s:.0f} s). The release ended {results.phase} (decisions: "
        f"{', '.join(results.decisions)}). Tick CPU is with `tracemalloc` on, several times "
        "slower than without; RSS includes `tracemalloc`'s own tables, and from hour 3 on "
        "what taking the hour-2 snapshot left allocated to the process.",
        "",
        "| hour | traced MB | RSS MB | traces taken in | trace records in evidence |"
        " tick CPU ms (mean) | state file MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for each in results.hours:
        kept = "–" if each.evidence_traces is None else f"{each.evidence_traces:,}"
        cpu = "–" if each.tick_cpu_ms is None else f"{each.tick_cpu_ms:.0f}"
        lines.append(
            f"| {each.hour} | {each.traced_mb:.1f} | {each.rss_mb:.0f} | {each.traces:,} | "
            f"{kept} | {cpu} | {each.state_mb:.0f} |"
        )
    if len(results.hours) >= 3:
        first, last = results.at(2), results.hours[-1]
        traces = last.traces - first.traces
        growth = last.traced_mb - first.traced_mb
        lines += [
            "",
            f"From hour 2 to hour {last.hour}: traced memory {growth:+.2f} MB "
            f"({1e6 * growth / max(traces, 1):+.1f} bytes per trace taken in); RSS "
            f"{last.rss_mb - first.rss_mb:+.0f} MB, from hour 3 "
            f"{last.rss_mb - results.at(3).rss_mb:+.0f} MB.",
            "",
            f"Largest changes from hour 2 to hour {last.hour} (`tracemalloc`), by file and by "
            "line:",
            "",
            "| file | KB | blocks |",
            "|---|---|---|",
        ]
        lines += [f"| {g.where} | {g.size_kb:+,.1f} | {g.count:+,} |" for g in results.files]
        lines += ["", "| line | KB | blocks |", "|---|---|---|"]
        lines += [f"| {g.where} | {g.size_kb:+,.1f} | {g.count:+,} |" for g in results.top]
        if any(g.where.startswith("<string>") for g in results.top):
            lines += ["", "`<string>`: code generated at run time (dataclass methods)."]
        lines += ["", *memory_notes(results)]
    return lines


def memory_notes(results: MemoryResults) -> list[str]:
    """Where the growth is, from the series."""
    last = results.hours[-1]
    # after the one-off step of hour 4 to 5 (see below)
    middle = results.at(max(5, last.hour // 2)) if last.hour > 5 else results.at(2)
    hours = max(last.hour - middle.hour, 1)
    slope_kb = 1000 * (last.traced_mb - middle.traced_mb) / hours
    per_minute_kb = slope_kb / 60
    kept = {each.evidence_traces for each in results.hours if each.hour >= 1}
    first = results.at(1)
    state_per_hour = (last.state_mb - first.state_mb) / max(last.hour - 1, 1)
    state_per_trace = 1e6 * (last.state_mb - first.state_mb) / max(last.traces - first.traces, 1)
    held = ", ".join(f"{value:,}" for value in sorted(v for v in kept if v is not None))
    text = (
        "Where it goes: the per-trace records the evidence keeps for late scores stay at "
        f"{held} from hour 1 on (two `scoreTimeout`s of traffic). From hour {middle.hour} to "
        f"hour {last.hour} traced memory grows {slope_kb:.0f} KB an hour, "
        f"{per_minute_kb:.1f} KB a simulated minute: state kept per one-minute block or per "
        "look of the judge, which grows with the release's age, not with its traffic. In "
        "`evidence.py`: count, sum and sum of squares per (step, block, arm) of each "
        "mean-type metric, kept for the life of the release"
    )
    if any(each.where.endswith("analyze.py") for each in results.files):
        text += (
            "; in `analyze.py` (and the trace ids of `controller_world.py`): the metric "
            "results of past judgements the controller keeps for the dashboard"
        )
    text += (
        ". The step from hour 4 to hour 5 is block numbers passing 256 (at 4 h 16 min): "
        "from there on each trace record's block number is an int object of its own "
        "instead of a shared small int, about 32 bytes for each record kept."
    )
    lines = [text]
    cpu_first, cpu_last = first.tick_cpu_ms, last.tick_cpu_ms
    if cpu_first is not None and cpu_last is not None:
        lines += [
            "",
            f"The tick's CPU time goes from {cpu_first:.0f} ms in hour 1 to {cpu_last:.0f} ms "
            f"in hour {last.hour} (with `tracemalloc` on). On disk, the state file grows "
            f"{state_per_hour:.0f} MB an hour ({state_per_trace:.0f} bytes per trace): it "
            "keeps every trace and score of a running release until the release ends.",
        ]
    return lines


def goals(
    polls: PollResults | None, rollbacks: RollbackResults | None, memory: MemoryResults | None
) -> tuple[list[str], dict[str, bool]]:
    lines = ["## Goals", "", "| goal | measured | result |", "|---|---|---|"]
    met: dict[str, bool] = {}
    if polls is not None:
        run = polls.main
        need = run.requests("observations") + run.requests("scores")
        met["budget"] = need <= DEFAULT_PER_MINUTE
        lines.append(
            f"| {run.releases} releases x {run.rate:,} traces/min within the default budget "
            f"({DEFAULT_PER_MINUTE} requests/min) | {need:.0f} requests per tick, "
            f"{need / DEFAULT_PER_MINUTE:.1f}x the budget; it sustains "
            f"{polls.sustained_default:,} traces/min | {'pass' if met['budget'] else 'miss'} |"
        )
    if rollbacks is not None:
        worst = rollbacks.worst("after_decision_s")
        met["rollback"] = worst <= GOAL_ROLLBACK_S
        lines.append(
            f"| rollback decision to no canary traffic <= {GOAL_ROLLBACK_S:.0f} s "
            f"(local mode) | p95 {1000 * rollbacks.stat('after_decision_s', 0.95):.0f} ms, "
            f"max {1000 * worst:.0f} ms over {len(rollbacks.rollbacks)} rollbacks | "
            f"{'pass' if met['rollback'] else 'miss'} |"
        )
    if memory is not None and len(memory.hours) >= 3:
        first, last = memory.at(2), memory.hours[-1]
        share = (last.traced_mb - first.traced_mb) / first.traced_mb
        met["memory"] = share <= GOAL_FLAT_SHARE
        lines.append(
            f"| controller memory flat over {last.hour} h (traced memory at the end within "
            f"{100 * GOAL_FLAT_SHARE:.0f}% of hour 2) | {first.traced_mb:.1f} -> "
            f"{last.traced_mb:.1f} MB ({100 * share:+.1f}%) | "
            f"{'pass' if met['memory'] else 'miss'} |"
        )
    return lines, met


def markdown(
    command: str,
    *,
    polls: PollResults | None,
    rollbacks: RollbackResults | None,
    memory: MemoryResults | None,
    hours: int,
    wall_s: float,
    loads: Sequence[Load],
) -> tuple[str, dict[str, bool]]:
    lines = [
        "# Controller speed",
        "",
        f"Command: `{command}` (wall time {wall_s:.0f} s)",
        "",
        f"All on loopback, one machine: Python {platform.python_version()} on "
        f"{platform.machine()}, {os.cpu_count()} CPU(s). The Langfuse emulator and the "
        "proxy each run in their own process. Other work on the machine took "
        + ", ".join(f"{100 * load.other_share:.0f}% ({load.part})" for load in loads)
        + " of its CPU time while each part ran (from /proc/stat, less this process and its "
        "children).",
        "",
    ]
    goal_lines, met = goals(polls, rollbacks, memory)
    if polls is not None:
        lines += [*poll_markdown(polls), ""]
    if rollbacks is not None:
        lines += [*rollback_markdown(rollbacks), ""]
    if memory is not None:
        lines += [*memory_markdown(memory, hours), ""]
    lines += goal_lines
    return "\n".join(lines), met


def memory_child(out: Path, hours: int) -> int:
    """The memory run as the process ``memory_process`` starts: results to ``out``."""
    with tempfile.TemporaryDirectory(prefix="controller-memory-") as folder:
        results = memory_benchmark(Path(folder), hours, MEMORY_RATE, MEMORY_START)
    out.write_text(json.dumps(asdict(results)), encoding="utf-8")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--releases", type=int, default=10)
    parser.add_argument("--rate", type=int, default=1000, help="traces a minute per release")
    parser.add_argument("--minutes", type=int, default=10, help="measured ticks")
    parser.add_argument("--rollbacks", type=int, default=30)
    parser.add_argument("--hours", type=int, default=24, help="simulated hours of memory")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument("--memory-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child is not None:
        return memory_child(args.memory_child, args.hours)
    command = "python -m bench.controller_speed " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    command = command.strip()
    began = time.perf_counter()
    start = math.floor(time.time() / MINUTE) * MINUTE
    polls: PollResults | None = None
    rollbacks: RollbackResults | None = None
    memory: MemoryResults | None = None
    loads: list[Load] = []
    with tempfile.TemporaryDirectory(prefix="controller-speed-") as folder:
        tmp = Path(folder)
        # One after the other: two runs at once slow each other down (CPU time included).
        if args.minutes > 0:
            with measured("Langfuse requests and CPU", loads):
                polls = poll_benchmark(tmp, args.releases, args.rate, args.minutes, start)
        if args.rollbacks > 0:
            with measured("rollback", loads):
                rollbacks = rollback_benchmark(tmp, args.rollbacks, args.seed)
        if args.hours > 0:
            with measured("memory", loads):
                memory = memory_process(tmp, args.hours)
    wall_s = time.perf_counter() - began
    text, met = markdown(
        command,
        polls=polls,
        rollbacks=rollbacks,
        memory=memory,
        hours=args.hours,
        wall_s=wall_s,
        loads=loads,
    )
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "controller_speed.md").write_text(text + "\n", encoding="utf-8")
    result = {
        "command": command,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "wall_seconds": wall_s,
        "goals": {
            "requests_per_minute": DEFAULT_PER_MINUTE,
            "rollback_seconds": GOAL_ROLLBACK_S,
            "memory_growth_share": GOAL_FLAT_SHARE,
        },
        "met": met,
        "polls": None if polls is None else _polls_json(polls),
        "rollbacks": None if rollbacks is None else _rollbacks_json(rollbacks),
        "memory": None if memory is None else asdict(memory),
        "other_load": [{**asdict(load), "other_share": load.other_share} for load in loads],
    }
    (args.out / "controller_speed.json").write_text(
        json.dumps(_clean(result), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    return 0


def _run_json(run: PollRun) -> dict[str, Any]:
    data = asdict(run)
    data["summary"] = {
        "requests": {e: run.requests(e) for e in ("observations", "scores")},
        "rows": {e: run.rows(e) for e in ("observations", "scores")},
        "cpu_s": run.mean("cpu_s"),
        "poll_cpu_s": run.mean("poll_cpu_s"),
        "wall_s": run.mean("wall_s"),
        "emulator_cpu_s": run.mean("emulator_cpu_s"),
        "request_wall_ms": {
            e: {"p50": run.request_wall_ms(e, 0.5), "p95": run.request_wall_ms(e, 0.95)}
            for e in ("observations", "scores")
        },
        "polls_complete": run.complete,
    }
    return data


def _clean(value: Any) -> Any:
    """``value`` with every NaN (a figure that could not be measured) replaced by None."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {key: _clean(each) for key, each in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(each) for each in value]
    return value


def _polls_json(results: PollResults) -> dict[str, Any]:
    return {
        "main": _run_json(results.main),
        "default_budget": _run_json(results.default_budget),
        "check": _run_json(results.check),
        "rows_per_trace": results.rows_per_trace,
        "sustained_traces_per_minute": {
            "default": results.sustained_default,
            "hobby": results.sustained_hobby,
        },
    }


def _rollbacks_json(results: RollbackResults) -> dict[str, Any]:
    data = asdict(results)
    data["summary"] = {
        value: {
            "p50": results.stat(value, 0.5),
            "p95": results.stat(value, 0.95),
            "max": results.worst(value),
        }
        for value in ("after_return_s", "after_decision_s", "manual_s")
    }
    return data


if __name__ == "__main__":
    raise SystemExit(main())
