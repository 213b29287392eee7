"""Evidence: what becomes visible when, what is refused, and per-trace ingestion against
pre-aggregated batches (the benchmark feeds the judge batches and relies on both giving
the same evidence and the same judgement)."""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from collections import defaultdict
from dataclasses import dataclass

import pytest

from controller.judge import (
    Decision,
    Evidence,
    Judgement,
    ScoreValue,
    StepStatus,
    Trace,
    Verdict,
    judge,
    judge_samples,
)
from controller.judge.evidence import COST_FLOOR_USD, metric_value, sketch_bin
from policies import Policy
from policies.domain import Arm
from tests.judge.judge_support import ERRORS, HELPFULNESS, make_policy

RESOLVED = (
    "{name: resolved, source: score, score: resolved, scoreType: boolean, tolerance: 0.05, "
    "critical: true}"
)
BAD_TONE = (
    "{name: bad-tone, source: score, score: tone, scoreType: categorical, "
    "badValues: [rude, dismissive], tolerance: 0.05}"
)
STARS = (
    "{name: stars, source: score, score: stars, range: {min: 1, max: 5}, tolerance: 0.2, "
    "direction: higher}"
)
COST = "{name: cost, source: cost, tolerancePercent: 10}"
LATENCY = "{name: latency, source: latency, quantile: 0.9, tolerancePercent: 20}"


def canary(trace_id: str, ts: float, **fields: object) -> Trace:
    return Trace(trace_id, Arm.CANARY, ts, **fields)  # type: ignore[arg-type]


def baseline(trace_id: str, ts: float, **fields: object) -> Trace:
    return Trace(trace_id, Arm.BASELINE, ts, **fields)  # type: ignore[arg-type]


def observed(evidence: Evidence, name: str) -> tuple[int, int]:
    """(baseline, canary) observations of a metric that are visible now."""
    series = evidence.series[name]
    if series.means is not None:
        return series.means.totals
    assert series.quantiles is not None
    return series.quantiles.totals


# -- per-trace ingestion against batches ---------------------------------------------------

START = 1000.0  # the release starts at a non-zero time: cells are relative to it
STEP_1 = START + 240.0  # the second step opens four minutes in
LOOKS = 9
SETTLE = 30.0
TIMEOUT = 120.0


@dataclass(frozen=True)
class Scripted:
    trace: Trace
    score_at: float | None  # when its helpfulness score arrives; None: never
    score: float


KINDS = ("mixed", "worse", "equal")


def scripted_release(kind: str = "mixed") -> list[Scripted]:
    """Nine minutes, two steps (20% then 50%), errors, zero costs, late and missing scores.

    ``mixed``: a few traces, a somewhat slower canary; ``worse``: more traffic and a canary
    worse on every metric; ``equal``: much more traffic and a canary like the baseline.
    """
    rng = random.Random(7)
    volume = {"mixed": 1, "worse": 2, "equal": 6}[kind]
    slower = {"mixed": 1.3, "worse": 2.5, "equal": 1.0}[kind]
    out: list[Scripted] = []
    for minute in range(LOOKS):
        at = START + 60.0 * minute
        n_b, n_c = (8 * volume, 2 * volume) if at < STEP_1 else (5 * volume, 5 * volume)
        for arm, n in ((Arm.BASELINE, n_b), (Arm.CANARY, n_c)):
            worse = kind == "worse" and arm is Arm.CANARY
            for i in range(n):
                ts = at + 60.0 * (i + rng.uniform(0.1, 0.9)) / n
                error = rng.random() < (0.25 if worse else 0.05)
                cost = 0.0 if rng.random() < 0.1 else rng.lognormvariate(-6.0, 1.0)
                latency = rng.lognormvariate(6.0, 0.5) * (slower if arm is Arm.CANARY else 1.0)
                score = round(rng.betavariate(1.0 if worse else 3.0, 1.0), 3)
                fate = rng.random()
                score_at: float | None = None
                if not error:
                    if fate < 0.6:
                        score_at = ts
                    elif fate < 0.95:
                        score_at = ts + rng.uniform(5.0, 100.0)
                trace_id = f"{arm.value}-{minute}-{i}"
                trace = Trace(
                    trace_id,
                    arm,
                    ts,
                    error=error,
                    latency_ms=latency,
                    cost_usd=cost,
                    scores={"helpfulness": score} if score_at == ts else {},
                )
                out.append(Scripted(trace, score_at, score))
    return sorted(out, key=lambda s: s.trace.ts)


