"""Seeded decision-quality benchmark: every method on the same runs of every scenario.

    python -m bench.harness [--runs 2000] [--seed 1] [--scenarios a,b] [--methods x,y]
                            [--traffic 10/90|50/50] [--out bench/out] [--workers 2]
                            [--sampled-from N]

Run i of a scenario uses ``numpy.random.default_rng(seed * 1_000_003 + i)``; the run is generated
once and handed to every method. Writes a Markdown table per scenario to stdout and to
``<out>/decision_quality.md``, and the rows to ``<out>/decision_quality.json``.

``bench.coalmine_method.CoalmineJudge`` joins the default methods when that module imports.

``--sampled-from N``: sampled reads at N requests a minute in all. The traces of a run (the
traffic's traces a minute per arm) are the score sample, and the proxies' counts of all N
requests come with the run (``bench.scenarios.SimulatedProxyCounts``), drawn after the traces so
that the traces are those of the run without the option. coalmine judges with traffic,
errors and latency from those counts; the other methods see the traces only, as before.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import multiprocessing
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.baselines import Method, OracleSPRT, baseline_methods
from bench.scenarios import SCENARIOS, TRAFFIC, Traffic

SEED_STRIDE = 1_000_003
DECISIONS = ("rollback", "promote", "pause", "none")
ORACLE_NAME = OracleSPRT.name
# Efficiency is only reported when both the oracle and the method detect the regression in at
# least this share of runs; a ratio of mean times over a few false alarms means nothing.
EFFICIENCY_MIN_DETECTION = 0.5


@dataclass(frozen=True)
class Row:
    scenario: str
    truth: str
    method: str
    runs: int
    rollback: float
    rollback_se: float
    promote: float
    promote_se: float
    pause: float
    pause_se: float
    undecided: float
    undecided_se: float
    rollback_minutes_median: float | None
    rollback_minutes_p90: float | None
    rollback_minutes_mean: float | None
    promote_minutes_median: float | None
    promote_minutes_p90: float | None
    efficiency: float | None
    ms_per_run: float


@dataclass(frozen=True)
class _Task:
    scenario: str
    traffic: Traffic
    minutes: int
    seeds: tuple[int, ...]
    methods: tuple[Method, ...]


@dataclass(frozen=True)
class _Result:
    scenario: str
    seeds: tuple[int, ...]
    decisions: dict[str, list[str]]
    minutes: dict[str, list[float]]
    seconds: dict[str, float]
    generate_seconds: float


def _run_task(task: _Task) -> _Result:
    scenario = SCENARIOS[task.scenario]
    names = [m.name for m in task.methods]
    decisions: dict[str, list[str]] = {n: [] for n in names}
    minutes: dict[str, list[float]] = {n: [] for n in names}
    seconds = dict.fromkeys(names, 0.0)
    generate_seconds = 0.0
    for seed in task.seeds:
        t0 = time.perf_counter()
        run = scenario.make_run(np.random.default_rng(seed), task.traffic, task.minutes)
        generate_seconds += time.perf_counter() - t0
        for method, name in zip(task.methods, names, strict=True):
            t0 = time.perf_counter()
            outcome = method.decide(run)
            seconds[name] += time.perf_counter() - t0
            decisions[name].append(outcome.decision)
            minutes[name].append(math.nan if outcome.minute is None else float(outcome.minute))
    return _Result(task.scenario, task.seeds, decisions, minutes, seconds, generate_seconds)


@dataclass
class Timing:
    wall_seconds: float = 0.0
    generate_ms_per_run: float = 0.0


def run_benchmark(
    methods: Sequence[Method],
    scenarios: Iterable[str],
    runs: int,
    seed: int,
    workers: int = 2,
    *,
    traffic: Traffic | None = None,
    minutes: int = 120,
    timing: Timing | None = None,
) -> list[Row]:
    """Apply every method to the same ``runs`` seeded runs of each scenario."""
    traffic = traffic or TRAFFIC["10/90"]
    names = [m.name for m in methods]
    scenario_names = list(scenarios)
    _check_names(names, scenario_names)
    seeds = [seed * SEED_STRIDE + i for i in range(runs)]
    chunk = max(1, min(100, math.ceil(runs / (4 * max(workers, 1)))))
    tasks = [
        _Task(s, traffic, minutes, tuple(seeds[i : i + chunk]), tuple(methods))
        for s in scenario_names
        for i in range(0, runs, chunk)
    ]
    t0 = time.perf_counter()
    results = _run_tasks(tasks, workers)
    if timing is not None:
        timing.wall_seconds = time.perf_counter() - t0
        total_runs = max(1, runs * len(scenario_names))
        timing.generate_ms_per_run = 1e3 * sum(r.generate_seconds for r in results) / total_runs
    rows: list[Row] = []
    for s in scenario_names:
        rows += _scenario_rows(s, names, [r for r in results if r.scenario == s])
    return rows


def _check_names(methods: Sequence[str], scenarios: Sequence[str]) -> None:
    if len(set(methods)) != len(methods):
        raise ValueError(f"method names must be unique: {list(methods)}")
    for s in scenarios:
        if s not in SCENARIOS:
            raise ValueError(f"unknown scenario {s!r}; known: {', '.join(SCENARIOS)}")


def _run_tasks(tasks: Sequence[_Task], workers: int) -> list[_Result]:
    if workers <= 1:
        return [_run_task(t) for t in tasks]
    with multiprocessing.get_context().Pool(workers) as pool:
        return pool.map(_run_task, tasks, chunksize=1)


def _scenario_rows(scenario: str, names: Sequence[str], parts: Sequence[_Result]) -> list[Row]:
    """One row per method, from the results of one scenario's tasks."""
    per_method = {}
    for name in names:
        dec = np.array([d for r in parts for d in r.decisions[name]])
        mins = np.array([m for r in parts for m in r.minutes[name]])
        per_method[name] = (dec, mins, sum(r.seconds[name] for r in parts))
    oracle_mean = None
    if ORACLE_NAME in per_method:
        dec, mins, _ = per_method[ORACLE_NAME]
        if np.mean(dec == "rollback") >= EFFICIENCY_MIN_DETECTION:
            oracle_mean = float(mins[dec == "rollback"].mean())
    return [
        _row(scenario, name, dec, mins, secs=secs, oracle_mean=oracle_mean)
        for name, (dec, mins, secs) in per_method.items()
    ]


