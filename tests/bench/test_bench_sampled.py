"""Sampled reads in the decision-quality harness: the proxies' counts fed to the judge."""

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pytest

from bench import coalmine_method, harness
from bench.baselines import Method, PeekingZ
from bench.scenarios import BASE_ERROR_RATE, SCENARIOS, TRAFFIC, Traffic
from controller.judge import Evidence
from policies.domain import Arm

REQUESTS = 2000  # a minute, in all
SAMPLED = dataclasses.replace(TRAFFIC["50/50"], sampled_from=REQUESTS)


def _sd_bound(mean: float, sd: float, k: float = 5.0) -> tuple[float, float]:
    return mean - k * sd, mean + k * sd


@pytest.mark.parametrize("scenario", ["neutral", "neutral-drift", "very-bad", "srm-lost"])
def test_counts_are_consistent_with_the_sample(scenario: str) -> None:
    sc = SCENARIOS[scenario]
    run = sc.make_run(np.random.default_rng(11), SAMPLED, 120)
    plain = sc.make_run(np.random.default_rng(11), TRAFFIC["50/50"], 120)
    # the traces are those of the run without sampled reads
    np.testing.assert_array_equal(run.ts, plain.ts)
    np.testing.assert_array_equal(run.canary, plain.canary)
    assert run.proxy is not None
    minutes = [run.proxy.minute(k) for k in range(run.minutes)]
    trace_minute = np.floor(run.ts / 60.0).astype(np.int64)
    for side, mask in ((0, ~run.canary), (1, run.canary)):
        requests = np.array([m.requests[side] for m in minutes])
        errors = np.array([m.errors[side] for m in minutes])
        sampled = np.array([m.sampled[side] for m in minutes])
        binned = np.array([sum(m.latency_bins[side].values()) for m in minutes])
        np.testing.assert_array_equal(sampled, np.bincount(trace_minute[mask], minlength=120))
        assert np.all(errors <= requests)
        assert np.all(sampled <= requests)
        np.testing.assert_array_equal(binned, requests)
        # Poisson totals over two hours (drift's sine averages out over its period)
        low, high = _sd_bound(REQUESTS * 0.5 * 120, math.sqrt(REQUESTS * 0.5 * 120))
        assert low <= requests.sum() <= high
        rate = BASE_ERROR_RATE if side == 0 else sc.spec.canary_error_rate
        n = int(requests.sum())
        low, high = _sd_bound(n * rate, math.sqrt(n * rate * (1 - rate)))
        assert low <= errors.sum() <= high


def test_minutes_do_not_depend_on_the_order_they_are_read() -> None:
    sc = SCENARIOS["neutral"]
    one = sc.make_run(np.random.default_rng(5), SAMPLED, 20).proxy
    two = sc.make_run(np.random.default_rng(5), SAMPLED, 20).proxy
    assert one is not None and two is not None
    last = two.minute(19)
    assert [one.minute(k) for k in range(20)][-1] == last
    assert two.minute(3) == one.minute(3)


def test_fewer_requests_than_the_sample_is_refused() -> None:
    too_few = Traffic(50.0, 50.0, sampled_from=60)
    with pytest.raises(ValueError, match="fewer than the sample"):
        SCENARIOS["neutral"].make_run(np.random.default_rng(1), too_few, 10)


class _Recording(Evidence):
    """The evidence, remembering what the proxies' counts fed it."""

    fed: ClassVar[list[tuple[Arm, int, tuple[int, int, int], dict[int, int]]]] = []
    created: ClassVar[list[bool]] = []  # traffic_from_proxy of each evidence made

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _Recording.created.append(self.traffic_from_proxy)

    def add_proxy_minute(
        self, arm: Arm, minute: int, counts: tuple[int, int, int], bins: Mapping[int, int]
    ) -> None:
        _Recording.fed.append((arm, minute, counts, dict(bins)))
        super().add_proxy_minute(arm, minute, counts, bins)


def test_the_judge_is_fed_every_request_minute_by_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coalmine_method, "Evidence", _Recording)
    _Recording.fed, _Recording.created = [], []
    run = SCENARIOS["neutral"].make_run(np.random.default_rng(3), SAMPLED, 120)
    outcome = coalmine_method.CoalmineJudge().decide(run)
    assert _Recording.created == [True]
    assert outcome.minute is not None
    looks = int(outcome.minute)
    assert len(_Recording.fed) == 2 * looks
    for arm in (Arm.BASELINE, Arm.CANARY):
        fed = [f for f in _Recording.fed if f[0] is arm]
        assert [f[1] for f in fed] == [60 * k for k in range(looks)]
        for _, _, (requests, errors, sampled), bins in fed:
            assert 0 <= errors <= requests
            assert 0 < sampled <= requests
            assert sum(bins.values()) == requests
        total = sum(f[2][0] for f in fed)
        expected = REQUESTS * 0.5 * looks
        low, high = _sd_bound(expected, math.sqrt(expected))
        assert low <= total <= high


def test_tiny_benchmark_with_sampled_reads() -> None:
    methods: list[Method] = [PeekingZ(), coalmine_method.CoalmineJudge()]
    rows = harness.run_benchmark(
        methods, ["neutral", "very-bad"], runs=6, seed=4, workers=1, traffic=SAMPLED
    )
    plain = harness.run_benchmark(
        methods, ["neutral", "very-bad"], runs=6, seed=4, workers=1, traffic=TRAFFIC["50/50"]
    )
    by = {(r.scenario, r.method): r for r in rows}
    before = {(r.scenario, r.method): r for r in plain}
    for r in rows:
        assert r.runs == 6
        assert r.rollback + r.promote + r.pause + r.undecided == pytest.approx(1.0)
    # the other methods see the same traces as without sampled reads
    for scenario in ("neutral", "very-bad"):
        assert dataclasses.replace(by[scenario, "peeking-z"], ms_per_run=0.0) == (
            dataclasses.replace(before[scenario, "peeking-z"], ms_per_run=0.0)
        )
    assert by["very-bad", "coalmine"].rollback == 1.0
