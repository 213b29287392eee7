"""Proxy capacity: what one core of ``coalmine proxy`` carries, next to nginx and to no
proxy at all (``direct``), on the same loopback upstream.

    python -m bench.proxy_capacity [--seconds 20] [--streams 200] [--out bench/out]

Paths, as in ``bench/proxy_speed.py`` (whose processes and HTTP client this reuses):
``direct`` (client -> ``bench/proxy_upstream.py``), ``nginx`` (Debian's, one worker,
``split_clients`` on ``x-user-id``, keep-alive upstream connections, no buffering) and
``coalmine`` (``coalmine proxy --no-spans``, a policy with both arms on the upstream,
pinned at 50%). Every proxy process (and its threads and children) is pinned to CPU 1;
the load generators and the upstream to CPU 0, so that "one core" is the proxy's own.
A fresh proxy serves each figure.

1. **Max throughput on one core**: ``wrk -t1 -c32 -d10s --latency`` on ``GET /small``
   (user ids cycling over 1000); the proxy's CPU time per request and its share of its
   core (near 100%: the proxy was the limit). A second table runs the same with nothing
   pinned and ``coalmine proxy --workers 2`` next to one worker.
2. **Latency at 500 requests/s in bursts of 10**: every 20 ms, 10 ``GET /small`` sent at
   once over keep-alive connections (open loop, this process's generator on a
   ``select()`` loop, raw sockets); latency from the burst's due time to the end of the
   answer; the proxy's CPU time per request.
3. **LLM-shaped load**: ``--streams`` SSE streams (``/sse?events=100&gap_ms=20``: 100
   events 20 ms apart, then ``[DONE]``), started evenly over the first second, each on a
   connection of its own, all open at once for most of the run: time to the first event,
   the gap between consecutive events (20 ms when nothing stalls), stream duration, the
   proxy's CPU time per event and its peak RSS.

``--baseline DIR`` adds a ``coalmine-baseline`` row to the first two figures: the
proxy of another coalmine source tree (``git worktree add DIR REV``), run by this
Python with DIR first on its import path, so that a change is measured against the
code before it in the same run.

Results: Markdown (stdout and ``<out>/proxy_capacity.md``, with the command, the load
average before and after each figure) and ``<out>/proxy_capacity.json``. Needs nginx
and wrk (``scripts/bench-deps.sh``); without nginx its rows are skipped with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.machine import cpu_seconds
from bench.proxy_speed import (
    HOST,
    POOL_LIMIT,
    USERS,
    WRK_SCRIPT,
    Launched,
    Load,
    Pool,
    Target,
    _free_port,
    _request,
    _timed_request,
    body,
    coalmine,
    coalmine_command,
    nginx,
    nginx_binary,
    percentile,
    process_tree,
    read_head,
    rss_mb,
    run_async,
    upstream,
)

PROXY_CPU = 1
LOAD_CPU = 0
WARMUP_S = 3.0
BURST = 10
BURST_RATE = 500
WRK_CONNECTIONS = 32
WRK_SECONDS = 10
SSE_EVENTS = 100
SSE_GAP_MS = 20
SSE_RAMP_S = 1.0
SSE_TIMEOUT_S = 30.0


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def pin(pid: int, cpu: int) -> None:
    """Pin every thread of ``pid`` and of its descendants to ``cpu``."""
    for member in process_tree(pid):
        for task in Path(f"/proc/{member}/task").glob("*"):
            try:
                os.sched_setaffinity(int(task.name), {cpu})
            except OSError:
                continue


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants (running ones)."""
    total = 0.0
    for member in process_tree(pid):
        try:
            total += cpu_seconds(member)
        except OSError:
            continue
    return total


_FROM_TREE = """
import sys
tree = sys.argv.pop(1)
sys.meta_path[:] = [finder for finder in sys.meta_path if "editable" not in repr(finder)]
sys.path.insert(0, tree)
from coalmine.cli.main import main
sys.argv[0] = "coalmine"
main()
"""
"""Runs ``coalmine`` from the source tree given first: the editable install's finder
would otherwise import this tree's packages."""


