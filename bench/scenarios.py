"""Synthetic canary releases with known truth (STATISTICS.md §6.2).

A scenario turns a seeded ``numpy.random.Generator`` into one :class:`Run`: every trace of a
release over ``minutes`` minutes, both arms, with the per-trace data a judge can see and when it
becomes visible. Proxy-side data (timestamp, error flag, cost, latency) is visible at the trace's
timestamp; a judge score is visible once it has arrived (``score_arrival <= t``).

Generators (baseline arm):

* traffic: Poisson arrivals; each trace goes to the canary with probability
  ``canary_rate / (canary_rate + baseline_rate)`` (two independent Poisson streams);
* judge scores ("helpfulness", ...): Beta with mean 0.75 and sd 0.25 (a=1.5, b=0.5, J-shaped); the
  canary's mean is shifted by the scenario's effect with the same sd (a, b solved from mean and
  sd); boolean scores are Bernoulli draws stored as 0.0 / 1.0;
* errors: Bernoulli(0.01); an error trace keeps its cost and latency but is never scored;
* cost: lognormal, median 0.002 USD, sigma_log 1, times 10 for 1% of traces;
* latency: lognormal, median 800 ms, sigma_log 0.5, times 10 for 1% of traces;
* score delay: exponential, mean 2 minutes in both arms, drawn independently per score.

``neutral-noisy-judge`` uses a Beta with sd 0.35 (a=0.398, b=0.133, feasible because
0.75 * 0.25 > 0.35**2) rather than additive noise plus clipping: it keeps the mean at exactly
0.75, the values in [0, 1] and the sd at exactly 0.35, without point masses at 0 and 1.

The effects in :attr:`Scenario.effects` (also copied to :attr:`Run.oracle_effects`) use these keys:
a score name maps to the additive shift of the canary's mean score, ``"error"`` to the additive
shift of the canary's error rate, ``"log_cost"`` to the shift of the canary's mean log cost.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from controller.judge.evidence import LOG_BIN_BASE

Truth = Literal["neutral", "good", "bad", "broken"]

MAIN_SCORE = "helpfulness"
BASE_SCORE_MEAN = 0.75
BASE_SCORE_SD = 0.25
BASE_ERROR_RATE = 0.01
COST_MEDIAN_USD = 0.002
COST_SIGMA_LOG = 1.0
LATENCY_MEDIAN_MS = 800.0
LATENCY_SIGMA_LOG = 0.5
TAIL_SHARE = 0.01
TAIL_FACTOR = 10.0
SCORE_DELAY_MINUTES = 2.0
DRIFT_AMPLITUDE = 0.05
DRIFT_PERIOD_MINUTES = 120.0
TRAFFIC_SWING = 0.5


@dataclass(frozen=True, eq=False)
class Run:
    """Every trace of one release, both arms, sorted by timestamp."""

    minutes: int
    canary_weight: float
    ts: np.ndarray
    canary: np.ndarray
    error: np.ndarray
    cost: np.ndarray
    latency: np.ndarray
    scores: dict[str, np.ndarray]
    score_arrival: dict[str, np.ndarray]
    lost: np.ndarray | None = None
    # The scenario's true effects. Only the oracle may read them.
    oracle_effects: Mapping[str, float] = field(default_factory=dict)
    # With sampled reads: the proxies' counts of every request (the traces are the sample).
    proxy: SimulatedProxyCounts | None = None

    @property
    def n(self) -> int:
        return int(self.ts.size)


@dataclass(frozen=True)
class Traffic:
    """Arrival rates in traces per minute."""

    canary_rate: float = 10.0
    baseline_rate: float = 90.0
    sampled_from: float | None = None
    """Sampled reads: requests a minute in all, of which the rates above are the traced
    score sample (None: the traces are every request)."""

    @property
    def total_rate(self) -> float:
        return self.canary_rate + self.baseline_rate

    @property
    def canary_weight(self) -> float:
        return self.canary_rate / self.total_rate

    @property
    def label(self) -> str:
        return f"{self.canary_rate:g}/{self.baseline_rate:g}"


TRAFFIC: dict[str, Traffic] = {
    "10/90": Traffic(10.0, 90.0),
    "50/50": Traffic(50.0, 50.0),
}


@dataclass(frozen=True)
class ScoreSpec:
    """One judge score: Beta(mean, sd) or Bernoulli(mean); the canary's mean is shifted."""

    name: str
    kind: Literal["beta", "bool"] = "beta"
    mean: float = BASE_SCORE_MEAN
    sd: float = BASE_SCORE_SD
    canary_shift: float = 0.0