def equivalence_policy() -> Policy:
    return make_policy(
        metrics=[HELPFULNESS, ERRORS, COST, LATENCY],
        steps=["{weight: 20, minDuration: 2m}", "{weight: 50, minDuration: 3m}"],
        minSamples=5,
        scoreSettle=f"{SETTLE:g}s",
        scoreTimeout=f"{TIMEOUT:g}s",
    )


def step_of(ts: float) -> int:
    return 1 if ts >= STEP_1 else 0


def cell_of(ts: float) -> tuple[int, int]:
    return step_of(ts), math.floor((ts - START) / 60.0)


def ingest_per_trace(policy: Policy, release: list[Scripted]) -> list[tuple[Evidence, Judgement]]:
    """The controller's way: traces and late scores as they arrive, advancing each look."""
    evidence = Evidence(policy, START)
    late = sorted(
        (s for s in release if s.score_at is not None and s.score_at > s.trace.ts),
        key=lambda s: s.score_at or 0.0,
    )
    looks = []
    for look in range(1, LOOKS + 1):
        now = START + 60.0 * look
        if evidence.step_count == 1 and now > STEP_1:
            evidence.open_step(1, STEP_1)
        for s in release:
            if now - 60.0 < s.trace.ts <= now:
                assert evidence.add_trace(s.trace)
        for s in late:
            assert s.score_at is not None
            if now - 60.0 < s.score_at <= now:
                evidence.add_scores(s.trace.trace_id, {"helpfulness": s.score}, s.score_at)
        evidence.advance(now)
        step = StepStatus(evidence.step_count - 1, STEP_1 if now > STEP_1 else START)
        looks.append((evidence, judge(policy, evidence, step, now)))
        evidence = copy.deepcopy(evidence)  # keep each look's evidence to compare
    return looks


Moments = dict[tuple[str, tuple[int, int], Arm], list[float]]


def _add(moments: Moments, name: str, trace: Trace, value: float, harmful: bool = False) -> None:
    m = moments[name, cell_of(trace.ts), trace.arm]
    m[0] += 1
    m[1] += value
    m[2] += value * value
    m[3] += int(harmful and trace.arm is Arm.CANARY)