def baseline_command(tree: Path) -> list[str]:
    return [sys.executable, "-c", _FROM_TREE, str(tree), "proxy", "--no-spans", "--workers", "1"]


def _launch(
    name: str, workers: int, tmp: Path, arms: Sequence[int], baseline: Path | None = None
) -> tuple[int, Launched]:
    port = _free_port()
    if name == "nginx":
        return port, nginx(tmp, port, arms)
    if name == BASELINE:
        assert baseline is not None
        return port, coalmine(tmp, baseline_command(baseline), port, arms)
    base = coalmine_command()
    assert base is not None
    base = [part for part in base if part not in ("--workers", "1")] + ["--workers", str(workers)]
    return port, coalmine(tmp, base, port, arms)


@contextmanager
def serving(
    name: str,
    workers: int,
    tmp: Path,
    arms: Sequence[int],
    direct_pid: int,
    pinned: bool,
    baseline: Path | None = None,
) -> Iterator[Target]:
    """A fresh proxy (or the upstream itself for ``direct``), pinned to ``PROXY_CPU``."""
    if name == "direct":
        yield Target("direct", arms[0], direct_pid, 1)
        return
    port, launched = _launch(name, workers, tmp, arms, baseline)
    with launched as process:
        if pinned:
            pin(process.pid, PROXY_CPU)
        label = name if workers == 1 else f"{name} x{workers}"
        yield Target(label, port, process.pid, len(process_tree(process.pid)))


# --- 1. max throughput ------------------------------------------------------------------


@dataclass
class Throughput:
    path: str
    pinned: bool
    processes: int
    per_second: float
    requests: int
    bad: int
    p50: str
    p99: str
    proxy_cpu_s: float
    wall_s: float

    @property
    def cpu_us(self) -> float:
        return self.proxy_cpu_s / self.requests * 1e6 if self.requests else float("nan")

    @property
    def core_share(self) -> float:
        return self.proxy_cpu_s / self.wall_s if self.wall_s else 0.0


def _wrk_field(pattern: str, text: str, default: str = "") -> str:
    match = re.search(pattern, text)
    return match.group(1) if match else default


def wrk(target: Target, script: Path, pinned: bool, seconds: int) -> Throughput:
    url = f"http://{HOST}:{target.port}/small"
    args = ["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--latency"]
    args += ["-s", str(script), url]
    if pinned:
        args = ["taskset", "-c", str(LOAD_CPU), *args]
    cpu, wall = tree_cpu(target.pid), time.monotonic()
    run = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, check=True)
    cpu, wall = tree_cpu(target.pid) - cpu, time.monotonic() - wall
    out = run.stdout
    bad = int(_wrk_field(r"Non-2xx or 3xx responses: (\d+)", out, "0"))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if errors:
        bad += sum(int(value) for value in errors.groups())
    return Throughput(
        target.name,
        pinned,
        target.processes,
        float(_wrk_field(r"Requests/sec:\s+([\d.]+)", out, "0")),
        int(_wrk_field(r"(\d+) requests in", out, "0")),
        bad,
        _wrk_field(r"(?m)^\s+50%\s+(\S+)", out),
        _wrk_field(r"(?m)^\s+99%\s+(\S+)", out),
        cpu,
        wall,
    )


# --- 2. bursts --------------------------------------------------------------------------


@dataclass
class Bursts:
    load: Load
    proxy_cpu_s: float

    @property
    def cpu_us(self) -> float:
        done = len(self.load.latencies_ms)
        return self.proxy_cpu_s / done * 1e6 if done else float("nan")