@dataclass(frozen=True)
class Spec:
    """Generator parameters of a scenario; the defaults describe a neutral release."""

    scores: tuple[ScoreSpec, ...] = (ScoreSpec(MAIN_SCORE),)
    drift: bool = False
    canary_error_rate: float = BASE_ERROR_RATE
    canary_cost_scale: float = 1.0
    baseline_delay_minutes: float = SCORE_DELAY_MINUTES
    canary_delay_minutes: float = SCORE_DELAY_MINUTES
    canary_scored: bool = True
    # Sample-ratio mismatch: share of canary traces whose app data is lost, chosen with
    # probability proportional to (1 - helpfulness)**2. "coverage" keeps the proxy-side data,
    # "lost" drops the traces entirely.
    srm: Literal["coverage", "lost"] | None = None
    srm_share: float = 0.1


def beta_params(
    mean: np.ndarray | float, sd: float
) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Beta (a, b) with the given mean and sd; the mean is clipped to keep a, b > 0."""
    if not 0.0 < sd < 0.5:
        raise ValueError(f"a Beta on [0, 1] needs 0 < sd < 0.5, got {sd}")
    # m (1 - m) must exceed sd**2; keep a small margin so a + b stays away from 0.
    half_width = 0.5 * math.sqrt(1.0 - 4.0 * sd * sd * 1.02)
    m = np.clip(mean, 0.5 - half_width, 0.5 + half_width)
    nu = m * (1.0 - m) / (sd * sd) - 1.0
    return m * nu, (1.0 - m) * nu


def _arrivals(rng: np.random.Generator, traffic: Traffic, minutes: int, drift: bool) -> np.ndarray:
    horizon = 60.0 * minutes
    if not drift:
        n = rng.poisson(traffic.total_rate * minutes)
        return np.sort(rng.random(n) * horizon)
    # Rate (1 + 0.5 sin(2 pi t / period)) * base, by thinning a homogeneous stream at the peak.
    peak = 1.0 + TRAFFIC_SWING
    n = rng.poisson(traffic.total_rate * minutes * peak)
    ts = rng.random(n) * horizon
    keep = rng.random(n) * peak < 1.0 + TRAFFIC_SWING * _phase(ts)
    return np.sort(ts[keep])


def _phase(ts: np.ndarray) -> np.ndarray:
    return np.sin(2.0 * np.pi * ts / (60.0 * DRIFT_PERIOD_MINUTES))


def _tail(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.where(rng.random(n) < TAIL_SHARE, TAIL_FACTOR, 1.0)


def generate(
    rng: np.random.Generator,
    traffic: Traffic,
    spec: Spec,
    minutes: int = 120,
    effects: Mapping[str, float] | None = None,
) -> Run:
    """Draw one run of ``spec``; vectorised, a 120-minute run takes a few milliseconds."""
    ts = _arrivals(rng, traffic, minutes, spec.drift)
    n = ts.size
    canary = rng.random(n) < traffic.canary_weight

    error = rng.random(n) < np.where(canary, spec.canary_error_rate, BASE_ERROR_RATE)
    cost = COST_MEDIAN_USD * np.exp(COST_SIGMA_LOG * rng.standard_normal(n)) * _tail(rng, n)
    if spec.canary_cost_scale != 1.0:
        cost = np.where(canary, cost * spec.canary_cost_scale, cost)
    latency = LATENCY_MEDIAN_MS * np.exp(LATENCY_SIGMA_LOG * rng.standard_normal(n)) * _tail(rng, n)

    drift = DRIFT_AMPLITUDE * _phase(ts) if spec.drift else 0.0
    delay_s = 60.0 * np.where(canary, spec.canary_delay_minutes, spec.baseline_delay_minutes)
    scores: dict[str, np.ndarray] = {}
    arrival: dict[str, np.ndarray] = {}
    latent: dict[str, np.ndarray] = {}
    for s in spec.scores:
        mean = s.mean + np.where(canary, s.canary_shift, 0.0) + drift
        if s.kind == "bool":
            value = (rng.random(n) < np.clip(mean, 0.0, 1.0)).astype(float)
        else:
            a, b = beta_params(mean, s.sd)
            value = rng.beta(a, b)
        latent[s.name] = value
        scored = ~error if spec.canary_scored else ~error & ~canary
        scores[s.name] = np.where(scored, value, np.nan)
        arrival[s.name] = np.where(scored, ts + rng.exponential(1.0, n) * delay_s, np.inf)

    lost: np.ndarray | None = None
    if spec.srm is not None:
        weight = np.where(canary, (1.0 - latent[MAIN_SCORE]) ** 2, 0.0)
        total = weight.sum()
        n_canary = int(canary.sum())
        p = np.minimum(1.0, spec.srm_share * n_canary * weight / total) if total > 0 else weight
        dropped = rng.random(n) < p
        for name, value in list(scores.items()):
            scores[name] = np.where(dropped, np.nan, value)
            arrival[name] = np.where(dropped, np.inf, arrival[name])
        if spec.srm == "lost":
            lost = dropped

    return Run(
        minutes=minutes,
        canary_weight=traffic.canary_weight,
        ts=ts,
        canary=canary,
        error=error,
        cost=cost,
        latency=latency,
        scores=scores,
        score_arrival=arrival,
        lost=lost,
        oracle_effects=dict(effects or {}),
    )


@dataclass(frozen=True)
class ProxyMinute:
    """The proxies' counts of one minute, per arm (index 0 baseline, 1 canary)."""

    requests: tuple[int, int]
    errors: tuple[int, int]
    sampled: tuple[int, int]
    latency_bins: tuple[dict[int, int], dict[int, int]]  # sketch bin -> requests


