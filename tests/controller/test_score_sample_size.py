"""The size of a release's score sample: literal budgets and traffic, and the table the
controller writes for it while it judges on the proxies' counts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from coalmine.shared.routing_tables.store import SqliteRoutingStore
from coalmine.shared.routing_tables.table import SampleRate
from controller import score_sample
from controller.loop import Controller, ProxyTraffic
from controller.release_store import ControllerState
from controller.source.aggregates import ProxyCounts
from policies.domain import Phase
from tests.controller.release_rig import RELEASE, Labels, write_policy
from tests.controller.test_judged_on_proxy_counts import T0, World


@pytest.mark.parametrize(
    ("budget", "releases", "names", "affordable"),
    [
        (24, 1, 1, 1200.0),  # 18 score reads a minute x 100 ids / 1.5 reads a trace
        (24, 10, 1, 120.0),
        (24, 10, 2, 60.0),  # 50 ids a read
        (24, 10, 3, 39.6),  # 33 ids a read
        (1000, 4, 1, 12500.0),
        (24, 0, 1, math.inf),
    ],
)
def test_affordable_traces(budget: int, releases: int, names: int, affordable: float) -> None:
    assert score_sample.affordable_traces(budget, releases, names) == pytest.approx(affordable)


@pytest.mark.parametrize(
    ("requests", "affordable", "rate"),
    [
        (0, 120.0, 1.0),
        (100, 120.0, 1.0),
        (120, 120.0, 1.0),
        (1200, 120.0, 0.1),
        (10**5, 120.0, 0.0012),
    ],
)
def test_wanted_rate(requests: int, affordable: float, rate: float) -> None:
    assert score_sample.wanted_rate(requests, affordable) == pytest.approx(rate)


def _entry(start: int, rate: float) -> SampleRate:
    return SampleRate.model_validate({"from": start, "rate": rate})


M = 1_800_000_000  # a whole minute


@pytest.mark.parametrize(
    ("entries", "wanted", "now", "after"),
    [
        ((), 1.0, M + 10, None),  # everything sampled already
        ((), 0.9, M + 10, None),  # within a quarter: left as it is
        # the first rate applies from the minute in progress
        ((), 0.1, M + 10, ((M, 0.1),)),
        ((), 0.1, M + 40, ((M, 0.1),)),
        # from none sampled (traffic not known yet) to a rate: at once too
        (((M, 0.0),), 1.0, M + 70, ((M + 60, 1.0),)),
        # later changes 30 s ahead at least: the next minute, or the one after
        (((M, 0.1),), 0.2, M + 10, ((M, 0.1), (M + 60, 0.2))),
        (((M, 0.1),), 0.2, M + 40, ((M, 0.1), (M + 120, 0.2))),
        (((M, 0.1),), 0.11, M + 100, None),
        (((M, 0.1),), 0.05, M + 100, ((M, 0.1), (M + 180, 0.05))),
        # a change not yet in force is replaced, not stacked
        (((M, 0.1), (M + 180, 0.05)), 0.2, M + 130, ((M, 0.1), (M + 180, 0.2))),
        # the older entry no longer in force is dropped
        (((M, 0.1), (M + 180, 0.05)), 0.2, M + 200, ((M + 180, 0.05), (M + 240, 0.2))),
    ],
)
def test_next_entries(
    entries: tuple[tuple[int, float], ...],
    wanted: float,
    now: float,
    after: tuple[tuple[int, float], ...] | None,
) -> None:
    found = score_sample.next_entries(
        tuple(_entry(start, rate) for start, rate in entries), wanted, now
    )
    if after is None:
        assert found is None
    else:
        assert found is not None
        assert [(entry.from_, entry.rate) for entry in found] == list(after)


def test_rate_in_force() -> None:
    entries = (_entry(M, 0.1), _entry(M + 180, 0.05))
    assert score_sample.rate_in_force((), M) == 1.0
    assert score_sample.rate_in_force(entries, M - 1) == 1.0
    assert score_sample.rate_in_force(entries, M + 179) == 0.1
    assert score_sample.rate_in_force(entries, M + 180) == 0.05


def _sized_rig(
    tmp_path: Path,
) -> tuple[ControllerState, SqliteRoutingStore, World, Controller]:
    """6,000 requests a minute, a score-read budget of 24 a minute."""
    path = tmp_path / "state.db"
    state = ControllerState(path)
    routing = SqliteRoutingStore(path)
    world = World(path, routing, rate=6000)
    policies = {RELEASE: write_policy(tmp_path)}
    controller = Controller(
        state=state,
        routing=routing,
        source=world,
        labels=Labels(),
        policies=lambda: policies,
        from_proxies=ProxyTraffic(ProxyCounts.local(path), sample_budget=24),
    )
    return state, routing, world, controller


def test_the_controller_sizes_the_sample_from_the_proxies_counts(tmp_path: Path) -> None:
    """6,000 requests a minute and a budget of 24 requests a minute for one release with
    one score name: 1,200 sampled traces a minute are affordable, a rate of 0.2."""
    state, routing, world, controller = _sized_rig(tmp_path)
    now = T0 + 60
    world.run_until(now)
    controller.tick(now)  # the rollout starts; its sample is sized in the same tick
    table = routing.read(RELEASE)
    assert table is not None
    (first,) = table.score_sample
    assert first.from_ == T0 + 60
    assert first.rate == pytest.approx(0.2, rel=0.05)
    for _ in range(3):
        now += 60
        world.run_until(now)
        controller.tick(now)
    release = state.release(RELEASE)
    assert release is not None and release.phase is Phase.CANARY
    table = routing.read(RELEASE)
    assert table is not None
    (entry,) = table.score_sample
    assert entry.from_ % 60 == 0
    assert entry.rate == pytest.approx(1200 / 6000, rel=0.05)


def test_a_rollout_on_traffic_not_known_yet_samples_nothing_until_it_is(tmp_path: Path) -> None:
    """No counts before the start: the first minute could be a burst of sampled traces
    too large for the budget to ever read, so none is sampled until the counts say how
    busy the release is."""
    _, routing, world, controller = _sized_rig(tmp_path)
    controller.tick(T0)  # starts, nothing counted yet
    table = routing.read(RELEASE)
    assert table is not None
    assert [(entry.from_, entry.rate) for entry in table.score_sample] == [(T0, 0.0)]
    world.run_until(T0 + 60)
    controller.tick(T0 + 60)
    table = routing.read(RELEASE)
    assert table is not None
    (sized,) = table.score_sample  # nothing sampled yet this minute: at once
    assert sized.from_ == T0 + 60
    assert sized.rate == pytest.approx(0.2, rel=0.05)
