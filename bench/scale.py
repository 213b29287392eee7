"""Scale: ten releases at 10,000 and 100,000 requests a minute each, on Langfuse's Hobby
limits and the default request budget.

    python -m bench.scale [--releases 10] [--rates 10000,100000] [--minutes 60]
        [--warmup 10] [--start-sample sized|none] [--out bench/out]

For each rate, a fresh world:

* **Langfuse**: the emulator in its own process (in-memory store), the Hobby plan's rate
  limits on (General API 30 a minute) with their windows on the simulated clock (a
  shared memory-mapped double this process moves), as are the scores' ``createdAt``
  (when the judge may see a score). The world's own writes (spans and
  scores) reach the same store through a second app without limits: an app's SDK sends
  scores through the ingestion endpoint, not the General API bucket the controller reads
  from, and the emulator serves score creation only on the General API route.
* **Proxies**: every request is counted into per-minute cells (``MinuteCell``: requests,
  errors, latency bins, ``sampled``) of two proxy ids in the state file's
  ``proxy_minutes`` table (``SqliteAggregateStore``), written once a minute. A request
  gets a random trace id; it is in the score sample when
  ``coalmine.shared.sampling`` samples that id at the rate in force in its release's
  routing table (read from the state file the controller writes, as a proxy reads it);
  it goes to the canary by the table's weight.
* **Traces**: as a busy app that samples its tracing would, only the sampled requests
  reach Langfuse: the proxy's root span (release, arm and sample tags; status 500 for an
  error, which Langfuse maps to level ERROR) and the app's generation under it (cost,
  prompt link), exported over OTLP once the request has ended, and one score 3 to 60 s
  after it ended. Requests: 1% errors, latency lognormal (median 800 ms), the same in
  both arms (a healthy canary); scores normal (0.8, 0.1) in both arms.
* **Controller**: the real ``Controller`` with ``ProxyTraffic(ProxyCounts.local(state),
  sample_budget=24)``, ``LangfuseSource(settings=SourceSettings(sampled=True))`` and
  ``LangfusePromptLabels``, sharing the default request budget (24 a minute), a SQLite
  state file. Ten releases, one canary step at weight 50 whose ``minDuration`` outlasts
  the run; metrics: error rate, p95 latency and a score. The controller ticks at the end
  of every simulated minute plus the source's settle time (10 s).

**The sample at a release's start.** The controller sizes a release's sample in the
tick its rollout starts, from the proxies' counts of the last minutes; with none yet (as
here: the world starts with the rollouts) it samples nothing until the first minute is
counted, then the sized rate applies from the first whole minute at least 30 s ahead.
``--start-sample none`` (the default) runs the controller as it is; ``--start-sample
sized`` writes into each table, right after the start, the rate the controller's sizing
arrives at, in force from the start (a world whose traffic was counted before the start).
Sampling every request of the first minutes, as an unsized table does, would be 200,000
sampled traces in two minutes at 10 releases × 10,000 a minute: more than the budget can
ever read (a poll cut short reads a shorter window next time, down to 10 s, and 10 s of
those traces are more pages than a minute's budget).

Measured: polls complete, 429 answers, the largest number of General API requests in
any 60 s (by the requests' simulated time), General API requests a minute (median over
the minutes after ``--warmup``), scored traces that reached each release's evidence a
minute per arm (median over the measured minutes; the table shows the release with the
fewest), the share of counted requests in the evidence of the error rate and latency
metrics, the sample rate each release ended on, and the controller's CPU time per tick
(``time.process_time`` of this process around ``tick``: the world's own work is not in
it). Requests are counted, not timed: the figures other than CPU are the same on every
machine.

Result: Markdown on stdout and in ``<out>/scale.md`` (with the command), JSON in
``<out>/scale.json``. Goals (coalmine issue 15): every poll complete, no 429, at most
24 requests in any 60 s, requests a minute at 100,000 a minute within 10% of those at
10,000, at least 50 + 50 scored traces judged per release a minute, error rate and
latency judged on every request.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import mmap
import shlex
import statistics
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from hashlib import blake2b
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from bench.controller_speed import (
    OTLP_HEADERS,
    OTLP_PATH,
    _iso,
    _ns,
    cpu_seconds,
    generation,
    launched,
)
from bench.machine import Load, LoadMeter, describe, free_port
from coalmine.emulator.ratelimit import PUBLIC_API, bucket_of
from coalmine.shared.aggregates.model import MinuteCell
from coalmine.shared.aggregates.sqlite import SqliteAggregateStore
from coalmine.shared.conventions import trace_tags
from coalmine.shared.routing_tables.store import SqliteRoutingStore
from coalmine.shared.routing_tables.table import SampleRate
from coalmine.shared.sampling import SAMPLE_KEY, is_sampled
from controller.labels import LangfusePromptLabels
from controller.loop import Controller, ProxyTraffic
from controller.release_store import ControllerState
from controller.score_sample import affordable_traces, rate_in_force, wanted_rate
from controller.source.aggregates import ProxyCounts
from controller.source.budget import DEFAULT_PER_MINUTE, BudgetSettings, RequestBudget
from controller.source.langfuse import DEFAULT_SETTLE, LangfuseSource, SourceSettings
from policies import Policy
from policies.domain import Arm, Phase
from policies.latency_bins import LOG_BIN_BASE
from policies.loader import load_policy_text
from proxy.outcome import RequestOutcome
from proxy.spans import export_request

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
PUBLIC_KEY = "pk-lf-bench-scale"
SECRET_KEY = "sk-lf-bench-scale"
WORLD_HEADER = "x-bench-world"
T0 = 1_767_225_600.0
"""2026-01-01T00:00:00Z, the start of a minute: the releases start and traffic begins."""
MINUTE = 60.0
SCORE_NAME = "helpfulness"
ERROR_SHARE = 0.01
LATENCY_MEDIAN_MS = 800.0
LATENCY_SIGMA = 0.5
LATENCY_MAX_MS = 20_000.0
SCORE_DELAY = (3.0, 60.0)
SCORE_TIMEOUT = "2m"
"""Longer than the latest score (20 s of request, then 60 s)."""
SCORE_MEAN, SCORE_SD = 0.8, 0.1
PROXIES = ("proxy-a", "proxy-b")
EXPORT_TRACES = 500
SCORE_BATCH = 5000
STORE_BYTES = 8 << 30
SEED = 15

GOAL_WINDOW = DEFAULT_PER_MINUTE
GOAL_SCORED = 50
GOAL_FLAT = 0.10

EMULATOR_SERVER = f"""
import mmap, struct, sys, uvicorn
from coalmine.emulator.app import create_app
from coalmine.emulator.settings import EmulatorSettings, Plan
from coalmine.emulator.store import Store
port, clock_path, max_bytes = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
with open(clock_path, "r+b") as file:
    shared = mmap.mmap(file.fileno(), 8)
