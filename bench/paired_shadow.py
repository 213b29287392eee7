"""Seeded decision quality of the paired test: the shadow rung and the dataset gate.

    python -m bench.paired_shadow [--runs 2000] [--dataset-runs 2000] [--seed 1]
                                  [--unpaired-runs N] [--workers 2] [--out bench/out/paired]

**Shadow.** Live traffic is the 50 / 50 table's (``bench.scenarios.TRAFFIC["50/50"]``): 100
requests a minute, Poisson, all answered by the baseline; a share of them (100% or 10%) is
mirrored to the candidate. Every request has an input difficulty shared by both answers:
the two scores are the scenario Beta's quantiles (mean 0.75, sd 0.25, J-shaped; the
candidate's mean shifted by the scenario's effect) of two correlated standard normals,
their correlation set so that the two *scores* correlate at rho. Each call fails with
probability 0.01 (the canary harness's error rate), independently per side, and a failed
side takes the worst score, 0. Scores arrive after an exponential delay of mean 2 minutes
per side, as in ``bench.scenarios``; a pair counts once both sides are in. Scenarios:
neutral, neutral with the canary harness's drift (score mean +0.05 sin(2 pi t / 120 min),
traffic ±50%, the same for both sides), the worst-case null (the candidate 0.02 worse
with a tolerance of 0.02) and a -0.05 regression. The paired test looks every minute for
up to 120 minutes; the rung ends at its first pass or block. ``ever blocked`` keeps
looking after a pass, up to 120 minutes, the quantity the guarantee bounds.

The unpaired canary is coalmine's judge (``bench.coalmine_method.CoalmineJudge``, the
benchmark policy) on the same simulated traffic: at 10% mirrored the mirrored requests
are the canary's (10 / 90 traces a minute), at 100% a random half (the 50 / 50 table's
split); the canary's users get the candidate's answers. Its scores are those of the same
requests with the same delays; a failed call is an error trace, never scored (its error
rate is a metric of its own). It runs on the rho = 0.5 runs (``--unpaired-runs`` of them):
it sees one answer per request, so rho does not change what it sees.

**Dataset gate.** Seeded datasets of 50, 200 and 1,000 items, both versions scored on
every item with the same shared difficulty and failure rate; one paired test once every
item is scored (tolerance 0.02), next to a naive rule that blocks when the candidate's
mean dropped by more than the tolerance.

Run ``i`` of a cell uses ``numpy.random.default_rng([seed, cell, i])``. Writes Markdown
tables to stdout and ``<out>/paired_shadow.md``, and the figures to
``<out>/paired_shadow.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
from scipy import special

from bench.coalmine_method import CoalmineJudge
from bench.scenarios import (
    BASE_ERROR_RATE,
    BASE_SCORE_MEAN,
    BASE_SCORE_SD,
    COST_MEDIAN_USD,
    COST_SIGMA_LOG,
    DRIFT_AMPLITUDE,
    DRIFT_PERIOD_MINUTES,
    LATENCY_MEDIAN_MS,
    LATENCY_SIGMA_LOG,
    MAIN_SCORE,
    SCORE_DELAY_MINUTES,
    TAIL_FACTOR,
    TAIL_SHARE,
    TRAFFIC,
    TRAFFIC_SWING,
    Run,
    beta_params,
)
from controller.judge import PairedSettings, PairedSums, Verdict, paired_test

RATE = TRAFFIC["50/50"].total_rate  # requests a minute
RHOS = (0.3, 0.5, 0.7)
SHARES = (1.0, 0.1)
MINUTES = 120
ALPHA = 0.05
PROMOTE_TOLERANCE = 0.03
EFFECT = 0.05
GATE_TOLERANCE = 0.02
GATE_SIZES = (50, 200, 1000)
GATE_SHIFTS = (0.0, -0.02, -0.05, -0.10)
UNPAIRED_RHO = 0.5
# Quantile table of the score Beta: means on a 0.001 grid, normal scores on a fine grid.
_MEAN_LOW, _MEAN_STEP, _MEANS = 0.55, 0.001, 301
_Z_LOW, _Z_HIGH, _Z_POINTS = -6.0, 6.0, 2049


@dataclass(frozen=True)
class ShadowScenario:
    name: str
    truth: str  # "null" or "bad"
    shift: float  # candidate mean minus baseline mean
    tolerance: float
    drift: bool
    description: str


SHADOW_SCENARIOS = (
    ShadowScenario("neutral", "null", 0.0, 0.0, False, "no difference"),
    ShadowScenario("neutral-drift", "null", 0.0, 0.0, True, "shared drift of score and traffic"),
    ShadowScenario(
        "worst-case-null", "null", -0.02, 0.02, False, "candidate -0.02, tolerance 0.02"
    ),
    ShadowScenario("regression", "bad", -0.05, 0.0, False, "candidate -0.05"),
)


# -- scores ---------------------------------------------------------------------------------


@cache
def _table() -> np.ndarray:
    means = _MEAN_LOW + _MEAN_STEP * np.arange(_MEANS)
    a, b = beta_params(means, BASE_SCORE_SD)
    p = special.ndtr(np.linspace(_Z_LOW, _Z_HIGH, _Z_POINTS))
    table: np.ndarray = special.betaincinv(np.asarray(a)[:, None], np.asarray(b)[:, None], p)
    return table


def beta_scores(mean: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The Beta(mean, 0.25) quantile at ``Phi(z)``: the scenario's score with rank ``z``.

    The mean is rounded to the table's 0.001 grid (both sides of a pair the same way).
    """
    table = _table()
    row = np.clip(np.rint((mean - _MEAN_LOW) / _MEAN_STEP).astype(np.int64), 0, _MEANS - 1)
    step = (_Z_HIGH - _Z_LOW) / (_Z_POINTS - 1)
    x = np.clip((z - _Z_LOW) / step, 0.0, _Z_POINTS - 1.000001)
    col = x.astype(np.int64)
    frac = x - col
    values: np.ndarray = table[row, col] * (1.0 - frac) + table[row, col + 1] * frac
    return values


