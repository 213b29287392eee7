"""The incumbents' canary rules and an oracle SPRT, as benchmark methods.

Every method looks at the end of each minute t = 1..minutes and uses only what is visible then:
a score once it has arrived (``score_arrival <= 60 t``), proxy-side data (cost, errors) once the
trace has started; lost traces are dropped. All per-minute statistics are computed for every look
at once (cumulative sums indexed with ``np.searchsorted`` or (look x bucket) histograms), so a
method costs about a millisecond per 120-minute run.

The rules watch every judge score of the run and roll back when any of them fails, as an Argo
AnalysisTemplate or a Kayenta config with one entry per score would. On every scenario except
``five-metrics`` the only score is "helpfulness". Error, cost and latency are not watched.

* ``ArgoWindow``: the last 5 minutes' mean score per arm (scores counted by arrival time, as a
  metrics query sees them); a measurement fails when baseline - canary > threshold; an empty
  window is no measurement; roll back when failures > failureLimit (3), i.e. on the 4th failure.
  Promote at the end.
* ``KayentaMW``: Mann-Whitney on the cumulative window every minute; roll back when the one-sided
  z for "canary lower" (tie and continuity corrected) is below -3.10, the normal-approximation
  equivalent of Kayenta's 98% CI with 0.25 tolerance (STATISTICS.md §1). Promote at the end.
* ``PeekingZ``: Welch z of canary minus baseline every minute (n >= 2 per arm); roll back when
  z < -1.645. Promote at the end.
* ``FixedHorizon``: one Welch z look at a fixed minute; z < -1.645 rolls back, else promote.
* ``OracleSPRT``: Wald SPRT that knows the true effect (see its docstring).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from bench.scenarios import BASE_SCORE_SD, COST_SIGMA_LOG, MAIN_SCORE, TAIL_FACTOR, TAIL_SHARE, Run

Decision = Literal["rollback", "promote", "pause", "none"]


@dataclass(frozen=True)
class Outcome:
    decision: Decision  # "none": no decision within the run
    minute: float | None  # minutes since start when decided
    reason: str = ""


class Method(Protocol):
    @property
    def name(self) -> str: ...

    def decide(self, run: Run) -> Outcome: ...


# -- visible data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    """One arm's values of one metric, sorted by the time they become visible."""

    visible_at: np.ndarray  # seconds since start, ascending
    value: np.ndarray
    ts: np.ndarray  # trace start, seconds since start

    def look_index(self) -> np.ndarray:
        """First look (1-based minute) at which each value is visible."""
        return np.maximum(np.ceil(self.visible_at / 60.0), 1.0).astype(np.int64)


def _kept(run: Run) -> np.ndarray:
    return np.ones(run.n, dtype=bool) if run.lost is None else ~run.lost


def score_streams(run: Run, metric: str) -> tuple[Stream, Stream]:
    """(canary, baseline) streams of a judge score; unscored and lost traces are dropped."""
    value = run.scores[metric]
    arrival = run.score_arrival[metric]
    ok = _kept(run) & np.isfinite(value) & np.isfinite(arrival)
    return _split(run, ok, arrival, value)


def proxy_streams(run: Run, value: np.ndarray) -> tuple[Stream, Stream]:
    """(canary, baseline) streams of proxy-side data, visible at the trace's timestamp."""
    return _split(run, _kept(run), run.ts, value)


def _split(
    run: Run, ok: np.ndarray, visible_at: np.ndarray, value: np.ndarray
) -> tuple[Stream, Stream]:
    out = []
    for arm in (run.canary, ~run.canary):
        sel = ok & arm
        at = visible_at[sel]
        order = np.argsort(at, kind="stable")
        out.append(Stream(at[order], value[sel][order], run.ts[sel][order]))
    return out[0], out[1]


def look_times(run: Run) -> np.ndarray:
    return 60.0 * np.arange(1, run.minutes + 1)


@dataclass(frozen=True)
class Moments:
    """Count, sum and sum of squares of a stream's visible values, per look time."""

    n: np.ndarray
    s: np.ndarray
    q: np.ndarray