def _feed_look(evidence: Evidence, release: list[Scripted], now: float) -> None:
    """Aggregate what became visible in (now - 60 s, now] and add it as batches."""

    def window(t: float) -> bool:
        return now - 60.0 < t <= now

    traffic: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    moments: Moments = defaultdict(lambda: [0, 0.0, 0.0, 0])
    bins: dict[tuple[int, Arm], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    coverage: dict[tuple[tuple[int, int], Arm], list[int]] = defaultdict(lambda: [0, 0])
    for s in release:
        t = s.trace
        cell = cell_of(t.ts)
        if window(t.ts):
            counts = traffic[cell]
            counts[1 if t.arm is Arm.CANARY else 0] += 1
            counts[2 if t.arm is Arm.CANARY else 3] += int(bool(t.error))
            _add(moments, "errors", t, float(bool(t.error)), harmful=bool(t.error))
            assert t.cost_usd is not None and t.latency_ms is not None
            _add(moments, "cost", t, math.log(t.cost_usd + COST_FLOOR_USD))
            bins[step_of(t.ts), t.arm][sketch_bin(t.latency_ms)] += 1
        if s.score_at is not None and window(max(s.score_at, t.ts + SETTLE)):
            _add(moments, "helpfulness", t, s.score)
        if not t.error and window(t.ts + TIMEOUT):
            cov = coverage[cell, t.arm]
            cov[0] += 1
            cov[1] += int(s.score_at is None or s.score_at > now)
    for cell, (n_b, n_c, errors, base_errors) in sorted(traffic.items()):
        evidence.add_traffic(cell, n_b, n_c, errors, base_errors)
    for (name, cell, arm), (n, total, total_sq, harmful) in sorted(moments.items()):
        evidence.add_batch(name, cell, arm, (int(n), total, total_sq), int(harmful))
    for (step, arm), found in sorted(bins.items()):
        evidence.add_quantile_bins("latency", step, arm, found)
    for (cell, arm), (traces, unscored) in sorted(coverage.items()):
        evidence.add_coverage("helpfulness", cell, arm, traces, unscored)


def ingest_batches(policy: Policy, release: list[Scripted]) -> list[tuple[Evidence, Judgement]]:
    """The benchmark's way: per look, moments per (cell, arm) of what became visible."""
    evidence = Evidence(policy, START)
    looks = []
    for look in range(1, LOOKS + 1):
        now = START + 60.0 * look
        if evidence.step_count == 1 and now > STEP_1:
            evidence.open_step(1, STEP_1)
        _feed_look(evidence, release, now)
        evidence.advance(now)
        step = StepStatus(evidence.step_count - 1, STEP_1 if now > STEP_1 else START)
        looks.append((evidence, judge(policy, evidence, step, now)))
        evidence = copy.deepcopy(evidence)  # keep each look's evidence to compare
    return looks


def _without_trace_ids(judgement: Judgement) -> Judgement:
    metrics = tuple(dataclasses.replace(m, worst_traces=()) for m in judgement.metrics)
    return dataclasses.replace(judgement, metrics=metrics)


def _assert_same_numbers(left: object, right: object, path: str = "") -> None:
    """Structural equality, floats to 1e-9 relative (sums are added in another order)."""
    if dataclasses.is_dataclass(left) and not isinstance(left, type):
        assert type(left) is type(right), path
        for f in dataclasses.fields(left):
            _assert_same_numbers(getattr(left, f.name), getattr(right, f.name), f"{path}.{f.name}")
    elif isinstance(left, tuple | list):
        assert isinstance(right, tuple | list) and len(left) == len(right), path
        for i, (a, b) in enumerate(zip(left, right, strict=True)):
            _assert_same_numbers(a, b, f"{path}[{i}]")
    elif isinstance(left, float) and not isinstance(left, bool):
        assert right == pytest.approx(left, rel=1e-9, abs=1e-12, nan_ok=True), path
    else:
        assert left == right, path


Looks = list[tuple[tuple[Evidence, Judgement], tuple[Evidence, Judgement]]]


@pytest.fixture(scope="module", params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def both_ways(kind: str) -> Looks:
    policy = equivalence_policy()
    release = scripted_release(kind)
    return list(
        zip(ingest_per_trace(policy, release), ingest_batches(policy, release), strict=True)
    )


def test_the_scripted_release_exercises_what_it_should() -> None:
    release = scripted_release()
    assert any(s.trace.error for s in release)
    assert any(s.trace.cost_usd == 0.0 for s in release)
    assert any(s.score_at is None and not s.trace.error for s in release)
    assert any(s.score_at is not None and s.score_at > s.trace.ts for s in release)
    assert any(s.trace.ts >= STEP_1 for s in release)


@pytest.mark.parametrize("look", range(LOOKS))
def test_batches_give_the_same_sums_as_traces(both_ways: Looks, look: int) -> None:
    (by_trace, _), (by_batch, _) = both_ways[look]
    assert by_trace.step_traffic == by_batch.step_traffic
    assert by_trace.block_errors == by_batch.block_errors
    assert by_trace.observed_until == by_batch.observed_until
    for name in ("helpfulness", "errors", "cost"):
        a, b = by_trace.series[name].means, by_batch.series[name].means
        assert a is not None and b is not None
        assert a.step_counts == b.step_counts, name
        assert a.canary_bad == b.canary_bad, name
        assert set(a.cells) == set(b.cells), name
        for cell in a.cells:
            for arm in (Arm.BASELINE, Arm.CANARY):
                x, y = a.cells[cell].arm(arm), b.cells[cell].arm(arm)
                assert x.n == y.n
                assert x.total == pytest.approx(y.total, rel=1e-12)
                assert x.total_sq == pytest.approx(y.total_sq, rel=1e-12)
        assert a.sums == pytest.approx(b.sums, rel=1e-9)
        assert a.arms[0] == pytest.approx(b.arms[0], rel=1e-9, abs=1e-12)
        assert a.arms[1] == pytest.approx(b.arms[1], rel=1e-9, abs=1e-12)
    cov_a, cov_b = by_trace.series["helpfulness"].coverage, by_batch.series["helpfulness"].coverage
    assert cov_a is not None and cov_b is not None
    assert cov_a.totals == cov_b.totals
    assert cov_a.arms[0] == pytest.approx(cov_b.arms[0], rel=1e-9, abs=1e-12)
    assert cov_a.arms[1] == pytest.approx(cov_b.arms[1], rel=1e-9, abs=1e-12)
    assert cov_a.sums == pytest.approx(cov_b.sums, rel=1e-9)
    q_a, q_b = by_trace.series["latency"].quantiles, by_batch.series["latency"].quantiles
    assert q_a is not None and q_b is not None
    assert set(q_a.steps) == set(q_b.steps)
    for step in q_a.steps:
        for one, other in zip(q_a.steps[step], q_b.steps[step], strict=True):
            assert (one.n, one.bins) == (other.n, other.bins)


@pytest.mark.parametrize("look", range(LOOKS))
def test_batches_give_the_same_judgement_as_traces(both_ways: Looks, look: int) -> None:
    (_, by_trace), (_, by_batch) = both_ways[look]
    assert by_trace.decision == by_batch.decision
    assert [m.verdict for m in by_trace.metrics] == [m.verdict for m in by_batch.metrics]
    assert [c.state for c in by_trace.checks] == [c.state for c in by_batch.checks]
    _assert_same_numbers(_without_trace_ids(by_trace), _without_trace_ids(by_batch))


def test_the_scripted_releases_reach_real_verdicts(kind: str, both_ways: Looks) -> None:
    # The comparison above is only worth something if the looks decide different things.
    (evidence, last), _ = both_ways[-1]
    decisions = {judgement.decision for (_, judgement), _ in both_ways}
    assert last.step == 1
    assert all(m.n_canary_step > 0 for m in last.metrics)
    assert all(m.estimate is not None for m in last.metrics)
    coverage = evidence.series["helpfulness"].coverage
    assert coverage is not None
    assert coverage.arms[1][1] > 0  # some canary traces were never scored
    expected = {
        "mixed": {Decision.CONTINUE},
        "worse": {Decision.CONTINUE, Decision.PAUSE, Decision.ROLLBACK},
        "equal": {Decision.CONTINUE},
    }[kind]
    assert decisions == expected
    if kind == "equal":
        assert {m.name for m in last.metrics if m.verdict is Verdict.PASS} >= {
            "helpfulness",
            "errors",
        }


def test_judge_samples_equals_controller_ingestion(kind: str, both_ways: Looks) -> None:
    # One look over all the samples at the end sees what the incremental looks saw.
    policy = equivalence_policy()
    release = scripted_release(kind)
    now = START + 60.0 * LOOKS
    late = [
        (s.trace.trace_id, {"helpfulness": s.score}, s.score_at)
        for s in release
        if s.score_at is not None and s.score_at > s.trace.ts
    ]
    at_once = judge_samples(
        policy,
        [s.trace for s in release],
        now,
        started_at=START,
        step_starts=[STEP_1],
        late_scores=late,  # type: ignore[arg-type]
    )
    (_, incremental), _ = both_ways[-1]
    _assert_same_numbers(at_once, incremental)


# -- visibility in time ----------------------------------------------------------------------


def test_score_settle_delays_visibility() -> None:
    policy = make_policy(scoreSettle="120s", scoreTimeout="10m")
    evidence = Evidence(policy, 0.0)
    evidence.add_trace(canary("c", 10.0, scores={"helpfulness": 0.8}))
    evidence.add_trace(baseline("b", 10.0))
    evidence.add_scores("b", {"helpfulness": 0.7}, 20.0)
    evidence.advance(129.0)
    assert observed(evidence, "helpfulness") == (0, 0)
    evidence.advance(130.0)
    assert observed(evidence, "helpfulness") == (1, 1)


def test_a_score_arriving_after_the_settle_time_counts_when_it_arrives() -> None:
    policy = make_policy(scoreSettle="60s", scoreTimeout="10m")
    evidence = Evidence(policy, 0.0)
    evidence.add_trace(canary("c", 0.0))
    evidence.add_scores("c", {"helpfulness": 0.8}, 300.0)
    evidence.advance(299.0)
    assert observed(evidence, "helpfulness") == (0, 0)
    evidence.advance(300.0)
    assert observed(evidence, "helpfulness") == (0, 1)


def unscored_share(evidence: Evidence, name: str) -> tuple[int, int]:
    """(baseline, canary) traces whose coverage of a score metric has been counted."""
    coverage = evidence.series[name].coverage
    assert coverage is not None
    return coverage.totals


def test_scores_not_read_yet_are_not_missing_scores() -> None:
    policy = make_policy(scoreTimeout="10m")
    evidence = Evidence(policy, 0.0)
    evidence.add_trace(canary("c", 0.0))
    # Langfuse's scores could be read only up to 5 minutes: at 20 minutes the trace's
    # scores (due at 10) are not known to be missing
    evidence.advance(1200.0, scores_read_until=300.0)
    assert unscored_share(evidence, "helpfulness") == (0, 0)
    # read at last: the score was made in time, at 9 minutes, and counts as such
    evidence.add_scores("c", {"helpfulness": 0.8}, 540.0)
    evidence.advance(1260.0, scores_read_until=1260.0)
    assert unscored_share(evidence, "helpfulness") == (0, 1)
    coverage = evidence.series["helpfulness"].coverage
    assert coverage is not None and coverage.arms[1][1] == 0.0  # not one unscored
    assert observed(evidence, "helpfulness") == (0, 1)


def test_scores_later_than_now_are_not_visible() -> None:
    policy = make_policy(minSamples=1)
    traces = [canary("c", 10.0), baseline("b", 10.0, scores={"helpfulness": 0.9})]
    late: list[tuple[str, dict[str, ScoreValue], float]] = [("c", {"helpfulness": 0.1}, 200.0)]
    before = judge_samples(policy, traces, 199.0, started_at=0.0, late_scores=late)
    at = judge_samples(policy, traces, 200.0, started_at=0.0, late_scores=late)
    assert (before.metrics[0].n_baseline, before.metrics[0].n_canary) == (1, 0)
    assert (at.metrics[0].n_baseline, at.metrics[0].n_canary) == (1, 1)


def test_traces_later_than_now_are_not_visible() -> None:
    policy = make_policy(metrics=[ERRORS])
    traces = [canary("c1", 10.0, error=True), canary("c2", 100.0, error=True)]
    judgement = judge_samples(policy, traces, 50.0, started_at=0.0)
    assert judgement.metrics[0].n_canary == 1


def test_a_score_added_for_a_future_time_waits_for_it() -> None:
    policy = make_policy()
    evidence = Evidence(policy, 0.0)
    evidence.add_trace(canary("c", 10.0))
    evidence.add_scores("c", {"helpfulness": 0.5}, 500.0)
    evidence.advance(400.0)
    assert observed(evidence, "helpfulness") == (0, 0)
    evidence.advance(500.0)
    assert observed(evidence, "helpfulness") == (0, 1)


def test_advance_refuses_to_go_back_in_time() -> None:
    evidence = Evidence(make_policy(), 100.0)
    with pytest.raises(ValueError, match="back in time"):
        evidence.advance(99.0)
    evidence.advance(200.0)
    evidence.advance(200.0)  # the same time again is fine
    with pytest.raises(ValueError, match="back in time"):
        evidence.advance(199.9)
    assert evidence.observed_until == 200.0


def test_coverage_counts_unscored_traces_once_they_time_out() -> None:
    policy = make_policy(scoreTimeout="120s")
    evidence = Evidence(policy, 0.0)
    evidence.add_trace(canary("scored", 0.0, scores={"helpfulness": 0.9}))
    evidence.add_trace(canary("unscored", 0.0))
    evidence.add_trace(canary("failed", 0.0, error=True))  # errors are not expected a score
    evidence.add_trace(baseline("late", 0.0))
    evidence.add_scores("late", {"helpfulness": 0.5}, 60.0)
    coverage = evidence.series["helpfulness"].coverage
    assert coverage is not None
    evidence.advance(119.0)
    assert coverage.totals == (0, 0)
    evidence.advance(120.0)
    assert coverage.totals == (1, 2)
    assert coverage.arms[1][1] == 1.0  # one canary trace never scored
    assert coverage.arms[0][1] == 0.0


# -- what is refused -----------------------------------------------------------------------


def test_duplicate_trace_ids_are_counted_and_ignored() -> None:
    policy = make_policy(metrics=[ERRORS])
    evidence = Evidence(policy, 0.0)
    assert evidence.add_trace(canary("t", 1.0, error=True))
    assert not evidence.add_trace(canary("t", 2.0, error=False))
    assert not evidence.add_trace(baseline("t", 3.0, error=False))
    evidence.advance(60.0)
    assert evidence.duplicate_traces == 2
    assert evidence.traffic_in_step(0) == (0, 1)
    assert observed(evidence, "errors") == (0, 1)
    assert evidence.recent_errors(0.0, 60.0) == (1, 1, 0, 0)


def test_scores_for_unknown_traces_are_orphans() -> None:
    evidence = Evidence(make_policy(), 0.0)
    evidence.add_trace(canary("known", 1.0))
    evidence.add_scores("unknown", {"helpfulness": 0.5, "tone": "polite"}, 2.0)
    evidence.add_scores("also-unknown", {"helpfulness": 0.5}, 2.0)
    evidence.advance(60.0)
    assert evidence.orphan_scores == 3
    assert observed(evidence, "helpfulness") == (0, 0)


def test_only_the_first_value_of_a_score_counts() -> None:
    evidence = Evidence(make_policy(), 0.0)
    evidence.add_trace(canary("c", 1.0, scores={"helpfulness": 0.25}))
    evidence.add_scores("c", {"helpfulness": 0.75}, 5.0)
    evidence.advance(60.0)
    means = evidence.series["helpfulness"].means
    assert means is not None
    assert means.arms[1][:2] == [1.0, 0.25]


def test_shadow_traces_are_counted_but_not_compared() -> None:
    policy = make_policy(metrics=[ERRORS])
    evidence = Evidence(policy, 0.0)
    assert evidence.add_trace(Trace("s", Arm.SHADOW, 1.0, error=True))
    evidence.advance(60.0)
    assert evidence.shadow_traces == 1
    assert evidence.traffic_in_step(0) == (0, 0)
    assert observed(evidence, "errors") == (0, 0)


@pytest.mark.parametrize(
    ("raw", "invalid"),
    [
        pytest.param("0.7", 1, id="string"),
        pytest.param(1.5, 1, id="above-range"),
        pytest.param(-0.1, 1, id="below-range"),
        pytest.param(math.nan, 1, id="nan"),
        pytest.param(math.inf, 1, id="inf"),
        pytest.param(True, 1, id="boolean-for-numeric"),
        pytest.param(0.0, 0, id="range-low-edge"),
        pytest.param(1, 0, id="range-high-edge-int"),
    ],
)
def test_invalid_numeric_scores_are_counted_and_not_used(raw: ScoreValue, invalid: int) -> None:
    policy = make_policy(minSamples=1)
    traces = [canary("c", 1.0, scores={"helpfulness": raw})]
    judgement = judge_samples(policy, traces, 60.0, started_at=0.0)
    result = judgement.metrics[0]
    assert result.invalid == invalid
    assert result.n_canary == 1 - invalid


@pytest.mark.parametrize(
    ("field", "value", "metric"),
    [
        pytest.param("cost_usd", -0.01, "cost", id="negative-cost"),
        pytest.param("cost_usd", math.nan, "cost", id="nan-cost"),
        pytest.param("latency_ms", -5.0, "latency", id="negative-latency"),
        pytest.param("latency_ms", math.inf, "latency", id="infinite-latency"),
    ],
)
def test_invalid_proxy_values_are_counted_and_not_used(
    field: str, value: float, metric: str
) -> None:
    policy = make_policy(metrics=[COST, LATENCY])
    evidence = Evidence(policy, 0.0)
    evidence.add_trace(canary("bad", 1.0, **{field: value}))
    evidence.add_trace(canary("good", 2.0, cost_usd=0.002, latency_ms=300.0))
    evidence.advance(60.0)
    assert evidence.series[metric].invalid == 1
    assert observed(evidence, metric) == (0, 1)
    other = "latency" if metric == "cost" else "cost"
    assert evidence.series[other].invalid == 0
    assert observed(evidence, other) == (0, 1)  # the bad trace lacked it: not counted


def test_missing_proxy_values_are_neither_used_nor_invalid() -> None:
    policy = make_policy(metrics=[COST, LATENCY, ERRORS])
    evidence = Evidence(policy, 0.0)
    evidence.add_trace(canary("c", 1.0))
    evidence.advance(60.0)
    for name in ("cost", "latency", "errors"):
        assert evidence.series[name].invalid == 0
        assert observed(evidence, name) == (0, 0)
    assert evidence.traffic_in_step(0) == (0, 1)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        pytest.param(True, 1.0, id="true"),
        pytest.param(False, 0.0, id="false"),
        pytest.param(1, 1.0, id="one"),
        pytest.param(0.0, 0.0, id="zero-float"),
        pytest.param("true", 1.0, id="string-true"),
        pytest.param(" FALSE ", 0.0, id="string-false"),
        pytest.param("yes", None, id="string-other"),
        pytest.param(0.5, None, id="fraction"),
        pytest.param(2, None, id="two"),
    ],
)
def test_boolean_scores_become_zero_or_one(raw: ScoreValue, value: float | None) -> None:
    metric = make_policy(metrics=[RESOLVED]).analysis.metrics[0]
    assert metric_value(metric, raw) == value


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        pytest.param("rude", 1.0, id="bad"),
        pytest.param("dismissive", 1.0, id="other-bad"),
        pytest.param("polite", 0.0, id="good"),
        pytest.param("Rude", 0.0, id="case-sensitive"),
        pytest.param(1, None, id="number"),
        pytest.param(True, None, id="boolean"),
    ],
)
def test_categorical_bad_values_become_one(raw: ScoreValue, value: float | None) -> None:
    metric = make_policy(metrics=[BAD_TONE]).analysis.metrics[0]
    assert metric_value(metric, raw) == value


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        pytest.param(1, 1.0, id="min"),
        pytest.param(5.0, 5.0, id="max"),
        pytest.param(3.5, 3.5, id="inside"),
        pytest.param(0.5, None, id="below"),
        pytest.param(5.5, None, id="above"),
    ],
)
def test_numeric_scores_use_the_metric_range(raw: ScoreValue, value: float | None) -> None:
    metric = make_policy(metrics=[STARS]).analysis.metrics[0]
    assert metric_value(metric, raw) == value