@cache
def latent_correlation(rho: float) -> float:
    """The normals' correlation that gives the two scores a correlation of ``rho``."""
    rng = np.random.default_rng(20261207)
    u, e1, e2 = rng.standard_normal((3, 200_000))
    mean = np.full(u.size, BASE_SCORE_MEAN)
    low, high = rho, min(1.0, rho + 0.3)
    for _ in range(40):
        r = (low + high) / 2.0
        x = beta_scores(mean, math.sqrt(r) * u + math.sqrt(1.0 - r) * e1)
        y = beta_scores(mean, math.sqrt(r) * u + math.sqrt(1.0 - r) * e2)
        if float(np.corrcoef(x, y)[0, 1]) < rho:
            low = r
        else:
            high = r
    return (low + high) / 2.0


def _pair_scores(
    rng: np.random.Generator, mean: np.ndarray, shift: float, rho: float
) -> tuple[np.ndarray, np.ndarray]:
    """(candidate, baseline) scores of the same inputs, correlated at ``rho``."""
    r = latent_correlation(rho)
    u, e_b, e_c = rng.standard_normal((3, mean.size))
    baseline = beta_scores(mean, math.sqrt(r) * u + math.sqrt(1.0 - r) * e_b)
    candidate = beta_scores(mean + shift, math.sqrt(r) * u + math.sqrt(1.0 - r) * e_c)
    return candidate, baseline


# -- shadow runs ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ShadowRun:
    """Every request of one release's shadow rung, in time order."""

    ts: np.ndarray
    candidate: np.ndarray  # the mirrored copy's score, 0 when its call failed
    baseline: np.ndarray  # the primary's score, 0 when its call failed
    candidate_failed: np.ndarray
    baseline_failed: np.ndarray
    candidate_seen: np.ndarray  # when the score (or the failure) is known
    baseline_seen: np.ndarray
    mirror_draw: np.ndarray  # uniform: mirrored when below the share
    half: np.ndarray  # the unpaired canary's half at 50 / 50
    cost: np.ndarray
    latency: np.ndarray


