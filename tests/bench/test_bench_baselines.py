import dataclasses

import numpy as np
import pytest
from scipy import stats

from bench.baselines import (
    ArgoWindow,
    FixedHorizon,
    KayentaMW,
    Method,
    OracleSPRT,
    Outcome,
    PeekingZ,
    baseline_methods,
    mann_whitney_z,
    score_streams,
)
from bench.scenarios import SCENARIOS, TRAFFIC, Run

T = TRAFFIC["10/90"]


def make(name: str, seed: int) -> Run:
    return SCENARIOS[name].make_run(np.random.default_rng(seed), T)


def rates(method: Method, name: str, n: int, seed: int = 100) -> tuple[float, list[Outcome]]:
    outs = [method.decide(make(name, seed + i)) for i in range(n)]
    return float(np.mean([o.decision == "rollback" for o in outs])), outs


@pytest.fixture(scope="module")
def neutral_runs() -> list[Run]:
    return [make("neutral", 1000 + i) for i in range(300)]


def test_peeking_inflates_false_rollbacks_and_fixed_horizon_does_not(
    neutral_runs: list[Run],
) -> None:
    peek = np.mean([PeekingZ().decide(r).decision == "rollback" for r in neutral_runs])
    fixed = np.mean([FixedHorizon(30).decide(r).decision == "rollback" for r in neutral_runs])
    assert peek > 0.15
    assert fixed < 0.09


def test_argo_tight_threshold_rolls_back_most_neutral_runs(neutral_runs: list[Run]) -> None:
    rate = np.mean([ArgoWindow(0.05).decide(r).decision == "rollback" for r in neutral_runs[:100]])
    assert rate > 0.8


def test_kayenta_rule_is_conservative_per_run(neutral_runs: list[Run]) -> None:
    rate = np.mean([KayentaMW().decide(r).decision == "rollback" for r in neutral_runs[:150]])
    assert rate < 0.05


def test_oracle_catches_very_bad_fast() -> None:
    rate, outs = rates(OracleSPRT(), "very-bad", 60)
    assert rate >= 0.9
    minutes = [o.minute for o in outs if o.decision == "rollback" and o.minute is not None]
    assert np.median(minutes) <= 6


def test_oracle_targets_the_affected_observable() -> None:
    oracle = OracleSPRT()
    assert oracle.target(make("bad", 1))[:2] == ("helpfulness", -0.05)
    assert oracle.target(make("good", 1))[:2] == ("helpfulness", -0.05)
    assert oracle.target(make("neutral", 1))[:2] == ("helpfulness", -0.05)
    assert oracle.target(make("five-metrics", 1))[:2] == ("correctness", -0.05)
    metric, delta, sigma = oracle.target(make("cost-heavy-tail", 1))
    assert metric == "log_cost"
    assert delta == pytest.approx(np.log(1.2))
    assert sigma > 1.0


def test_oracle_promotes_good_and_has_no_data_without_scores() -> None:
    _, outs = rates(OracleSPRT(), "good", 20)
    assert np.mean([o.decision == "promote" for o in outs]) >= 0.9
    out = OracleSPRT().decide(make("no-scores", 1))
    assert out == Outcome("none", None, "helpfulness: no boundary crossed")


def test_decisions_and_minutes_are_well_formed() -> None:
    run = make("bad", 7)
    for m in baseline_methods():
        out = m.decide(run)
        assert out.decision in {"rollback", "promote", "pause", "none"}
        if out.decision == "none":
            assert out.minute is None
        else:
            assert out.minute is not None
            assert 1 <= out.minute <= run.minutes
            assert float(out.minute).is_integer()
    assert FixedHorizon(30).decide(run).minute == 30


def test_only_visible_scores_are_used() -> None:
    """Delay every canary score by 30 minutes: nothing can fire before minute 31."""
    run = make("very-bad", 3)
    late = {k: np.where(run.canary, v + 1800.0, v) for k, v in run.score_arrival.items()}
    delayed = dataclasses.replace(run, score_arrival=late)
    for m in (ArgoWindow(0.05), KayentaMW(), PeekingZ(), OracleSPRT()):
        out = m.decide(delayed)
        assert out.decision == "rollback"
        assert out.minute is not None
        assert out.minute > 30


def test_lost_traces_are_dropped() -> None:
    """Lost traces with terrible scores must not move any method."""
    run = make("neutral", 21)
    lost = run.canary & (np.arange(run.n) % 3 == 0)
    zeros = {k: np.where(lost, 0.0, v) for k, v in run.scores.items()}
    arrival = {k: np.where(lost, run.ts + 1.0, v) for k, v in run.score_arrival.items()}
    kept = dataclasses.replace(run, scores=zeros, score_arrival=arrival, lost=lost)
    only = dataclasses.replace(
        run,
        scores={k: np.where(lost, np.nan, v) for k, v in run.scores.items()},
        score_arrival={k: np.where(lost, np.inf, v) for k, v in run.score_arrival.items()},
    )
    for m in baseline_methods():
        assert m.decide(kept) == m.decide(only)
    # Without the lost mask the zeros would be seen.
    assert PeekingZ().decide(dataclasses.replace(kept, lost=None)).decision == "rollback"


def test_no_scores_promotes_with_the_incumbent_rules() -> None:
    run = make("no-scores", 2)
    for m in (ArgoWindow(0.05), KayentaMW(), PeekingZ(), FixedHorizon(30)):
        assert m.decide(run).decision == "promote"


def test_rules_watch_every_score() -> None:
    run = make("five-metrics", 4)
    out = PeekingZ().decide(run)
    assert out.decision == "rollback"
    only_main = PeekingZ(metrics=["helpfulness"])
    assert only_main.decide(run).reason in {"no failure", "helpfulness failed"}


def test_argo_aborts_on_the_fourth_failure() -> None:
    run = make("neutral", 5)
    c, b = score_streams(run, "helpfulness")
    rule = ArgoWindow(0.05)
    fired = rule.fired(run, c, b)
    # Recompute the failures directly at each look.
    failures = 0
    first = None
    for t in range(1, run.minutes + 1):
        lo, hi = 60.0 * t - 300.0, 60.0 * t
        cw = c.value[(c.visible_at > lo) & (c.visible_at <= hi)]
        bw = b.value[(b.visible_at > lo) & (b.visible_at <= hi)]
        if cw.size and bw.size and bw.mean() - cw.mean() > 0.05:
            failures += 1
        if failures == 4 and first is None:
            first = t
    assert first is not None
    assert int(np.argmax(fired)) + 1 == first


@pytest.mark.parametrize("metric", ["helpfulness", "tone_ok"])
def test_mann_whitney_matches_scipy(metric: str) -> None:
    run = make("five-metrics", 9)
    c, b = score_streams(run, metric)
    z = mann_whitney_z(run.minutes, c, b, max_buckets=512)
    for look in (3, 10, 45, 120):
        t = 60.0 * look
        x, y = c.value[c.visible_at <= t], b.value[b.visible_at <= t]
        res = stats.mannwhitneyu(x, y, alternative="less", method="asymptotic")
        assert z[look - 1] == pytest.approx(stats.norm.ppf(res.pvalue), abs=0.02)
