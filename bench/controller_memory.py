"""Controller memory and state file over simulated hours, at a high trace rate.

    python -m bench.controller_memory [--hours 24] [--rate 10000] [--out bench/out]
        [--from-proxies [--sample-budget 24] [--no-tracemalloc]]

The simulated world of ``bench/controller_world.py`` (``--rate`` traces a minute for one
release, split by the routing table the controller writes, healthy canary, one score per
trace 5 s after it) feeds a controller (``controller.loop.Controller``, a SQLite state
file) on a fake clock that ticks every simulated minute; the release is held in canary
(one step, ``minDuration: 25h``, the policy of ``bench/controller_speed.py``'s memory
part: error rate, p95 latency and a score, ``scoreTimeout`` at its default of 30
minutes). This is the memory part of ``bench/controller_speed.py`` (its
``memory_benchmark``) run on its own, at any rate.

Every simulated hour: ``tracemalloc``'s traced memory, RSS, the per-trace records the
release's evidence holds, the state file's size (with its WAL) and the mean CPU time of
the hour's ticks (``time.process_time``; ``tracemalloc`` on, which slows allocation
down: the figures are upper bounds). Goals: traced memory and state file at the last
hour within 5% of hour 2; CPU per tick at most 1 s.

The result is Markdown (stdout and ``<out>/controller_memory.md``, with the command) and
``<out>/controller_memory.json``.

With ``--from-proxies`` the controller judges on the proxies' counts
(``ProxyTraffic(ProxyCounts.local(state file), sample_budget=--sample-budget)``, 24
Langfuse requests a minute by default) and the world is ``bench/controller_world.py``'s
``ProxyWorld``: two proxies count every request into the state file's ``proxy_minutes``
once a simulated minute, and the sample source holds only the traces in the score sample
(``coalmine.shared.sampling.is_sampled`` at the rate in force in the routing table the
controller sizes), with their scores. Every simulated hour it also records the requests
counted, those the evidence took in (the error-rate metric's observations), the sampled
traces a minute and the sample rate in force; CPU per tick is given as median and
maximum over all ticks. The result goes to ``<out>/controller_memory_proxies.md`` and
``<out>/controller_memory_proxies.json``; a further goal: state file under 50 MB.
``--no-tracemalloc`` measures CPU per tick without ``tracemalloc``'s cost (no traced
memory) into ``<out>/controller_memory_proxies_untraced.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.controller_speed import (
    MEMORY_POLICY,
    MEMORY_RELEASE,
    MEMORY_START,
    MINUTE,
    SCORE_NAME,
    Growth,
    MemoryResults,
    _file_mb,
    _growth,
    _snapshot,
    memory_benchmark,
    rss_mb,
)
from bench.controller_world import ProxyWorld
from coalmine.shared.routing_tables.store import SqliteRoutingStore
from controller.labels import StaticPromptLabels
from controller.loop import Controller, ProxyTraffic
from controller.release_store import ControllerState
from controller.source.aggregates import ProxyCounts
from policies.loader import load_policy_text

GROWTH_GOAL = 0.05
CPU_GOAL_MS = 1000.0
STATE_GOAL_MB = 50.0
SAMPLE_BUDGET = 24.0
"""Langfuse requests a minute for score reads (the controller's default budget)."""


def markdown(results: MemoryResults, *, hours: int, rate: int, command: str) -> list[str]:
    last = results.hours[-1]
    second = next((each for each in results.hours if each.hour == 2), None)
    lines = [
        f"`{command}`",
        "",
        f"One release at {rate:,} traces a minute for {hours} simulated hours, a tick a "
        f"simulated minute; {last.traces:,} traces taken in; wall time "
        f"{results.wall_s:.0f} s; phase at the end: {results.phase}.",
        "",
        "| hour | traced MB | RSS MB | traces taken in | evidence records | state file MB "
        "| CPU per tick ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for each in results.hours:
        records = "–" if each.evidence_traces is None else f"{each.evidence_traces:,}"
        cpu = "–" if each.tick_cpu_ms is None else f"{each.tick_cpu_ms:.0f}"
        lines.append(
            f"| {each.hour} | {each.traced_mb:.1f} | {each.rss_mb:.0f} | {each.traces:,} | "
            f"{records} | {each.state_mb:.1f} | {cpu} |"
        )
    if second is not None and last.hour > 2:
        traced = last.traced_mb / second.traced_mb - 1.0
        state = last.state_mb / second.state_mb - 1.0 if second.state_mb else float("nan")
        worst_cpu = max(each.tick_cpu_ms or 0.0 for each in results.hours)
        lines += [
            "",
            f"Hour {last.hour} against hour 2: traced memory {traced:+.1%}, state file "
            f"{state:+.1%} (goal: within {GROWTH_GOAL:.0%}); mean CPU per tick at most "
            f"{worst_cpu:.0f} ms in any hour (goal: {CPU_GOAL_MS:.0f} ms).",
        ]
    if results.top:
        lines += ["", "Largest growths from hour 2 to the end, by line:", ""]
        lines += [
            f"- `{each.where}`: {each.size_kb:+.0f} KB, {each.count:+,} blocks"
            for each in results.top[:8]
        ]
    return lines


@dataclass
class ProxyHour:
    hour: int
    traced_mb: float
    rss_mb: float
    requests: int
    """Requests the proxies have counted so far."""
    evidence_requests: int
    """Counted requests the release's evidence has taken in (error-rate observations)."""
    sampled: int
    """Sampled traces handed to the controller so far."""
    sampled_per_minute: float
    """Sampled traces a minute in this hour."""
    sample_rate: float
    """The sample rate in force in the hour's last minute."""
    evidence_traces: int | None
    """Per-trace records the release's evidence holds."""
    tick_cpu_ms: float | None
    """Mean CPU time of this hour's ticks (with ``tracemalloc`` on)."""
    tick_cpu_max_ms: float | None
    state_mb: float
    """Size of the state file (with its WAL), the proxies' counts included."""


@dataclass
class ProxyResults:
    hours: list[ProxyHour]
    tick_cpu_ms: list[float]
    """CPU time of every tick after the first, in order."""
    traced: bool
    """Whether ``tracemalloc`` was on (off: no traced memory, CPU without its cost)."""
    top: list[Growth]
    files: list[Growth]
    phase: str
    decisions: list[str]
    sample_budget: float
    score_sample: list[dict[str, float]]
    """The routing table's sample entries at the end."""
    wall_s: float


def _evidence_figures(controller: Controller, traces: int) -> tuple[int, int | None]:
    """(counted requests the evidence took in, per-trace records it holds)."""
    live = controller.live.get(MEMORY_RELEASE)
    if live is None:
        return 0, None
    evidence = live.evidence
    series = evidence.series["errors"].means
    requests = 0 if series is None else sum(series.totals)
    return requests, traces - evidence.forgotten_traces


def _load(path: Path) -> tracemalloc.Snapshot | None:
    return tracemalloc.Snapshot.load(str(path)) if path.exists() else None


def _hour(
    hour: int,
    world: ProxyWorld,
    controller: Controller,
    traces: int,
    cpu: list[float],
    sampled_before: int,
) -> ProxyHour:
    requests, kept = _evidence_figures(controller, traces)
    return ProxyHour(
        hour=hour,
        traced_mb=tracemalloc.get_traced_memory()[0] / 1e6,
        rss_mb=rss_mb(),
        requests=world.counted,
        evidence_requests=requests,
        sampled=world.sampled,
        sampled_per_minute=(world.sampled - sampled_before) / 60,
        sample_rate=world.last_rate,
        evidence_traces=kept,
        tick_cpu_ms=statistics.fmean(cpu),
        tick_cpu_max_ms=max(cpu),
        state_mb=_file_mb(world.path),
    )


def proxies_benchmark(
    tmp: Path,
    hours: int,
    rate: int,
    start: float,
    sample_budget: float = SAMPLE_BUDGET,
    *,
    traced: bool = True,
) -> ProxyResults:
    """``hours`` simulated hours of ``ProxyWorld`` at ``rate`` requests a minute, the
    controller judging on the proxies' counts, ticking once a simulated minute."""
    began = time.perf_counter()
    if traced:
        tracemalloc.start()
    path = tmp / "memory.db"
    state = ControllerState(path)
    routing = SqliteRoutingStore(path)
    counts = ProxyCounts.local(path)
    policy = load_policy_text(MEMORY_POLICY, f"{MEMORY_RELEASE}.yaml")
    policies = {MEMORY_RELEASE: policy}
    world = ProxyWorld(
        routing, MEMORY_RELEASE, start=start, rate=rate, score_name=SCORE_NAME, path=path
    )
    controller = Controller(
        state=state,
        routing=routing,
        source=world,
        labels=StaticPromptLabels({"support-answer": {"production": 3, "canary": 4}}),
        policies=lambda: policies,
        from_proxies=ProxyTraffic(counts, sample_budget=sample_budget),
    )
    controller.tick(start)
    samples: list[ProxyHour] = []
    baseline_file = tmp / "hour-2.tracemalloc"
    traces = 0
    every: list[float] = []
    hour_cpu: list[float] = []
    sampled_before = 0
    try:
        for minute in range(1, hours * 60 + 1):
            now = start + minute * MINUTE
            world.run_until(now)
            ticked = time.process_time()
            report = controller.tick(now)
            spent = 1000 * (time.process_time() - ticked)
            every.append(spent)
            hour_cpu.append(spent)
            traces += report.new_traces
            if minute % 60:
                continue
            hour = minute // 60
            samples.append(_hour(hour, world, controller, traces, hour_cpu, sampled_before))
            sampled_before = world.sampled
            hour_cpu = []
            if traced and hour == 2:
                # kept on disk: a snapshot in memory would count in the later samples
                _snapshot().dump(str(baseline_file))
        growth = _growth(_snapshot(), _load(baseline_file)) if traced else ([], [])
        release = state.release(MEMORY_RELEASE)
        phase = "none" if release is None else release.phase.value
        decisions = [record.decision for record in state.decisions(MEMORY_RELEASE)]
        table = routing.read(MEMORY_RELEASE)
        entries = [] if table is None else list(table.score_sample)
    finally:
        tracemalloc.stop()
        world.close()
        counts.close()
        state.close()
        routing.close()
    return ProxyResults(
        hours=samples,
        tick_cpu_ms=every,
        traced=traced,
        top=growth[0],
        files=growth[1],
        phase=phase,
        decisions=decisions,
        sample_budget=sample_budget,
        score_sample=[{"from": entry.from_, "rate": entry.rate} for entry in entries],
        wall_s=time.perf_counter() - began,
    )


def proxies_markdown(results: ProxyResults, *, hours: int, rate: int, command: str) -> list[str]:
    last = results.hours[-1]
    second = next((each for each in results.hours if each.hour == 2), None)
    entries = ", ".join(
        f"{entry['rate']:.4g} from minute {(entry['from'] - MEMORY_START) / MINUTE:.0f}"
        for entry in results.score_sample
    )
    lines = [
        "# Controller memory judged on the proxies' counts",
        "",
        f"`{command}`",
        "",
        f"One release at {rate:,} requests a minute for {hours} simulated hours, a tick a "
        "simulated minute, the controller judging on the proxies' counts (two proxies, "
        f"cells written once a minute) with a score-read budget of "
        f"{results.sample_budget:g} requests a minute; the sample source holds only the "
        f"sampled traces. {last.requests:,} requests counted, {last.sampled:,} sampled "
        f"traces handed over; the routing table's score sample at the end: "
        f"{entries or 'none (every request)'}; wall time {results.wall_s:.0f} s; phase at "
        f"the end: {results.phase}.",
        "",
        "| hour | traced MB | RSS MB | requests counted | in the evidence | sample rate "
        "| sampled traces a minute | evidence records | state file MB | CPU per tick ms "
        "(mean / max) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for each in results.hours:
        records = "–" if each.evidence_traces is None else f"{each.evidence_traces:,}"
        cpu = (
            "–"
            if each.tick_cpu_ms is None or each.tick_cpu_max_ms is None
            else f"{each.tick_cpu_ms:.0f} / {each.tick_cpu_max_ms:.0f}"
        )
        memory = f"{each.traced_mb:.1f}" if results.traced else "–"
        lines.append(
            f"| {each.hour} | {memory} | {each.rss_mb:.0f} | {each.requests:,} | "
            f"{each.evidence_requests:,} | {each.sample_rate:.4g} | "
            f"{each.sampled_per_minute:,.0f} | {records} | {each.state_mb:.2f} | {cpu} |"
        )
    ticks = results.tick_cpu_ms
    median = statistics.median(ticks) if ticks else float("nan")
    worst = max(ticks, default=float("nan"))
    lines += [
        "",
        f"CPU per tick (`time.process_time` around `tick()`, `tracemalloc` "
        f"{'on' if results.traced else 'off'}), over "
        f"{len(ticks):,} ticks: median {median:.0f} ms, max {worst:.0f} ms (goal: "
        f"{CPU_GOAL_MS:.0f} ms). State file at the end {last.state_mb:.2f} MB (goal: under "
        f"{STATE_GOAL_MB:.0f} MB).",
    ]
    if second is not None and last.hour > 2:
        traced = (
            f"traced memory {last.traced_mb / second.traced_mb - 1.0:+.1%}"
            if results.traced
            else "traced memory not measured (tracemalloc off)"
        )
        state = last.state_mb / second.state_mb - 1.0 if second.state_mb else float("nan")
        lines += [
            "",
            f"Hour {last.hour} against hour 2: {traced}, RSS "
            f"{last.rss_mb / second.rss_mb - 1.0:+.1%}, state file {state:+.1%} (goal: "
            f"traced memory and state file within {GROWTH_GOAL:.0%}).",
        ]
    if results.top:
        lines += ["", "Largest growths from hour 2 to the end, by line:", ""]
        lines += [
            f"- `{each.where}`: {each.size_kb:+.0f} KB, {each.count:+,} blocks"
            for each in results.top[:8]
        ]
    return lines


def _write(out: Path, stem: str, text: str, data: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--rate", type=int, default=10_000, help="traces a minute")
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument(
        "--from-proxies",
        action="store_true",
        help="judge on the proxies' counts, reading only the sampled traces",
    )
    parser.add_argument(
        "--sample-budget",
        type=float,
        default=SAMPLE_BUDGET,
        help="Langfuse requests a minute for score reads (with --from-proxies)",
    )
    parser.add_argument(
        "--no-tracemalloc",
        action="store_true",
        help="with --from-proxies: CPU per tick without tracemalloc's cost, no traced memory",
    )
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "bench.controller_memory", *sys.argv[1:]])
    began = time.perf_counter()
    if args.from_proxies:
        with tempfile.TemporaryDirectory(prefix="coalmine-memory-") as tmp:
            found = proxies_benchmark(
                Path(tmp),
                args.hours,
                args.rate,
                MEMORY_START,
                args.sample_budget,
                traced=not args.no_tracemalloc,
            )
        text = "\n".join(proxies_markdown(found, hours=args.hours, rate=args.rate, command=command))
        print(text)
        data = {"command": command, "rate": args.rate, "hours": args.hours}
        stem = "controller_memory_proxies" + ("_untraced" if args.no_tracemalloc else "")
        _write(args.out, stem, text + "\n", data | {"results": asdict(found)})
        return 0
    with tempfile.TemporaryDirectory(prefix="coalmine-memory-") as tmp:
        results = memory_benchmark(Path(tmp), args.hours, args.rate, MEMORY_START)
    lines = markdown(results, hours=args.hours, rate=args.rate, command=command)
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "controller_memory.md").write_text(text)
    data = {
        "command": command,
        "rate": args.rate,
        "hours": args.hours,
        "wall_s": time.perf_counter() - began,
        "results": asdict(results),
    }
    (args.out / "controller_memory.json").write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