def draw_shadow(rng: np.random.Generator, scenario: ShadowScenario, rho: float) -> ShadowRun:
    horizon = 60.0 * MINUTES
    peak = 1.0 + TRAFFIC_SWING if scenario.drift else 1.0
    n = rng.poisson(RATE * MINUTES * peak)
    ts = rng.random(n) * horizon
    phase = np.sin(2.0 * np.pi * ts / (60.0 * DRIFT_PERIOD_MINUTES))
    if scenario.drift:
        keep = rng.random(n) * peak < 1.0 + TRAFFIC_SWING * phase
        ts, phase = ts[keep], phase[keep]
    order = np.argsort(ts)
    ts, phase = ts[order], phase[order]
    n = ts.size
    mean = BASE_SCORE_MEAN + (DRIFT_AMPLITUDE * phase if scenario.drift else np.zeros(n))
    candidate, baseline = _pair_scores(rng, mean, scenario.shift, rho)
    candidate_failed = rng.random(n) < BASE_ERROR_RATE
    baseline_failed = rng.random(n) < BASE_ERROR_RATE
    delay = 60.0 * SCORE_DELAY_MINUTES
    candidate_seen = np.where(candidate_failed, ts, ts + rng.exponential(delay, n))
    baseline_seen = np.where(baseline_failed, ts, ts + rng.exponential(delay, n))
    tail = np.where(rng.random((2, n)) < TAIL_SHARE, TAIL_FACTOR, 1.0)
    cost = COST_MEDIAN_USD * np.exp(COST_SIGMA_LOG * rng.standard_normal(n)) * tail[0]
    latency = LATENCY_MEDIAN_MS * np.exp(LATENCY_SIGMA_LOG * rng.standard_normal(n)) * tail[1]
    return ShadowRun(
        ts=ts,
        candidate=np.where(candidate_failed, 0.0, candidate),
        baseline=np.where(baseline_failed, 0.0, baseline),
        candidate_failed=candidate_failed,
        baseline_failed=baseline_failed,
        candidate_seen=candidate_seen,
        baseline_seen=baseline_seen,
        mirror_draw=rng.random(n),
        half=rng.random(n) < 0.5,
        cost=cost,
        latency=latency,
    )


@dataclass(frozen=True)
class Outcome:
    decision: str  # "block", "pass" or "none"
    minute: float | None
    ever_blocked: bool  # blocked at any look in 120 minutes, passes notwithstanding


def _per_look(seen: np.ndarray, *columns: np.ndarray) -> list[np.ndarray]:
    """Cumulative sums of each column over the looks (minutes 1..120) that see them."""
    look = np.maximum(np.ceil(seen / 60.0), 1).astype(np.int64)
    inside = look <= MINUTES
    return [
        np.cumsum(np.bincount(look[inside], weights=c[inside], minlength=MINUTES + 1))
        for c in columns
    ]


def judge_shadow(
    run: ShadowRun, share: float, settings: PairedSettings, *, control: bool
) -> Outcome:
    """The paired test every minute, on the pairs whose both scores are in."""
    mirrored = run.mirror_draw < share
    c, b = run.candidate[mirrored], run.baseline[mirrored]
    d = c - b
    seen = np.maximum(run.candidate_seen, run.baseline_seen)[mirrored]
    ones = np.ones(d.size)
    n, sd, sdd, sb, sbb, sdb, cf, bf = _per_look(
        seen,
        ones,
        d,
        d * d,
        b,
        b * b,
        d * b,
        run.candidate_failed[mirrored].astype(float),
        run.baseline_failed[mirrored].astype(float),
    )
    u = run.baseline[~mirrored]
    m, su, suu = _per_look(run.baseline_seen[~mirrored], np.ones(u.size), u, u * u)
    decision, minute, ever = "none", None, False
    for k in range(1, MINUTES + 1):
        sums = PairedSums(
            pairs=int(n[k]),
            sum_d=float(sd[k]),
            sum_dd=float(sdd[k]),
            sum_b=float(sb[k]),
            sum_bb=float(sbb[k]),
            sum_db=float(sdb[k]),
            candidate_failed=int(cf[k]),
            baseline_failed=int(bf[k]),
            unmirrored=int(m[k]) if control else 0,
            sum_u=float(su[k]) if control else 0.0,
            sum_uu=float(suu[k]) if control else 0.0,
        )
        verdict = paired_test(sums, settings).verdict
        if verdict is Verdict.FAIL:
            ever = True
            if minute is None:
                decision, minute = "block", float(k)
            break
        if verdict is Verdict.PASS and minute is None:
            decision, minute = "pass", float(k)
    return Outcome(decision, minute, ever)


