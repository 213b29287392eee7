"""Notification queue: ``controller/notify.py``'s ``WebhookNotifier`` against what the
ecosystem offers for the same job, measured in the same run.

    python -m bench.notify_queue [--events 1000] [--rate 200] [--burst 10000]
        [--slow-ms 500] [--close-timeout 5] [--out bench/out]

Contenders (``bench/notify_alternatives.py``), all with coalmine's settings (3 retries,
1 s backoff doubling, 5 s request timeout, a queue of 1,000 where there is one) and the
same payload and logging (to a file):

- ``coalmine``: ``WebhookNotifier``, a deque under a condition drained by one thread;
- ``executor``: ``ThreadPoolExecutor(max_workers=1)``, a task per event, same retry loop;
- ``queue``: ``queue.Queue(maxsize=1000)`` and one thread, same retry loop;
- ``tenacity``: the same queue, retries by ``tenacity.Retrying``.

The webhook receiver (``bench/webhook_receiver.py``) is a process of its own on
loopback; it notes when each event arrives. Each contender, one after the other, in this
process:

1. **healthy** and **slow** (each answer after ``--slow-ms``): ``--events`` events at
   ``--rate`` a second, as a controller's tick would send them; then ``close``.
2. **down** (a port nothing listens on): a burst of ``--burst`` events at once; then
   ``close``. Run twice: once timed, once with ``tracemalloc`` on to see what the
   queued events hold in memory.

Measured: the time each ``send`` call takes (the tick's cost: it must never wait for the
receiver), delivery latency (from ``send`` to the receiver's reading the event), traced
memory with the burst queued, the outcomes each contender counts against what the
receiver got, the time ``close`` takes and whether it leaves a thread behind.

Results: Markdown (stdout and ``<out>/notify_queue.md``, with the command and the
verdict) and ``<out>/notify_queue.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import httpx

from bench.machine import LoadMeter, cpu_seconds, describe, free_port
from bench.notify_alternatives import ExecutorNotifier, QueueNotifier, TenacityNotifier
from controller.lifecycle import ReleaseState
from controller.notify import WebhookNotifier
from policies.domain import Phase

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
CONTENDERS: Final = ("coalmine", "executor", "queue", "tenacity")
RETRIES: Final = 3
BACKOFF_S: Final = 1.0
REQUEST_TIMEOUT_S: Final = 5.0
MAX_QUEUE: Final = 1000
T0: Final = 1_767_225_600.0
RELEASE: Final = ReleaseState(
    name="support-answer",
    phase=Phase.ROLLED_BACK,
    step=1,
    step_starts=(T0, T0 + 600),
    canary_weight=0.0,
    updated_at=T0 + 900.5,
)
START_TIMEOUT_S: Final = 30.0


class Contender(Protocol):
    def send(self, event: str, release: ReleaseState, reason: str) -> None: ...

    def close(self, timeout: float = 5.0) -> None: ...

    def counts(self) -> dict[str, int]: ...


def make(name: str, url: str) -> Contender:
    settings: dict[str, Any] = {
        "retries": RETRIES,
        "backoff": BACKOFF_S,
        "timeout": REQUEST_TIMEOUT_S,
    }
    if name == "coalmine":
        return WebhookNotifier(url, max_queue=MAX_QUEUE, **settings)
    if name == "executor":
        return ExecutorNotifier(url, **settings)
    if name == "queue":
        return QueueNotifier(url, max_queue=MAX_QUEUE, **settings)
    if name == "tenacity":
        return TenacityNotifier(url, max_queue=MAX_QUEUE, **settings)
    raise ValueError(f"unknown contender {name!r}")


@contextmanager
def logged_to(path: Path) -> Iterator[None]:
    """coalmine's warnings (and the contenders') go to a file, as a deployment's would."""
    handler = logging.FileHandler(path)
    logger = logging.getLogger("coalmine")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


# --- the receiver -------------------------------------------------------------------------


