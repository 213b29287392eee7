"""Replay speed: `coalmine replay --json` on a long stream, against reading the JSON alone.

    python -m bench.replay_speed [--lines 1000000] [--out bench/out] [--seed 1] [--repeat 1]

Writes a neutral stream of about ``--lines`` lines (100 traces a minute, each with its
helpfulness score arriving later on a line of its own) to a temporary file, and the demo
policy (``sandbox/policies/replay-demo.yaml``) with its step's maxDuration set beyond the
stream, so that the release stays undecided and the judge is asked at every interval of
the whole stream. The canary's share of the stream is the step's weight, so the
sample-ratio guard has nothing to pause on. Then it times, each in a fresh interpreter so
that each has its own peak memory:

- reference: reading every line and ``json.loads`` of it, nothing else (the floor for any
  replay written in Python);
- replay: ``coalmine replay --policy P --samples S --json`` through ``coalmine.cli.main``.

Seconds are measured inside the child around the work alone (imports and interpreter
start are not counted); peak memory is the child's ``ru_maxrss``. The result is a
Markdown table (stdout and ``<out>/replay_speed.md``, with the exact commands) and
``<out>/replay_speed.json``. With ``--repeat`` above 1 each measurement is run that many
times and the fastest is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.streams import SCENARIOS, generate

ROOT = Path(__file__).resolve().parents[1]
DEMO_POLICY = ROOT / "sandbox" / "policies" / "replay-demo.yaml"
PER_MINUTE = 100.0
TARGET_SECONDS = 60.0  # for 1,000,000 lines
TARGET_LINES = 1_000_000


@dataclass(frozen=True)
class Measurement:
    """One timed run in its own process."""

    name: str
    command: str
    lines: int
    looks: int | None
    seconds: float
    peak_rss_mb: float
    outcome: str | None = None

    @property
    def lines_per_second(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else math.inf


# -- children: each runs in its own interpreter and prints one JSON object ----------------


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # kilobytes on Linux, bytes on macOS
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def child_reference(samples: Path) -> dict[str, Any]:
    """Read the stream and parse every line's JSON, and nothing else."""
    start = time.perf_counter()
    lines = 0
    with samples.open("rb") as handle:
        for raw in handle:
            lines += 1
            text = raw.decode("utf-8")
            if text.strip():
                json.loads(text)
    seconds = time.perf_counter() - start
    return {"lines": lines, "seconds": seconds, "peak_rss_mb": _peak_rss_mb()}


def child_replay(samples: Path, policy: Path) -> dict[str, Any]:
    """`coalmine replay --json` end to end, its output kept to read the summary."""
    from coalmine.cli import main  # noqa: PLC0415 (imported here: not part of the reference)

    out = io.StringIO()
    argv = ["replay", "--policy", str(policy), "--samples", str(samples), "--json"]
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"coalmine replay exited {code}")
    summary = json.loads(out.getvalue().splitlines()[-1])
    return {
        "lines": summary["lines"],
        "looks": summary["looks"],
        "outcome": summary["outcome"],
        "seconds": seconds,
        "peak_rss_mb": _peak_rss_mb(),
    }


# -- parent -----------------------------------------------------------------------------


def write_policy(path: Path, minutes: float) -> tuple[Path, float]:
    """The demo policy, one step, its maxDuration beyond the stream; and the step's weight."""
    document = yaml.safe_load(DEMO_POLICY.read_text(encoding="utf-8"))
    step = dict(document["steps"][0])
    hours = max(1000, math.ceil(2 * minutes / 60))
    step["maxDuration"] = f"{hours}h"
    document["steps"] = [step]
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path, float(step["weight"])


def write_stream(path: Path, lines: int, seed: int, canary_share: float) -> tuple[int, float]:
    """About ``lines`` lines of a neutral stream: (lines written, minutes covered)."""
    # Every trace is a line and so is the late score of every trace that did not error.
    per_minute = PER_MINUTE * (1.0 + (1.0 - SCENARIOS["neutral"].canary_error_rate))
    minutes = lines / per_minute
    written = 0
    with path.open("w", encoding="utf-8") as out:
        for line in generate(
            SCENARIOS["neutral"],
            minutes,
            seed,
            per_minute=PER_MINUTE,
            canary_share=canary_share,
        ):
            out.write(line)
            out.write("\n")
            written += 1
    return written, minutes