def unpaired_run(run: ShadowRun, share: float) -> Run:
    """The same traffic as a canary: at 10% the mirrored requests, at 100% half of them."""
    canary = run.mirror_draw < share if share < 1.0 else run.half
    error = np.where(canary, run.candidate_failed, run.baseline_failed)
    value = np.where(canary, run.candidate, run.baseline)
    seen = np.where(canary, run.candidate_seen, run.baseline_seen)
    return Run(
        minutes=MINUTES,
        canary_weight=share if share < 1.0 else 0.5,
        ts=run.ts,
        canary=canary,
        error=error,
        cost=run.cost,
        latency=run.latency,
        scores={MAIN_SCORE: np.where(error, np.nan, value)},
        score_arrival={MAIN_SCORE: np.where(error, np.inf, seen)},
    )


def judge_unpaired(run: ShadowRun, share: float, tolerance: float) -> tuple[Outcome, int]:
    """coalmine's canary judge on the same traffic, and the candidate answers its users got
    before the decision."""
    canary_run = unpaired_run(run, share)
    judged = CoalmineJudge(score_tolerance=tolerance, promote_tolerance=PROMOTE_TOLERANCE)
    outcome = judged.decide(canary_run)
    decision = {"rollback": "block", "promote": "pass"}.get(outcome.decision, "none")
    until = 60.0 * (MINUTES if outcome.minute is None else outcome.minute)
    exposed = int(np.count_nonzero(canary_run.canary & (canary_run.ts <= until)))
    return Outcome(decision, outcome.minute, decision == "block"), exposed


def shadow_settings(tolerance: float) -> PairedSettings:
    return PairedSettings(
        tolerance=tolerance, promote_tolerance=PROMOTE_TOLERANCE, effect=EFFECT, alpha=ALPHA
    )


# -- the shadow benchmark ---------------------------------------------------------------------

METHODS = ("paired-100", "canary-50/50", "paired-10", "paired-10-cv", "canary-10/90")


@dataclass(frozen=True)
class _Task:
    scenario: int
    rho: int
    seed: int
    indices: tuple[int, ...]
    unpaired: tuple[int, ...]  # the indices also judged by the canary judge


@dataclass(frozen=True)
class _Result:
    scenario: int
    rho: int
    outcomes: dict[str, list[Outcome]]
    exposed: dict[str, list[int]]


def _run_task(task: _Task) -> _Result:
    scenario = SHADOW_SCENARIOS[task.scenario]
    settings = shadow_settings(scenario.tolerance)
    outcomes: dict[str, list[Outcome]] = {m: [] for m in METHODS}
    exposed: dict[str, list[int]] = {m: [] for m in METHODS}
    for i in task.indices:
        rng = np.random.default_rng([task.seed, task.scenario, task.rho, i])
        run = draw_shadow(rng, scenario, RHOS[task.rho])
        outcomes["paired-100"].append(judge_shadow(run, 1.0, settings, control=False))
        outcomes["paired-10"].append(judge_shadow(run, 0.1, settings, control=False))
        outcomes["paired-10-cv"].append(judge_shadow(run, 0.1, settings, control=True))
        if i in task.unpaired:
            for name, share in (("canary-50/50", 1.0), ("canary-10/90", 0.1)):
                outcome, users = judge_unpaired(run, share, scenario.tolerance)
                outcomes[name].append(outcome)
                exposed[name].append(users)
    return _Result(task.scenario, task.rho, outcomes, exposed)


