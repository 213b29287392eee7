"""The planner: what a policy does at a given traffic, simulated with the replay engine.

``plan(policy, settings)`` runs seeded simulations of one release through
``controller.replay.Replay``, exactly as the controller would judge it: requests arrive
(Poisson) at the release's traffic and go to the canary with the current step's weight;
the scores of the policy's score metrics arrive late; the engine looks every
``analysis.interval`` and advances, promotes, rolls back or pauses. Two kinds of canary
are simulated: one equal to the baseline (how long a good release takes, and how often
it does not make it), and for each metric one worse by a regression (how fast and how
often it is caught). No I/O and no clock reads: the same settings give the same plan.

Baseline values, per source (the canary draws the same, shifted by the regression):

- error rate: 1 % of requests fail; a failed request carries no scores;
- latency: lognormal, median 800 ms, sigma 0.5;
- cost: lognormal, median $0.002, sigma 1.0;
- numeric score: Beta on the score's range, mean 75 % of the range (25 % when lower is
  better), standard deviation 25 % of the range;
- boolean score: true for 80 % of traces (5 % when lower is better, a "bad" flag);
- categorical score: a bad value for 5 % of traces.

A trace is scored with probability ``scores_per_trace`` (all its score metrics at once),
the scores arriving uniformly between ``analysis.scoreSettle`` and ``scoreTimeout``
after the trace.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from controller.judge import Judgement, ScoreValue, Trace, Verdict
from controller.judge.analyze import DEFAULT_EFFECT, DEFAULT_SCORE_EFFECT
from controller.replay import Event, Replay
from controller.stream import LateScores
from policies.domain import Arm, Phase
from policies.durations import format_duration
from policies.model import Direction, Metric, MetricSource, Policy, ScoreType

__all__ = [
    "BASELINE_ERROR_RATE",
    "DEFAULT_RUNS",
    "UNBOUNDED_STEP_LIMIT",
    "EqualCanary",
    "Job",
    "MapRuns",
    "Plan",
    "PlanSettings",
    "RegressionPlan",
    "Spread",
    "StepPlan",
    "baseline_description",
    "default_regression",
    "plan",
    "regression_unit",
    "run_job",
]

DEFAULT_RUNS = 20
START = 1_798_761_600.0  # 2027-01-01T00:00:00Z: any fixed origin; plans report offsets
UNBOUNDED_STEP_LIMIT = 4 * 3600.0
"""Simulated time a step without maxDuration may take before its run counts as undecided."""

BASELINE_ERROR_RATE = 0.01
LATENCY_MEDIAN_MS = 800.0
LATENCY_SIGMA = 0.5
COST_MEDIAN_USD = 0.002
COST_SIGMA = 1.0
NUMERIC_MEAN = 0.75  # of the score's range, when higher is better
NUMERIC_SD = 0.25  # of the score's range
BOOLEAN_TRUE = {Direction.HIGHER: 0.8, Direction.LOWER: 0.05}
CATEGORICAL_BAD = 0.05
LATENCY_FALLBACK = {"percent": 20.0, "ms": 100.0}  # a latency regression with tolerance 0

OUTCOMES = ("promoted", "paused", "rolled_back", "undecided")


@dataclass(frozen=True, slots=True)
class PlanSettings:
    """The traffic to plan for and how many seeded runs to simulate."""

    traffic_per_minute: float
    scores_per_trace: float = 1.0
    runs: int = DEFAULT_RUNS
    seed: int = 0
    regressions: Mapping[str, float] = field(default_factory=dict)
    """Metric name to the canary's degradation in the metric's units (percent for metrics
    with tolerancePercent); metrics not named get ``default_regression``."""


@dataclass(frozen=True, slots=True)
class Spread:
    """Median and 90th percentile (nearest rank) over all runs; None: not reached by
    that share of the runs."""

    median: float | None
    p90: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        ordered = sorted(values)

        def rank(q: float) -> float | None:
            if not ordered:
                return None
            value = ordered[max(math.ceil(q * len(ordered)) - 1, 0)]
            return None if math.isinf(value) else value

        return cls(median=rank(0.5), p90=rank(0.9))


@dataclass(frozen=True, slots=True)
class StepPlan:
    """One step as the runs of an equal canary went through it."""

    index: int  # 1-based
    weight: float
    min_duration: float
    max_duration: float | None
    reached: int
    passed: int
    undecided: int  # runs still in the step when its maxDuration (or the planning limit) ran out
    waiting: Mapping[str, int]  # runs that ended in the step unpassed, by metric not yet passed
    mean_time: float | None  # seconds spent in the step, mean over the runs that reached it
    time_to_pass: Spread
    samples_baseline: float | None  # traces per arm in the step, mean over runs that reached it
    samples_canary: float | None


@dataclass(frozen=True, slots=True)
class EqualCanary:
    """Runs of a canary equal to the baseline."""

    outcomes: Mapping[str, int]
    time_to_promote: Spread


@dataclass(frozen=True, slots=True)
class RegressionPlan:
    """Runs of a canary worse on one metric."""

    metric: str
    critical: bool
    delta: float
    unit: str
    expected: str  # rolled_back for a critical metric, paused otherwise
    outcomes: Mapping[str, int]
    detected: int  # runs rolled back or paused
    time_to_detect: Spread


@dataclass(frozen=True, slots=True)
class Plan:
    """What a policy does at the planned traffic."""

    policy: Policy
    settings: PlanSettings
    equal: EqualCanary
    steps: tuple[StepPlan, ...]
    regressions: tuple[RegressionPlan, ...]
    warnings: tuple[str, ...]


# -- regressions ------------------------------------------------------------------------


def regression_unit(metric: Metric) -> str:
    """The unit of a metric's regression: percent, ms, or the score's or rate's own."""
    if metric.tolerance_percent is not None:
        return "%"
    if metric.source is MetricSource.LATENCY:
        return "ms"
    return ""


