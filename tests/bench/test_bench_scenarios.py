import numpy as np
import pytest

from bench.scenarios import SCENARIOS, TRAFFIC, Run, beta_params

T = TRAFFIC["10/90"]


def runs(name: str, k: int = 4, seed: int = 11) -> list[Run]:
    return [SCENARIOS[name].make_run(np.random.default_rng(seed + i), T) for i in range(k)]


def pooled(rs: list[Run], metric: str, canary: bool) -> np.ndarray:
    vals = [r.scores[metric][r.canary == canary] for r in rs]
    v = np.concatenate(vals)
    finite: np.ndarray = v[np.isfinite(v)]
    return finite


def test_registry_matches_the_protocol() -> None:
    assert len(SCENARIOS) == 13
    truths = {name: s.truth for name, s in SCENARIOS.items()}
    assert truths["neutral"] == "neutral"
    assert truths["good"] == "good"
    assert truths["bad"] == "bad"
    assert truths["srm-lost"] == "broken"
    assert truths["no-scores"] == "broken"
    assert SCENARIOS["bad"].effects == {"helpfulness": -0.05, "error": 0.02}
    assert SCENARIOS["five-metrics"].effects == {"correctness": -0.05}


def test_beta_params_solve_mean_and_sd() -> None:
    a, b = beta_params(0.75, 0.25)
    assert a == pytest.approx(1.5)
    assert b == pytest.approx(0.5)
    a, b = beta_params(0.6, 0.25)
    a, b = float(a), float(b)
    mean = a / (a + b)
    sd = np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    assert mean == pytest.approx(0.6)
    assert sd == pytest.approx(0.25)
    # Infeasible means are clipped so that a, b stay positive.
    a, b = beta_params(np.array([0.01, 0.99]), 0.25)
    assert np.all(np.asarray(a) > 0)
    assert np.all(np.asarray(b) > 0)


def test_run_layout_and_traffic() -> None:
    r = runs("neutral", 1)[0]
    assert r.minutes == 120
    assert r.canary_weight == pytest.approx(0.1)
    assert np.all(np.diff(r.ts) >= 0)
    assert r.ts.min() >= 0
    assert r.ts.max() < 120 * 60
    assert 11_500 < r.n < 12_500
    assert r.canary.mean() == pytest.approx(0.1, abs=0.01)
    for arr in (r.canary, r.error, r.cost, r.latency):
        assert arr.shape == r.ts.shape
    assert r.lost is None
    # An error trace is never scored but keeps cost and latency.
    h, arrival = r.scores["helpfulness"], r.score_arrival["helpfulness"]
    assert np.all(np.isnan(h[r.error]))
    assert np.all(np.isinf(arrival[r.error]))
    assert np.all(np.isfinite(r.cost[r.error]))
    assert np.all(arrival[~r.error] >= r.ts[~r.error])
    assert np.isfinite(h[~r.error]).all()


def test_fifty_fifty_traffic() -> None:
    r = SCENARIOS["neutral"].make_run(np.random.default_rng(3), TRAFFIC["50/50"])
    assert r.canary_weight == pytest.approx(0.5)
    assert r.canary.mean() == pytest.approx(0.5, abs=0.02)
    assert 11_500 < r.n < 12_500


def test_score_cost_latency_generators() -> None:
    rs = runs("neutral")
    base = pooled(rs, "helpfulness", False)
    assert base.mean() == pytest.approx(0.75, abs=0.005)
    assert base.std() == pytest.approx(0.25, abs=0.005)
    ts = np.concatenate([r.ts for r in rs])
    err = np.concatenate([r.error for r in rs])
    cost = np.concatenate([r.cost for r in rs])
    lat = np.concatenate([r.latency for r in rs])
    assert err.mean() == pytest.approx(0.01, abs=0.002)
    assert np.median(cost) == pytest.approx(0.002, rel=0.05)
    assert np.median(lat) == pytest.approx(800, rel=0.03)
    assert np.std(np.log(cost)) == pytest.approx(1.02, abs=0.03)
    delay = np.concatenate([(r.score_arrival["helpfulness"] - r.ts)[~r.error] for r in rs]) / 60.0
    assert delay.mean() == pytest.approx(2.0, rel=0.03)
    assert ts.size == cost.size


@pytest.mark.parametrize(
    ("name", "mean", "sd"),
    [
        ("bad", 0.70, 0.25),
        ("very-bad", 0.60, 0.25),
        ("good", 0.77, 0.25),
        ("subtly-bad", 0.73, 0.25),
    ],
)
def test_canary_shift_keeps_sd(name: str, mean: float, sd: float) -> None:
    can = pooled(runs(name, 8), "helpfulness", True)
    assert can.mean() == pytest.approx(mean, abs=0.01)
    assert can.std() == pytest.approx(sd, abs=0.01)