@dataclass(frozen=True)
class ShadowRow:
    scenario: str
    truth: str
    rho: float
    method: str
    runs: int
    block: float
    block_se: float
    block_minutes_median: float | None
    block_minutes_p90: float | None
    passed: float
    pass_minutes_median: float | None
    ever_blocked: float
    users_exposed_median: float | None


def _median(x: list[float], q: float = 50.0) -> float | None:
    return float(np.percentile(x, q)) if x else None


def shadow_rows(runs: int, unpaired_runs: int, seed: int, workers: int) -> list[ShadowRow]:
    chunk = max(1, min(50, math.ceil(runs / (4 * max(workers, 1)))))
    unpaired = tuple(range(min(unpaired_runs, runs)))
    tasks = [
        _Task(
            s,
            r,
            seed,
            tuple(range(i, min(i + chunk, runs))),
            unpaired if RHOS[r] == UNPAIRED_RHO else (),
        )
        for s in range(len(SHADOW_SCENARIOS))
        for r in range(len(RHOS))
        for i in range(0, runs, chunk)
    ]
    if workers <= 1:
        results = [_run_task(t) for t in tasks]
    else:
        with multiprocessing.get_context().Pool(workers) as pool:
            results = pool.map(_run_task, tasks, chunksize=1)
    rows = []
    for s, scenario in enumerate(SHADOW_SCENARIOS):
        for r, rho in enumerate(RHOS):
            parts = [x for x in results if x.scenario == s and x.rho == r]
            for method in METHODS:
                got = [o for p in parts for o in p.outcomes[method]]
                if not got:
                    continue
                exposed = [e for p in parts for e in p.exposed[method]]
                rows.append(_shadow_row(scenario, rho, method, got, exposed))
    return rows


def _shadow_row(
    scenario: ShadowScenario, rho: float, method: str, got: list[Outcome], exposed: list[int]
) -> ShadowRow:
    n = len(got)
    block = [o.minute for o in got if o.decision == "block" and o.minute is not None]
    passed = [o.minute for o in got if o.decision == "pass" and o.minute is not None]
    p = len(block) / n
    return ShadowRow(
        scenario=scenario.name,
        truth=scenario.truth,
        rho=rho,
        method=method,
        runs=n,
        block=p,
        block_se=math.sqrt(p * (1.0 - p) / n),
        block_minutes_median=_median(block),
        block_minutes_p90=_median(block, 90.0),
        passed=len(passed) / n,
        pass_minutes_median=_median(passed),
        ever_blocked=sum(o.ever_blocked for o in got) / n,
        users_exposed_median=float(np.median(exposed)) if exposed else 0.0,
    )


# -- the dataset gate -------------------------------------------------------------------------


@dataclass(frozen=True)
class GateRow:
    items: int
    shift: float
    rho: float
    runs: int
    paired_block: float
    paired_pass: float
    naive_block: float


