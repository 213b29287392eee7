"""Sampled reads: Langfuse requests a minute against traffic, at a fixed sample size.

    python -m bench.sampled_reads [--traffic 1000,10000,100000] [--sampled 100]
        [--minutes 3] [--out bench/out]

The Langfuse emulator serves on a loopback port (in-memory store). One release; each
simulated minute holds N traces (start times spread evenly), of which exactly
``--sampled`` are in the score sample: the trace ids are random (fixed seed) and a trace
is sampled when ``coalmine.shared.sampling.is_sampled`` holds at rate ``sampled / N``,
ids being drawn until the minute has ``sampled`` sampled and ``N - sampled`` other
traces. Every trace has a root span (release and arm tags; the sampled ones also
``SAMPLED_TAG``); a sampled trace also a generation under it, tagged alike. Every trace
gets the two score names of the policy, each 10 to 90 s (uniform) after its start.
Spans and scores go straight into the emulator's store when their time has come, so a
read never sees a row from its future.

A ``LangfuseSource`` with ``SourceSettings(sampled=True)`` (first read at 60 s, the
policy's ``scoreTimeout`` 120 s) polls every ``POLL_EVERY`` simulated seconds, with the
default request budget (24 a minute). After a warm-up of ``scoreTimeout`` plus two
minutes (every kind of read is then being made), ``--minutes`` minutes are measured:
requests a minute by endpoint, and the score reads split into first and final reads.
Requests are counted, never timed, so the figures are the same on every machine.

Result: a Markdown table on stdout and in ``<out>/sampled_reads.md``.
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import uvicorn

from coalmine.emulator.app import create_app
from coalmine.emulator.otel import ingest
from coalmine.emulator.otlp import RawSpan, Scope
from coalmine.emulator.scores import NewScore, store_scores
from coalmine.emulator.settings import EmulatorSettings
from coalmine.emulator.store import Store
from coalmine.shared.conventions import trace_tags
from coalmine.shared.sampling import is_sampled
from controller.source.budget import BudgetSettings, RequestBudget
from controller.source.langfuse import LangfuseSource, SourceSettings
from policies.model import Policy

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_767_225_600.0
"""2026-01-01T00:00:00Z: the simulated traffic starts here."""
RELEASE = "alpha"
NAMES = ("helpfulness", "resolved")
SCORE_TIMEOUT = 120.0
POLL_EVERY = 30.0
SCORE_DELAY = (10.0, 90.0)
WARMUP = SCORE_TIMEOUT + 120.0
SEED = 15
STORE_BYTES = 16 << 30


def policy() -> Policy:
    return Policy.model_validate(
        {
            "apiVersion": "coalmine/v1",
            "kind": "Release",
            "name": RELEASE,
            "target": {"upstreams": {"stable": "http://127.0.0.1:9001"}},
            "routing": {"readTimeout": "10s"},
            "steps": [{"weight": 50}],
            "analysis": {
                "scoreTimeout": f"{SCORE_TIMEOUT:g}s",
                "metrics": [
                    {"name": f"s-{name}", "source": "score", "score": name, "tolerance": 0.05}
                    for name in NAMES
                ],
            },
        }
    )


@dataclass(frozen=True, slots=True)
class Trace:
    trace_id: str
    start: float
    sampled: bool
    arm: str


def minute_traces(rng: random.Random, minute: int, traffic: int, sampled: int) -> list[Trace]:
    """The minute's traces: exactly ``sampled`` of ``traffic`` in the sample."""
    rate = sampled / traffic
    inside: list[str] = []
    outside: list[str] = []
    while len(inside) < sampled or len(outside) < traffic - sampled:
        trace_id = f"{rng.getrandbits(128):032x}"
        if is_sampled(trace_id, rate):
            if len(inside) < sampled:
                inside.append(trace_id)
        elif len(outside) < traffic - sampled:
            outside.append(trace_id)
    ids = [(trace_id, True) for trace_id in inside] + [(trace_id, False) for trace_id in outside]
    rng.shuffle(ids)
    base = T0 + 60.0 * minute
    return [
        Trace(trace_id, base + 60.0 * n / traffic, flag, "canary" if n % 2 else "baseline")
        for n, (trace_id, flag) in enumerate(ids)
    ]


_SCOPE = Scope(name="coalmine-proxy", version=None, attributes={})


def spans_of(trace: Trace, number: int) -> list[RawSpan]:
    tags = trace_tags(RELEASE, trace.arm, trace.sampled)
    start_ns = round(trace.start * 1000) * 1_000_000
    root = RawSpan(
        trace_id=trace.trace_id,
        span_id=f"{number:016x}",
        parent_span_id=None,
        name="POST /chat",
        start_ns=start_ns,
        end_ns=start_ns + 250_000_000,
        attributes={"langfuse.trace.tags": tags},
        status_code=0,
        status_message=None,
        resource={},
        scope=_SCOPE,
    )
    if not trace.sampled:
        return [root]
    generation = RawSpan(
        trace_id=trace.trace_id,
        span_id=f"{number | 1 << 62:016x}",
        parent_span_id=root.span_id,
        name="llm",
        start_ns=start_ns + 50_000_000,
        end_ns=start_ns + 200_000_000,
        attributes={
            "langfuse.trace.tags": tags,
            "langfuse.observation.type": "generation",
            "langfuse.observation.cost_details": '{"total": 0.001}',
        },
        status_code=0,
        status_message=None,
        resource={},
        scope=_SCOPE,
    )
    return [root, generation]