def measure(name: str, child_args: list[str], command: str, repeat: int) -> Measurement:
    best: dict[str, Any] | None = None
    for _ in range(repeat):
        result = subprocess.run(
            [sys.executable, "-m", "bench.replay_speed", "--child", *child_args],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        data = json.loads(result.stdout.splitlines()[-1])
        if best is None or data["seconds"] < best["seconds"]:
            best = data
    assert best is not None
    return Measurement(
        name=name,
        command=command,
        lines=best["lines"],
        looks=best.get("looks"),
        seconds=best["seconds"],
        peak_rss_mb=best["peak_rss_mb"],
        outcome=best.get("outcome"),
    )


def markdown(
    command: str,
    reference: Measurement,
    replay: Measurement,
    minutes: float,
    policy_note: str,
) -> str:
    ratio = replay.seconds / reference.seconds
    projected = replay.seconds * TARGET_LINES / replay.lines
    verdict = "meets" if projected <= TARGET_SECONDS else "misses"
    rows = [
        "| measurement | command | lines | looks | seconds | lines/s | × reference | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in (reference, replay):
        rows.append(
            f"| {m.name} | `{m.command}` | {m.lines:,} | "
            f"{'' if m.looks is None else f'{m.looks:,}'} | {m.seconds:.2f} | "
            f"{m.lines_per_second:,.0f} | {m.seconds / reference.seconds:.1f} | "
            f"{m.peak_rss_mb:.0f} |"
        )
    return "\n".join(
        [
            "# Replay speed",
            "",
            f"Command: `{command}`",
            "",
            f"Stream: neutral, {PER_MINUTE:.0f} traces/min, {minutes / 60:.1f} hours of "
            f"traffic. Policy: {policy_note}. Outcome of the replay: {replay.outcome}. "
            f"Python {platform.python_version()} on {platform.machine()}, "
            f"{_cpus()} CPU(s). Seconds exclude interpreter start and imports; each row ran "
            "in its own process.",
            "",
            *rows,
            "",
            f"Replay / reference: {ratio:.1f}×. At {replay.lines_per_second:,.0f} lines/s, "
            f"1,000,000 lines take {projected:.1f} s: {verdict} the target of "
            f"{TARGET_SECONDS:.0f} s.",
        ]
    )


def _cpus() -> int:
    return os.cpu_count() or 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        kind, *paths = argv[1:]
        if kind == "reference":
            result = child_reference(Path(paths[0]))
        else:
            result = child_replay(Path(paths[0]), Path(paths[1]))
        print(json.dumps(result))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.replay_speed", description=__doc__)
    parser.add_argument("--lines", type=int, default=TARGET_LINES)
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    if args.lines < 1 or args.repeat < 1:
        parser.error("--lines and --repeat must be at least 1")
    command = shlex.join(["python", "-m", "bench.replay_speed", *argv])

    with tempfile.TemporaryDirectory(prefix="replay-speed-") as tmp:
        stream_minutes = args.lines / (PER_MINUTE * 2)
        policy, weight = write_policy(Path(tmp) / "policy.yaml", stream_minutes)
        samples = Path(tmp) / "stream.jsonl"
        started = time.perf_counter()
        lines, minutes = write_stream(samples, args.lines, args.seed, weight / 100.0)
        print(
            f"wrote {lines:,} lines ({minutes / 60:.1f} h) in "
            f"{time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        max_duration = yaml.safe_load(policy.read_text())["steps"][0]["maxDuration"]
        policy_note = (
            f"{DEMO_POLICY.relative_to(ROOT)} with one step of weight {weight:g} and "
            f"maxDuration {max_duration}"
        )
        reference = measure(
            "reference: read + json.loads",
            ["reference", str(samples)],
            "for line in open(S, 'rb'): json.loads(line.decode())",
            args.repeat,
        )
        replay = measure(
            "coalmine replay --json",
            ["replay", str(samples), str(policy)],
            f"coalmine replay --policy {policy.name} --samples {samples.name} --json",
            args.repeat,
        )

    text = markdown(command, reference, replay, minutes, policy_note)
    print(text)
    if replay.outcome != "running":
        print(
            f"warning: the release was decided ({replay.outcome}), so the judge was not "
            "asked through the whole stream",
            file=sys.stderr,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "replay_speed.md").write_text(text + "\n", encoding="utf-8")
    payload = {
        "command": command,
        "lines_requested": args.lines,
        "stream_minutes": minutes,
        "per_minute": PER_MINUTE,
        "seed": args.seed,
        "policy": policy_note,
        "python": platform.python_version(),
        "cpus": _cpus(),
        "ratio": replay.seconds / reference.seconds,
        "projected_seconds_per_million_lines": replay.seconds * TARGET_LINES / replay.lines,
        "target_seconds_per_million_lines": TARGET_SECONDS,
        "measurements": [
            {**asdict(m), "lines_per_second": m.lines_per_second} for m in (reference, replay)
        ],
    }
    (args.out / "replay_speed.json").write_text(
        json.dumps(payload, indent=2) + "\n", encoding="utf-8"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