def default_regression(metric: Metric) -> float:
    """The degradation the metric's rollback test is tuned to catch: its tolerance plus
    its effect (``effectSize``, or the judge's default); latency, which has no effect
    size, twice its tolerance."""
    if metric.source is MetricSource.LATENCY:
        if metric.tolerance_percent is not None:
            return 2 * metric.tolerance_percent or LATENCY_FALLBACK["percent"]
        return 2 * (metric.tolerance or 0.0) or LATENCY_FALLBACK["ms"]
    if metric.source is MetricSource.COST:
        extra = metric.effect_size or DEFAULT_EFFECT[MetricSource.COST]
        return (metric.tolerance_percent or 0.0) + extra
    tolerance = metric.tolerance or 0.0
    if metric.effect_size is not None:
        return tolerance + metric.effect_size
    if metric.source.is_error_rate:
        return tolerance + DEFAULT_EFFECT[metric.source]
    if metric.score_type is ScoreType.NUMERIC and metric.range is not None:
        return tolerance + DEFAULT_SCORE_EFFECT * (metric.range.max - metric.range.min)
    return tolerance + DEFAULT_SCORE_EFFECT


# -- the simulated arms -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScoreModel:
    """How one Langfuse score is drawn: ``level`` is the mean on a 0..1 scale of the range
    (numeric), the share of true (boolean) or of bad values (categorical)."""

    name: str
    kind: ScoreType
    level: float
    low: float = 0.0
    high: float = 1.0
    good: str = "ok"
    bad: str = "bad"

    def draw(self, rng: random.Random) -> ScoreValue:
        if self.kind is ScoreType.BOOLEAN:
            return rng.random() < self.level
        if self.kind is ScoreType.CATEGORICAL:
            return self.bad if rng.random() < self.level else self.good
        m = self.level
        sd = min(NUMERIC_SD, 0.7 * math.sqrt(m * (1.0 - m)))
        k = m * (1.0 - m) / (sd * sd) - 1.0
        return self.low + (self.high - self.low) * rng.betavariate(m * k, (1.0 - m) * k)


