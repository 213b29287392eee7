"""Seeded sample streams (JSON Lines) for `coalmine replay`, its tests and benchmarks.

    python -m bench.streams --scenario bad --minutes 60 --seed 7 > stream.jsonl

Traffic is Poisson per second-level arrival; the helpfulness score is Beta-distributed
(mean 0.75, sd 0.25 in the baseline) and arrives minutes after its trace, on a line of
its own, the way LLM-judge scores reach Langfuse.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

START = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


@dataclass(frozen=True)
class StreamScenario:
    """What differs between the arms."""

    score_shift: float = 0.0  # canary mean helpfulness minus baseline's
    canary_error_rate: float = 0.01
    canary_cost_factor: float = 1.0
    canary_latency_factor: float = 1.0


SCENARIOS = {
    "good": StreamScenario(score_shift=0.03),
    "neutral": StreamScenario(),
    "bad": StreamScenario(score_shift=-0.08, canary_error_rate=0.03),
    "very-bad": StreamScenario(score_shift=-0.2, canary_error_rate=0.1),
    "slow": StreamScenario(canary_latency_factor=1.6),
}


def beta_params(mean: float, sd: float) -> tuple[float, float]:
    """Beta shape parameters with the given mean and standard deviation."""
    mean = min(max(mean, 0.05), 0.95)
    k = mean * (1 - mean) / (sd * sd) - 1
    return mean * k, (1 - mean) * k


def _ts(seconds: float) -> str:
    moment = START + timedelta(seconds=seconds)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def generate(
    scenario: StreamScenario,
    minutes: float,
    seed: int,
    *,
    per_minute: float = 100.0,
    canary_share: float = 0.1,
    score_delay_s: float = 90.0,
) -> Iterator[str]:
    """Lines of a stream, in time order: traces, and their scores when they arrive."""
    rng = random.Random(seed)
    baseline_ab = beta_params(0.75, 0.25)
    canary_ab = beta_params(0.75 + scenario.score_shift, 0.25)
    late: list[tuple[float, int, str]] = []
    t = 0.0
    count = 0
    end = minutes * 60.0
    rate = per_minute / 60.0
    while True:
        t += rng.expovariate(rate)
        while late and late[0][0] <= min(t, end):
            yield heapq.heappop(late)[2]
        if t > end:
            break
        count += 1
        canary = rng.random() < canary_share
        error = rng.random() < (scenario.canary_error_rate if canary else 0.01)
        latency = rng.lognormvariate(math.log(800.0), 0.5)
        cost = rng.lognormvariate(math.log(0.002), 1.0)
        if rng.random() < 0.01:
            latency *= 10
            cost *= 10
        if canary:
            latency *= scenario.canary_latency_factor
            cost *= scenario.canary_cost_factor
        trace_id = f"t-{seed}-{count}"
        record = {
            "ts": _ts(t),
            "arm": "canary" if canary else "baseline",
            "trace_id": trace_id,
            "error": error,
            "latency_ms": round(latency, 1),
            "cost_usd": round(cost, 6),
        }
        yield json.dumps(record, separators=(",", ":"))
        if not error:
            a, b = canary_ab if canary else baseline_ab
            arrival = t + rng.expovariate(1.0 / score_delay_s)
            score = {
                "ts": _ts(arrival),
                "trace_id": trace_id,
                "scores": {"helpfulness": round(rng.betavariate(a, b), 4)},
            }
            heapq.heappush(late, (arrival, count, json.dumps(score, separators=(",", ":"))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="bad")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--per-minute", type=float, default=100.0)
    parser.add_argument("--canary-share", type=float, default=0.1)
    args = parser.parse_args(argv)
    out = sys.stdout
    for line in generate(
        SCENARIOS[args.scenario],
        args.minutes,
        args.seed,
        per_minute=args.per_minute,
        canary_share=args.canary_share,
    ):
        out.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