def test_cost_is_compared_on_the_log_scale() -> None:
    metric = make_policy(metrics=[COST]).analysis.metrics[0]
    assert metric_value(metric, 0.002) == pytest.approx(math.log(0.002 + COST_FLOOR_USD))
    assert metric_value(metric, 0.0) == pytest.approx(math.log(COST_FLOOR_USD))
    assert metric_value(metric, -0.001) is None


def test_error_flags_and_categorical_scores_feed_rates() -> None:
    policy = make_policy(metrics=[ERRORS, BAD_TONE, RESOLVED], minSamples=1)
    traces = [
        canary("c1", 1.0, error=True, scores={"tone": "rude", "resolved": "false"}),
        canary("c2", 2.0, error=False, scores={"tone": "polite", "resolved": True}),
        canary("c3", 3.0, error=False, scores={"tone": 3, "resolved": "maybe"}),
        baseline("b1", 4.0, error=False, scores={"tone": "polite", "resolved": 1}),
    ]
    evidence = Evidence(policy, 0.0)
    for trace in traces:
        evidence.add_trace(trace)
    evidence.advance(60.0)
    rates = {}
    for name in ("errors", "bad-tone", "resolved"):
        means = evidence.series[name].means
        assert means is not None
        rates[name] = (means.arms[1][0], means.arms[1][1], evidence.series[name].invalid)
    assert rates == {
        "errors": (3.0, 1.0, 0),
        "bad-tone": (2.0, 1.0, 1),
        "resolved": (2.0, 1.0, 1),
    }