@dataclass(frozen=True, slots=True)
class ArmModel:
    """How one arm's traces are drawn."""

    error_rate: float = BASELINE_ERROR_RATE
    latency_factor: float = 1.0
    latency_shift_ms: float = 0.0
    cost_factor: float = 1.0
    scores: tuple[ScoreModel, ...] = ()


def baseline_model(policy: Policy) -> ArmModel:
    """The baseline arm: the documented defaults for each score the policy reads."""
    scores: dict[str, ScoreModel] = {}
    for metric in policy.analysis.metrics:
        if metric.score is None or metric.score in scores:
            continue
        scores[metric.score] = _score_model(metric, metric.score)
    return ArmModel(scores=tuple(scores.values()))


def _score_model(metric: Metric, name: str) -> ScoreModel:
    higher = metric.direction is Direction.HIGHER
    if metric.score_type is ScoreType.BOOLEAN:
        return ScoreModel(
            name, ScoreType.BOOLEAN, BOOLEAN_TRUE[metric.direction or Direction.LOWER]
        )
    if metric.score_type is ScoreType.CATEGORICAL:
        bad_values = metric.bad_values or ("bad",)
        good = next(f"ok-{i}" for i in range(len(bad_values) + 1) if f"ok-{i}" not in bad_values)
        return ScoreModel(
            name, ScoreType.CATEGORICAL, CATEGORICAL_BAD, good=good, bad=bad_values[0]
        )
    low, high = (metric.range.min, metric.range.max) if metric.range else (0.0, 1.0)
    level = NUMERIC_MEAN if higher else 1.0 - NUMERIC_MEAN
    return ScoreModel(name, ScoreType.NUMERIC, level, low=low, high=high)


def baseline_description(metric: Metric) -> str:
    """How the baseline's values of a metric are drawn, for the plan's reader."""
    if metric.source.is_error_rate:
        # the simulated app traces every failed request with an ERROR observation
        return f"{BASELINE_ERROR_RATE:.0%} of requests fail"
    if metric.source is MetricSource.LATENCY:
        return f"lognormal, median {LATENCY_MEDIAN_MS:g} ms, sigma {LATENCY_SIGMA:g}"
    if metric.source is MetricSource.COST:
        return f"lognormal, median ${COST_MEDIAN_USD:g}, sigma {COST_SIGMA:g}"
    model = _score_model(metric, metric.score or metric.name)
    if model.kind is ScoreType.BOOLEAN:
        return f"true for {model.level:.0%} of scored traces"
    if model.kind is ScoreType.CATEGORICAL:
        return f"'{model.bad}' for {model.level:.0%} of scored traces"
    width = model.high - model.low
    mean = model.low + width * model.level
    return f"Beta, mean {mean:.4g}, sd {NUMERIC_SD * width:.4g} on {model.low:g}..{model.high:g}"


def degraded(model: ArmModel, metric: Metric, delta: float) -> ArmModel:
    """``model`` made worse by ``delta`` on ``metric`` (in its regression unit).

    Raises ValueError when the degraded arm cannot be drawn (a rate above 1, a mean
    outside the score's range)."""
    source = metric.source
    if source.is_error_rate:
        return replace(model, error_rate=_rate(model.error_rate + delta, metric, delta))
    if source is MetricSource.COST:
        return replace(model, cost_factor=model.cost_factor * (1.0 + delta / 100.0))
    if source is MetricSource.LATENCY:
        if metric.tolerance_percent is not None:
            return replace(model, latency_factor=model.latency_factor * (1.0 + delta / 100.0))
        return replace(model, latency_shift_ms=model.latency_shift_ms + delta)
    scores = tuple(
        _degraded_score(score, metric, delta) if score.name == metric.score else score
        for score in model.scores
    )
    return replace(model, scores=scores)


def _degraded_score(score: ScoreModel, metric: Metric, delta: float) -> ScoreModel:
    worse = -1.0 if metric.direction is Direction.HIGHER else 1.0
    if score.kind is not ScoreType.NUMERIC:
        return replace(score, level=_rate(score.level + worse * delta, metric, delta))
    width = score.high - score.low
    level = score.level + worse * delta / width
    if not 0.02 <= level <= 0.98:
        mean = score.low + width * level
        raise ValueError(
            f"regression {metric.name}={delta:g}: a canary mean of {mean:.4g} is outside the "
            f"score range {score.low:g}..{score.high:g} (baseline mean "
            f"{score.low + width * score.level:.4g})"
        )
    return replace(score, level=level)