def _quantile(x: np.ndarray, q: float) -> float | None:
    return float(np.percentile(x, q)) if x.size else None


def _row(
    scenario: str,
    method: str,
    dec: np.ndarray,
    mins: np.ndarray,
    *,
    secs: float,
    oracle_mean: float | None,
) -> Row:
    n = int(dec.size)
    rate = {d: float(np.mean(dec == d)) if n else 0.0 for d in DECISIONS}
    se = {d: math.sqrt(p * (1 - p) / n) if n else 0.0 for d, p in rate.items()}
    rb = mins[dec == "rollback"]
    pr = mins[dec == "promote"]
    truth = SCENARIOS[scenario].truth
    efficiency = None
    if (
        truth == "bad"
        and oracle_mean is not None
        and rb.size
        and rate["rollback"] >= EFFICIENCY_MIN_DETECTION
    ):
        efficiency = oracle_mean / float(rb.mean())
    return Row(
        scenario=scenario,
        truth=truth,
        method=method,
        runs=n,
        rollback=rate["rollback"],
        rollback_se=se["rollback"],
        promote=rate["promote"],
        promote_se=se["promote"],
        pause=rate["pause"],
        pause_se=se["pause"],
        undecided=rate["none"],
        undecided_se=se["none"],
        rollback_minutes_median=_quantile(rb, 50),
        rollback_minutes_p90=_quantile(rb, 90),
        rollback_minutes_mean=float(rb.mean()) if rb.size else None,
        promote_minutes_median=_quantile(pr, 50),
        promote_minutes_p90=_quantile(pr, 90),
        efficiency=efficiency,
        ms_per_run=1e3 * secs / max(n, 1),
    )


# -- report --------------------------------------------------------------------------------------


def _pct(p: float, se: float) -> str:
    return f"{100 * p:.1f}% ±{100 * se:.1f}"


def _num(x: float | None, fmt: str = "{:.0f}") -> str:
    return "" if x is None else fmt.format(x)


def _effects(scenario: str) -> str:
    eff = SCENARIOS[scenario].effects
    return ", ".join(f"{k} {v:+.3g}" for k, v in eff.items()) or "none"