class SimulatedProxyCounts:
    """The proxies' counts of every request of a run, per minute; the run's traces (lost
    ones too) are the score sample of these requests.

    Per arm and minute the requests outside the sample are Poisson with the arm's share of
    ``requests_per_minute`` less the sample's rate (so the total is Poisson with the arm's
    share, drift included), their errors Binomial with the arm's error rate and their
    latencies drawn from the scenario's latency distribution; the sample's own errors and
    latencies are added. A minute is drawn when first read, minutes in order, from the
    counts' own generator: a judge that decides early draws no more, and the counts do not
    depend on when they are read.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        run: Run,
        spec: Spec,
        traffic: Traffic,
        requests_per_minute: float,
    ) -> None:
        rates = (traffic.baseline_rate, traffic.canary_rate)
        weights = (1.0 - traffic.canary_weight, traffic.canary_weight)
        unsampled = [requests_per_minute * w - r for w, r in zip(weights, rates, strict=True)]
        if min(unsampled) < 0:
            raise ValueError(
                f"{requests_per_minute:g} requests a minute are fewer than the sample "
                f"({traffic.label} traces a minute)"
            )
        self._rng = rng
        self.minutes = run.minutes
        factor = _minute_rate_factor(run.minutes, spec.drift)
        self._unsampled_rates = [rate * factor for rate in unsampled]
        self._error_rates = (BASE_ERROR_RATE, spec.canary_error_rate)
        trace_minute = np.minimum(np.floor(run.ts / 60.0).astype(np.int64), run.minutes - 1)
        edges = np.arange(run.minutes + 1)
        # per arm: the sample's minute bounds (traces are in time order), errors and bins
        self._bounds: list[np.ndarray] = []
        self._sample_errors: list[np.ndarray] = []
        self._sample_bins: list[np.ndarray] = []
        for mask in (~run.canary, run.canary):
            minute = trace_minute[mask]
            self._bounds.append(np.searchsorted(minute, edges))
            self._sample_errors.append(
                np.bincount(trace_minute[mask & run.error], minlength=run.minutes)
            )
            self._sample_bins.append(latency_bins(run.latency[mask]))
        self._drawn: list[ProxyMinute] = []

    def minute(self, index: int) -> ProxyMinute:
        """The counts of minute ``index`` (0-based) of the run."""
        if not 0 <= index < self.minutes:
            raise IndexError(f"minute {index} of a {self.minutes}-minute run")
        while len(self._drawn) <= index:
            self._drawn.append(self._draw(len(self._drawn)))
        return self._drawn[index]

    def _draw(self, k: int) -> ProxyMinute:
        requests, errors, sampled, bins = [], [], [], []
        for side in (0, 1):
            start, end = self._bounds[side][k], self._bounds[side][k + 1]
            extra = int(self._rng.poisson(self._unsampled_rates[side][k]))
            n_sampled = int(end - start)
            sampled.append(n_sampled)
            requests.append(n_sampled + extra)
            errors.append(
                int(self._sample_errors[side][k])
                + int(self._rng.binomial(extra, self._error_rates[side]))
            )
            drawn = latency_bins(_draw_latency(self._rng, extra))
            every = np.concatenate([self._sample_bins[side][start:end], drawn])
            bins.append(_bin_counts(every))
        return ProxyMinute(
            requests=(requests[0], requests[1]),
            errors=(errors[0], errors[1]),
            sampled=(sampled[0], sampled[1]),
            latency_bins=(bins[0], bins[1]),
        )


def _bin_counts(bins: np.ndarray) -> dict[int, int]:
    if not bins.size:
        return {}
    low = int(bins.min())
    counts = np.bincount(bins - low)
    present = np.flatnonzero(counts)
    return dict(zip((present + low).tolist(), counts[present].tolist(), strict=True))


def _minute_rate_factor(minutes: int, drift: bool) -> np.ndarray:
    """Each minute's mean traffic rate relative to the base rate (the drift's sine,
    averaged over the minute)."""
    if not drift:
        return np.ones(minutes)
    period = 60.0 * DRIFT_PERIOD_MINUTES
    start = 60.0 * np.arange(minutes)
    cos = np.cos(2.0 * np.pi * np.r_[start, 60.0 * minutes] / period)
    mean_sin: np.ndarray = period / (2.0 * np.pi * 60.0) * (cos[:-1] - cos[1:])
    return 1.0 + TRAFFIC_SWING * mean_sin


def _draw_latency(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` latencies of the baseline distribution, drawn cheaply: hundreds of thousands a
    minute are drawn per run."""
    z = rng.standard_normal(n, dtype=np.float32)  # 1% bins need no more precision
    latency = LATENCY_MEDIAN_MS * np.exp(LATENCY_SIGMA_LOG * z, dtype=np.float64)
    # the 1% tail: a Bernoulli process's positions from its geometric gaps
    expected = n * TAIL_SHARE
    gaps = rng.geometric(TAIL_SHARE, int(expected + 10 * math.sqrt(expected) + 10))
    positions = np.cumsum(gaps) - 1
    while positions.size and positions[-1] < n:
        more = np.cumsum(rng.geometric(TAIL_SHARE, positions.size + 10)) + positions[-1]
        positions = np.r_[positions, more]
    latency[positions[positions < n]] *= TAIL_FACTOR
    result: np.ndarray = latency
    return result