# -- steps ---------------------------------------------------------------------------------


def test_traces_after_open_step_go_to_the_new_step() -> None:
    policy = make_policy(
        metrics=[ERRORS], steps=["{weight: 20}", "{weight: 50}", "{weight: 80}"], minSamples=1
    )
    evidence = Evidence(policy, 0.0)
    evidence.add_trace(canary("a", 50.0, error=False))
    evidence.open_step(1, 100.0)
    evidence.add_trace(canary("b", 99.9, error=False))  # started before the step opened
    evidence.add_trace(canary("c", 100.0, error=True))
    evidence.add_trace(baseline("d", 150.0, error=False))
    evidence.open_step(2, 200.0)
    evidence.add_trace(canary("e", 250.0, error=False))
    evidence.advance(300.0)
    assert evidence.step_count == 3
    assert [evidence.traffic_in_step(i) for i in range(3)] == [(0, 2), (1, 1), (0, 1)]
    means = evidence.series["errors"].means
    assert means is not None
    assert [means.step_count(i) for i in range(3)] == [(0, 2), (1, 1), (0, 1)]
    assert evidence.cell_of(150.0) == (1, 2)
    judgement = judge(policy, evidence, StepStatus(1, 100.0), 300.0)
    result = judgement.metrics[0]
    assert (result.n_baseline_step, result.n_canary_step) == (1, 1)
    assert (result.n_baseline, result.n_canary) == (1, 4)