def markdown(rows: Sequence[Row], header: Sequence[str]) -> str:
    lines = [*header, ""]
    for scenario in dict.fromkeys(r.scenario for r in rows):
        sc = SCENARIOS[scenario]
        lines += [
            f"### {scenario} (truth: {sc.truth}; effects: {_effects(scenario)})",
            "",
            sc.description,
            "",
            "| method | rollback | promote | pause | undecided | rollback min p50 / p90 "
            "| promote min p50 / p90 | efficiency | ms/run |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if r.scenario != scenario:
                continue
            lines.append(
                f"| {r.method} | {_pct(r.rollback, r.rollback_se)} "
                f"| {_pct(r.promote, r.promote_se)} | {_pct(r.pause, r.pause_se)} "
                f"| {_pct(r.undecided, r.undecided_se)} "
                f"| {_num(r.rollback_minutes_median)} / {_num(r.rollback_minutes_p90)} "
                f"| {_num(r.promote_minutes_median)} / {_num(r.promote_minutes_p90)} "
                f"| {_num(r.efficiency, '{:.2f}')} | {r.ms_per_run:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def sampled_note(requests_per_minute: int, traffic: Traffic) -> str:
    return (
        f"Sampled reads: {requests_per_minute:,} requests a minute in all, split by the canary "
        f"weight; the {traffic.label} traces a minute are their score sample. coalmine takes "
        "traffic, errors and latency from the proxies' counts of every request and scores and "
        "cost from the sample; the other methods see the sampled traces only, as in the run "
        "without sampled reads (their rows are that run's)."
    )


def default_methods() -> tuple[list[Method], str | None]:
    """The baselines plus ``bench.coalmine_method.CoalmineJudge`` when it imports; the second
    item is a warning when it does not."""
    methods = baseline_methods()
    try:
        module = importlib.import_module("bench.coalmine_method")
    except ImportError as exc:
        return methods, f"warning: coalmine method skipped: {exc}"
    methods.append(module.CoalmineJudge())
    return methods, None


def _split_arg(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench.harness", description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scenarios", help="comma-separated; default: all")
    parser.add_argument("--methods", help="comma-separated; default: all")
    parser.add_argument("--traffic", choices=sorted(TRAFFIC), default="10/90")
    parser.add_argument("--minutes", type=int, default=120)
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--sampled-from",
        type=int,
        metavar="N",
        help="sampled reads: N requests a minute in all, of which --traffic gives the sampled "
        "traces a minute per arm",
    )
    args = parser.parse_args(argv)

    methods, warning = default_methods()
    if warning:
        print(warning, file=sys.stderr)
    wanted = _split_arg(args.methods)
    if wanted is not None:
        by_name = {m.name: m for m in methods}
        unknown = [w for w in wanted if w not in by_name]
        if unknown:
            parser.error(f"unknown methods {unknown}; available: {', '.join(by_name)}")
        methods = [by_name[w] for w in wanted]
    scenarios = _split_arg(args.scenarios) or list(SCENARIOS)
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; available: {', '.join(SCENARIOS)}")

    timing = Timing()
    rows = run_benchmark(
        methods,
        scenarios,
        args.runs,
        args.seed,
        args.workers,
        traffic=dataclasses.replace(TRAFFIC[args.traffic], sampled_from=args.sampled_from),
        minutes=args.minutes,
        timing=timing,
    )
    command = shlex.join(["python", "-m", "bench.harness", *argv])
    header = [
        "# Decision quality",
        "",
        f"Command: `{command}`",
        "",
        f"Runs per scenario: {args.runs}; seeds {args.seed} * {SEED_STRIDE} + i; "
        f"traffic {args.traffic} traces/min (canary/baseline); {args.minutes} one-minute looks. "
        f"Wall time {timing.wall_seconds:.1f} s on {args.workers} worker(s); "
        f"run generation {timing.generate_ms_per_run:.2f} ms/run.",
        "",
        "Rates are shares of runs ± one standard error. Minutes are to the decision. "
        f"Efficiency (bad-truth scenarios): {ORACLE_NAME} mean minutes to rollback / method mean "
        f"minutes to rollback, shown when both roll back in ≥ "
        f"{EFFICIENCY_MIN_DETECTION:.0%} of runs. ms/run: the method's CPU time per run.",
    ]
    if args.sampled_from is not None:
        header += ["", sampled_note(args.sampled_from, TRAFFIC[args.traffic])]
    if warning:
        header += ["", warning]
    text = markdown(rows, header)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decision_quality.md").write_text(text + "\n")
    payload = {
        "command": command,
        "runs": args.runs,
        "seed": args.seed,
        "traffic": args.traffic,
        "minutes": args.minutes,
        "sampled_from": args.sampled_from,
        "wall_seconds": timing.wall_seconds,
        "generate_ms_per_run": timing.generate_ms_per_run,
        "rows": [asdict(r) for r in rows],
    }
    (args.out / "decision_quality.json").write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
