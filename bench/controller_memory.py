"""Controller memory and state file over simulated hours, at a high trace rate.

    python -m bench.controller_memory [--hours 24] [--rate 10000] [--out bench/out]

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
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench.controller_speed import MEMORY_START, MemoryResults, memory_benchmark

GROWTH_GOAL = 0.05
CPU_GOAL_MS = 1000.0


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--rate", type=int, default=10_000, help="traces a minute")
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "bench.controller_memory", *sys.argv[1:]])
    began = time.perf_counter()
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