def _rate(value: float, metric: Metric, delta: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"regression {metric.name}={delta:g}: the canary's rate would be {value:.4g}, "
            "outside 0..1"
        )
    return value


def _draw(
    rng: random.Random, model: ArmModel, scored: float
) -> tuple[bool, float, float, dict[str, ScoreValue]]:
    """One trace's error flag, latency, cost, and the scores it will get."""
    error = rng.random() < model.error_rate
    latency = rng.lognormvariate(math.log(LATENCY_MEDIAN_MS), LATENCY_SIGMA)
    latency = latency * model.latency_factor + model.latency_shift_ms
    cost = rng.lognormvariate(math.log(COST_MEDIAN_USD), COST_SIGMA) * model.cost_factor
    scores: dict[str, ScoreValue] = {}
    if model.scores and not error and rng.random() < scored:
        scores = {score.name: score.draw(rng) for score in model.scores}
    return error, max(latency, 0.0), cost, scores


# -- one run ----------------------------------------------------------------------------


@dataclass(slots=True)
class StepRun:
    """One step of one run."""

    entered: float
    left: float | None = None
    passed: bool = False
    traces: list[int] = field(default_factory=lambda: [0, 0])  # baseline, canary


@dataclass(frozen=True, slots=True)
class RunResult:
    """How one simulated release ended, in seconds from its start."""

    outcome: str
    ended: float
    steps: tuple[StepRun, ...]
    waiting: tuple[str, ...] = ()  # metrics not shown within tolerance at the last look


@dataclass(slots=True)
class _Run:
    """A release being simulated: the engine, the step it is in, scores on their way."""

    engine: Replay
    steps: list[StepRun]
    late: list[tuple[float, int, LateScores]] = field(default_factory=list)
    step: int = 0
    outcome: str = "running"

    def feed(self, record: Trace | LateScores) -> None:
        for event in self.engine.feed(record):
            self._follow(event)

    def _follow(self, event: Event) -> None:
        at = event.judgement.at - START
        current = self.steps[self.step]
        current.left = at
        current.passed = event.phase in (Phase.CANARY, Phase.PROMOTED)
        if event.phase is Phase.CANARY:
            self.step = event.step - 1
            self.steps.append(StepRun(entered=at))
        else:
            self.outcome = event.phase.value

    def feed_scores_until(self, until: float) -> None:
        while self.late and self.late[0][0] <= until and self.outcome == "running":
            self.feed(heapq.heappop(self.late)[2])

    def overdue(self, policy: Policy, t: float) -> bool:
        """Past the step's maxDuration (or the planning limit) by two looks: undecided."""
        step = policy.steps[self.step]
        limit = step.max_duration if step.max_duration is not None else UNBOUNDED_STEP_LIMIT
        return t - self.steps[-1].entered > limit + 2 * policy.analysis.interval


def simulate(
    policy: Policy, canary: ArmModel, baseline: ArmModel, settings: PlanSettings, run: int
) -> RunResult:
    """One seeded run of the release with the given arms, from its first request at 0
    until it is decided or a step outlasts its maxDuration (or ``UNBOUNDED_STEP_LIMIT``)."""
    analysis = policy.analysis
    rng = random.Random(f"{settings.seed}/{run}")
    state = _Run(Replay(policy), [StepRun(entered=0.0)])
    rate = settings.traffic_per_minute / 60.0
    settle, spread = analysis.score_settle, analysis.score_timeout - analysis.score_settle
    t, count = 0.0, 0
    # A record that brings a look is drawn at the weight from before that look, as the
    # proxy keeps the old weight until the new routing table reaches it.
    while True:
        state.feed_scores_until(START + t)
        if state.outcome != "running":
            break
        count += 1
        step = policy.steps[state.step]
        arm = Arm.CANARY if rng.random() * 100.0 < step.weight else Arm.BASELINE
        error, latency, cost, scores = _draw(
            rng, canary if arm is Arm.CANARY else baseline, settings.scores_per_trace
        )
        state.steps[state.step].traces[arm is Arm.CANARY] += 1
        state.feed(Trace(f"t{count}", arm, START + t, error, latency, cost))
        if state.outcome != "running":
            break
        if state.overdue(policy, t):
            return RunResult("undecided", t, tuple(state.steps), _waiting(state.engine.last))
        if scores:
            due = START + t + settle + rng.random() * spread
            heapq.heappush(state.late, (due, count, LateScores(f"t{count}", due, scores)))
        t += rng.expovariate(rate)
    ended = state.steps[-1].left
    assert ended is not None  # a decision closes the step it was made in
    return RunResult(state.outcome, ended, tuple(state.steps), _waiting(state.engine.last))