def test_judge_samples_puts_traces_in_steps_by_their_start() -> None:
    policy = make_policy(metrics=[ERRORS], steps=["{weight: 20}", "{weight: 50}"], minSamples=1)
    traces = [canary("a", 50.0, error=False), canary("b", 150.0, error=True)]
    judgement = judge_samples(policy, traces, 200.0, started_at=0.0, step_starts=[100.0])
    assert judgement.step == 1
    assert (judgement.metrics[0].n_canary, judgement.metrics[0].n_canary_step) == (2, 1)


def test_steps_open_in_order() -> None:
    policy = make_policy(steps=["{weight: 20}", "{weight: 50}", "{weight: 80}"])
    evidence = Evidence(policy, 100.0)
    with pytest.raises(ValueError, match="step 2"):
        evidence.open_step(2, 200.0)
    with pytest.raises(ValueError, match="time order"):
        evidence.open_step(1, 50.0)
    evidence.open_step(1, 200.0)
    with pytest.raises(ValueError, match="time order"):
        evidence.open_step(2, 150.0)


def test_batch_inputs_refuse_the_wrong_metric_kind() -> None:
    policy = make_policy(metrics=[HELPFULNESS, LATENCY, ERRORS])
    evidence = Evidence(policy, 0.0)
    with pytest.raises(ValueError, match="quantile"):
        evidence.add_batch("latency", (0, 0), Arm.CANARY, (1, 1.0, 1.0))
    with pytest.raises(ValueError, match="not a quantile"):
        evidence.add_quantile_bins("errors", 0, Arm.CANARY, {1: 1})
    with pytest.raises(ValueError, match="not a score"):
        evidence.add_coverage("errors", (0, 0), Arm.CANARY, 1, 0)