def test_noisy_judge_sd() -> None:
    rs = runs("neutral-noisy-judge")
    for arm in (False, True):
        v = pooled(rs, "helpfulness", arm)
        assert v.std() == pytest.approx(0.35, abs=0.01)
        assert v.mean() == pytest.approx(0.75, abs=0.015)
        assert v.min() >= 0.0
        assert v.max() <= 1.0


def test_error_rates_of_bad_scenarios() -> None:
    for name, rate in (("bad", 0.03), ("very-bad", 0.10)):
        rs = runs(name)
        err = np.concatenate([r.error[r.canary] for r in rs])
        base = np.concatenate([r.error[~r.canary] for r in rs])
        assert err.mean() == pytest.approx(rate, abs=0.01)
        assert base.mean() == pytest.approx(0.01, abs=0.003)


def test_drift_is_shared_and_moves_traffic() -> None:
    rs = runs("neutral-drift")
    ts = np.concatenate([r.ts for r in rs])
    first, second = (ts < 3600).sum(), (ts >= 3600).sum()
    # Rate 1 + 0.5 sin: the first half carries (1 + 1/pi) / (1 - 1/pi) = 1.93x the second's.
    assert first / second == pytest.approx(1.93, rel=0.05)
    h = np.concatenate([r.scores["helpfulness"] for r in rs])
    early = h[(ts > 1200) & (ts < 2400)]
    late = h[(ts > 4800) & (ts < 6000)]
    assert np.nanmean(early) - np.nanmean(late) > 0.06


def test_cost_heavy_tail() -> None:
    rs = runs("cost-heavy-tail")
    c = np.concatenate([r.cost[r.canary] for r in rs])
    b = np.concatenate([r.cost[~r.canary] for r in rs])
    assert np.median(c) / np.median(b) == pytest.approx(1.2, rel=0.08)
    assert np.mean(np.log(c)) - np.mean(np.log(b)) == pytest.approx(np.log(1.2), abs=0.06)


def test_late_scores_delay() -> None:
    rs = runs("late-scores")
    for arm, mean in ((False, 3.0), (True, 6.0)):
        d = np.concatenate(
            [(r.score_arrival["helpfulness"] - r.ts)[(r.canary == arm) & ~r.error] for r in rs]
        )
        assert d.mean() / 60 == pytest.approx(mean, rel=0.05)


def test_srm_scenarios_lose_bad_canary_traces() -> None:
    for name in ("srm-coverage", "srm-lost"):
        rs = runs(name)
        lost_share = np.mean(
            np.concatenate([np.isnan(r.scores["helpfulness"][r.canary & ~r.error]) for r in rs])
        )
        assert lost_share == pytest.approx(0.1, abs=0.02)
        # Survivors are the better ones: the canary looks better than the baseline.
        assert (
            pooled(rs, "helpfulness", True).mean() > pooled(rs, "helpfulness", False).mean() + 0.03
        )
        for r in rs:
            assert np.all(~np.isnan(r.scores["helpfulness"][~r.canary & ~r.error]))
            if name == "srm-lost":
                assert r.lost is not None
                assert not np.any(r.lost[~r.canary])
                assert r.lost[r.canary].mean() == pytest.approx(0.1, abs=0.03)
            else:
                assert r.lost is None


def test_five_metrics() -> None:
    rs = runs("five-metrics")
    assert set(rs[0].scores) == {"helpfulness", "correctness", "tone_ok", "resolved", "conciseness"}
    for metric, p in (("tone_ok", 0.9), ("resolved", 0.8)):
        v = pooled(rs, metric, False)
        assert set(np.unique(v)) <= {0.0, 1.0}
        assert v.mean() == pytest.approx(p, abs=0.01)
    assert pooled(rs, "correctness", True).mean() == pytest.approx(0.70, abs=0.015)
    assert pooled(rs, "helpfulness", True).mean() == pytest.approx(0.75, abs=0.015)


def test_no_scores() -> None:
    r = runs("no-scores", 1)[0]
    assert np.all(np.isnan(r.scores["helpfulness"][r.canary]))
    assert np.all(np.isinf(r.score_arrival["helpfulness"][r.canary]))
    assert np.isfinite(r.scores["helpfulness"][~r.canary & ~r.error]).all()


def test_oracle_effects_travel_with_the_run() -> None:
    r = runs("very-bad", 1)[0]
    assert dict(r.oracle_effects) == {"helpfulness": -0.15, "error": 0.09}


def test_generation_is_seeded() -> None:
    a = SCENARIOS["bad"].make_run(np.random.default_rng(5), T)
    b = SCENARIOS["bad"].make_run(np.random.default_rng(5), T)
    np.testing.assert_array_equal(a.ts, b.ts)
    np.testing.assert_array_equal(a.scores["helpfulness"], b.scores["helpfulness"])