class Receiver:
    """The webhook receiver's process; ``url(condition)`` is where a run sends."""

    def __init__(self, port: int, process: subprocess.Popen[bytes]) -> None:
        self.base = f"http://{HOST}:{port}"
        self.process = process
        self.down = f"http://{HOST}:{free_port()}/hook"
        self.http = httpx.Client(timeout=30)

    def url(self, condition: str) -> str:
        return self.down if condition == "down" else f"{self.base}/hook"

    def reset(self, delay_ms: float) -> None:
        self.http.post(f"{self.base}/reset", params={"delay_ms": delay_ms}).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = self.http.get(f"{self.base}/stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats


@contextmanager
def receiver(tmp: Path) -> Iterator[Receiver]:
    port = free_port()
    log = tmp / "receiver.log"
    args = [sys.executable, "-m", "bench.webhook_receiver", "--port", str(port)]
    with log.open("wb") as sink:
        process = subprocess.Popen(args, stdout=sink, stderr=sink, cwd=ROOT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(f"http://{HOST}:{port}/health"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"receiver did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)
        found = Receiver(port, process)
        yield found
        found.http.close()
    finally:
        process.terminate()
        process.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


# --- one run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What one run does: ``events`` sends, ``rate`` a second (0: all at once)."""

    contender: str
    condition: str
    events: int
    rate: float
    delay_ms: float
    close_timeout: float
    traced: bool = False

    @property
    def label(self) -> str:
        return f"{self.contender}-{self.condition}{'-traced' if self.traced else ''}"


@dataclass
class NotifyRun:
    """What one run measured. ``send_us``: microseconds; ``delivery_ms``: milliseconds."""

    plan: Plan
    send_us: dict[str, float] = field(default_factory=dict)
    delivery_ms: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    received: int = 0
    duplicates: int = 0
    close_s: float = 0.0
    thread_left: bool = False
    traced_mb: float | None = None

    @property
    def lost(self) -> int:
        return self.plan.events - self.received

    @property
    def counted_lost(self) -> int:
        return sum(self.counts.get(key, 0) for key in ("failed", "rejected", "dropped"))


def quantiles(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        "p50": ordered[len(ordered) // 2],
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max": ordered[-1],
    }


def send_all(notifier: Contender, plan: Plan) -> tuple[list[float], list[float]]:
    """Sends the plan's events on its timetable: each call's microseconds, each event's
    monotonic send time."""
    durations: list[float] = []
    sent_at: list[float] = []
    began = time.monotonic()
    for index in range(plan.events):
        if plan.rate:
            time.sleep(max(0.0, began + index / plan.rate - time.monotonic()))
        sent_at.append(time.monotonic())
        started = time.perf_counter_ns()
        notifier.send("rollback", RELEASE, f"{plan.label} {index}")
        durations.append((time.perf_counter_ns() - started) / 1e3)
    return durations, sent_at


def run_one(receiver: Receiver, plan: Plan) -> NotifyRun:
    receiver.reset(plan.delay_ms)
    threads = set(threading.enumerate())
    notifier = make(plan.contender, receiver.url(plan.condition))
    result = NotifyRun(plan)
    if plan.traced:
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0] if plan.traced else 0
    durations, sent_at = send_all(notifier, plan)
    if plan.traced:
        result.traced_mb = (tracemalloc.get_traced_memory()[0] - before) / 1e6
        tracemalloc.stop()
    closing = time.perf_counter()
    notifier.close(plan.close_timeout)
    result.close_s = time.perf_counter() - closing
    result.thread_left = any(t.is_alive() for t in set(threading.enumerate()) - threads)
    result.counts = notifier.counts()
    result.send_us = quantiles(durations)
    stats: dict[str, Any] = {"arrivals": {}, "duplicates": 0}
    if plan.condition != "down":
        stats = receiver.stats()
    arrivals: dict[str, float] = stats["arrivals"]
    latencies = [
        1000 * (arrivals[reason] - sent_at[index])
        for index in range(plan.events)
        if (reason := f"{plan.label} {index}") in arrivals
    ]
    result.delivery_ms = quantiles(latencies)
    result.received = len(latencies)
    result.duplicates = int(stats["duplicates"])
    return result


def plans(args: argparse.Namespace) -> list[Plan]:
    """Every contender healthy, then slow, then down, then down with tracemalloc."""
    common = {"close_timeout": args.close_timeout}
    return [
        *(Plan(c, "healthy", args.events, args.rate, 0.0, **common) for c in CONTENDERS),
        *(Plan(c, "slow", args.events, args.rate, args.slow_ms, **common) for c in CONTENDERS),
        *(Plan(c, "down", args.burst, 0.0, 0.0, **common) for c in CONTENDERS),
        *(Plan(c, "down", args.burst, 0.0, 0.0, traced=True, **common) for c in CONTENDERS),
    ]


# --- the report ---------------------------------------------------------------------------


def _pick(runs: Sequence[NotifyRun], condition: str, traced: bool = False) -> dict[str, NotifyRun]:
    return {
        run.plan.contender: run
        for run in runs
        if run.plan.condition == condition and run.plan.traced == traced
    }


def _x(value: float, reference: float) -> str:
    return "–" if not reference else f"{value / reference:.2f}"


def _cell(figures: dict[str, float], key: str, form: str = "{:.1f}") -> str:
    return form.format(figures[key]) if key in figures else "–"


def send_table(runs: Sequence[NotifyRun]) -> list[str]:
    lines = [
        "| contender | healthy p50 µs | healthy p99 | healthy max | slow p99 | slow max | "
        "down burst p50 | down burst p99 | down burst max | down p99 x coalmine |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    healthy, slow, down = (_pick(runs, c) for c in ("healthy", "slow", "down"))
    for name in CONTENDERS:
        h, s, d = healthy[name].send_us, slow[name].send_us, down[name].send_us
        ratio = _x(d.get("p99", 0.0), down["coalmine"].send_us.get("p99", 0.0))
        lines.append(
            f"| {name} | {_cell(h, 'p50')} | {_cell(h, 'p99')} | {_cell(h, 'max')} | "
            f"{_cell(s, 'p99')} | {_cell(s, 'max')} | {_cell(d, 'p50')} | {_cell(d, 'p99')} | "
            f"{_cell(d, 'max')} | {ratio} |"
        )
    return lines


def delivery_table(runs: Sequence[NotifyRun]) -> list[str]:
    lines = [
        "| contender | healthy: delivered | p50 ms | p99 ms | p99 x coalmine | "
        "slow: delivered | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    healthy, slow = _pick(runs, "healthy"), _pick(runs, "slow")
    reference = healthy["coalmine"].delivery_ms.get("p99", 0.0)
    for name in CONTENDERS:
        h, s = healthy[name], slow[name]
        lines.append(
            f"| {name} | {h.received:,} of {h.plan.events:,} | "
            f"{_cell(h.delivery_ms, 'p50', '{:.2f}')} | {_cell(h.delivery_ms, 'p99', '{:.2f}')} | "
            f"{_x(h.delivery_ms.get('p99', 0.0), reference)} | "
            f"{s.received:,} of {s.plan.events:,} | {_cell(s.delivery_ms, 'p50', '{:,.0f}')} | "
            f"{_cell(s.delivery_ms, 'p99', '{:,.0f}')} |"
        )
    return lines


def down_table(runs: Sequence[NotifyRun]) -> list[str]:
    lines = [
        "| contender | traced memory with the burst queued MB | x coalmine | "
        "dropped on `send` + at close | close s | thread left after close |",
        "|---|---|---|---|---|---|",
    ]
    traced, timed = _pick(runs, "down", traced=True), _pick(runs, "down")
    reference = traced["coalmine"].traced_mb or 0.0
    for name in CONTENDERS:
        memory = traced[name].traced_mb or 0.0
        run = timed[name]
        lines.append(
            f"| {name} | {memory:.2f} | {_x(memory, reference)} | "
            f"{run.counts.get('dropped', 0):,} | {run.close_s:.2f} | "
            f"{'yes' if run.thread_left else 'no'} |"
        )
    return lines


def accounting_table(runs: Sequence[NotifyRun]) -> list[str]:
    lines = [
        "| run | events | received | sent | failed | rejected | dropped | lost | "
        "lost but not counted | close s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        c = run.counts
        lines.append(
            f"| {run.plan.label} | {run.plan.events:,} | {run.received:,} | {c.get('sent', 0):,} | "
            f"{c.get('failed', 0):,} | {c.get('rejected', 0):,} | {c.get('dropped', 0):,} | "
            f"{run.lost:,} | {run.lost - run.counted_lost:,} | {run.close_s:.2f} |"
        )
    return lines


def _uncounted(runs: Sequence[NotifyRun], name: str) -> int:
    return sum(run.lost - run.counted_lost for run in runs if run.plan.contender == name)


def _send_p99(runs: Sequence[NotifyRun], condition: str) -> dict[str, float]:
    return {name: run.send_us.get("p99", 0.0) for name, run in _pick(runs, condition).items()}


def _meets(runs: Sequence[NotifyRun]) -> dict[str, bool]:
    """Which contenders keep the queue bounded (traced memory within twice the smallest)
    and count every event they lose."""
    traced = {name: run.traced_mb or 0.0 for name, run in _pick(runs, "down", True).items()}
    smallest = min(traced.values())
    return {
        name: traced[name] <= 2 * smallest and _uncounted(runs, name) == 0 for name in CONTENDERS
    }


def _spread(runs: Sequence[NotifyRun], name: str) -> float:
    """The largest factor, either way, between a contender's and coalmine's ``send`` p99
    (healthy and down) and traced memory."""
    traced = {n: run.traced_mb or 0.0 for n, run in _pick(runs, "down", True).items()}
    pairs = [(traced[name], traced["coalmine"])]
    for condition in ("healthy", "down"):
        p99 = _send_p99(runs, condition)
        pairs.append((p99[name], p99["coalmine"]))
    return max((max(a / b, b / a) for a, b in pairs if a > 0 and b > 0), default=1.0)


def verdict(runs: Sequence[NotifyRun]) -> list[str]:
    """Keep or replace, from the figures; the rule is stated in the text."""
    healthy, down = _send_p99(runs, "healthy"), _send_p99(runs, "down")
    traced = _pick(runs, "down", traced=True)
    meets = _meets(runs)
    faster = [
        name
        for name in CONTENDERS[1:]
        if meets[name]
        and healthy[name] <= 0.5 * healthy["coalmine"]
        and down[name] <= 0.5 * down["coalmine"]
    ]
    if meets["coalmine"] and not faster:
        decision = "Keep coalmine's queue."
    else:
        better = faster or [name for name in CONTENDERS[1:] if meets[name]]
        decision = f"Replace it with `{better[0]}`." if better else "Replace it."
    return [
        f"**{decision}** The rule: the tick's `send` must not wait for the receiver, the "
        "queue must stay bounded while the receiver is down, and every event lost must be "
        "counted; a contender that meets all three replaces the notifier if its `send` is "
        "at least twice as fast at p99, healthy and down, or if coalmine's fails one. "
        "`send` p99, healthy / down burst: "
        + ", ".join(f"{name} {healthy[name]:.1f} / {down[name]:.1f} µs" for name in CONTENDERS)
        + ". Traced memory with the burst queued: "
        + ", ".join(f"{name} {traced[name].traced_mb or 0.0:.2f} MB" for name in CONTENDERS)
        + ". Events lost and not counted, over all runs: "
        + ", ".join(f"{name} {_uncounted(runs, name):,}" for name in CONTENDERS)
        + ". `send` costs about the same in every design (building the payload and waking "
        "the delivery thread); `queue.Queue` with the same loop is within "
        f"{_spread(runs, 'queue'):.1f}x of coalmine's deque on `send` p99 and memory but "
        "brings no less code, since closing within a timeout and counting "
        "what is abandoned stay to be written either way (`QueueNotifier` in "
        "`bench/notify_alternatives.py`); the executor's queue has no bound, and tenacity "
        "would add a dependency for what `coalmine.shared.retry.Backoff` already does.",
    ]


def markdown(results: dict[str, Any], runs: Sequence[NotifyRun]) -> str:
    s = results["settings"]
    lines = [
        "# Notification queue: coalmine's notifier against the ecosystem's",
        "",
        f"Command: `{results['command']}` (wall time {results['wall_s']:.0f} s)",
        "",
        f"{results['machine']}; other work took {100 * results['other_share']:.0f}% of the "
        "machine's CPU time during the run. Every contender has coalmine's settings "
        f"({RETRIES} retries, {BACKOFF_S:g} s backoff doubling, {REQUEST_TIMEOUT_S:g} s "
        f"request timeout, a queue of {MAX_QUEUE:,} where it has one), the same payload, "
        "and logs to a file. `executor` is `ThreadPoolExecutor(max_workers=1)` (no bound on "
        "its queue), `queue` a `queue.Queue(maxsize=1000)` with one thread, `tenacity` that "
        "queue with `tenacity.Retrying`. The receiver is a process of its own on loopback.",
        "",
        f"## `send` (the tick's cost), µs: {s['events']:,} events at {s['rate']:g}/s "
        f"(healthy, slow: answers after {s['slow_ms']:g} ms), and a burst of "
        f"{s['burst']:,} with the receiver down",
        "",
        *send_table(runs),
        "",
        "## Delivery latency: from `send` to the receiver's reading the event",
        "",
        *delivery_table(runs),
        "",
        f"## Receiver down: a burst of {s['burst']:,} events, then `close({s['close_timeout']:g})`",
        "",
        *down_table(runs),
        "",
        "## Every run: what each contender counted against what the receiver got",
        "",
        *accounting_table(runs),
        "",
        "## Verdict",
        "",
        *verdict(runs),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--slow-ms", type=float, default=500.0)
    parser.add_argument("--close-timeout", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    args = parser.parse_args(argv)
    command = "python -m bench.notify_queue " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    meter = LoadMeter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with logged_to(tmp / "notify.log"), receiver(tmp) as found:
            runs = [run_one(found, plan) for plan in plans(args)]
            load = meter.stop(cpu_seconds(found.process.pid))
    settings = {
        key: getattr(args, key) for key in ("events", "rate", "burst", "slow_ms", "close_timeout")
    }
    results: dict[str, Any] = {
        "command": command.strip(),
        "machine": describe(),
        "wall_s": load.wall_s,
        "other_share": load.other_share,
        "settings": settings,
        "runs": [{**asdict(run), "lost": run.lost} for run in runs],
    }
    text = markdown(results, runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "notify_queue.md").write_text(text, encoding="utf-8")
    (args.out / "notify_queue.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
