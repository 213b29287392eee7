"""Request spans: coalmine's exporter (``proxy/spans.py``) against the OpenTelemetry SDK's
``BatchSpanProcessor`` + ``OTLPSpanExporter`` (http/protobuf), measured in the same run.

    python -m bench.span_export [--spans 100000] [--rate 2000] [--paced-spans 20000]
        [--slow-ms 500] [--timeout 10] [--out bench/out]

Both reporters take the proxy's ``RequestOutcome`` on an asyncio hot path and post
OTLP to a loopback collector (``bench/otlp_collector.py``, a process of its own that
keeps what arrives and decodes it afterwards); ``bench/sdk_spans.py`` is the SDK-based
reporter, configured like coalmine's defaults (queue of 10,000, batches of 512, a flush
a second, 10 s per export, no compression). Each run is a process of its own
(``bench/span_recording.py``), with ``none`` (a reporter that keeps nothing) as the
reference for what the hot path's own loop costs.

1. **Burst, healthy collector.** ``--spans`` outcomes recorded as fast as the loop
   can, the queue raised to hold them all (so the run measures the work per span, not
   the drop policy), until every span is accounted for: CPU per span in ``record`` (the
   hot path), on the event loop's thread and in all threads; spans exported a second;
   peak RSS; requests and bytes on the wire. Both reporters must deliver exactly the
   spans coalmine's own encoder makes of the outcomes (same ids, name, kind, times,
   attributes and status): the benchmark stops if one does not.
2. **Memory.** The same burst with ``tracemalloc`` on (peak traced memory), and a
   burst of ``--paced-spans`` to a collector that is down, where the queue fills to its
   bound of 10,000.
3. **Paced, healthy / slow / down.** ``--rate`` spans a second on a fixed timetable
   until ``--paced-spans``: how late the hot path starts each millisecond's work, the
   latency of ``record``, spans delivered, dropped and failed as each reporter counts
   them against what was lost, and how long closing takes. Slow: each export answered
   after ``--slow-ms``; down: a port nothing listens on.

Results: Markdown (stdout and ``<out>/span_export.md``, with the command and the
verdict) and ``<out>/span_export.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.machine import LoadMeter, cpu_seconds, describe, free_port
from bench.otlp_collector import canonical, digest
from bench.span_recording import RunResult, RunSpec, outcome_at
from proxy.spans import span_of

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
RUN_TIMEOUT_S = 900.0
START_TIMEOUT_S = 30.0
REPORTERS = ("coalmine", "sdk")
QUEUE = 10_000
"""The queue bound of both reporters (coalmine's default)."""


# --- the collectors ---------------------------------------------------------------------


@dataclass
class Arrived:
    """What the collector got during one run."""

    requests: int
    connections: int
    wire_bytes: int
    body_bytes: int
    spans: int
    distinct_spans: int
    """Spans with distinct ids: ``spans`` less those that arrived more than once."""
    resources: list[dict[str, Any]]
    scopes: list[str]


class Collectors:
    """A healthy and a slow collector, each a process; ``down`` is a port with nothing."""

    def __init__(self, stack: ExitStack, tmp: Path, slow_ms: float) -> None:
        self.urls: dict[str, str] = {}
        self.pids: list[int] = []
        for condition, delay in (("healthy", 0.0), ("slow", slow_ms)):
            port = free_port()
            stack.enter_context(self._launched(port, delay, tmp / f"collector-{condition}.log"))
            self.urls[condition] = f"http://{HOST}:{port}"
        self.urls["down"] = f"http://{HOST}:{free_port()}"
        self.http = stack.enter_context(httpx.Client(timeout=120))

    @contextmanager
    def _launched(self, port: int, delay_ms: float, log: Path) -> Iterator[None]:
        args = [sys.executable, "-m", "bench.otlp_collector", "--port", str(port)]
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [*args, "--delay-ms", str(delay_ms)], stdout=sink, stderr=sink, cwd=ROOT
            )
        self.pids.append(process.pid)
        try:
            _wait_for(f"http://{HOST}:{port}/health", process, log)
            yield
        finally:
            process.terminate()
            process.wait(timeout=10)

    def cpu_s(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def reset(self, condition: str) -> None:
        if condition != "down":
            self.http.post(f"{self.urls[condition]}/reset").raise_for_status()

    def stats(self, condition: str, digests: bool = False) -> dict[str, Any]:
        if condition == "down":
            return {}
        url = f"{self.urls[condition]}/stats?digests={int(digests)}"
        response = self.http.get(url)
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    def span(self, condition: str, span_id: str) -> dict[str, Any] | None:
        response = self.http.get(f"{self.urls[condition]}/span", params={"id": span_id})
        found: dict[str, Any] | None = response.json()
        return found


def _wait_for(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"collector did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)


def arrived_of(stats: dict[str, Any]) -> Arrived:
    fields = ("requests", "connections", "wire_bytes", "body_bytes", "spans", "distinct_spans")
    values = {name: int(stats.get(name, 0)) for name in fields}
    return Arrived(**values, resources=stats.get("resources", []), scopes=stats.get("scopes", []))


# --- the runs ---------------------------------------------------------------------------


@dataclass
class Measured:
    """One run: what it was, what the process measured, what the collector got."""

    section: str
    result: RunResult
    arrived: Arrived


def run_process(spec: RunSpec, tmp: Path) -> RunResult:
    """Runs ``spec`` in a process of its own and reads its result."""
    name = f"{spec.reporter}-{spec.mode}-{spec.collector}{'-traced' if spec.tracemalloc else ''}"
    out, log = tmp / f"{name}.json", tmp / f"{name}.log"
    args = [sys.executable, "-m", "bench.span_recording", "--spec", json.dumps(asdict(spec))]
    with log.open("wb") as sink:
        done = subprocess.run(
            [*args, "--out", str(out)],
            stdout=sink,
            stderr=sink,
            cwd=ROOT,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
    code = done.returncode
    if code != 0 or not out.exists():
        raise RuntimeError(f"run {name} failed:\n{log.read_text(errors='replace')[-3000:]}")
    return RunResult.from_json(json.loads(out.read_text()))


def expected_digests(spans: int) -> dict[str, str]:
    """What coalmine's own encoder makes of the outcomes, span by span."""
    return {outcome_at(i).span_id: digest(span_of(outcome_at(i))) for i in range(spans)}


def check_delivery(
    collectors: Collectors, reporter: str, delivered: dict[str, str], expected: dict[str, str]
) -> None:
    """Stops the benchmark unless the collector got exactly the expected spans."""
    if delivered == expected:
        return
    missing = len(expected.keys() - delivered.keys())
    extra = len(delivered.keys() - expected.keys())
    shared = expected.keys() & delivered.keys()
    differing = sorted(key for key in shared if delivered[key] != expected[key])
    detail = ""
    if differing:
        index = next(i for i in range(len(expected)) if outcome_at(i).span_id == differing[0])
        wanted = canonical(span_of(outcome_at(index)))
        got = collectors.span("healthy", differing[0])
        detail = f"\nfirst differing span, expected:\n{wanted}\ndelivered:\n{got}"
    raise AssertionError(
        f"{reporter} delivered {len(delivered)} spans, expected {len(expected)}: "
        f"{missing} missing, {extra} unexpected, {len(differing)} different{detail}"
    )


@dataclass(frozen=True)
class Sizes:
    spans: int
    rate: int
    paced_spans: int
    timeout: float


def burst_runs(collectors: Collectors, sizes: Sizes, tmp: Path) -> list[Measured]:
    """Section 1: every reporter, a burst to the healthy collector; delivery checked."""
    expected = expected_digests(sizes.spans)
    measured = []
    for reporter in ("none", *REPORTERS):
        spec = RunSpec(
            reporter=reporter,
            mode="burst",
            collector="healthy",
            url=collectors.urls["healthy"],
            spans=sizes.spans,
            max_queue=max(sizes.spans, QUEUE),
            timeout=sizes.timeout,
        )
        collectors.reset("healthy")
        result = run_process(spec, tmp)
        stats = collectors.stats("healthy", digests=reporter != "none")
        if reporter != "none":
            check_delivery(collectors, reporter, stats["digests"], expected)
        measured.append(Measured("burst", result, arrived_of(stats)))
    return measured


def memory_runs(collectors: Collectors, sizes: Sizes, tmp: Path) -> list[Measured]:
    """Section 2: traced memory of a healthy burst, and of a burst to a collector down."""
    measured = []
    for condition, spans, queue in (
        ("healthy", sizes.spans, max(sizes.spans, QUEUE)),
        ("down", sizes.paced_spans, QUEUE),
    ):
        for reporter in REPORTERS:
            spec = RunSpec(
                reporter=reporter,
                mode="burst",
                collector=condition,
                url=collectors.urls[condition],
                spans=spans,
                max_queue=queue,
                timeout=sizes.timeout,
                tracemalloc=True,
            )
            collectors.reset(condition)
            result = run_process(spec, tmp)
            measured.append(Measured("memory", result, arrived_of(collectors.stats(condition))))
    return measured


def paced_runs(collectors: Collectors, sizes: Sizes, tmp: Path) -> list[Measured]:
    """Section 3: the reference, then both reporters, healthy, slow and down."""
    plan = [("none", "healthy")] + [
        (reporter, condition) for condition in ("healthy", "slow", "down") for reporter in REPORTERS
    ]
    measured = []
    for reporter, condition in plan:
        spec = RunSpec(
            reporter=reporter,
            mode="paced",
            collector=condition,
            url=collectors.urls[condition],
            spans=sizes.paced_spans,
            rate=sizes.rate,
            timeout=sizes.timeout,
        )
        collectors.reset(condition)
        result = run_process(spec, tmp)
        measured.append(Measured("paced", result, arrived_of(collectors.stats(condition))))
    return measured


# --- the report -------------------------------------------------------------------------


def _us(seconds: float, count: int) -> float:
    return 1e6 * seconds / max(count, 1)


def _ratio(ours: float, theirs: float) -> str:
    return "–" if not theirs else f"{ours / theirs:.2f}"


def _by(measured: Sequence[Measured], section: str, **match: str) -> dict[str, Measured]:
    """The runs of a section whose spec matches, by reporter."""
    return {
        m.result.spec.reporter: m
        for m in measured
        if m.section == section
        and all(getattr(m.result.spec, key) == value for key, value in match.items())
    }


def burst_figures(run: Measured) -> dict[str, float]:
    r = run.result
    n = r.offered
    return {
        "hot_us": _us(r.hot_cpu_s, n),
        "record_p50_us": r.record_ns.get("p50", 0) / 1e3,
        "record_p99_us": r.record_ns.get("p99", 0) / 1e3,
        "record_max_ms": r.record_ns.get("max", 0) / 1e6,
        "loop_us": _us(r.loop_cpu_s, n),
        "total_us": _us(r.process_cpu_s, n),
        "spans_per_s": n / r.settled_s if r.settled_s else 0.0,
        "rss_growth_mb": r.peak_rss_mb - r.rss_before_mb,
        "wire_per_span": run.arrived.wire_bytes / max(run.arrived.spans, 1),
    }


BURST_COLUMNS = (
    ("`record` CPU µs/span (hot path)", "hot_us", "{:.2f}"),
    ("`record` p50 µs", "record_p50_us", "{:.1f}"),
    ("`record` p99 µs", "record_p99_us", "{:.1f}"),
    ("`record` max ms", "record_max_ms", "{:.1f}"),
    ("event-loop thread CPU µs/span", "loop_us", "{:.1f}"),
    ("all threads CPU µs/span", "total_us", "{:.1f}"),
    ("spans/s exported", "spans_per_s", "{:,.0f}"),
    ("peak RSS growth MB", "rss_growth_mb", "{:.1f}"),
    ("bytes on the wire / span", "wire_per_span", "{:.0f}"),
)


def burst_table(measured: Sequence[Measured]) -> list[str]:
    runs = _by(measured, "burst")
    figures = {name: burst_figures(run) for name, run in runs.items()}
    lines = [
        "| measurement | none (reference) | coalmine | SDK | coalmine / SDK |",
        "|---|---|---|---|---|",
    ]
    for label, key, form in BURST_COLUMNS:
        cells = [form.format(figures[name][key]) if name in figures else "" for name in runs]
        ratio = _ratio(figures["coalmine"][key], figures["sdk"][key])
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")
    return lines


def memory_table(measured: Sequence[Measured]) -> list[str]:
    lines = [
        "| run | spans | coalmine MB | SDK MB | coalmine / SDK |",
        "|---|---|---|---|---|",
    ]
    for condition, label in (
        ("healthy", "burst, healthy collector, queue holds every span"),
        ("down", f"burst, collector down, queue bound {QUEUE:,} (full)"),
    ):
        runs = _by(measured, "memory", collector=condition)
        peaks = {name: run.result.traced_peak_mb or 0.0 for name, run in runs.items()}
        lines.append(
            f"| {label} | {runs['coalmine'].result.offered:,} | {peaks['coalmine']:.1f} | "
            f"{peaks['sdk']:.1f} | {_ratio(peaks['coalmine'], peaks['sdk'])} |"
        )
    return lines


def paced_row(run: Measured) -> str:
    r = run.result
    counted = r.counts.get("dropped_full", 0) + r.counts.get("failed", 0)
    lost = r.offered - run.arrived.distinct_spans if r.spec.reporter != "none" else 0
    twice = run.arrived.spans - run.arrived.distinct_spans
    delivered = f"{run.arrived.distinct_spans:,}" + (f" (+{twice:,} twice)" if twice else "")
    late = r.late_ms
    return (
        f"| {r.spec.collector} | {r.spec.reporter} | {late.get('p50', 0):.2f} | "
        f"{late.get('p99', 0):.1f} | {late.get('max', 0):.1f} | "
        f"{r.late_steady_ms.get('p99', 0):.1f} | "
        f"{r.record_ns.get('p99', 0) / 1e3:.1f} | {r.record_ns.get('max', 0) / 1e6:.2f} | "
        f"{_us(r.loop_cpu_s, r.offered):.1f} | {_us(r.process_cpu_s, r.offered):.1f} | "
        f"{delivered} | {run.arrived.requests:,} | "
        f"{r.counts.get('dropped_full', 0):,} | {r.counts.get('failed', 0):,} | "
        f"{lost:,} | {counted:,} | {r.close_s:.1f} | {r.peak_rss_mb - r.rss_before_mb:.1f} |"
    )


def paced_table(measured: Sequence[Measured]) -> list[str]:
    lines = [
        "| collector | reporter | hot path late p50 ms | p99 ms | max ms | "
        "p99 ms, second half | `record` p99 µs | "
        "`record` max ms | loop CPU µs/span | all threads CPU µs/span | delivered | requests | "
        "dropped, queue full | failed | lost (offered − delivered) | counted by the reporter | "
        "close s | peak RSS growth MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [paced_row(m) for m in measured if m.section == "paced"]
    return lines


def wire_line(measured: Sequence[Measured]) -> str:
    runs = _by(measured, "burst")
    parts = []
    for name in REPORTERS:
        arrived = runs[name].arrived
        parts.append(
            f"{name}: {arrived.requests} requests on {arrived.connections} connection(s), "
            f"{arrived.body_bytes:,} body bytes, {arrived.wire_bytes:,} in all, resource "
            f"{json.dumps(arrived.resources)}, scope {', '.join(arrived.scopes)}"
        )
    return "; ".join(parts) + "."


def _uncounted(run: Measured) -> int:
    """Spans lost that the reporter counted neither as dropped nor as failed."""
    counts = run.result.counts
    lost = run.result.offered - run.arrived.distinct_spans
    return lost - counts.get("dropped_full", 0) - counts.get("failed", 0)


WHY_MISCOUNTED = {
    "coalmine": "coalmine counts as failed a batch whose post closing cancelled, though the "
    "collector may have read it already",
    "sdk": "the SDK counts queue-full drops only with its internal metrics on, and not what "
    "its shutdown leaves queued",
}


def _counted_line(measured: Sequence[Measured]) -> str:
    """Where a reporter's counts of lost spans disagree with what the collector got, and
    which spans arrived more than once."""
    disagree, twice = [], []
    for run in measured:
        r = run.result
        if run.section != "paced" or r.spec.reporter == "none":
            continue
        where = f"{r.spec.reporter} {r.spec.collector}"
        lost = r.offered - run.arrived.distinct_spans
        counted = r.counts.get("dropped_full", 0) + r.counts.get("failed", 0)
        if counted != lost:
            disagree.append(f"{where}: {counted:,} counted, {lost:,} lost")
        if run.arrived.spans > run.arrived.distinct_spans:
            twice.append(f"{where}: {run.arrived.spans - run.arrived.distinct_spans:,}")
    why = [
        text for name, text in WHY_MISCOUNTED.items() if any(d.startswith(name) for d in disagree)
    ]
    line = (
        "Counts of lost spans that disagree with the collector: "
        + "; ".join(disagree)
        + f" ({'; '.join(why)})."
        if disagree
        else "Every reporter counted exactly the spans it lost, in every paced run."
    )
    if twice:
        line += " Spans that reached the collector more than once: " + "; ".join(twice) + "."
    return line


def _decision(measured: Sequence[Measured]) -> tuple[bool, str]:
    burst = {name: burst_figures(run) for name, run in _by(measured, "burst").items()}
    ours, sdk = burst["coalmine"], burst["sdk"]
    down = _by(measured, "paced", collector="down")
    uncounted = {name: _uncounted(down[name]) for name in REPORTERS}
    keep = (
        ours["hot_us"] < sdk["hot_us"]
        and ours["total_us"] < sdk["total_us"]
        and uncounted["coalmine"] == 0
    )
    decision = "Keep coalmine's exporter." if keep else "Replace it with the SDK."
    return keep, (
        f"**{decision}** The rule: `record` runs inside every request on the proxy's event "
        "loop, and under the GIL every thread's Python work is time the loop cannot run, so "
        "the exporter that costs less CPU a span on the hot path and in all stays, provided "
        "it counts every span it loses. Measured: `record` "
        f"{ours['hot_us']:.2f} µs of CPU a span against the SDK's {sdk['hot_us']:.2f} µs "
        f"({_ratio(ours['hot_us'], sdk['hot_us'])}x; the SDK validates every attribute and "
        "builds a span object on the hot path); all threads "
        f"{ours['total_us']:.1f} against {sdk['total_us']:.1f} µs a span "
        f"({_ratio(ours['total_us'], sdk['total_us'])}x), {ours['spans_per_s']:,.0f} spans/s "
        f"out against {sdk['spans_per_s']:,.0f}, the same spans and attributes on the wire. "
        "Spans lost with the collector down and counted by neither counter: coalmine "
        f"{uncounted['coalmine']:,}, SDK {uncounted['sdk']:,}. " + _counted_line(measured)
    )


def _lateness(measured: Sequence[Measured], client_ms: float) -> str:
    paced = [m for m in measured if m.section == "paced"]
    steady = {
        name: " / ".join(
            f"{m.result.late_steady_ms.get('p99', 0):.1f}"
            for m in paced
            if m.result.spec.reporter == name
        )
        for name in ("none", *REPORTERS)
    }
    record_max = {
        name: max(
            m.result.record_ns.get("max", 0) / 1e6 for m in paced if m.result.spec.reporter == name
        )
        for name in REPORTERS
    }
    ours = [m.result for m in paced if m.result.spec.reporter == "coalmine"]
    worst = max(r.late_ms.get("max", 0) for r in ours)
    steady_worst = max(r.late_steady_ms.get("max", 0) for r in ours)
    return (
        "Does recording hold up the hot path? The longest `record` call in the paced runs: "
        f"coalmine {record_max['coalmine']:.2f} ms, SDK {record_max['sdk']:.2f} ms, time the "
        "request that recorded the span waits. How late the loop ran the "
        "hot path, p99 over the second half of each paced run (healthy / slow / down): "
        f"coalmine {steady['coalmine']} ms, SDK {steady['sdk']} ms, the reference "
        f"{steady['none']} ms. Coalmine's worst ({worst:.0f} ms) falls in the first half "
        f"of its runs (the second halves' worst: {steady_worst:.0f} ms). The first "
        f"`httpx.AsyncClient` of a process takes {client_ms:.0f} ms to create here, httpx "
        "already imported (mostly its TLS context): coalmine's exporter makes its client "
        "in `start`, before the proxy takes requests, so no request waits on it."
    )


def _batching(measured: Sequence[Measured]) -> str | None:
    paced = _by(measured, "paced", collector="healthy")
    requests = {name: paced[name].arrived.requests for name in REPORTERS}
    if requests["coalmine"] <= 2 * requests["sdk"]:
        return None
    loop = {name: _us(paced[name].result.loop_cpu_s, paced[name].result.offered) for name in paced}
    return (
        "One defect to fix in `proxy/spans.py`: once a full batch wakes it, its sender "
        "drains the queue to empty, so at a steady rate it posts whatever trickled in "
        f"during the last post: {requests['coalmine']:,} requests for "
        f"{paced['coalmine'].arrived.spans:,} spans in the paced healthy run, against the "
        f"SDK's {requests['sdk']:,}. Each post runs on the event loop, which then spends "
        f"{loop['coalmine']:.0f} µs a span against the SDK's {loop['sdk']:.0f} (the "
        f"reference loop alone: {loop['none']:.0f}). Sending only full batches until the "
        "flush interval is up, as the SDK's processor does, would post about as many "
        "requests as the SDK."
    )


def verdict(measured: Sequence[Measured], client_ms: float) -> list[str]:
    """Keep or replace, from the figures; the rule is stated in the text."""
    _, decision = _decision(measured)
    lines = [decision, "", _lateness(measured, client_ms)]
    batching = _batching(measured)
    if batching is not None:
        lines += ["", batching]
    return lines


FIRST_CLIENT = """
import time, httpx
started = time.perf_counter()
httpx.AsyncClient()
print(1000 * (time.perf_counter() - started))
"""


def http_client_ms() -> float:
    """Milliseconds the first ``httpx.AsyncClient`` of a process takes to create, httpx
    already imported (as in the proxy): the best of three processes."""
    times = []
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", FIRST_CLIENT], capture_output=True, text=True, check=True
        )
        times.append(float(done.stdout))
    return min(times)


def markdown(results: dict[str, Any], measured: Sequence[Measured]) -> str:
    sizes = results["sizes"]
    lines = [
        "# Request spans: coalmine's exporter against the OpenTelemetry SDK",
        "",
        f"Command: `{results['command']}` (wall time {results['wall_s']:.0f} s)",
        "",
        f"{results['machine']}; other work took {100 * results['other_share']:.0f}% of the "
        "machine's CPU time during the run. Both reporters take the proxy's "
        "`RequestOutcome` on an asyncio hot path and post OTLP/HTTP protobuf (uncompressed, "
        "batches of 512, a flush a second, queue of 10,000 unless said) to a loopback "
        "collector in a process of its own; each run is a process of its own. `none` is a "
        "reporter that keeps nothing: what the hot path's own loop costs. The SDK reporter "
        "is `bench/sdk_spans.py` (`BatchSpanProcessor` + `OTLPSpanExporter`, internal "
        "metrics on so that it counts drops).",
        "",
        f"## Burst of {sizes['spans']:,} spans, healthy collector",
        "",
        "Recorded as fast as the loop can (chunks of 256, a yield between chunks), the "
        "queue raised to hold them all; spans/s from the first `record` to the last span "
        "accounted for. Both delivered exactly the spans coalmine's encoder makes of the "
        "outcomes (ids, name, kind, times, attributes, status), checked span by span.",
        "",
        *burst_table(measured),
        "",
        wire_line(measured),
        "",
        "## Memory (`tracemalloc` peak, from the first `record` to closed)",
        "",
        *memory_table(measured),
        "",
        "The healthy peak follows how far recording runs ahead of sending: coalmine "
        "queues outcomes faster than it posts them, so its queue grows to most of the "
        "burst; the SDK records slowly enough for its thread to keep up. With the queue "
        "full, the peak is what the bound holds: an outcome (coalmine) or a finished SDK "
        "span, plus each reporter's HTTP client.",
        "",
        f"## Paced: {sizes['rate']:,} spans/s until {sizes['paced_spans']:,}",
        "",
        "A millisecond's spans at a time on a fixed timetable; 'late' is how long after "
        "its due time the hot path got to run (the reference row shows what the machine "
        "and the loop's timer add). Requests: exports that reached the collector. Slow: "
        f"every export answered after {sizes['slow_ms']:g} ms; down: nothing listens. "
        f"Export timeout {sizes['timeout']:g} s. Closing: coalmine's `aclose` gives up "
        "after the timeout; the SDK's `shutdown` waits up to 30 s for its thread.",
        "",
        *paced_table(measured),
        "",
        "## Verdict",
        "",
        *verdict(measured, results["http_client_ms"]),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=2_000)
    parser.add_argument("--paced-spans", type=int, default=20_000)
    parser.add_argument("--slow-ms", type=float, default=500.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    args = parser.parse_args(argv)
    command = "python -m bench.span_export " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    sizes = Sizes(args.spans, args.rate, args.paced_spans, args.timeout)
    meter = LoadMeter()
    with tempfile.TemporaryDirectory() as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        collectors = Collectors(stack, tmp, args.slow_ms)
        measured = [
            *burst_runs(collectors, sizes, tmp),
            *memory_runs(collectors, sizes, tmp),
            *paced_runs(collectors, sizes, tmp),
        ]
        load = meter.stop(collectors.cpu_s())
    results: dict[str, Any] = {
        "command": command.strip(),
        "machine": describe(),
        "wall_s": load.wall_s,
        "other_share": load.other_share,
        "sizes": {**asdict(sizes), "slow_ms": args.slow_ms},
        "http_client_ms": http_client_ms(),
        "runs": [asdict(m) for m in measured],
    }
    text = markdown(results, measured)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "span_export.md").write_text(text, encoding="utf-8")
    (args.out / "span_export.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