def gate_rows(runs: int, seed: int) -> list[GateRow]:
    settings = PairedSettings(
        tolerance=GATE_TOLERANCE, promote_tolerance=PROMOTE_TOLERANCE, effect=EFFECT, alpha=ALPHA
    )
    rows = []
    for size_index, items in enumerate(GATE_SIZES):
        for shift_index, shift in enumerate(GATE_SHIFTS):
            for rho_index, rho in enumerate(RHOS):
                rng = np.random.default_rng([seed, 100 + size_index, shift_index, rho_index])
                mean = np.full((runs, items), BASE_SCORE_MEAN)
                candidate, baseline = _pair_scores(rng, mean.ravel(), shift, rho)
                failed = rng.random((2, runs * items)) < BASE_ERROR_RATE
                c = np.where(failed[0], 0.0, candidate).reshape(runs, items)
                b = np.where(failed[1], 0.0, baseline).reshape(runs, items)
                d = c - b
                verdicts = [
                    paired_test(
                        PairedSums(
                            pairs=items,
                            sum_d=float(d[i].sum()),
                            sum_dd=float((d[i] * d[i]).sum()),
                            sum_b=float(b[i].sum()),
                            sum_bb=float((b[i] * b[i]).sum()),
                            sum_db=float((d[i] * b[i]).sum()),
                        ),
                        settings,
                    ).verdict
                    for i in range(runs)
                ]
                naive = d.mean(axis=1) < -GATE_TOLERANCE
                rows.append(
                    GateRow(
                        items=items,
                        shift=shift,
                        rho=rho,
                        runs=runs,
                        paired_block=sum(v is Verdict.FAIL for v in verdicts) / runs,
                        paired_pass=sum(v is Verdict.PASS for v in verdicts) / runs,
                        naive_block=float(naive.mean()),
                    )
                )
    return rows


# -- report -----------------------------------------------------------------------------------


def _cell(row: ShadowRow) -> str:
    if row.block == 0.0:
        return "0.0%"
    return f"{100 * row.block:.1f}% ({row.block_minutes_median:.0f})"


def shadow_markdown(rows: Sequence[ShadowRow]) -> list[str]:
    by = {(r.scenario, r.rho, r.method): r for r in rows}
    lines: list[str] = []
    for share, paired, canary in (
        ("100%", ("paired-100",), "canary-50/50"),
        ("10%", ("paired-10", "paired-10-cv"), "canary-10/90"),
    ):
        head = " | ".join(f"{m} blocked (median min) | {m} passed" for m in paired)
        lines += [
            f"Mirrored share {share}. Cells: share of runs blocked (median minutes to the "
            "block); passed: the rung passed (median minutes); ever blocked: blocked at some "
            f"look in {MINUTES} minutes had the rung kept looking after a pass. {canary}: the "
            f"unpaired canary on the same traffic (rho = {UNPAIRED_RHO} runs), rolled back "
            "(median minutes), and the candidate answers its users got before its decision "
            "(median).",
            "",
            f"| scenario | rho | {head} | ever blocked | {canary} rolled back | users exposed |",
            "| --- | --- |" + " --- | --- |" * len(paired) + " --- | --- | --- |",
        ]
        for scenario in SHADOW_SCENARIOS:
            for rho in RHOS:
                cells = []
                for m in paired:
                    r = by[scenario.name, rho, m]
                    passed = f"{100 * r.passed:.1f}%"
                    if r.pass_minutes_median is not None:
                        passed += f" ({r.pass_minutes_median:.0f})"
                    cells += [_cell(r), passed]
                ever = by[scenario.name, rho, paired[-1]].ever_blocked
                c = by.get((scenario.name, rho, canary))
                canary_cells = (
                    [_cell(c), f"{c.users_exposed_median:.0f}"] if c is not None else ["", ""]
                )
                lines.append(
                    f"| {scenario.name} | {rho} | "
                    + " | ".join(cells)
                    + f" | {100 * ever:.1f}% | "
                    + " | ".join(canary_cells)
                    + " |"
                )
        lines.append("")
    return lines


def gate_markdown(rows: Sequence[GateRow]) -> list[str]:
    lines = [
        f"Dataset gate, tolerance {GATE_TOLERANCE}: share of datasets blocked by the paired "
        f"test (passed), and by the naive rule \"candidate mean below baseline's by more than "
        f'{GATE_TOLERANCE}". Shift 0 and -0.02 are nulls (false blocks), -0.05 and -0.10 '
        "regressions (power).",
        "",
        "| items | shift | rho | paired blocked | paired passed | naive blocked |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.items} | {r.shift:+.2f} | {r.rho} | {100 * r.paired_block:.1f}% "
            f"| {100 * r.paired_pass:.1f}% | {100 * r.naive_block:.1f}% |"
        )
    return lines


