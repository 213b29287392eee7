"""The controller judging errors, latency and the split on the proxies' counts of every
request (``judge_traffic: proxy``), read from the state file's ``proxy_minutes`` as two
proxies write them, with traces and scores from the sample source."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.controller_world import HandsOver
from coalmine.shared.aggregates.model import MinuteCell, minute_of
from coalmine.shared.aggregates.sqlite import SqliteAggregateStore
from coalmine.shared.routing_tables.store import SqliteRoutingStore
from controller.loop import Controller, ProxyTraffic
from controller.release_store import ControllerState
from controller.samples import ScoreSample, TraceSample
from controller.source.aggregates import ProxyCounts
from policies.domain import Arm, Phase
from policies.latency_bins import sketch_bin
from tests.controller.release_rig import RELEASE, Labels, write_policy

T0 = 1_800_000_000.0
MINUTE = 60.0


@dataclass
class World(HandsOver):
    """``rate`` requests a minute split by the routing table's weight, answered by two
    proxies (alternately), which count them; the app traces those that did not fail
    (an upstream 5xx leaves no trace) and loses ``canary_lost`` of the canary's traces."""

    path: Path
    routing: SqliteRoutingStore
    canary_errors: float = 0.0
    canary_lost: float = 0.0
    rate: int = 200
    counting: bool = True
    """False: the proxies write no counts."""
    seed: int = 3
    cells: dict[tuple[str, Arm, int], list[int]] = field(default_factory=dict)
    _pending: list[TraceSample] = field(default_factory=list)
    _scores: list[ScoreSample] = field(default_factory=list)
    _clock: float = T0
    _count: int = 0
    polls: int = 0

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)
        self.proxies = {
            name: SqliteAggregateStore(self.path, name, retention_seconds=10**6)
            for name in ("p1", "p2")
        }

    def run_until(self, now: float) -> None:
        table = self.routing.read(RELEASE)
        weight = 0.0 if table is None else table.canary_weight / 100.0
        seconds = now - self._clock
        for _ in range(int(self.rate * seconds / MINUTE)):
            self._count += 1
            ts = self._clock + self.random.random() * seconds
            canary = self.random.random() < weight
            arm = Arm.CANARY if canary else Arm.BASELINE
            failed = canary and self.random.random() < self.canary_errors
            proxy = "p1" if self._count % 2 else "p2"
            cell = self.cells.setdefault((proxy, arm, minute_of(int(ts * 1e9))), [0, 0])
            cell[0] += 1
            cell[1] += failed
            if failed or (canary and self.random.random() < self.canary_lost):
                continue
            trace_id = f"t{self._count}"
            self._pending.append(TraceSample(RELEASE, trace_id, arm, ts, False, 300.0, 0.001))
            value = min(1.0, max(0.0, self.random.gauss(0.8, 0.1)))
            self._scores.append(ScoreSample(f"s{self._count}", trace_id, "helpfulness", value, ts))
        self._clock = now
        if not self.counting:
            return
        for name, store in self.proxies.items():
            store.write(
                [
                    MinuteCell(RELEASE, arm, minute, n, e, {sketch_bin(300.0): n}, sampled=n)
                    for (proxy, arm, minute), (n, e) in self.cells.items()
                    if proxy == name
                ],
                now,
            )

    def close(self) -> None:
        for store in self.proxies.values():
            store.close()


@dataclass
class Rig:
    world: World
    state: ControllerState
    controller: Controller
    now: float = T0

    def run(self, minutes: int, until: Phase | None = None) -> None:
        for _ in range(minutes):
            self.now += MINUTE
            self.world.run_until(self.now)
            self.controller.tick(self.now)
            if until is not None and self.phase() is until:
                return

    def phase(self) -> Phase:
        release = self.state.release(RELEASE)
        assert release is not None
        return release.phase

    def reasons(self) -> list[str]:
        return [record.reason for record in self.state.decisions(RELEASE)]


def _rig(tmp_path: Path, *, from_proxy: bool = True, **world: Any) -> Rig:
    path = tmp_path / "state.db"
    state = ControllerState(path)
    routing = SqliteRoutingStore(path)
    source = World(path, routing, **world)
    policies = {RELEASE: write_policy(tmp_path)}
    controller = Controller(
        state=state,
        routing=routing,
        source=source,
        labels=Labels(),
        policies=lambda: policies,
        from_proxies=ProxyTraffic(ProxyCounts.local(path)) if from_proxy else None,
    )
    return Rig(source, state, controller)


def test_upstream_errors_the_traces_never_show_roll_the_canary_back(tmp_path: Path) -> None:
    rig = _rig(tmp_path, canary_errors=0.3)
    rig.run(60, until=Phase.ROLLED_BACK)
    assert rig.phase() is Phase.ROLLED_BACK
    assert any("errors" in reason for reason in rig.reasons())
    live = rig.controller.live.get(RELEASE)
    assert live is None or live.proxies == frozenset({"p1", "p2"})


def test_judged_on_traces_the_same_errors_go_unseen(tmp_path: Path) -> None:
    """The contrast: the traces alone hold no error, so nothing rolls back."""
    rig = _rig(tmp_path, from_proxy=False, canary_errors=0.3)
    rig.run(60, until=Phase.ROLLED_BACK)
    assert rig.phase() is not Phase.ROLLED_BACK


def test_a_canary_losing_its_traces_is_paused(tmp_path: Path) -> None:
    rig = _rig(tmp_path, canary_lost=0.2)
    rig.run(120, until=Phase.PAUSED)
    assert rig.phase() is Phase.PAUSED
    assert "trace loss" in rig.reasons()[-1]


def test_a_healthy_canary_judged_on_counts_advances(tmp_path: Path) -> None:
    rig = _rig(tmp_path)
    rig.run(45)
    release = rig.state.release(RELEASE)
    assert release is not None
    assert release.phase is Phase.CANARY
    assert release.step >= 1, rig.reasons()
    judgement = rig.controller.last_judgement(RELEASE)
    assert judgement is not None
    checks = {check.name: check for check in judgement.checks}
    assert checks["trace_loss"].ok, checks["trace_loss"]
    assert checks["sample_ratio"].ok


def test_without_counts_nothing_advances(tmp_path: Path) -> None:
    """Proxies that write no counts (not in front of the traffic, or counting off): the
    release waits on no traffic, whatever the traces say."""
    rig = _rig(tmp_path, counting=False)
    rig.run(45)
    release = rig.state.release(RELEASE)
    assert release is not None
    assert (release.phase, release.step) == (Phase.CANARY, 0)
    judgement = rig.controller.last_judgement(RELEASE)
    assert judgement is not None
    assert "no traces of this release" in judgement.reason or "nodata" in judgement.reason


def test_status_says_where_traffic_is_counted(tmp_path: Path) -> None:
    rig = _rig(tmp_path)
    rig.run(5)
    traffic = rig.controller.traffic_of(RELEASE)
    assert traffic is not None
    assert traffic["countedBy"] == "proxies"
    assert traffic["proxies"] == ["p1", "p2"]
    assert traffic["lateRequests"] == 0
    assert traffic["scoreSample"] == []
    langfuse = _rig(tmp_path / "other", from_proxy=False)
    langfuse.run(5)
    assert langfuse.controller.traffic_of(RELEASE) == {"countedBy": "langfuse", "scoreSample": []}
    assert langfuse.controller.traffic_of("nothing") is None