def moments(stream: Stream, times: np.ndarray, window: float | None = None) -> Moments:
    """Moments of values visible at each time; with ``window``, only those visible after
    ``time - window``."""
    c1 = np.concatenate(([0.0], np.cumsum(stream.value)))
    c2 = np.concatenate(([0.0], np.cumsum(stream.value * stream.value)))
    hi = np.searchsorted(stream.visible_at, times, side="right")
    if window is None:
        return Moments(hi.astype(float), c1[hi], c2[hi])
    lo = np.searchsorted(stream.visible_at, times - window, side="right")
    return Moments((hi - lo).astype(float), c1[hi] - c1[lo], c2[hi] - c2[lo])


def welch_z(c: Moments, b: Moments) -> np.ndarray:
    """Welch z of canary minus baseline per look; NaN where either arm has n < 2 or no spread."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_c, mean_b = c.s / c.n, b.s / b.n
        var_c = np.maximum(c.q - c.s * mean_c, 0.0) / (c.n - 1.0)
        var_b = np.maximum(b.q - b.s * mean_b, 0.0) / (b.n - 1.0)
        se = np.sqrt(var_c / c.n + var_b / b.n)
        z = (mean_c - mean_b) / se
    ok = (c.n >= 2) & (b.n >= 2) & (se > 0)
    return np.where(ok, z, np.nan)


def cumsum_looks(h: np.ndarray) -> np.ndarray:
    """Cumulative sum over the first (look) axis of a (looks x buckets) histogram.

    Row-by-row accumulation: several times faster than ``np.cumsum(h, axis=0)`` on C-ordered
    arrays of this shape.
    """
    out = np.array(h, copy=True)
    for i in range(1, out.shape[0]):
        out[i] += out[i - 1]
    return out


def first_look(fired: np.ndarray) -> int | None:
    """1-based minute of the first True, or None."""
    if not fired.any():
        return None
    return int(np.argmax(fired)) + 1


# -- rules on every score, union for rollback ----------------------------------------------------


class _PerScoreRule:
    """Rollback when any watched score's rule fires; promote at ``promote_minute`` otherwise."""

    name: str

    def __init__(self, name: str, metrics: Sequence[str] | None = None) -> None:
        self.name = name
        self.metrics = tuple(metrics) if metrics is not None else None

    def fired(self, run: Run, canary: Stream, baseline: Stream) -> np.ndarray:
        """Per-look booleans (length run.minutes): does the rule say rollback at that look?"""
        raise NotImplementedError

    def promote_minute(self, run: Run) -> int:
        return run.minutes

    def decide(self, run: Run) -> Outcome:
        metrics = self.metrics if self.metrics is not None else tuple(run.scores)
        best: tuple[int, str] | None = None
        for metric in metrics:
            minute = first_look(self.fired(run, *score_streams(run, metric)))
            if minute is not None and (best is None or minute < best[0]):
                best = (minute, metric)
        if best is not None and best[0] <= self.promote_minute(run):
            return Outcome("rollback", float(best[0]), f"{best[1]} failed")
        return Outcome("promote", float(self.promote_minute(run)), "no failure")