def scores_of(rng: random.Random, trace: Trace) -> list[NewScore]:
    return [
        NewScore(
            id=f"{trace.trace_id}-{name}",
            name=name,
            value=rng.random(),
            string_value=None,
            data_type="NUMERIC",
            source="API",
            trace_id=trace.trace_id,
            observation_id=None,
            session_id=None,
            dataset_run_id=None,
            comment=None,
            metadata={},
            config_id=None,
            queue_id=None,
            environment="default",
            timestamp_ms=round((trace.start + rng.uniform(*SCORE_DELAY)) * 1000),
        )
        for name in NAMES
    ]


class Counting(httpx.BaseTransport):
    """Counts requests by endpoint, and score reads by how many of their traces were
    read before."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.counts: Counter[str] = Counter()
        self.read_before: set[str] = set()
        self.measuring = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        endpoint = "scores" if path.endswith("/v3/scores") else "observations"
        if endpoint == "scores":
            ids = parse_qs(urlsplit(str(request.url)).query)["traceId"][0].split(",")
            again = sum(1 for trace_id in ids if trace_id in self.read_before)
            self.read_before.update(ids)
            if self.measuring:
                self.counts["first_reads"] += len(ids) - again
                self.counts["final_reads"] += again
        if self.measuring:
            self.counts[endpoint] += 1
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


@contextmanager
def served(store: Store, settings: EmulatorSettings) -> Iterator[str]:
    """The emulator app on a free loopback port; its base URL."""
    app = create_app(settings, store=store)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("emulator did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass(frozen=True, slots=True)
class Run:
    traffic: int
    sampled: int
    minutes: int
    per_minute: dict[str, float]
    traces_reported: int
    polls_ok: int
    polls: int


class _Feed:
    """Writes the simulated rows into the store once their time has come."""

    def __init__(self, store: Store, traffic: int, sampled: int) -> None:
        self.store = store
        self.traffic = traffic
        self.sampled = sampled
        self.rng = random.Random(SEED)
        self.minute = 0
        self.spans: list[tuple[float, list[RawSpan]]] = []
        self.scores: list[NewScore] = []
        self.number = 0

    def until(self, now: float) -> None:
        while T0 + 60.0 * self.minute < now:
            for trace in minute_traces(self.rng, self.minute, self.traffic, self.sampled):
                self.number += 1
                self.spans.append((trace.start + 0.25, spans_of(trace, self.number)))
                self.scores.extend(scores_of(self.rng, trace))
            self.minute += 1
        due = [spans for ended, spans in self.spans if ended <= now]
        self.spans = [(ended, spans) for ended, spans in self.spans if ended > now]
        if due:
            ingest(self.store, [span for spans in due for span in spans])
        limit = now * 1000
        ready = [score for score in self.scores if score.timestamp_ms <= limit]
        self.scores = [score for score in self.scores if score.timestamp_ms > limit]
        if ready:
            store_scores(self.store, ready, int(time.time() * 1000))


def run(traffic: int, sampled: int, minutes: int) -> Run:
    """One simulation; requests a minute over the measured minutes."""
    settings = EmulatorSettings(max_bytes=STORE_BYTES)
    store = Store(None, max_bytes=STORE_BYTES)
    feed = _Feed(store, traffic, sampled)
    releases = {RELEASE: policy()}
    clock = [0.0]
    budget = RequestBudget(BudgetSettings(), clock=lambda: clock[0])
    counting = Counting()
    polls = polls_ok = reported = 0
    try:
        with (
            served(store, settings) as base_url,
            LangfuseSource(
                base_url,
                settings.public_key,
                settings.secret_key,
                budget=budget,
                settings=SourceSettings(sampled=True),
                transport=counting,
            ) as source,
        ):
            cursors = None
            now = T0 + POLL_EVERY
            end = T0 + WARMUP + 60.0 * minutes
            while now <= end:
                feed.until(now)
                clock[0] = now
                counting.measuring = now > T0 + WARMUP
                poll = source.poll(releases, cursors, now)
                if poll.ok:
                    cursors = poll.cursors
                if counting.measuring:
                    polls += 1
                    polls_ok += int(poll.ok)
                    reported += len(poll.traces)
                now += POLL_EVERY
    finally:
        store.close()
    per_minute = {key: value / minutes for key, value in counting.counts.items()}
    return Run(traffic, sampled, minutes, per_minute, reported, polls_ok, polls)


def markdown(runs: Sequence[Run], command: str) -> str:
    lines = [
        "# Sampled score reads: Langfuse requests a minute against traffic",
        "",
        f"`{command}`",
        "",
        f"One release, {runs[0].sampled} sampled traces a minute, 2 score names arriving "
        f"10-90 s after their trace, a poll every {POLL_EVERY:g} s, first read at 60 s, "
        f"scoreTimeout {SCORE_TIMEOUT:g} s; {runs[0].minutes} minutes measured after "
        f"{WARMUP:g} s of warm-up.",
        "",
        "| traces a minute | sample rate | observation requests/min | score requests/min "
        "| first reads/min | final reads/min | polls complete |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in runs:
        figures = result.per_minute
        lines.append(
            f"| {result.traffic:,} | {result.sampled / result.traffic:.4g} "
            f"| {figures.get('observations', 0):.2f} | {figures.get('scores', 0):.2f} "
            f"| {figures.get('first_reads', 0):.1f} | {figures.get('final_reads', 0):.1f} "
            f"| {result.polls_ok}/{result.polls} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--traffic", default="1000,10000,100000")
    parser.add_argument("--sampled", type=int, default=100)
    parser.add_argument("--minutes", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args(argv)
    traffic = [int(part) for part in args.traffic.split(",")]
    runs = [run(n, args.sampled, args.minutes) for n in traffic]
    command = "python -m bench.sampled_reads " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    text = markdown(runs, command.strip())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sampled_reads.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