def goals_markdown(rows: Sequence[ShadowRow]) -> list[str]:
    paired_methods = ("paired-100", "paired-10", "paired-10-cv")
    nulls = [r for r in rows if r.truth == "null" and r.method in paired_methods]
    worst = max(nulls, key=lambda r: r.ever_blocked, default=None)
    fast = [
        r for r in rows if r.scenario == "regression" and r.method == "paired-100" and r.rho >= 0.5
    ]
    lines = ["| goal | measured | met |", "| --- | --- | --- |"]
    if worst is not None:
        lines.append(
            f"| false blocks <= {ALPHA:.0%} on neutral, drift, worst-case null (ever blocked) "
            f"| highest {100 * worst.ever_blocked:.1f}% ({worst.scenario}, rho {worst.rho}, "
            f"{worst.method}) | {'yes' if worst.ever_blocked <= ALPHA else 'no'} |"
        )
    for r in fast:
        median = r.block_minutes_median
        ok = r.block >= 0.95 and median is not None and median <= 8
        lines.append(
            f"| -0.05 at 100% mirrored, rho {r.rho}: caught >= 95%, median <= 8 min "
            f"| {100 * r.block:.1f}%, {_minutes(median)} | {'yes' if ok else 'no'} |"
        )
    canary = next(
        (r for r in rows if r.scenario == "regression" and r.method == "canary-10/90"), None
    )
    for r in rows:
        if r.scenario != "regression" or r.method != "paired-10-cv" or canary is None:
            continue
        a, b = r.block_minutes_median, canary.block_minutes_median
        ok = a is not None and b is not None and a < b and r.block >= 0.95
        lines.append(
            f"| -0.05 at 10% mirrored, rho {r.rho}: caught >= 95%, median faster than the "
            "unpaired 10 / 90 canary (control variate) "
            f"| {_minutes(a)} ({100 * r.block:.1f}%) vs {_minutes(b)} "
            f"({100 * canary.block:.1f}%) | {'yes' if ok else 'no'} |"
        )
    return lines


def _minutes(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f} min"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench.paired_shadow", description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--unpaired-runs", type=int, default=None, help="default: --runs")
    parser.add_argument("--dataset-runs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/out/paired"))
    args = parser.parse_args(argv)
    unpaired_runs = args.runs if args.unpaired_runs is None else args.unpaired_runs

    t0 = time.perf_counter()
    shadow = shadow_rows(args.runs, unpaired_runs, args.seed, args.workers)
    gate = gate_rows(args.dataset_runs, args.seed)
    wall = time.perf_counter() - t0
    command = shlex.join(["python", "-m", "bench.paired_shadow", *argv])
    correlations = {rho: round(latent_correlation(rho), 4) for rho in RHOS}
    lines = [
        "# Paired shadow test and dataset gate",
        "",
        f"Command: `{command}`; {args.runs} runs per shadow cell ({unpaired_runs} for the "
        f"unpaired canary), {args.dataset_runs} datasets per gate cell; wall time {wall:.0f} s "
        f"on {args.workers} worker(s). Traffic {RATE:g} requests a minute; alpha {ALPHA}, "
        f"promotion margin {PROMOTE_TOLERANCE}, effect {EFFECT}, at least 30 pairs. Latent "
        f"normal correlations for score correlations rho: {correlations}.",
        "",
        *goals_markdown(shadow),
        "",
        *shadow_markdown(shadow),
        *gate_markdown(gate),
    ]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "paired_shadow.md").write_text(text + "\n")
    payload = {
        "command": command,
        "runs": args.runs,
        "unpaired_runs": unpaired_runs,
        "dataset_runs": args.dataset_runs,
        "seed": args.seed,
        "requests_per_minute": RATE,
        "wall_seconds": wall,
        "latent_correlation": {str(k): v for k, v in correlations.items()},
        "shadow": [asdict(r) for r in shadow],
        "dataset_gate": [asdict(r) for r in gate],
    }
    (args.out / "paired_shadow.json").write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