class ArgoWindow(_PerScoreRule):
    """Argo Rollouts analysis: 5-minute window means, absolute threshold, failureLimit."""

    def __init__(
        self,
        threshold: float,
        failure_limit: int = 3,
        window_minutes: float = 5.0,
        metrics: Sequence[str] | None = None,
    ) -> None:
        super().__init__(f"argo-{threshold:.2f}", metrics)
        self.threshold = threshold
        self.failure_limit = failure_limit
        self.window = 60.0 * window_minutes

    def fired(self, run: Run, canary: Stream, baseline: Stream) -> np.ndarray:
        times = look_times(run)
        c = moments(canary, times, self.window)
        b = moments(baseline, times, self.window)
        measured = (c.n > 0) & (b.n > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            gap = b.s / b.n - c.s / c.n
        failed = measured & (np.where(measured, gap, 0.0) > self.threshold)
        return np.cumsum(failed) > self.failure_limit


class PeekingZ(_PerScoreRule):
    """Naive peeking: a one-sided Welch z test at level .05 every minute."""

    def __init__(self, z_crit: float = -1.645, metrics: Sequence[str] | None = None) -> None:
        super().__init__("peeking-z", metrics)
        self.z_crit = z_crit

    def fired(self, run: Run, canary: Stream, baseline: Stream) -> np.ndarray:
        times = look_times(run)
        z = welch_z(moments(canary, times), moments(baseline, times))
        fired: np.ndarray = np.nan_to_num(z, nan=0.0) < self.z_crit
        return fired


class FixedHorizon(_PerScoreRule):
    """One one-sided Welch z look at ``minute``: rollback if z < -1.645, else promote."""

    def __init__(
        self, minute: int = 30, z_crit: float = -1.645, metrics: Sequence[str] | None = None
    ) -> None:
        super().__init__(f"fixed-{minute}", metrics)
        self.minute = minute
        self.z_crit = z_crit

    def promote_minute(self, run: Run) -> int:
        return min(self.minute, run.minutes)

    def fired(self, run: Run, canary: Stream, baseline: Stream) -> np.ndarray:
        t = np.array([60.0 * self.promote_minute(run)])
        z = welch_z(moments(canary, t), moments(baseline, t))[0]
        out = np.zeros(run.minutes, dtype=bool)
        out[self.promote_minute(run) - 1] = bool(np.isfinite(z) and z < self.z_crit)
        return out


class KayentaMW(_PerScoreRule):
    """Kayenta's Mann-Whitney rule on the cumulative window, applied every minute.

    Ranks are computed on values bucketed to at most ``max_buckets`` equal-count buckets of the
    run's distinct values (ties keep mid-ranks; boolean scores stay exact), which lets every look
    be computed from one (look x bucket) histogram per arm.
    """

    def __init__(
        self, z_crit: float = -3.10, max_buckets: int = 512, metrics: Sequence[str] | None = None
    ) -> None:
        super().__init__("kayenta-mw", metrics)
        self.z_crit = z_crit
        self.max_buckets = max_buckets

    def fired(self, run: Run, canary: Stream, baseline: Stream) -> np.ndarray:
        z = mann_whitney_z(run.minutes, canary, baseline, self.max_buckets)
        fired: np.ndarray = np.nan_to_num(z, nan=0.0) < self.z_crit
        return fired


def mann_whitney_z(minutes: int, canary: Stream, baseline: Stream, max_buckets: int) -> np.ndarray:
    """Per-look z of the canary's U statistic for "canary lower" (negative: canary lower), tie
    and continuity corrected as ``scipy.stats.mannwhitneyu(alternative="less")``; NaN where an
    arm is empty."""
    values = np.concatenate((canary.value, baseline.value))
    if values.size == 0:
        return np.full(minutes, np.nan)
    _, bucket = np.unique(values, return_inverse=True)
    k = int(bucket.max()) + 1
    if k > max_buckets:
        bucket = bucket * max_buckets // k
        k = max_buckets
    looks = np.concatenate((canary.look_index(), baseline.look_index()))
    is_c = np.arange(values.size) < canary.value.size
    hists = []
    for arm in (is_c, ~is_c):
        sel = arm & (looks <= minutes)
        flat = (looks[sel] - 1) * k + bucket[sel]
        h = np.bincount(flat, minlength=minutes * k).reshape(minutes, k)
        hists.append(cumsum_looks(h))
    cc, cb = hists
    below_b = np.cumsum(cb, axis=1) - cb
    u2 = (cc * (2 * below_b + cb)).sum(axis=1)  # 2 U, exact in integers
    n_c = cc.sum(axis=1).astype(float)
    n_b = cb.sum(axis=1).astype(float)
    n = n_c + n_b
    tie = cc + cb
    tie_sum = (tie * tie * tie - tie).sum(axis=1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = n_c * n_b / 12.0 * ((n + 1.0) - tie_sum / (n * (n - 1.0)))
        # One-sided continuity correction: P(U <= u) ~ Phi((u + 1/2 - n_c n_b / 2) / sd).
        z = (0.5 * u2 - 0.5 * n_c * n_b + 0.5) / np.sqrt(var)
    ok = (n_c > 0) & (n_b > 0) & (var > 0)
    return np.where(ok, z, np.nan)


# -- oracle --------------------------------------------------------------------------------------

LOG_COST_SD = math.sqrt(
    COST_SIGMA_LOG**2 + TAIL_SHARE * (1 - TAIL_SHARE) * math.log(TAIL_FACTOR) ** 2
)


class OracleSPRT:
    """Wald SPRT that knows the scenario's true effect (the efficiency anchor, STATISTICS.md §4).

    It watches the observable that carries the scenario's effect: the score with the largest
    known shift (sd 0.25 assumed), else log cost (sd of the lognormal plus its tail) when the
    cost is shifted, else "helpfulness". H1 is the true shift when it is harmful; for neutral,
    good and broken scenarios it is the bad-scenario alternative of -0.05 on "helpfulness".

    Statistic: per minute bucket m (by trace start), d_m = mean canary - mean baseline of the
    visible values, d_m ~ N(delta, sigma^2 (1/n_c + 1/n_b)), i.e. each canary trace minus the mean
    of the baseline traces of its minute. The log-likelihood ratio of H1: delta = delta1 against
    H0: delta = 0 sums over the buckets with both arms present, recomputed at every look as late
    scores arrive. Roll back when it reaches log((1 - beta) / alpha), promote when it falls to
    log(beta / (1 - alpha)); no decision otherwise.
    """

    name = "oracle-sprt"

    def __init__(
        self,
        alpha: float = 0.05,
        beta: float = 0.1,
        sigma: float = BASE_SCORE_SD,
        default_delta: float = -0.05,
    ) -> None:
        self.upper = math.log((1.0 - beta) / alpha)
        self.lower = math.log(beta / (1.0 - alpha))
        self.sigma = sigma
        self.default_delta = default_delta

    def target(self, run: Run) -> tuple[str, float, float]:
        """(observable, delta1, sigma) the oracle tests."""
        shifts = {k: v for k, v in run.oracle_effects.items() if k in run.scores and v != 0.0}
        if shifts:
            metric = max(shifts, key=lambda k: abs(shifts[k]))
            delta = shifts[metric]
            return metric, delta if delta < 0 else self.default_delta, self.sigma
        log_cost = run.oracle_effects.get("log_cost", 0.0)
        if log_cost > 0:
            return "log_cost", log_cost, LOG_COST_SD
        return MAIN_SCORE, self.default_delta, self.sigma

    def llr(self, run: Run) -> tuple[str, np.ndarray]:
        """(observable, log-likelihood ratio per look)."""
        metric, delta, sigma = self.target(run)
        if metric == "log_cost":
            canary, baseline = proxy_streams(run, np.log(run.cost))
        else:
            canary, baseline = score_streams(run, metric)
        m = run.minutes
        stats = []
        for stream in (canary, baseline):
            look = stream.look_index()
            bucket = np.minimum((stream.ts // 60.0).astype(np.int64), m - 1)
            sel = look <= m
            flat = (look[sel] - 1) * m + bucket[sel]
            cnt = np.bincount(flat, minlength=m * m).reshape(m, m).astype(float)
            tot = np.bincount(flat, stream.value[sel], minlength=m * m).reshape(m, m)
            stats.append((cumsum_looks(cnt), cumsum_looks(tot)))
        (n_c, s_c), (n_b, s_b) = stats
        ok = (n_c > 0) & (n_b > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = s_c / n_c - s_b / n_b
            var = sigma * sigma * (1.0 / n_c + 1.0 / n_b)
            term = (delta * d - 0.5 * delta * delta) / var
        return metric, np.where(ok, term, 0.0).sum(axis=1)

    def decide(self, run: Run) -> Outcome:
        metric, llr = self.llr(run)
        up = first_look(llr >= self.upper)
        down = first_look(llr <= self.lower)
        if up is not None and (down is None or up <= down):
            return Outcome("rollback", float(up), f"{metric}: SPRT upper boundary")
        if down is not None:
            return Outcome("promote", float(down), f"{metric}: SPRT lower boundary")
        return Outcome("none", None, f"{metric}: no boundary crossed")


def baseline_methods() -> list[Method]:
    """The incumbents' rules and the oracle, in report order."""
    return [
        ArgoWindow(0.05),
        ArgoWindow(0.10),
        KayentaMW(),
        PeekingZ(),
        FixedHorizon(30),
        OracleSPRT(),
    ]
