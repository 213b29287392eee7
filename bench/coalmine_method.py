"""coalmine's judge as a benchmark method: the production judge on simulated releases.

The run's traces are aggregated with numpy into the batches the judge keeps anyway
(count, sum and sum of squares per minute cell and arm; latency sketch bins), fed to an
``Evidence`` in time order, and judged at the end of every minute with the same
``judge`` the controller calls. Per-trace ingestion gives the same evidence (a test
checks it); batches only make 2,000 runs per scenario affordable.

A run that comes with the proxies' counts (``Run.proxy``, sampled reads) is judged with
``Evidence(traffic_from_proxy=True)``: each minute's counts of every request go in once
the minute has ended (``add_proxy_minute``: traffic, errors, latency), and the run's
traces, the score sample, bring only scores, cost and the traces found for the
trace-loss check.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from bench.baselines import Outcome
from bench.scenarios import Run, SimulatedProxyCounts
from controller.judge import Decision, Evidence, StepStatus, judge
from controller.judge.evidence import COST_FLOOR_USD, LOG_BIN_BASE
from policies import Policy, load_policy_text
from policies.domain import Arm

SCORE_TIMEOUT = "30m"

POLICY_TEMPLATE = """
apiVersion: coalmine/v1
kind: Release
name: bench
target: {{prompt: {{name: bench}}}}
steps:
  - {{weight: {weight}, minDuration: {min_duration}, maxDuration: {max_duration}}}