# -- known defects ---------------------------------------------------------------------------


def test_boolean_higher_is_better_counts_harmful_canary_falses() -> None:
    policy = make_policy(metrics=[RESOLVED])
    evidence = Evidence(policy, 0.0)
    for i, value in enumerate([True, False, False, True, False]):
        evidence.add_trace(canary(f"c{i}", float(i), scores={"resolved": value}))
    evidence.advance(60.0)
    means = evidence.series["resolved"].means
    assert means is not None
    assert means.canary_bad == 3
    assert set(evidence.worst_traces("resolved")) == {"c1", "c2", "c4"}


def test_records_of_old_traces_are_forgotten_and_their_statistics_kept() -> None:
    policy = make_policy(scoreTimeout="10m")
    evidence = Evidence(policy, 0.0)
    for index in range(3000):  # one trace a minute for 50 hours
        ts = index * 60.0
        evidence.add_trace(canary(f"c{index}", ts, scores={"helpfulness": 0.5}))
        evidence.add_trace(baseline(f"b{index}", ts + 1, scores={"helpfulness": 0.5}))
        evidence.advance(ts + 2)
    # kept: traces younger than twice the score timeout (20 minutes), one per minute per arm
    assert len(evidence._traces) <= 2 * 21 + 2
    assert evidence.forgotten_traces >= 2 * 3000 - 2 * 22
    assert observed(evidence, "helpfulness") == (3000, 3000)


def test_a_score_for_a_forgotten_trace_is_an_orphan() -> None:
    evidence = Evidence(make_policy(scoreTimeout="60s"), 0.0)
    evidence.add_trace(canary("old", 0.0))
    evidence.advance(1000.0)
    evidence.add_scores("old", {"helpfulness": 0.9}, 1000.0)
    assert evidence.orphan_scores == 1


def test_a_trace_with_a_score_due_later_is_kept_until_the_score_counts() -> None:
    evidence = Evidence(make_policy(scoreTimeout="60s"), 0.0)
    evidence.add_trace(canary("c", 0.0))
    evidence.add_scores("c", {"helpfulness": 0.7}, 900.0)
    evidence.advance(800.0)  # past the forgetting horizon, before the score is due
    evidence.advance(900.0)
    assert observed(evidence, "helpfulness") == (0, 1)
    assert evidence.forgotten_traces == 1