def latency_bins(latency_ms: np.ndarray) -> np.ndarray:
    """``controller.judge.evidence.sketch_bin`` of positive latencies, vectorised."""
    bins: np.ndarray = np.ceil(np.log(latency_ms) / LOG_BIN_BASE).astype(np.int64)
    return bins


@dataclass(frozen=True)
class Scenario:
    """A named generator with its known truth and effects."""

    name: str
    truth: Truth
    effects: Mapping[str, float]
    spec: Spec
    description: str

    def make_run(self, rng: np.random.Generator, traffic: Traffic, minutes: int = 120) -> Run:
        """One run; with ``traffic.sampled_from`` its traces are the score sample and the
        proxies' counts of every request come with it, drawn after the traces so that the
        traces are those of the run without sampled reads."""
        run = generate(rng, traffic, self.spec, minutes, self.effects)
        if traffic.sampled_from is None:
            return run
        proxy = SimulatedProxyCounts(rng.spawn(1)[0], run, self.spec, traffic, traffic.sampled_from)
        return dataclasses.replace(run, proxy=proxy)


def _five(correctness_shift: float) -> tuple[ScoreSpec, ...]:
    return (
        ScoreSpec(MAIN_SCORE),
        ScoreSpec("correctness", canary_shift=correctness_shift),
        ScoreSpec("tone_ok", kind="bool", mean=0.9),
        ScoreSpec("resolved", kind="bool", mean=0.8),
        ScoreSpec("conciseness"),
    )