analysis:
  interval: 60s
  alpha: 0.05
  minSamples: 20
  onMaxDuration: {on_max}
  scoreTimeout: {timeout}
  metrics:
{metrics}
"""


def bench_policy(
    run: Run,
    *,
    score_tolerance: float = 0.0,
    promote_tolerance: float = 0.03,
    on_max: str = "pause",
    min_duration: str = "0s",
    max_duration: str = "120m",
) -> Policy:
    """The policy an SRE would write for the simulated release.

    Roll back on any drop shown in a critical score or the error rate (tolerance 0);
    promote once every metric is shown no worse than its promotion tolerance; at two
    hours without a decision, pause for a human.
    """
    lines = []
    for name, values in run.scores.items():
        boolean = bool(np.all(np.isnan(values) | (values == 0.0) | (values == 1.0)))
        kind = "boolean" if boolean else "numeric"
        weight = 4 if name == "helpfulness" else 1
        lines.append(
            f"    - {{name: {name}, source: score, score: {name}, scoreType: {kind}, "
            f"tolerance: {score_tolerance}, promoteTolerance: {promote_tolerance}, "
            f"effectSize: 0.05, critical: true, alphaWeight: {weight}}}"
        )
    lines.append(
        "    - {name: errors, source: error_rate, tolerance: 0.0, promoteTolerance: 0.02, "
        "effectSize: 0.02, critical: true}"
    )
    lines.append(
        "    - {name: cost, source: cost, tolerancePercent: 10, promoteTolerancePercent: 25, "
        "effectSize: 10}"
    )
    lines.append(
        "    - {name: latency, source: latency, quantile: 0.95, tolerancePercent: 20, "
        "promoteTolerancePercent: 50}"
    )
    text = POLICY_TEMPLATE.format(
        weight=round(run.canary_weight * 100, 4),
        min_duration=min_duration,
        max_duration=max_duration,
        on_max=on_max,
        timeout=SCORE_TIMEOUT,
        metrics="\n".join(lines),
    )
    return load_policy_text(text, "bench-policy.yaml")


Batches = dict[int, list[tuple[object, ...]]]  # look -> updates


def _moments_batches(
    batches: Batches,
    metric: str,
    *,
    look: np.ndarray,
    cell: np.ndarray,
    canary: np.ndarray,
    value: np.ndarray,
    harmful: np.ndarray | None,
) -> None:
    """Group observations by (look, cell, arm) and queue their moments."""
    if look.size == 0:
        return
    key = (look * 100_000 + cell) * 2 + canary.astype(np.int64)
    order = np.argsort(key, kind="stable")
    key = key[order]
    value = value[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    counts = np.diff(np.r_[starts, key.size])
    sums = np.add.reduceat(value, starts)
    squares = np.add.reduceat(value * value, starts)
    bad = np.add.reduceat(harmful[order].astype(np.int64), starts) if harmful is not None else None
    for i, start in enumerate(starts):
        k = int(key[start])
        arm = Arm.CANARY if k % 2 else Arm.BASELINE
        rest = k // 2
        moments = (int(counts[i]), float(sums[i]), float(squares[i]))
        harm = int(bad[i]) if bad is not None else 0
        batches[rest // 100_000].append(("m", metric, (0, rest % 100_000), arm, moments, harm))


@dataclass
class CoalmineJudge:
    """The production judge, looking every minute."""

    score_tolerance: float = 0.0
    promote_tolerance: float = 0.03
    on_max: str = "pause"
    label: str = "coalmine"

    @property
    def name(self) -> str:
        return self.label

    def decide(self, run: Run) -> Outcome:
        policy = bench_policy(
            run,
            score_tolerance=self.score_tolerance,
            promote_tolerance=self.promote_tolerance,
            on_max=self.on_max,
        )
        batches = self._batches(run, policy)
        proxy = run.proxy
        evidence = Evidence(policy, 0.0, traffic_from_proxy=proxy is not None)
        step = StepStatus(0, 0.0)
        for minute in range(1, run.minutes + 1):
            for update in batches.get(minute, ()):
                self._apply(evidence, update)
            now = minute * 60.0
            if proxy is None:
                evidence.advance(now)
            else:
                _add_proxy_minute(evidence, proxy, minute - 1)
                evidence.advance(now, traces_read_until=now)
            judgement = judge(policy, evidence, step, now)
            decision = judgement.decision
            if decision is Decision.CONTINUE:
                continue
            label = {
                Decision.ROLLBACK: "rollback",
                Decision.PROMOTE: "promote",
                Decision.ADVANCE: "promote",
                Decision.PAUSE: "pause",
            }[decision]
            return Outcome(label, float(minute), judgement.reason)  # type: ignore[arg-type]
        return Outcome("none", None, "")

    @staticmethod
    def _apply(evidence: Evidence, update: tuple[object, ...]) -> None:
        kind = update[0]
        if kind == "m":
            _, metric, cell, arm, moments, harm = update
            evidence.add_batch(metric, cell, arm, moments, harm)  # type: ignore[arg-type]
        elif kind == "t":
            _, cell, baseline, canary, errors, base_errors = update
            evidence.add_traffic(cell, baseline, canary, errors, base_errors)  # type: ignore[arg-type]
        elif kind == "c":
            _, metric, cell, arm, traces, unscored = update
            evidence.add_coverage(metric, cell, arm, traces, unscored)  # type: ignore[arg-type]
        elif kind == "f":
            _, minute, baseline, canary = update
            evidence.add_found(minute, baseline, canary)  # type: ignore[arg-type]
        else:
            _, metric, arm, bins = update
            evidence.add_quantile_bins(metric, 0, arm, bins)  # type: ignore[arg-type]

    @staticmethod
    def _batches(run: Run, policy: Policy) -> Batches:
        batches: Batches = defaultdict(list)
        kept = np.ones(run.n, dtype=bool) if run.lost is None else ~run.lost
        ts = run.ts[kept]
        canary = run.canary[kept]
        cell = np.floor(ts / 60.0).astype(np.int64)
        look = np.maximum(np.ceil(ts / 60.0), 1).astype(np.int64)
        log_cost = np.log(run.cost[kept] + COST_FLOOR_USD)
        _moments_batches(
            batches, "cost", look=look, cell=cell, canary=canary, value=log_cost, harmful=None
        )
        _score_batches(batches, run, policy, kept=kept, cell=cell, canary=canary)
        if run.proxy is None:
            _trace_traffic_batches(batches, run, kept=kept, cell=cell, look=look)
        else:
            _found_batches(batches, run, kept=kept)
        return batches


def _trace_traffic_batches(
    batches: Batches, run: Run, *, kept: np.ndarray, cell: np.ndarray, look: np.ndarray
) -> None:
    """Traffic, errors and latency from the traces: visible at the trace's start."""
    canary = run.canary[kept]
    error = run.error[kept]
    for minute in np.unique(look):
        at = look == minute
        for block in np.unique(cell[at]):
            here = at & (cell == block)
            n_c = int(np.count_nonzero(here & canary))
            n_b = int(np.count_nonzero(here & ~canary))
            errors = int(np.count_nonzero(here & canary & error))
            base_errors = int(np.count_nonzero(here & ~canary & error))
            batches[int(minute)].append(("t", (0, int(block)), n_b, n_c, errors, base_errors))
    errors_f = error.astype(float)
    _moments_batches(
        batches, "errors", look=look, cell=cell, canary=canary, value=errors_f, harmful=error
    )
    bins = np.ceil(np.log(np.maximum(run.latency[kept], 1e-9)) / LOG_BIN_BASE).astype(np.int64)
    for minute in np.unique(look):
        at = look == minute
        for arm, mask in ((Arm.CANARY, canary), (Arm.BASELINE, ~canary)):
            values, counts = np.unique(bins[at & mask], return_counts=True)
            if values.size:
                found = dict(zip(values.tolist(), counts.tolist(), strict=True))
                batches[int(minute)].append(("q", "latency", arm, found))