def _waiting(judgement: Judgement | None) -> tuple[str, ...]:
    if judgement is None:
        return ()
    return tuple(m.name for m in judgement.metrics if m.verdict is not Verdict.PASS)


# -- the plan ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    """One seeded run to simulate: a canary arm against the baseline arm."""

    policy: Policy
    canary: ArmModel
    baseline: ArmModel
    settings: PlanSettings
    run: int


def run_job(job: Job) -> RunResult:
    """``simulate`` for one job: what a pool of worker processes maps over."""
    return simulate(job.policy, job.canary, job.baseline, job.settings, job.run)


MapRuns = Callable[[Callable[[Job], RunResult], Sequence[Job]], Iterable[RunResult]]
"""How the runs are carried out: ``map``, or a process pool's ``map`` (same results:
each run's randomness depends on the seed and its number only)."""


def plan(policy: Policy, settings: PlanSettings, map_runs: MapRuns = map) -> Plan:
    """Simulate ``settings.runs`` releases of an equal canary and as many of a canary
    worse on each metric; summarise them and warn about what holds the release up."""
    _check(policy, settings)
    baseline = baseline_model(policy)
    metrics = policy.analysis.metrics
    arms = [baseline] + [degraded(baseline, m, _delta(m, settings)) for m in metrics]
    jobs = [Job(policy, arm, baseline, settings, i) for arm in arms for i in range(settings.runs)]
    results = list(map_runs(run_job, jobs))
    equal_runs, *regressed = [
        results[k : k + settings.runs] for k in range(0, len(results), settings.runs)
    ]
    steps = tuple(_step_plan(policy, index, equal_runs) for index in range(len(policy.steps)))
    return Plan(
        policy=policy,
        settings=settings,
        equal=EqualCanary(
            outcomes=_outcomes(equal_runs),
            time_to_promote=Spread.of(
                [r.ended if r.outcome == "promoted" else math.inf for r in equal_runs]
            ),
        ),
        steps=steps,
        regressions=tuple(
            _regression_plan(metric, _delta(metric, settings), runs)
            for metric, runs in zip(metrics, regressed, strict=True)
        ),
        warnings=tuple(_warnings(policy, settings, steps)),
    )


def _check(policy: Policy, settings: PlanSettings) -> None:
    if not (settings.traffic_per_minute > 0 and math.isfinite(settings.traffic_per_minute)):
        raise ValueError("traffic must be a positive number of requests a minute")
    if not 0.0 <= settings.scores_per_trace <= 1.0:
        raise ValueError("scores per trace must be between 0 and 1")
    if settings.runs < 1:
        raise ValueError("runs must be at least 1")
    names = {metric.name for metric in policy.analysis.metrics}
    for name, delta in settings.regressions.items():
        if name not in names:
            known = ", ".join(sorted(names))
            raise ValueError(f"regression {name}: no such metric in {policy.name} ({known})")
        if not (delta > 0 and math.isfinite(delta)):
            raise ValueError(f"regression {name}={delta:g}: must be a positive number")


def _delta(metric: Metric, settings: PlanSettings) -> float:
    return settings.regressions.get(metric.name, default_regression(metric))