def _main(shift: float, sd: float = BASE_SCORE_SD) -> tuple[ScoreSpec, ...]:
    return (ScoreSpec(MAIN_SCORE, sd=sd, canary_shift=shift),)


_ALL: tuple[Scenario, ...] = (
    Scenario("neutral", "neutral", {}, Spec(), "no difference between the arms"),
    Scenario(
        "neutral-drift",
        "neutral",
        {},
        Spec(drift=True),
        "shared diurnal drift: score mean +0.05 sin(2 pi t / 120 min), traffic ±50% in phase",
    ),
    Scenario(
        "neutral-noisy-judge",
        "neutral",
        {},
        Spec(scores=_main(0.0, sd=0.35)),
        "score sd 0.35 (Beta a=0.398, b=0.133) in both arms",
    ),
    Scenario("good", "good", {MAIN_SCORE: 0.02}, Spec(scores=_main(0.02)), "canary score +0.02"),
    Scenario(
        "subtly-bad",
        "bad",
        {MAIN_SCORE: -0.02},
        Spec(scores=_main(-0.02)),
        "canary score -0.02",
    ),
    Scenario(
        "bad",
        "bad",
        {MAIN_SCORE: -0.05, "error": 0.02},
        Spec(scores=_main(-0.05), canary_error_rate=0.03),
        "canary score -0.05, canary errors 3% vs 1%",
    ),
    Scenario(
        "very-bad",
        "bad",
        {MAIN_SCORE: -0.15, "error": 0.09},
        Spec(scores=_main(-0.15), canary_error_rate=0.10),
        "canary score -0.15, canary errors 10% vs 1%",
    ),
    Scenario(
        "cost-heavy-tail",
        "bad",
        {"log_cost": math.log(1.2)},
        Spec(canary_cost_scale=1.2),
        "canary cost x1.2 in scale (lognormal sigma 1 with a 1% x10 tail); scores neutral",
    ),
    Scenario(
        "late-scores",
        "neutral",
        {},
        Spec(baseline_delay_minutes=3.0, canary_delay_minutes=6.0),
        "score delay exponential, mean 3 min baseline vs 6 min canary",
    ),
    Scenario(
        "srm-coverage",
        "broken",
        {},
        Spec(srm="coverage"),
        "10% of canary traces lose their scores, chosen with p ~ (1 - score)^2",
    ),
    Scenario(
        "srm-lost",
        "broken",
        {},
        Spec(srm="lost"),
        "10% of canary traces are lost entirely, chosen with p ~ (1 - score)^2",
    ),
    Scenario(
        "five-metrics",
        "bad",
        {"correctness": -0.05},
        Spec(scores=_five(-0.05)),
        "five scores (3 Beta, 2 boolean); only correctness is worse, -0.05",
    ),
    Scenario(
        "no-scores",
        "broken",
        {},
        Spec(canary_scored=False),
        "canary traces are never scored; baseline normal",
    ),
)

SCENARIOS: dict[str, Scenario] = {s.name: s for s in _ALL}