def _score_batches(
    batches: Batches,
    run: Run,
    policy: Policy,
    *,
    kept: np.ndarray,
    cell: np.ndarray,
    canary: np.ndarray,
) -> None:
    """Scores as they arrive, and coverage once scoreTimeout has passed."""
    ts = run.ts[kept]
    error = run.error[kept]
    timeout = policy.analysis.score_timeout
    for name in run.scores:
        values = run.scores[name][kept]
        arrival = run.score_arrival[name][kept]
        scored = np.isfinite(arrival) & ~np.isnan(values)
        seen = scored & (arrival <= run.minutes * 60.0)
        score_look = np.maximum(np.ceil(arrival[seen] / 60.0), 1).astype(np.int64)
        harmful = values[seen] == 0.0
        _moments_batches(
            batches,
            name,
            look=score_look,
            cell=cell[seen],
            canary=canary[seen],
            value=values[seen],
            harmful=harmful,
        )
        # coverage: non-error traces, once scoreTimeout has passed
        due = ts + timeout
        eligible = ~error & (due <= run.minutes * 60.0)
        missing = eligible & ~(scored & (arrival <= due))
        due_look = np.maximum(np.ceil(due / 60.0), 1).astype(np.int64)
        for arm, mask in ((Arm.CANARY, canary), (Arm.BASELINE, ~canary)):
            sel = eligible & mask
            key = due_look[sel] * 100_000 + cell[sel]
            keys, totals = np.unique(key, return_counts=True)
            miss_keys, misses = np.unique(
                due_look[missing & mask] * 100_000 + cell[missing & mask], return_counts=True
            )
            miss = dict(zip(miss_keys.tolist(), misses.tolist(), strict=True))
            for k, total in zip(keys.tolist(), totals.tolist(), strict=True):
                batches[k // 100_000].append(
                    ("c", name, (0, k % 100_000), arm, int(total), int(miss.get(k, 0)))
                )


def _found_batches(batches: Batches, run: Run, *, kept: np.ndarray) -> None:
    """Traces found per minute and arm (for the trace-loss check), read by the end of
    their minute; lost traces are counted by the proxies but never found."""
    minute = np.floor(run.ts[kept] / 60.0).astype(np.int64)
    canary = run.canary[kept]
    found = (
        np.bincount(minute[~canary], minlength=run.minutes),
        np.bincount(minute[canary], minlength=run.minutes),
    )
    for k in range(run.minutes):
        batches[k + 1].append(("f", k * 60, int(found[0][k]), int(found[1][k])))


def _add_proxy_minute(evidence: Evidence, proxy: SimulatedProxyCounts, minute: int) -> None:
    """Both arms' proxy counts of a minute (0-based), read once it has ended."""
    counts = proxy.minute(minute)
    for side, arm in ((0, Arm.BASELINE), (1, Arm.CANARY)):
        read = (counts.requests[side], counts.errors[side], counts.sampled[side])
        evidence.add_proxy_minute(arm, minute * 60, read, counts.latency_bins[side])