def clock():
    return struct.unpack_from("d", shared, 0)[0]
import coalmine.emulator.scores
# a score's createdAt is when it reached Langfuse: on the simulated clock
coalmine.emulator.scores.now_ms = lambda: int(clock() * 1000)
keys = dict(public_key={PUBLIC_KEY!r}, secret_key={SECRET_KEY!r}, max_bytes=max_bytes)
store = Store(None, max_bytes=max_bytes)
limited = create_app(EmulatorSettings(plan=Plan.HOBBY, **keys), store=store, clock=clock)
unlimited = create_app(EmulatorSettings(**keys), store=store)
world = {WORLD_HEADER.encode()!r}
async def app(scope, receive, send):
    if scope["type"] == "http" and any(key == world for key, _ in scope["headers"]):
        await unlimited(scope, receive, send)
    else:
        await limited(scope, receive, send)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
            lifespan="off")
"""


# --- the simulated clock, shared with the emulator -----------------------------------------


class SharedClock:
    """Simulated seconds since the epoch, also seen by the emulator's rate limiter (a
    double in a memory-mapped file)."""

    def __init__(self, path: Path, now: float) -> None:
        path.write_bytes(struct.pack("d", now))
        self._file = path.open("r+b")
        self._map = mmap.mmap(self._file.fileno(), 8)
        self._now = now

    @property
    def now(self) -> float:
        return self._now

    @now.setter
    def now(self, value: float) -> None:
        self._now = value
        struct.pack_into("d", self._map, 0, value)

    def __call__(self) -> float:
        return self._now

    def close(self) -> None:
        self._map.close()
        self._file.close()


class CountingTransport(httpx.BaseTransport):
    """Passes requests on; notes each one's simulated time, rate-limit bucket and status."""

    def __init__(self, clock: SharedClock) -> None:
        self.inner = httpx.HTTPTransport()
        self.clock = clock
        self.requests: list[tuple[float, str, str, int]] = []
        """(simulated time, bucket, endpoint path, status)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        path = urlsplit(str(request.url)).path
        bucket = bucket_of(request.method, path) or "unlimited"
        self.requests.append((self.clock.now, bucket, path, response.status_code))
        return response

    def close(self) -> None:
        self.inner.close()


# --- the world ---------------------------------------------------------------------------------

_KEYED = blake2b(digest_size=8, key=SAMPLE_KEY)


def sampled_indices(raw: bytes, rate: float) -> list[int]:
    """Indices of the 16-byte trace ids in ``raw`` that the score sample takes at ``rate``
    (``coalmine.shared.sampling``'s keyed hash, compared as bytes for speed)."""
    count = len(raw) // 16
    if rate >= 1.0:
        return list(range(count))
    if rate <= 0.0:
        return []
    limit = min(math.floor(rate * 2.0**64), 2**64 - 1).to_bytes(8, "big")
    copy = _KEYED.copy
    found: list[int] = []
    for offset in range(0, 16 * count, 16):
        keyed = copy()
        keyed.update(raw[offset : offset + 16])
        if keyed.digest() < limit:
            found.append(offset // 16)
    for index in found:  # the proxy's own test agrees
        assert is_sampled(raw[16 * index : 16 * index + 16].hex(), rate)
    return found


@dataclass
class Sampled:
    """A request in the score sample: its trace goes to Langfuse."""

    release: str
    arm: Arm
    trace_id: str
    start: float
    end: float
    error: bool


@dataclass
class World:
    """Requests of every release, counted by two proxies; the sampled ones traced."""

    http: httpx.Client
    aggregates: dict[str, SqliteAggregateStore]
    routing: SqliteRoutingStore
    rate: int
    rng: np.random.Generator
    requests: Counter[str] = field(default_factory=Counter)
    """Requests counted per release."""
    by_minute: dict[str, dict[int, int]] = field(default_factory=dict)
    sampled: Counter[str] = field(default_factory=Counter)
    posts: Counter[str] = field(default_factory=Counter)
    """The world's own requests to Langfuse by kind (spans, scores, prompts)."""
    seconds: float = 0.0
    _spans: list[Sampled] = field(default_factory=list)
    _scores: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    _number: int = 0

    def _post(self, kind: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {WORLD_HEADER: "1", **kwargs.pop("headers", {})}
        response = self.http.post(path, headers=headers, **kwargs)
        self.posts[kind] += 1
        if response.status_code not in (200, 201, 202):
            raise RuntimeError(f"{kind}: HTTP {response.status_code}: {response.text[:300]}")
        return response

    def prompts(self, names: Sequence[str]) -> None:
        """Each release's prompt: version 1 labelled production, version 2 canary."""
        for name in names:
            for version, label in ((1, "production"), (2, "canary")):
                body = {"name": f"{name}-prompt", "prompt": f"v{version}", "labels": [label]}
                self._post("prompts", "/api/public/v2/prompts", json=body)

    def minute(self, names: Sequence[str], start: float) -> None:
        """Every release's requests arriving in [start, start + 60 s): counted into the
        proxies' cells (written now, at the minute's end); sampled ones queued as traces."""
        began = time.perf_counter()
        n = self.rate
        cells: dict[str, list[MinuteCell]] = {proxy: [] for proxy in PROXIES}
        for name in names:
            table = self.routing.read(name)
            if table is None:
                raise RuntimeError(f"release {name} has no routing table")
            rate = rate_in_force(table.score_sample, start)
            rng = self.rng
            offsets = (np.arange(n) + rng.random(n)) * (MINUTE / n)
            canary = rng.random(n) * 100.0 < table.canary_weight
            latency_ms = np.minimum(
                rng.lognormal(math.log(LATENCY_MEDIAN_MS), LATENCY_SIGMA, n), LATENCY_MAX_MS
            )
            error = rng.random(n) < ERROR_SHARE
            second = rng.random(n) < 0.5
            raw = rng.bytes(16 * n)
            chosen = sampled_indices(raw, rate)
            sampled = np.zeros(n, dtype=bool)
            sampled[chosen] = True
            bins = np.ceil(np.log(latency_ms) / LOG_BIN_BASE).astype(np.int64)
            for proxy, on_proxy in zip(PROXIES, (~second, second), strict=True):
                for arm, in_arm in ((Arm.BASELINE, ~canary), (Arm.CANARY, canary)):
                    mask = on_proxy & in_arm
                    found, counts = np.unique(bins[mask], return_counts=True)
                    cells[proxy].append(
                        MinuteCell(
                            release=name,
                            arm=arm,
                            minute=int(start),
                            requests=int(mask.sum()),
                            errors=int((error & mask).sum()),
                            latency_bins=dict(zip(found.tolist(), counts.tolist(), strict=True)),
                            sampled=int((sampled & mask).sum()),
                        )
                    )
            self.requests[name] += n
            self.by_minute.setdefault(name, {})[int(start)] = n
            self.sampled[name] += len(chosen)
            for index in chosen:
                begin = start + float(offsets[index])
                self._spans.append(
                    Sampled(
                        release=name,
                        arm=Arm.CANARY if canary[index] else Arm.BASELINE,
                        trace_id=raw[16 * index : 16 * index + 16].hex(),
                        start=begin,
                        end=begin + float(latency_ms[index]) / 1000.0,
                        error=bool(error[index]),
                    )
                )
        for proxy, store in self.aggregates.items():
            store.write(cells[proxy], start + MINUTE)
        self.seconds += time.perf_counter() - began

    def flush(self, now: float) -> None:
        """Export the spans of the requests ended by ``now`` and the scores made by then."""
        began = time.perf_counter()
        due = [each for each in self._spans if each.end <= now]
        self._spans = [each for each in self._spans if each.end > now]
        for first in range(0, len(due), EXPORT_TRACES):
            self._export(due[first : first + EXPORT_TRACES])
        ready = sorted((item for item in self._scores if item[0] <= now), key=lambda x: x[0])
        self._scores = [item for item in self._scores if item[0] > now]
        for first in range(0, len(ready), SCORE_BATCH):
            batch = [body for _, body in ready[first : first + SCORE_BATCH]]
            self._post("scores", "/api/public/scores", json=batch)
        self.seconds += time.perf_counter() - began

    def _export(self, traces: list[Sampled]) -> None:
        outcomes: list[RequestOutcome] = []
        children: list[Span] = []
        for trace in traces:
            self._number += 1
            root_id = f"{2 * self._number:016x}"
            outcomes.append(
                RequestOutcome(
                    release=trace.release,
                    arm=trace.arm,
                    method="POST",
                    path="/v1/chat/completions",
                    status=500 if trace.error else 200,
                    start_ns=_ns(trace.start),
                    end_ns=_ns(trace.end),
                    trace_id=trace.trace_id,
                    span_id=root_id,
                    parent_span_id=None,
                    request_id=f"req-{self._number}",
                    prompt_label=None,
                    sampled=True,
                )
            )
            children.append(
                generation(
                    trace.trace_id,
                    f"{2 * self._number + 1:016x}",
                    root_id,
                    start=trace.start + 0.01,
                    end=max(trace.start + 0.02, trace.end - 0.01),
                    tags=trace_tags(trace.release, trace.arm, True),
                    cost=float(self.rng.uniform(0.0005, 0.002)),
                    prompt=(f"{trace.release}-prompt", 2 if trace.arm is Arm.CANARY else 1),
                )
            )
            value = min(1.0, max(0.0, float(self.rng.normal(SCORE_MEAN, SCORE_SD))))
            at = trace.end + float(self.rng.uniform(*SCORE_DELAY))
            self._scores.append(
                (
                    at,
                    {
                        "id": f"score-{trace.trace_id}",
                        "traceId": trace.trace_id,
                        "name": SCORE_NAME,
                        "value": round(value, 4),
                        "dataType": "NUMERIC",
                        "timestamp": _iso(at),
                    },
                )
            )
        export = export_request(outcomes, "coalmine-proxy")
        export.resource_spans.append(ResourceSpans(scope_spans=[ScopeSpans(spans=children)]))
        self._post(
            "spans", OTLP_PATH, content=export.SerializeToString(), headers=dict(OTLP_HEADERS)
        )


# --- the controller ----------------------------------------------------------------------------


def scale_policy(name: str, minutes: int) -> Policy:
    hours = math.ceil(minutes / 60) + 1
    text = f"""apiVersion: coalmine/v1
kind: Release
name: {name}
target:
  prompt: {{name: {name}-prompt}}
  upstreams: {{stable: "http://{HOST}:9"}}
routing:
  readTimeout: 30s
steps:
  - {{weight: 50, minDuration: {hours}h}}
analysis:
  interval: 1m
  scoreTimeout: {SCORE_TIMEOUT}
  metrics:
    - {{name: errors, source: error_rate, tolerance: 0.02, critical: true}}
    - {{name: latency, source: latency, quantile: 0.95, tolerancePercent: 20}}
    - {{name: {SCORE_NAME}, source: score, score: {SCORE_NAME}, tolerance: 0.05, critical: true}}
"""
    return load_policy_text(text, f"{name}.yaml")


@dataclass
class TickRecord:
    """One tick of the controller."""

    minute: int
    ok: bool
    error: str | None
    public_api: int
    """General API requests the tick made."""
    requests: dict[str, int]
    cpu_s: float
    emulator_cpu_s: float
    scored: dict[str, tuple[int, int]]
    """Release → (baseline, canary) score observations in its evidence so far."""
    counted: dict[str, int]
    """Release → requests in the evidence of its error rate metric so far."""
    latency: dict[str, int]
    """Release → requests in the evidence of its latency metric so far."""


@dataclass
class RateRun:
    """One world at one rate."""

    rate: int
    releases: int
    minutes: int
    warmup: int
    sized_start: bool
    ticks: list[TickRecord]
    polls_ok: int
    polls: int
    status_429: int
    max_in_60s: int
    requests_per_minute: float
    scored_per_minute: dict[str, tuple[float, float]]
    """Release → median (baseline, canary) scored traces a minute over measured minutes."""
    judged_share: dict[str, tuple[float, float]]
    """Release → (error rate n, latency n) over the requests counted up to the last tick."""
    end_rates: dict[str, float]
    sampled_traces: int
    requests_total: int
    cpu_per_tick_ms: tuple[float, float]
    """Median and largest over measured ticks."""
    emulator_cpu_per_tick_ms: float
    world_posts: dict[str, int]
    decisions: list[str]
    poll_errors: list[str]
    skipped: dict[str, int]
    health: dict[str, Any]
    wall_s: float
    cpu_s: float
    """CPU time of this process and the emulator's."""
    other_share: float
    """Share of the machine's CPU time that other work took meanwhile."""
    world_s: float


def _largest_window(times: Sequence[float], length: float = MINUTE) -> int:
    """The most times in any half-open window [t, t + length)."""
    ordered = sorted(times)
    best = low = 0
    for high, at in enumerate(ordered):
        while ordered[low] <= at - length:
            low += 1
        best = max(best, high - low + 1)
    return best


def _evidence(controller: Controller, names: Sequence[str]) -> tuple[dict[str, Any], ...]:
    scored: dict[str, tuple[int, int]] = {}
    counted: dict[str, int] = {}
    latency: dict[str, int] = {}
    for name in names:
        live = controller.live.get(name)
        if live is None:
            scored[name], counted[name], latency[name] = (0, 0), 0, 0
            continue
        series = live.evidence.series
        means = series[SCORE_NAME].means
        errors = series["errors"].means
        quantiles = series["latency"].quantiles
        assert means is not None and errors is not None and quantiles is not None
        scored[name] = means.totals
        counted[name] = sum(errors.totals)
        latency[name] = sum(quantiles.totals)
    return scored, counted, latency


@contextmanager
def _emulator(tmp: Path, clock_path: Path) -> Iterator[tuple[str, int]]:
    port = free_port(HOST)
    base_url = f"http://{HOST}:{port}"
    args = [sys.executable, "-c", EMULATOR_SERVER, str(port), str(clock_path), str(STORE_BYTES)]
    with launched(args, f"{base_url}/api/public/health", tmp / "emulator.log") as process:
        yield base_url, process.pid


@dataclass(frozen=True)
class RunPlan:
    """One world: ``releases`` releases at ``rate`` requests a minute each for
    ``minutes`` simulated minutes; with ``sized_start`` each release's score sample is
    sized from its start (see ``_size_at_start``)."""

    releases: int
    rate: int
    minutes: int
    warmup: int
    sized_start: bool = True

    @property
    def names(self) -> list[str]:
        return [f"rel-{index:02d}" for index in range(self.releases)]


@dataclass
class _Rig:
    """The controller and the world of one run, on one state file and one emulator."""

    clock: SharedClock
    transport: CountingTransport
    source: LangfuseSource
    labels: LangfusePromptLabels
    state: ControllerState
    routing: SqliteRoutingStore
    counts: ProxyCounts
    controller: Controller
    world: World
    emulator_pid: int

    def close(self) -> None:
        world = self.world
        world.http.close()
        for store in world.aggregates.values():
            store.close()
        world.routing.close()
        for each in (self.source, self.labels, self.transport, self.counts, self.routing):
            each.close()
        self.state.close()


def _rig(plan: RunPlan, base_url: str, emulator_pid: int, clock: SharedClock, path: Path) -> _Rig:
    policies = {name: scale_policy(name, plan.minutes) for name in plan.names}
    budget = RequestBudget(BudgetSettings(), clock=clock)
    transport = CountingTransport(clock)
    source = LangfuseSource(
        base_url,
        PUBLIC_KEY,
        SECRET_KEY,
        budget=budget,
        settings=SourceSettings(sampled=True),
        transport=transport,
        clock=clock,
    )
    labels = LangfusePromptLabels(
        base_url, PUBLIC_KEY, SECRET_KEY, budget=budget, transport=transport
    )
    state = ControllerState(path)
    routing = SqliteRoutingStore(path)
    counts = ProxyCounts.local(path)
    controller = Controller(
        state=state,
        routing=routing,
        source=source,
        labels=labels,
        policies=lambda: policies,
        from_proxies=ProxyTraffic(counts, sample_budget=DEFAULT_PER_MINUTE),
    )
    world = World(
        httpx.Client(base_url=base_url, auth=(PUBLIC_KEY, SECRET_KEY), timeout=120),
        {proxy: SqliteAggregateStore(path, proxy) for proxy in PROXIES},
        SqliteRoutingStore(path),
        plan.rate,
        np.random.default_rng(SEED),
    )
    return _Rig(
        clock, transport, source, labels, state, routing, counts, controller, world, emulator_pid
    )


def _size_at_start(rig: _Rig, plan: RunPlan) -> None:
    """Give each release's table, from its start, the score sample the controller sizes
    it to at its first look (the controller itself writes none before then, so every
    request of the first two minutes would be sampled: see the module's docstring)."""
    affordable = affordable_traces(DEFAULT_PER_MINUTE, plan.releases, 1)
    entry = SampleRate.model_validate({"from": int(T0), "rate": wanted_rate(plan.rate, affordable)})
    for name in plan.names:
        table = rig.routing.read(name)
        assert table is not None
        rig.routing.write(table.model_copy(update={"score_sample": (entry,)}), table.version)


def run(plan: RunPlan, tmp: Path) -> RateRun:
    """One world, minute after minute, each followed by a tick of the controller."""
    folder = tmp / f"rate-{plan.rate}"
    folder.mkdir(parents=True)
    clock = SharedClock(folder / "clock", T0)
    try:
        with _emulator(folder, folder / "clock") as (base_url, emulator_pid):
            meter = LoadMeter()
            rig = _rig(plan, base_url, emulator_pid, clock, folder / "state.db")
            try:
                rig.world.prompts(plan.names)
                rig.controller.tick(T0)
                for name in plan.names:
                    release = rig.state.release(name)
                    if release is None or release.phase is not Phase.CANARY:
                        raise RuntimeError(f"release {name} did not start: {release}")
                if plan.sized_start:
                    _size_at_start(rig, plan)
                ticks: list[TickRecord] = []
                for minute in range(plan.minutes):
                    start = T0 + minute * MINUTE
                    rig.world.minute(plan.names, start)
                    clock.now = start + MINUTE + DEFAULT_SETTLE
                    rig.world.flush(clock.now)
                    ticks.append(_tick(rig, plan.names, minute))
                load = meter.stop(cpu_seconds(emulator_pid))
                return _summary(plan, rig, ticks, load)
            finally:
                rig.close()
    finally:
        clock.close()


def _endpoint(path: str) -> str:
    if "/prompts" in path:
        return "prompts"
    return path.rsplit("/", 1)[-1]


def _tick(rig: _Rig, names: Sequence[str], minute: int) -> TickRecord:
    transport = rig.transport
    before = len(transport.requests)
    emulator = cpu_seconds(rig.emulator_pid)
    cpu = time.process_time()
    report = rig.controller.tick(rig.clock.now)
    cpu = time.process_time() - cpu
    emulator = cpu_seconds(rig.emulator_pid) - emulator
    made = transport.requests[before:]
    scored, counted, latency = _evidence(rig.controller, names)
    return TickRecord(
        minute=minute,
        ok=report.polled and report.poll_error is None,
        error=report.poll_error or report.catching_up or report.counts_error,
        public_api=sum(1 for _, bucket, _, _ in made if bucket == PUBLIC_API),
        requests=dict(Counter(_endpoint(path) for _, _, path, _ in made)),
        cpu_s=cpu,
        emulator_cpu_s=emulator,
        scored=scored,
        counted=counted,
        latency=latency,
    )


def _health(source: LangfuseSource, now: float) -> dict[str, Any]:
    """The source's read health as JSON data."""
    reads = source.health(now).reads
    data: dict[str, Any] = json.loads(json.dumps(asdict(reads), default=str))
    return data


def _scored_per_minute(ticks: Sequence[TickRecord], name: str, warmup: int) -> tuple[float, float]:
    """Median (baseline, canary) score observations a minute that reached the evidence."""
    per_minute = [
        (
            after.scored[name][0] - before.scored[name][0],
            after.scored[name][1] - before.scored[name][1],
        )
        for before, after in itertools.pairwise(ticks)
        if after.minute >= warmup
    ]
    return (
        _median([float(b) for b, _ in per_minute]),
        _median([float(c) for _, c in per_minute]),
    )


def _summary(plan: RunPlan, rig: _Rig, ticks: list[TickRecord], load: Load) -> RateRun:
    names, world, transport = plan.names, rig.world, rig.transport
    measured = [tick for tick in ticks if tick.minute >= plan.warmup]
    public = [at for at, bucket, _, _ in transport.requests if bucket == PUBLIC_API]
    last = ticks[-1]
    # the last tick has read the counts of every minute written
    judged = {
        name: (last.counted[name] / world.requests[name], last.latency[name] / world.requests[name])
        for name in names
    }
    end_rates: dict[str, float] = {}
    for name in names:
        table = rig.routing.read(name)
        end_rates[name] = 1.0 if table is None else rate_in_force(table.score_sample, rig.clock.now)
    return RateRun(
        rate=plan.rate,
        releases=plan.releases,
        minutes=plan.minutes,
        warmup=plan.warmup,
        sized_start=plan.sized_start,
        ticks=ticks,
        polls_ok=sum(tick.ok for tick in ticks),
        polls=len(ticks),
        status_429=sum(1 for *_, status in transport.requests if status == 429),
        max_in_60s=_largest_window(public),
        requests_per_minute=_median([float(tick.public_api) for tick in measured]),
        scored_per_minute={name: _scored_per_minute(ticks, name, plan.warmup) for name in names},
        judged_share=judged,
        end_rates=end_rates,
        sampled_traces=sum(world.sampled.values()),
        requests_total=sum(world.requests.values()),
        cpu_per_tick_ms=(
            1000 * _median([tick.cpu_s for tick in measured]),
            1000 * max((tick.cpu_s for tick in measured), default=math.nan),
        ),
        emulator_cpu_per_tick_ms=1000 * _median([tick.emulator_cpu_s for tick in measured]),
        world_posts=dict(world.posts),
        decisions=[
            f"{name}: {record.decision} ({record.reason})"
            for name in names
            for record in rig.state.decisions(name)
            if record.decision != "start"
        ],
        poll_errors=[f"minute {tick.minute}: {tick.error}" for tick in ticks if tick.error],
        skipped=dict(rig.source.skipped),
        health=_health(rig.source, rig.clock.now),
        wall_s=load.wall_s,
        cpu_s=load.own_cpu_s,
        other_share=load.other_share,
        world_s=world.seconds,
    )


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


# --- report ------------------------------------------------------------------------------------


def goals(runs: Sequence[RateRun]) -> list[tuple[str, str, bool]]:
    """(goal, measured, met) for the runs together."""
    rows: list[tuple[str, str, bool]] = []
    polls = sum(run.polls_ok for run in runs), sum(run.polls for run in runs)
    rows.append(("every poll complete", f"{polls[0]}/{polls[1]}", polls[0] == polls[1]))
    too_many = sum(run.status_429 for run in runs)
    rows.append(("no 429", str(too_many), too_many == 0))
    largest = max(run.max_in_60s for run in runs)
    rows.append(
        (f"at most {GOAL_WINDOW} requests in any 60 s", str(largest), largest <= GOAL_WINDOW)
    )
    low, high = min(runs, key=lambda r: r.rate), max(runs, key=lambda r: r.rate)
    if low is not high:
        change = high.requests_per_minute / low.requests_per_minute - 1
        rows.append(
            (
                f"requests a minute at {high.rate:,}/min within {100 * GOAL_FLAT:.0f}% "
                f"of {low.rate:,}/min",
                f"{high.requests_per_minute:g} vs {low.requests_per_minute:g} "
                f"({100 * change:+.0f}%)",
                abs(change) <= GOAL_FLAT,
            )
        )
    fewest = min(min(min(pair) for pair in run.scored_per_minute.values()) for run in runs)
    rows.append(
        (
            f"at least {GOAL_SCORED} + {GOAL_SCORED} scored traces judged per release a minute",
            f"fewest: {fewest:g} (one arm, one release, median minute)",
            fewest >= GOAL_SCORED,
        )
    )
    share = min(min(min(pair) for pair in run.judged_share.values()) for run in runs)
    rows.append(
        (
            "error rate and latency judged on 100% of requests",
            f"lowest share: {100 * share:.2f}%",
            share >= 1.0,
        )
    )
    return rows


def markdown(runs: Sequence[RateRun], command: str) -> str:
    first = runs[0]
    lines = [
        "# Scale: ten releases on Langfuse Hobby limits",
        "",
        f"`{command}` ({describe()})",
        "",
        f"{first.releases} releases, one canary step at weight 50 for the whole run, "
        f"{first.minutes} simulated minutes (the first {first.warmup} are warm-up for "
        "the per-minute figures); the emulator with the Hobby plan's limits, the default "
        f"request budget ({DEFAULT_PER_MINUTE} a minute); every request counted by two "
        "proxies, only the score sample's traces written to Langfuse.",
        "",
        "| goal | measured | met |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {goal} | {got} | {'yes' if met else 'no'} |" for goal, got, met in goals(runs)]
    lines += [
        "",
        "| requests/min per release | polls complete | 429 | most in 60 s | requests/min "
        "(median) | scored/min per release, fewest (baseline + canary) | error-rate / "
        "latency n of counted | end sample rate | sampled traces | controller CPU/tick ms "
        "(median, max) | emulator CPU/tick ms | wall s (world s) | CPU s (other work) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        fewest = min(run.scored_per_minute.items(), key=lambda item: min(item[1]))
        errors_share = min(pair[0] for pair in run.judged_share.values())
        latency_share = min(pair[1] for pair in run.judged_share.values())
        rates = sorted(run.end_rates.values())
        rate_text = (
            f"{rates[0]:.4g}" if rates[0] == rates[-1] else f"{rates[0]:.4g}–{rates[-1]:.4g}"
        )
        lines.append(
            f"| {run.rate:,} | {run.polls_ok}/{run.polls} | {run.status_429} "
            f"| {run.max_in_60s} | {run.requests_per_minute:g} "
            f"| {fewest[1][0]:g} + {fewest[1][1]:g} | {100 * errors_share:.2f}% / "
            f"{100 * latency_share:.2f}% | {rate_text} | {run.sampled_traces:,} of "
            f"{run.requests_total:,} | {run.cpu_per_tick_ms[0]:.0f}, "
            f"{run.cpu_per_tick_ms[1]:.0f} | {run.emulator_cpu_per_tick_ms:.0f} "
            f"| {run.wall_s:.0f} ({run.world_s:.0f}) "
            f"| {run.cpu_s:.0f} ({100 * run.other_share:.0f}%) |"
        )
    for run in runs:
        if run.poll_errors or run.decisions:
            lines += ["", f"At {run.rate:,} a minute:"]
            shown = run.poll_errors[:5]
            more = len(run.poll_errors) - len(shown)
            lines += [f"- {error}" for error in shown]
            if more > 0:
                lines.append(f"- ... and {more} more ticks not read up to now")
            lines += [f"- decision: {decision}" for decision in run.decisions[:5]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--releases", type=int, default=10)
    parser.add_argument("--rates", default="10000,100000")
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--start-sample", choices=("sized", "none"), default="none")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args(argv)
    rates = [int(part) for part in args.rates.split(",")]
    sized = args.start_sample == "sized"
    with tempfile.TemporaryDirectory(prefix="coalmine-scale-") as tmp:
        runs = [
            run(RunPlan(args.releases, rate, args.minutes, args.warmup, sized), Path(tmp))
            for rate in rates
        ]
    given = sys.argv[1:] if argv is None else list(argv)
    command = ("python -m bench.scale " + shlex.join(given)).strip()
    text = markdown(runs, command)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.md").write_text(text)
    data = {
        "command": command,
        "goals": [{"goal": g, "measured": m, "met": ok} for g, m, ok in goals(runs)],
        "runs": [asdict(run) for run in runs],
    }
    (args.out / "scale.json").write_text(json.dumps(data, indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