async def _bursts(target: Target, seconds: float) -> Load:
    loop = asyncio.get_running_loop()
    load = Load(target.name, f"bursts of {BURST}", BURST_RATE, seconds)
    requests = [_request(target, "GET", "/small", user) for user in range(USERS)]
    pool = Pool(target.port, POOL_LIMIT)
    await pool.fill(2 * BURST)
    tasks: set[asyncio.Task[None]] = set()
    interval = BURST / BURST_RATE
    start = loop.time() + 0.01
    sent = 0
    try:
        for index in range(int(seconds / interval)):
            due = start + index * interval
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            load.timer_lag_ms.append((loop.time() - due) * 1000)
            for _ in range(BURST):
                task = asyncio.create_task(_timed_request(pool, requests[sent % USERS], due, load))
                sent += 1
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=20)
            load.errors += len(pending)
    finally:
        pool.close()
    return load


def bursts(target: Target, seconds: float) -> Bursts:
    run_async(_bursts(target, WARMUP_S))
    cpu = tree_cpu(target.pid)
    load = run_async(_bursts(target, seconds))
    return Bursts(load, tree_cpu(target.pid) - cpu)


# --- 3. SSE streams ---------------------------------------------------------------------


@dataclass
class Streams:
    path: str
    streams: int
    first_event_ms: list[float] = field(default_factory=list)
    gaps_ms: list[float] = field(default_factory=list)
    duration_ms: list[float] = field(default_factory=list)
    events: int = 0
    incomplete: int = 0
    proxy_cpu_s: float = 0.0
    wall_s: float = 0.0
    rss_before_mb: float = 0.0
    rss_peak_mb: float = 0.0
    load_cpu_s: float = 0.0

    @property
    def cpu_us_per_event(self) -> float:
        return self.proxy_cpu_s / self.events * 1e6 if self.events else float("nan")