def _outcomes(runs: Sequence[RunResult]) -> dict[str, int]:
    return {outcome: sum(run.outcome == outcome for run in runs) for outcome in OUTCOMES}


def _step_plan(policy: Policy, index: int, runs: Sequence[RunResult]) -> StepPlan:
    step = policy.steps[index]
    visits = [(run, run.steps[index]) for run in runs if len(run.steps) > index]
    spent = [
        (visit.left if visit.left is not None else run.ended) - visit.entered
        for run, visit in visits
    ]
    to_pass = [
        visit.left - visit.entered if visit.passed and visit.left is not None else math.inf
        for _, visit in visits
    ]
    return StepPlan(
        index=index + 1,
        weight=step.weight,
        min_duration=step.min_duration,
        max_duration=step.max_duration,
        reached=len(visits),
        passed=sum(visit.passed for _, visit in visits),
        undecided=sum(run.outcome == "undecided" and visit.left is None for run, visit in visits),
        waiting=_waiting_counts(run for run, visit in visits if not visit.passed),
        mean_time=_mean(spent),
        time_to_pass=Spread.of(to_pass),
        samples_baseline=_mean([visit.traces[0] for _, visit in visits]),
        samples_canary=_mean([visit.traces[1] for _, visit in visits]),
    )


def _waiting_counts(runs: Iterable[RunResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run in runs:
        for name in run.waiting:
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _regression_plan(metric: Metric, delta: float, runs: Sequence[RunResult]) -> RegressionPlan:
    caught = ("rolled_back", "paused")
    return RegressionPlan(
        metric=metric.name,
        critical=metric.critical,
        delta=delta,
        unit=regression_unit(metric),
        expected="rolled_back" if metric.critical else "paused",
        outcomes=_outcomes(runs),
        detected=sum(run.outcome in caught for run in runs),
        time_to_detect=Spread.of([r.ended if r.outcome in caught else math.inf for r in runs]),
    )


# -- warnings ---------------------------------------------------------------------------


def _warnings(policy: Policy, settings: PlanSettings, steps: Sequence[StepPlan]) -> Iterator[str]:
    yield from _rungs(policy, settings)
    for index, step in enumerate(policy.steps):
        yield from _held(policy, settings, index)
        yield from _too_short(step.max_duration, steps[index])
        yield from _unbounded(step.max_duration, steps[index])
        yield from _too_little_traffic(policy, settings, index)


def _rungs(policy: Policy, settings: PlanSettings) -> Iterator[str]:
    """What the plan leaves out: the rungs before the steps, which no user sees."""
    dataset = policy.dataset
    if dataset is not None:
        yield (
            f"dataset rung: not simulated; before the steps, dataset '{dataset.name}' runs "
            f"through both arms and waits up to scoreTimeout {_span(dataset.score_timeout)} "
            f"for its scores (at least {dataset.min_pairs} items scored on both arms to pass)"
        )
    shadow = policy.shadow
    if shadow is not None and shadow.gate is not None:
        gate = shadow.gate
        mirrored = settings.traffic_per_minute * shadow.percent / 100.0
        scored = mirrored * settings.scores_per_trace * (1.0 - BASELINE_ERROR_RATE)
        seconds = 60.0 * gate.min_pairs / scored + policy.analysis.score_settle
        bounded = (
            f"; more than its maxDuration {_span(gate.max_duration)}: it ends inconclusive"
            if seconds >= gate.max_duration
            else ""
        )
        yield (
            f"shadow rung: not simulated; at {shadow.percent:g}% mirrored, "
            f"{gate.min_pairs} scored pairs take at least {_span(seconds)} before the "
            f"steps{bounded}"
        )


def _too_short(max_duration: float | None, step: StepPlan) -> Iterator[str]:
    if max_duration is None or step.reached == 0:
        return
    median = step.time_to_pass.median
    if median is None or median > max_duration:
        passed = f"{step.passed} of {step.reached} runs passed it"
        told = "not passed by most runs" if median is None else f"{_span(median)}"
        yield (
            f"step {step.index}: maxDuration {_span(max_duration)} is shorter than the median "
            f"time to pass the step ({told}; {passed}){_waiting_on(step)}"
        )


def _unbounded(max_duration: float | None, step: StepPlan) -> Iterator[str]:
    if max_duration is None and step.undecided:
        yield (
            f"step {step.index}: {step.undecided} of {step.reached} runs had not passed it after "
            f"{_span(UNBOUNDED_STEP_LIMIT)}, and without maxDuration the release would wait "
            f"there{_waiting_on(step)}"
        )


def _waiting_on(step: StepPlan) -> str:
    if not step.waiting:
        return ""
    counts = ", ".join(f"{name} {count}" for name, count in step.waiting.items())
    return f"; runs by metric not yet shown within tolerance at their last look: {counts}"


def _arm_rates(policy: Policy, settings: PlanSettings, index: int) -> tuple[float, float]:
    """Traces a minute of the smaller arm in a step: all of them, and those scored."""
    weight = policy.steps[index].weight
    traces = settings.traffic_per_minute * min(weight, 100.0 - weight) / 100.0
    return traces, traces * settings.scores_per_trace * (1.0 - BASELINE_ERROR_RATE)


def _has_scores(policy: Policy) -> bool:
    return any(metric.source is MetricSource.SCORE for metric in policy.analysis.metrics)


def _samples_time(policy: Policy, settings: PlanSettings, index: int) -> float:
    """Seconds until every metric can have the step's minSamples per arm, at the least."""
    analysis = policy.analysis
    need = policy.steps[index].min_samples or analysis.min_samples
    traces, scored = _arm_rates(policy, settings, index)
    seconds = 60.0 * need / traces if traces > 0 else math.inf
    if _has_scores(policy):
        scored_seconds = 60.0 * need / scored if scored > 0 else math.inf
        seconds = max(seconds, scored_seconds + analysis.score_settle)
    return seconds


def _held(policy: Policy, settings: PlanSettings, index: int) -> Iterator[str]:
    """minSamples, scoreSettle and (for the first step: coverage is counted over the whole
    release) scoreTimeout keep a step from passing for at least this long."""
    analysis = policy.analysis
    step = policy.steps[index]
    need = step.min_samples or analysis.min_samples
    held = _samples_time(policy, settings, index)
    causes = [f"minSamples {need}"]
    if _has_scores(policy) and analysis.score_settle > 0:
        causes.append(f"scoreSettle {_span(analysis.score_settle)}")
    if index == 0 and _has_scores(policy):
        canary = settings.traffic_per_minute * step.weight / 100.0 * (1 - BASELINE_ERROR_RATE)
        coverage = 60.0 * analysis.min_samples / canary + analysis.score_timeout
        if coverage > held:
            held = coverage
            causes = [f"scoreTimeout {_span(analysis.score_timeout)}", f"minSamples {need}"]
    if held > step.min_duration and math.isfinite(held):
        yield (
            f"step {index + 1}: {' and '.join(causes)} hold the step for at least "
            f"{_span(held)} at this traffic, longer than its minDuration "
            f"{_span(step.min_duration)}"
        )


def _too_little_traffic(policy: Policy, settings: PlanSettings, index: int) -> Iterator[str]:
    step = policy.steps[index]
    if step.max_duration is None:
        return
    held = _samples_time(policy, settings, index)
    if held <= step.max_duration:
        return
    need = step.min_samples or policy.analysis.min_samples
    traces, scored = _arm_rates(policy, settings, index)
    how = f"{traces:.3g} traces/min in the smaller arm" + (
        f", {scored:.3g} of them scored" if _has_scores(policy) else ""
    )
    took = "never" if math.isinf(held) else f"about {_span(held)}"
    yield (
        f"step {index + 1}: traffic too low to reach minSamples {need} per arm within "
        f"maxDuration {_span(step.max_duration)} ({how}: {took})"
    )


def _span(seconds: float) -> str:
    """A duration rounded for reading: whole minutes from a minute up (1h32m, 14m), else
    whole seconds."""
    if seconds >= 60:
        return format_duration(round(seconds / 60.0) * 60.0)
    return format_duration(round(seconds))