async def _stream(target: Target, user: int, due: float, result: Streams) -> None:
    loop = asyncio.get_running_loop()
    if (wait := due - loop.time()) > 0:
        await asyncio.sleep(wait)
    path = f"/sse?events={SSE_EVENTS}&gap_ms={SSE_GAP_MS}"
    writer = None
    try:
        async with asyncio.timeout(SSE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(HOST, target.port)
            writer.write(_request(target, "GET", path, user))
            status, headers = await read_head(reader)
            arrivals: list[float] = []
            done = False
            async for data in body(reader, headers):
                now = loop.time()
                arrivals.extend([now] * data.count(b"data: {"))
                done = done or b"[DONE]" in data
        if status != 200 or not done or len(arrivals) != SSE_EVENTS:
            result.incomplete += 1
            return
    except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
        result.incomplete += 1
        return
    finally:
        if writer is not None:
            writer.close()
    result.events += len(arrivals)
    result.first_event_ms.append((arrivals[0] - due) * 1000)
    result.gaps_ms.extend((b - a) * 1000 for a, b in itertools.pairwise(arrivals))
    result.duration_ms.append((loop.time() - due) * 1000)


async def _streams(target: Target, count: int) -> Streams:
    loop = asyncio.get_running_loop()
    result = Streams(target.name, count)
    pids = process_tree(target.pid)
    start = loop.time() + 0.05
    tasks = [
        asyncio.create_task(_stream(target, user, start + SSE_RAMP_S * user / count, result))
        for user in range(count)
    ]
    result.rss_before_mb = result.rss_peak_mb = rss_mb(pids)
    while not all(task.done() for task in tasks):
        result.rss_peak_mb = max(result.rss_peak_mb, rss_mb(pids))
        await asyncio.sleep(0.1)
    await asyncio.gather(*tasks)
    return result


def streams(target: Target, count: int, upstream_pid: int) -> Streams:
    run_async(_streams(target, min(count, 20)))
    cpu, wall = tree_cpu(target.pid), time.monotonic()
    load = time.process_time() + cpu_seconds(upstream_pid)
    result = run_async(_streams(target, count))
    result.proxy_cpu_s = tree_cpu(target.pid) - cpu
    result.wall_s = time.monotonic() - wall
    result.load_cpu_s = time.process_time() + cpu_seconds(upstream_pid) - load
    if target.name == "direct":
        result.proxy_cpu_s = 0.0
    return result


# --- the run ----------------------------------------------------------------------------


@dataclass
class Results:
    throughput: list[Throughput] = field(default_factory=list)
    bursts: list[Bursts] = field(default_factory=list)
    streams: list[Streams] = field(default_factory=list)
    loads: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Load average before and after each figure."""
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0


BASELINE = "coalmine-baseline"


def _paths(has_nginx: bool, baseline: Path | None = None) -> list[str]:
    return [
        "direct",
        *(["nginx"] if has_nginx else []),
        "coalmine",
        *([BASELINE] if baseline is not None else []),
    ]


FIGURES = ("throughput", "bursts", "streams")


@dataclass(frozen=True)
class Plan:
    """What to run: the figures, their lengths, the SSE stream counts."""

    figures: tuple[str, ...]
    seconds: float
    stream_counts: tuple[int, ...]
    wrk_seconds: int
    has_nginx: bool
    baseline: Path | None = None
    """Another coalmine source tree, measured beside this one."""


def _throughput(plan: Plan, rig: Rig, results: Results) -> None:
    for name in _paths(plan.has_nginx, plan.baseline):
        with serving(name, 1, rig.tmp, rig.arms, rig.upstream_pid, True, plan.baseline) as target:
            results.throughput.append(wrk(target, rig.script, True, plan.wrk_seconds))
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    _unpin(rig.upstream_pid)
    try:
        unpinned = [(name, 1) for name in _paths(plan.has_nginx)] + [("coalmine", 2)]
        for name, workers in unpinned:
            with serving(name, workers, rig.tmp, rig.arms, rig.upstream_pid, False) as target:
                results.throughput.append(wrk(target, rig.script, False, plan.wrk_seconds))
    finally:
        os.sched_setaffinity(0, {LOAD_CPU})
        pin(rig.upstream_pid, LOAD_CPU)


def _bursts_figure(plan: Plan, rig: Rig, results: Results) -> None:
    for name in _paths(plan.has_nginx, plan.baseline):
        with serving(name, 1, rig.tmp, rig.arms, rig.upstream_pid, True, plan.baseline) as target:
            results.bursts.append(bursts(target, plan.seconds))


def _streams_figure(plan: Plan, rig: Rig, results: Results) -> None:
    for count in plan.stream_counts:
        for name in _paths(plan.has_nginx):
            with serving(name, 1, rig.tmp, rig.arms, rig.upstream_pid, True) as target:
                results.streams.append(streams(target, count, rig.upstream_pid))


@dataclass(frozen=True)
class Rig:
    tmp: Path
    arms: tuple[int, int]
    script: Path
    upstream_pid: int


def run(plan: Plan) -> Results:
    started = time.monotonic()
    results = Results()
    os.sched_setaffinity(0, {LOAD_CPU})
    if not plan.has_nginx:
        results.notes.append(
            "nginx is not installed (scripts/bench-deps.sh): its rows are left out"
        )
    figures = {
        "throughput": _throughput,
        "bursts": _bursts_figure,
        "streams": _streams_figure,
    }
    with tempfile.TemporaryDirectory(prefix="proxy-capacity-") as folder:
        tmp = Path(folder)
        tmp.chmod(0o755)
        arms = (_free_port(), _free_port())
        script = tmp / "users.lua"
        script.write_text(WRK_SCRIPT)
        with upstream(tmp, arms) as direct_process:
            pin(direct_process.pid, LOAD_CPU)
            rig = Rig(tmp, arms, script, direct_process.pid)
            for figure in plan.figures:
                before = load_average()
                figures[figure](plan, rig, results)
                results.loads[figure] = (before, load_average())
    results.wall_s = time.monotonic() - started
    return results


def _unpin(pid: int) -> None:
    everything = set(range(os.cpu_count() or 1))
    for member in process_tree(pid):
        for task in Path(f"/proc/{member}/task").glob("*"):
            try:
                os.sched_setaffinity(int(task.name), everything)
            except OSError:
                continue


# --- report -----------------------------------------------------------------------------


def _ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}" if reference else ""


def _processes(name: str) -> str:
    if name == "nginx":
        return "1 worker (+ master)"
    if " x" in name:
        return f"{name.rsplit(' x', 1)[1]} workers (+ supervisor)"
    return "1 process"


def throughput_table(results: Results, pinned: bool) -> list[str]:
    rows = [item for item in results.throughput if item.pinned == pinned]
    nginx_rps = next((r.per_second for r in rows if r.path == "nginx"), None)
    lines = [
        "| path | processes | req/s | x nginx | wrk p50 | wrk p99 | errors | proxy CPU µs/req "
        "| proxy CPU (share of one core) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for item in rows:
        cpu = "" if item.path == "direct" else f"{item.cpu_us:,.0f}"
        share = "" if item.path == "direct" else f"{item.core_share:.0%}"
        lines.append(
            f"| {item.path} | {_processes(item.path)} | "
            f"{item.per_second:,.0f} | {_ratio(item.per_second, nginx_rps)} | {item.p50} | "
            f"{item.p99} | {item.bad} | {cpu} | {share} |"
        )
    return lines


def bursts_table(results: Results) -> list[str]:
    direct = next((b for b in results.bursts if b.load.path == "direct"), None)
    lines = [
        "| path | requests | p50 ms | p99 ms | max ms | added p50 ms | added p99 ms | errors "
        "| proxy CPU µs/req |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for item in results.bursts:
        load = item.load
        added = ("", "")
        if direct is not None and load.path != "direct":
            added = (
                f"{load.p(0.5) - direct.load.p(0.5):+.2f}",
                f"{load.p(0.99) - direct.load.p(0.99):+.2f}",
            )
        cpu = "" if load.path == "direct" else f"{item.cpu_us:,.0f}"
        lines.append(
            f"| {load.path} | {len(load.latencies_ms):,} | {load.p(0.5):.2f} | "
            f"{load.p(0.99):.2f} | {max(load.latencies_ms, default=float('nan')):.2f} | "
            f"{added[0]} | {added[1]} | {load.errors} | {cpu} |"
        )
    return lines


def streams_table(results: Results) -> list[str]:
    lines = [
        "| path | streams | complete | first event p50 ms | p99 ms | gap p50 ms | gap p99 ms "
        "| gap max ms | duration p50 s | p99 s | proxy CPU µs/event | proxy CPU (share of one "
        "core) | proxy RSS MB before / peak | generator + upstream CPU (share of one core) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for item in results.streams:
        direct = item.path == "direct"
        cpu = "" if direct else f"{item.cpu_us_per_event:,.1f}"
        share = "" if direct else f"{item.proxy_cpu_s / item.wall_s:.0%}"
        rss = "" if direct else f"{item.rss_before_mb:.0f} / {item.rss_peak_mb:.0f}"
        lines.append(
            f"| {item.path} | {item.streams} | {item.streams - item.incomplete} | "
            f"{percentile(item.first_event_ms, 0.5):.1f} | "
            f"{percentile(item.first_event_ms, 0.99):.1f} | {percentile(item.gaps_ms, 0.5):.1f} | "
            f"{percentile(item.gaps_ms, 0.99):.1f} | "
            f"{max(item.gaps_ms, default=float('nan')):.1f} | "
            f"{percentile(item.duration_ms, 0.5) / 1000:.2f} | "
            f"{percentile(item.duration_ms, 0.99) / 1000:.2f} | {cpu} | {share} | {rss} | "
            f"{item.load_cpu_s / item.wall_s:.0%} |"
        )
    return lines


def _nginx_version() -> str:
    found = subprocess.run([nginx_binary(), "-v"], check=False, capture_output=True, text=True)
    return found.stderr.strip().split(":", 1)[-1].strip()


def _loads(results: Results, figure: str) -> str:
    before, after = results.loads.get(figure, ("", ""))
    return f"Load average before: {before}, after: {after}."


def _throughput_section(results: Results, plan: Plan) -> list[str]:
    return [
        "## Max throughput on one core",
        "",
        f"`wrk -t1 -c{WRK_CONNECTIONS} -d{plan.wrk_seconds}s --latency`, `GET /small`, user "
        f"ids cycling over {USERS} (a Lua script), wrk pinned to CPU {LOAD_CPU} with the "
        f"upstream. {_loads(results, 'throughput')}",
        "",
        *throughput_table(results, True),
        "",
        "Nothing pinned (the proxy, wrk and the upstream share both CPUs), and "
        "`coalmine proxy --workers 2`:",
        "",
        *throughput_table(results, False),
        "",
    ]


def _bursts_section(results: Results, plan: Plan) -> list[str]:
    return [
        f"## Latency at {BURST_RATE} requests/s in bursts of {BURST}",
        "",
        f"Every {1000 * BURST / BURST_RATE:.0f} ms, {BURST} `GET /small` sent at once (open "
        f"loop) for {plan.seconds:.0f} s after a {WARMUP_S:.0f} s warm-up, over keep-alive "
        f"connections (a new one when all are busy, up to {POOL_LIMIT}); latency from the "
        "burst's due time to the end of the answer, so requests queued behind their "
        f"burst-mates count their wait. {_loads(results, 'bursts')}",
        "",
        *bursts_table(results),
        "",
    ]


def _streams_section(results: Results, plan: Plan) -> list[str]:
    counts = " and ".join(str(count) for count in plan.stream_counts)
    return [
        "## LLM-shaped load: concurrent SSE streams",
        "",
        f"{counts} streams of {SSE_EVENTS} OpenAI-style events {SSE_GAP_MS} ms apart "
        f"(then `[DONE]`; {SSE_EVENTS * SSE_GAP_MS / 1000:.0f} s a stream), started evenly "
        f"over {SSE_RAMP_S:.0f} s, each on a connection of its own, read by this process "
        "(asyncio streams on a `select()` loop). First event: from the stream's due start; "
        f"gap: between consecutive events' arrival ({SSE_GAP_MS} ms when nothing stalls); "
        "duration: due start to `[DONE]`. The generator's and upstream's CPU share shows "
        f"whether CPU {LOAD_CPU} kept up. {_loads(results, 'streams')}",
        "",
        *streams_table(results),
        "",
    ]


def markdown(command: str, results: Results, plan: Plan) -> str:
    nginx_version = _nginx_version() if shutil.which(nginx_binary()) else "no nginx"
    lines = [
        "# Proxy capacity",
        "",
        f"Command: `{command}` (wall time {results.wall_s:.0f} s)",
        "",
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPU(s), "
        f"{nginx_version}. The proxy under test (every thread, every process) is pinned to CPU "
        f"{PROXY_CPU}; wrk, this process's generators and the upstream "
        f"(`bench/proxy_upstream.py`) to CPU {LOAD_CPU}. nginx: `worker_processes 1`, "
        "`split_clients` on `x-user-id`, `keepalive 64` upstream connections, "
        "`proxy_buffering off`; coalmine: `coalmine proxy --no-spans`, one process unless "
        "said, the same 50/50 split. Other work shares the machine: the load average "
        "(1, 5, 15 min) is given before and after each table. Proxy CPU is utime + stime "
        "from /proc of the proxy's processes over the measured stretch, per request "
        "answered. Load generators: wrk for throughput; this module's own asyncio "
        "generator on raw sockets for the bursts and the streams (`hey` is not used).",
        *(f"**{note}.**" for note in results.notes),
        "",
    ]
    sections = {
        "throughput": _throughput_section,
        "bursts": _bursts_section,
        "streams": _streams_section,
    }
    for figure in plan.figures:
        lines += sections[figure](results, plan)
    return "\n".join(lines).rstrip("\n")


def to_json(command: str, results: Results) -> dict[str, Any]:
    return {
        "command": command,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "wall_seconds": results.wall_s,
        "load_average": results.loads,
        "notes": results.notes,
        "throughput": [
            {**asdict(item), "cpu_us": item.cpu_us, "core_share": item.core_share}
            for item in results.throughput
        ],
        "bursts": [
            {
                "path": item.load.path,
                "requests": len(item.load.latencies_ms),
                "errors": item.load.errors,
                "p50_ms": item.load.p(0.5),
                "p99_ms": item.load.p(0.99),
                "max_ms": max(item.load.latencies_ms, default=float("nan")),
                "timer_lag_p99_ms": percentile(item.load.timer_lag_ms, 0.99),
                "proxy_cpu_us": item.cpu_us,
            }
            for item in results.bursts
        ],
        "streams": [
            {
                "path": item.path,
                "streams": item.streams,
                "incomplete": item.incomplete,
                "events": item.events,
                "first_event_p50_ms": percentile(item.first_event_ms, 0.5),
                "first_event_p99_ms": percentile(item.first_event_ms, 0.99),
                "gap_p50_ms": percentile(item.gaps_ms, 0.5),
                "gap_p99_ms": percentile(item.gaps_ms, 0.99),
                "gap_max_ms": max(item.gaps_ms, default=float("nan")),
                "duration_p50_ms": percentile(item.duration_ms, 0.5),
                "duration_p99_ms": percentile(item.duration_ms, 0.99),
                "proxy_cpu_s": item.proxy_cpu_s,
                "proxy_cpu_us_per_event": item.cpu_us_per_event,
                "wall_s": item.wall_s,
                "rss_before_mb": item.rss_before_mb,
                "rss_peak_mb": item.rss_peak_mb,
                "load_cpu_s": item.load_cpu_s,
            }
            for item in results.streams
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20.0, help="the bursts' run")
    parser.add_argument(
        "--streams", default="200", help="concurrent SSE streams, comma-separated counts"
    )
    parser.add_argument("--figures", default=",".join(FIGURES), help="comma-separated")
    parser.add_argument("--wrk-seconds", type=int, default=WRK_SECONDS)
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument(
        "--baseline", type=Path, help="another coalmine source tree to measure beside this one"
    )
    args = parser.parse_args(argv)
    if args.baseline is not None and not (args.baseline / "proxy" / "app.py").is_file():
        parser.error(f"--baseline: {args.baseline} is not a coalmine source tree")
    if (os.cpu_count() or 1) < 2:
        parser.error("needs 2 CPUs: one for the proxy, one for the load")
    if shutil.which("wrk") is None:
        parser.error("wrk not found (scripts/bench-deps.sh installs it)")
    if coalmine_command() is None:
        parser.error("no `coalmine proxy` command next to this Python")
    has_nginx = shutil.which(nginx_binary()) is not None
    if not has_nginx:
        print("proxy_capacity: nginx not found, its rows are skipped", file=sys.stderr)
    command = "python -m bench.proxy_capacity " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    figures = tuple(args.figures.split(","))
    for figure in figures:
        if figure not in FIGURES:
            parser.error(f"--figures: {figure!r} is not one of {', '.join(FIGURES)}")
    plan = Plan(
        figures,
        args.seconds,
        tuple(int(count) for count in args.streams.split(",")),
        args.wrk_seconds,
        has_nginx,
        args.baseline,
    )
    results = run(plan)
    text = markdown(command.strip(), results, plan)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "proxy_capacity.md").write_text(text + "\n", encoding="utf-8")
    data = to_json(command.strip(), results)
    (args.out / "proxy_capacity.json").write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
